"""KSR.pv: read and write pseudo-variables (Kamailio's KEMI ``pv`` submodule).

``get`` returns nil for a null or unset PV (and for an unknown name, logged),
``gete`` an empty string, ``getw`` ``"<null>"``, ``geti`` 0, as in Kamailio.
"""

from __future__ import annotations

import logging
from typing import Any

from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder

log = logging.getLogger("trio_sip.script")

m = ModuleBuilder("pv", "Pseudo-variables: $ru, $fu, $hdr(Name), $var(x), ...")


def _get(ctx: MsgContext, name: str) -> Any:
    try:
        return pv.get(ctx, name)
    except pv.PvError as exc:
        log.error("KSR.pv: %s", exc)
        return None


@m.export(("str",), ret="xval")
def get(ctx: MsgContext, name: str) -> Any:
    """The value of a PV: string, integer, or nil when null."""
    return _get(ctx, name)


@m.export(("str",), ret="xval")
def gete(ctx: MsgContext, name: str) -> Any:
    """Like get, but an empty string for null."""
    v = _get(ctx, name)
    return "" if v is None else v


@m.export(("str",), ret="xval")
def getw(ctx: MsgContext, name: str) -> Any:
    """Like get, but the string "<null>" for null (for log lines)."""
    v = _get(ctx, name)
    return "<null>" if v is None else v


@m.export(("str",), ret="int")
def geti(ctx: MsgContext, name: str) -> int:
    """The value as an integer (0 for null or non-numeric)."""
    v = _get(ctx, name)
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


@m.export(("str", "int"), ret="xval")
def getvn(ctx: MsgContext, name: str, default: int) -> Any:
    """The value, or ``default`` (an integer) when null."""
    v = _get(ctx, name)
    return default if v is None else v


@m.export(("str", "str"), ret="xval")
def getvs(ctx: MsgContext, name: str, default: str) -> Any:
    """The value, or ``default`` (a string) when null."""
    v = _get(ctx, name)
    return default if v is None else v


def _set(ctx: MsgContext, name: str, value: Any) -> bool:
    try:
        pv.set_(ctx, name, value)
    except (pv.PvError, ValueError) as exc:
        log.error("KSR.pv: cannot set %s: %s", name, exc)
        return False
    except Exception as exc:  # a bad value for a URI PV and the like
        log.error("KSR.pv: cannot set %s: %s", name, exc)
        return False
    return True


@m.export(("str", "str"), ret="bool")
def sets(ctx: MsgContext, name: str, value: str) -> bool:
    """Set a PV to a string."""
    return _set(ctx, name, value)


@m.export(("str", "int"), ret="bool")
def seti(ctx: MsgContext, name: str, value: int) -> bool:
    """Set a PV to an integer."""
    return _set(ctx, name, value)


@m.export(("str",), ret="bool")
def unset(ctx: MsgContext, name: str) -> bool:
    """Set a PV to null ($du = $null resets the destination URI)."""
    return _set(ctx, name, None)


@m.export(("str",), ret="bool")
def is_null(ctx: MsgContext, name: str) -> bool:
    """True if the PV is null (or the name is unknown)."""
    return _get(ctx, name) is None


MODULE = m.build()
