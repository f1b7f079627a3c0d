"""Runtime-settable config values: Kamailio's ``cfg_rpc`` commands and ``corex.debug``.

A value is runtime-settable when its field is marked so:

* in a config section (trio_sip/config.py), ``field(..., metadata=_checks(...,
  runtime=True))``: every ``[tm]`` value (``fr_timer``, ``fr_inv_timer``,
  ``wt_timer``, ``retr_timer1``/``retr_timer2`` (T1/T2), ``max_inv_lifetime``...),
  ``core.log_level`` and ``lua.route_budget_ms``;
* in a module's params dataclass, ``field(default=..., metadata={"runtime": True})``
  (:func:`runtime_param`), for params the module reads at each use
  (``registrar`` ``default_expires``, ``min_expires``, ``max_expires``...).

Commands (Kamailio's names; GROUP is the config section or module name):

===============================  ==============================================================
``cfg.list [GROUP]``             every runtime-settable value: group, name, type, value
``cfg.get GROUP [NAME]``         one value, or every value of the group
``cfg.set GROUP NAME VALUE``     set it now (``cfg.set_now`` too); a text VALUE is parsed by the
                                 field's type, as ``--set`` does
``cfg.seti GROUP NAME INT``      the same, VALUE an integer (``cfg.set_now_int``)
``cfg.sets GROUP NAME TEXT``     the same, VALUE a text parsed by type (``cfg.set_now_string``)
``cfg.help GROUP NAME``          what the value means
``corex.debug [LEVEL]``          get or set the log level as Kamailio's number (-5..3: 3 debug,
                                 2 info, 1 notice, 0 warning, -1 error, -2 critical)
``debug.level [LEVEL]``          the same with names (debug, info, notice, warning, error,
                                 critical, or Kamailio's dbg/warn/err/crit) or numbers
===============================  ==============================================================

A new value goes through the same checks as at start (the field's own checks and the
section's checks across fields, e.g. ``fr_inv_timer <= max_inv_lifetime``; a module's
``validate()``): a refused value changes nothing and the error says which rule. The
``core.debug`` value (Kamailio's) is the log level as a number.

When it takes effect: ``[tm]`` values apply to transactions created after the change
(each keeps the values it started with, ``ServerTx.params``); the log level at once
(every Lua engine's cached level flags are refreshed); the route budget at each route
run's next start or resume (LuaJIT's JIT stays off once a budget was on); a module param
at its next use.
Changes are not written back to the config file: a restart starts from the file.
Kamailio's delayed changes (``cfg.set_delayed``/``cfg.commit``/``cfg.diff``) are not
implemented: every change applies at once.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..config import Config, ConfigError
from ..log import LEVELS, level_from_name
from .registry import COMMAND_FAILED, InvalidParams, MiCommand, MiContext, MiError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KAMAILIO_DEBUG", "CfgVar", "commands", "kamailio_debug", "runtime_param",
           "variables"]

#: Kamailio's debug numbers and the log level names they are here
KAMAILIO_DEBUG: Final[dict[int, str]] = {
    3: "debug", 2: "info", 1: "notice", 0: "warning", -1: "error", -2: "critical",
    -3: "critical", -4: "critical", -5: "critical",
}
#: (highest Python level, Kamailio number): a level up to DEBUG is 3, up to INFO 2...
_LEVEL_TO_DEBUG: Final = ((logging.DEBUG, 3), (logging.INFO, 2), (25, 1),
                          (logging.WARNING, 0), (logging.ERROR, -1))


def kamailio_debug(level: int) -> int:
    """Kamailio's debug number for a Python log level (NOTSET logs everything: 3)."""
    for top, number in _LEVEL_TO_DEBUG:
        if level <= top:
            return number
    return -2


def runtime_param(default: Any, **kwargs: Any) -> Any:
    """A module params dataclass field that ``cfg.set`` may change while the server
    runs: ``max_expires: int = runtime_param(0)``. Only for params the module reads
    at each use (a copy made at start would never see the change)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["runtime"] = True
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@dataclass(frozen=True)
class CfgVar:
    """One runtime-settable value."""

    group: str
    name: str
    #: int, float, bool or str
    type: type
    doc: str
    get: Callable[[], Any]
    #: validates and applies a value already of ``type``; raises ConfigError/ValueError
    set: Callable[[Any], None]

    def describe(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "type": self.type.__name__,
                "value": self.get()}


# -- the variables ---------------------------------------------------------------------


def _field_doc(cls: type, name: str) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    first = doc[0] if doc else cls.__name__
    return f"{name} ({first})"


def _section_vars(ctx: MiContext, section: str) -> list[CfgVar]:
    core = ctx.core
    cls = type(getattr(core.config, section))
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("runtime"):
            continue

        def get(name: str = f.name) -> Any:
            return getattr(getattr(ctx.core.config, section), name)

        def put(value: Any, name: str = f.name) -> None:
            _set_section(ctx, section, name, value)

        out.append(CfgVar(section, f.name, hints[f.name], _field_doc(cls, f.name), get, put))
    return out


def _replace_config(ctx: MiContext, config: Config) -> None:
    ctx.core.config = config
    if ctx.server is not None:
        ctx.server.config = config


def _set_section(ctx: MiContext, section: str, name: str, value: Any) -> None:
    config: Config = ctx.core.config
    new_section = dataclasses.replace(getattr(config, section), **{name: value})
    if section == "tm":
        # new transactions read the layer's values; each running one keeps its own
        ctx.core.tm.params = new_section
    elif section == "core" and name == "log_level":
        _apply_log_level(ctx, value)
    elif section == "lua" and name == "route_budget_ms":
        # every generation of the routes: one still finishing its waits after a reload
        # runs under the new budget too
        from .reload import engines_in_flight

        for engine in [ctx.core.engine, *(e for e, _n, _t in engines_in_flight(ctx.core))]:
            engine.set_route_budget(value)
    _replace_config(ctx, dataclasses.replace(config, **{section: new_section}))


def _apply_log_level(ctx: MiContext, name: str) -> None:
    logging.getLogger().setLevel(level_from_name(name))
    from .reload import engines_in_flight

    for engine in [ctx.core.engine, *(e for e, _n, _t in engines_in_flight(ctx.core))]:
        engine.sync_log_levels()


def _debug_var(ctx: MiContext) -> CfgVar:
    def get() -> int:
        return kamailio_debug(logging.getLogger().getEffectiveLevel())

    def put(value: int) -> None:
        if value not in KAMAILIO_DEBUG:
            raise ValueError("must be -5..3 (3 debug, 2 info, 1 notice, 0 warning, "
                             "-1 error, -2 critical)")
        _set_section(ctx, "core", "log_level", KAMAILIO_DEBUG[value])

    return CfgVar("core", "debug", int, "the log level as Kamailio's number (-5..3)",
                  get, put)


def _module_vars(ctx: MiContext) -> list[CfgVar]:
    out = []
    modparams: dict[str, Any] = getattr(ctx.core, "modparams", {}) or {}
    for module, inst in sorted(modparams.items()):
        if not dataclasses.is_dataclass(inst) or isinstance(inst, type):
            continue
        cls = type(inst)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("runtime"):
                continue

            def get(module: str = module, name: str = f.name) -> Any:
                return getattr(ctx.core.modparams[module], name)

            def put(value: Any, module: str = module, name: str = f.name) -> None:
                current = ctx.core.modparams[module]
                new = dataclasses.replace(current, **{name: value})
                validate = getattr(new, "validate", None)
                if callable(validate):
                    validate()
                ctx.core.modparams[module] = new

            out.append(CfgVar(module, f.name, hints[f.name], _field_doc(cls, f.name),
                              get, put))
    return out


def variables(ctx: MiContext) -> list[CfgVar]:
    """Every runtime-settable value of the server, by group then name."""
    out = [*_section_vars(ctx, "core"), _debug_var(ctx), *_section_vars(ctx, "lua"),
           *_section_vars(ctx, "tm"), *_module_vars(ctx)]
    return sorted(out, key=lambda v: (v.group, v.name))


def _find(ctx: MiContext, group: str, name: str | None) -> list[CfgVar]:
    found = [v for v in variables(ctx) if v.group == group]
    if not found:
        groups = sorted({v.group for v in variables(ctx)})
        raise InvalidParams(f"no runtime-settable group {group!r} (groups: {', '.join(groups)})")
    if name is None:
        return found
    one = [v for v in found if v.name == name]
    if not one:
        names = ", ".join(v.name for v in found)
        raise InvalidParams(f"{group} has no runtime-settable value {name!r} ({names})")
    return one


# -- conversion --------------------------------------------------------------------------

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _convert(var: CfgVar, value: Any, *, from_text: bool) -> Any:
    """``value`` (JSON) as ``var.type``; InvalidParams naming the variable otherwise."""
    key = f"{var.group}.{var.name}"
    tp = var.type
    if isinstance(value, str) and (from_text or tp is not str):
        text = value.strip()
        try:
            if tp is bool:
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError
            if tp is int:
                return int(text)
            if tp is float:
                return float(text)
        except ValueError:
            raise InvalidParams(f"{key}: {value!r} is not {_a(tp)}") from None
        if tp is str:
            return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise InvalidParams(f"{key}: {value!r} is not {_a(tp)}")


def _a(tp: type) -> str:
    return {bool: "a boolean (true/false, 1/0, yes/no, on/off)", int: "an integer",
            float: "a number", str: "a string"}.get(tp, tp.__name__)


def _set(ctx: MiContext, params: Mapping[str, Any], *, kind: str) -> Any:
    group, name = _text(params, "group"), _text(params, "name")
    if "value" not in params:
        raise InvalidParams("needs GROUP NAME VALUE")
    var = _find(ctx, group, name)[0]
    raw = params["value"]
    if kind == "int":
        if not ((isinstance(raw, int) and not isinstance(raw, bool))
                or (isinstance(raw, str) and raw.strip().lstrip("+-").isdigit())):
            raise InvalidParams(f"cfg.seti: {raw!r} is not an integer")
        if var.type is str:
            raise InvalidParams(f"{group}.{name} is a string: use cfg.sets")
    elif kind == "str" and not isinstance(raw, str):
        raise InvalidParams(f"cfg.sets: {raw!r} is not a string")
    value = _convert(var, raw, from_text=kind == "str")
    old = var.get()
    try:
        var.set(value)
    except ConfigError as exc:
        why = exc.rule if exc.key == f"{group}.{name}" else f"{exc.key} {exc.rule}"
        raise MiError(COMMAND_FAILED, f"{group}.{name} = {value!r} refused: {why}",
                      {"key": exc.key}) from None
    except ValueError as exc:
        raise MiError(COMMAND_FAILED, f"{group}.{name} = {value!r} refused: {exc}") from None
    ctx.stats["cfg_sets"] += 1
    logging.getLogger("trio_sip.mi").info("cfg.set %s.%s: %r -> %r", group, name, old, value)
    return {"group": group, "name": name, "old": old, "new": var.get()}


def _text(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{key} must be a non-empty string")
    return value


# -- the commands --------------------------------------------------------------------------


def cfg_list(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Every runtime-settable value (or those of GROUP): group, name, type, value."""
    group = params.get("group")
    if group is not None:
        return [v.describe() for v in _find(ctx, str(group), None)]
    return [v.describe() for v in variables(ctx)]


def cfg_get(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """The value of GROUP NAME, or ``{name: value}`` of every value of GROUP."""
    group = _text(params, "group")
    name = params.get("name")
    found = _find(ctx, group, None if name is None else str(name))
    if name is not None:
        return found[0].get()
    return {v.name: v.get() for v in found}


def cfg_set(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Set GROUP NAME to VALUE now (a JSON value, or a text parsed by the value's type);
    checked as at start. Returns the old and new values."""
    return _set(ctx, params, kind="any")


def cfg_seti(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Set GROUP NAME to the integer VALUE now (Kamailio cfg.seti / cfg.set_now_int)."""
    return _set(ctx, params, kind="int")


def cfg_sets(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Set GROUP NAME to VALUE given as text, parsed by the value's type (Kamailio
    cfg.sets / cfg.set_now_string)."""
    return _set(ctx, params, kind="str")


def cfg_help(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """What GROUP NAME is, its type and when a change applies."""
    var = _find(ctx, _text(params, "group"), _text(params, "name"))[0]
    when = {"tm": "new transactions", "core": "at once"}.get(var.group, "its next use")
    return f"{var.doc}; {_a(var.type)}; a change applies to {when}"


def _level_reply(ctx: MiContext, params: Mapping[str, Any], *, names: bool) -> Any:
    var = _debug_var(ctx)
    old = var.get()
    level = params.get("level")
    if level is None:
        return ({"level": KAMAILIO_DEBUG[old], "debug": old} if names else {"debug": old})
    if isinstance(level, bool):
        raise InvalidParams("level must be a number or a level name")
    if isinstance(level, str) and not level.strip().lstrip("+-").isdigit():
        if not names:
            raise InvalidParams("corex.debug takes Kamailio's number (-5..3): "
                                "use debug.level for names")
        if level.lower() not in LEVELS:
            raise InvalidParams(f"unknown level {level!r} (debug, info, notice, warning, "
                                "error, critical)")
        canonical = logging.getLevelName(LEVELS[level.lower()]).lower()
        _set(ctx, {"group": "core", "name": "log_level", "value": canonical}, kind="any")
    else:
        _set(ctx, {"group": "core", "name": "debug", "value": level}, kind="int")
    new = var.get()
    if names:
        return {"old": KAMAILIO_DEBUG[old], "new": KAMAILIO_DEBUG[new], "debug": new}
    return {"old": old, "new": new}


def corex_debug(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Kamailio corex.debug: without LEVEL ``{"debug": n}``; with LEVEL (-5..3) set the log
    level and return ``{"old", "new"}``."""
    return _level_reply(ctx, params, names=False)


def debug_level(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Get the log level (``{"level": "info", "debug": 2}``) or set it, by name (debug,
    info, notice, warning, error, critical) or by Kamailio's number (-5..3)."""
    return _level_reply(ctx, params, names=True)


def commands() -> list[MiCommand]:
    """The cfg commands, for ``build_registry``."""
    grp = ("group", "name", "value")
    return [
        MiCommand("cfg.list", cfg_list, cfg_list.__doc__ or "", params=("group?",)),
        MiCommand("cfg.get", cfg_get, cfg_get.__doc__ or "", params=("group", "name?")),
        MiCommand("cfg.set", cfg_set, cfg_set.__doc__ or "", params=grp),
        MiCommand("cfg.set_now", cfg_set, "The same as cfg.set.", params=grp),
        MiCommand("cfg.seti", cfg_seti, cfg_seti.__doc__ or "", params=grp),
        MiCommand("cfg.set_now_int", cfg_seti, "The same as cfg.seti.", params=grp),
        MiCommand("cfg.sets", cfg_sets, cfg_sets.__doc__ or "", params=grp),
        MiCommand("cfg.set_now_string", cfg_sets, "The same as cfg.sets.", params=grp),
        MiCommand("cfg.help", cfg_help, cfg_help.__doc__ or "", params=("group", "name")),
        MiCommand("corex.debug", corex_debug, corex_debug.__doc__ or "", params=("level?",)),
        MiCommand("debug.level", debug_level, debug_level.__doc__ or "", params=("level?",)),
    ]
