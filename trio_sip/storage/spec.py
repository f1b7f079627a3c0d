"""Kamailio's ``attr=value;attr=value`` definitions of modparams (mqueue's ``mqueue``,
rtimer's ``timer`` and ``exec``...): one parser, one error type."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SpecError", "parse_attrs"]


class SpecError(ValueError):
    """A definition that cannot be used; the message says why."""


def parse_attrs(text: str, allowed: Iterable[str], what: str,
                error: type[ValueError] = SpecError) -> dict[str, str]:
    """``{attr: value}`` of ``text``: attribute names case-insensitive and lower-cased,
    values stripped, a trailing ``;`` allowed. ``error`` (naming ``what`` and the text)
    for a part without ``=``, an attribute not in ``allowed`` or one given twice."""
    allowed = tuple(allowed)
    out: dict[str, str] = {}
    for part in text.strip().rstrip(";").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise error(f"{what} {text!r}: {part.strip()!r} is not attr=value")
        if key not in allowed:
            raise error(f"{what} {text!r}: unknown attribute {key!r} "
                        f"(attributes: {', '.join(allowed)})")
        if key in out:
            raise error(f"{what} {text!r}: {key} given twice")
        out[key] = value.strip()
    return out
