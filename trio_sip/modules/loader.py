"""Loading modules: the built-in ones, then third-party ones from Python entry points.

A third-party package declares its module in its ``pyproject.toml``::

    [project.entry-points."trio_sip.modules"]
    example = "trio_sip_example:MODULE"

The entry point names a :class:`~trio_sip.script.exports.Module` (or a
``ModuleBuilder``, or a callable returning a Module). :func:`load_modules` loads
them after the built-in modules; the server refuses to start (a
:class:`ModuleLoadError`, which is a ``ScriptError``) when one fails to import,
does not give a Module, or takes the name of a module already loaded.
See examples/module/ for a complete package.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Sequence
from typing import Any

from ..script.engine import ScriptError
from ..script.exports import Module, ModuleBuilder

#: the entry-point group third-party modules register in
ENTRY_POINT_GROUP = "trio_sip.modules"


class ModuleLoadError(ScriptError):
    """A third-party module cannot be loaded; the server does not start."""


def _entry_points() -> Iterable[Any]:
    """The installed entry points of the group (tests replace this)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def third_party_modules() -> list[Module]:
    """The modules installed packages declare, in entry-point order."""
    out: list[Module] = []
    for ep in _entry_points():
        label = f"{ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise ModuleLoadError(
                f"third-party module {ep.name!r} ({label}) failed to import: "
                f"{type(exc).__name__}: {exc}") from exc
        out.append(_as_module(ep.name, label, obj))
    return out


def _as_module(name: str, label: str, obj: Any) -> Module:
    if isinstance(obj, ModuleBuilder):
        obj = obj.build()
    elif not isinstance(obj, Module) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ModuleLoadError(f"third-party module {name!r} ({label}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Module):
        raise ModuleLoadError(f"third-party module {name!r} ({label}) is not a "
                              f"trio_sip Module (got {type(obj).__name__})")
    return obj


def load_modules(builtins: Sequence[Module] | None = None) -> list[Module]:
    """The built-in modules (``builtins``, default: every built-in one) followed by the
    third-party ones; a third-party module named like one before it is refused."""
    if builtins is None:
        from . import builtin_modules

        builtins = builtin_modules()
    mods = list(builtins)
    names = {m.name for m in mods}
    for mod in third_party_modules():
        if mod.name in names:
            raise ModuleLoadError(
                f"third-party module {mod.name!r} clashes with a module already loaded "
                f"(built-in or another package's) named {mod.name!r}: refusing to start")
        names.add(mod.name)
        mods.append(mod)
    return mods
