"""Module params: ``[modparams.NAME]`` in the config, checked at start (OpenSIPS-style).

A module declares its params as a dataclass (``ModuleBuilder(..., params=Cls)``),
fields with defaults and type hints (int, float, bool, str, tuple[str, ...]). At
start every ``[modparams.NAME]`` table is converted into an instance of its
module's class: an unknown module, an unknown param or a value of the wrong type
refuses to start with ``ConfigError("modparams.NAME.PARAM", value, rule)``. A
dataclass may add ``validate(self) -> None`` raising ValueError for rules across
fields, and ``from_modparams(raw)`` to take over the conversion entirely.
Modules read their instance with ``modparams_of(core, "NAME", Cls)`` (the defaults
when the server has none, as for a core built by a test), and the directory of their
files with ``data_dir_of(core)``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ..config import ConfigError
from .exports import Module

P = TypeVar("P")


def modparams_of(core: Any, name: str, cls: type[P], default: P | None = None) -> P:
    """The ``[modparams.NAME]`` instance of a server (``core.modparams[name]``).

    A core without params for ``name`` (no ``modparams`` attribute, no entry, or an
    entry of another class, as for a core built by a test) gives ``default``, or
    ``cls()`` (the params' defaults) when ``default`` is None.
    """
    params = (getattr(core, "modparams", None) or {}).get(name)
    if isinstance(params, cls):
        return params
    return default if default is not None else cls()


def data_dir_of(core: Any) -> str:
    """The directory of a server's files (``[core] data_dir``, substituted for
    ``{data_dir}`` in db_urls), or ``"var"`` (its default) for a core without a config.
    The path is returned as configured (relative to the current directory unless
    absolute)."""
    config = getattr(core, "config", None)
    return config.core.data_dir if config is not None else "var"


def build_modparams(modules: Iterable[Module], raw: Mapping[str, Mapping[str, object]]
                    ) -> dict[str, Any]:
    """One params instance per module that declares params; errors name the key."""
    mods = {m.name: m for m in modules}
    for name in raw:
        if name in ("tm",):
            continue  # [tm] has its own section; tm params also accepted here for Kamailio users
        if name not in mods:
            raise ConfigError(f"modparams.{name}", dict(raw[name]),
                              f"no such module (modules: {', '.join(sorted(n for n in mods if n))})")
        if mods[name].params is None:
            raise ConfigError(f"modparams.{name}", dict(raw[name]), "this module has no params")
    out: dict[str, Any] = {}
    for name, mod in mods.items():
        if mod.params is None:
            continue
        values = raw.get(name, {})
        out[name] = _instance(name, mod.params, values)
    return out


def _instance(module: str, cls: type, values: Mapping[str, object]) -> Any:
    factory = getattr(cls, "from_modparams", None)
    if callable(factory):
        return factory(values)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"params of module {module} must be a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"modparams.{module}.{key}", value,
                              f"unknown param (params: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(f"modparams.{module}.{key}", hints[key], value)
    inst = cls(**kwargs)
    validate = getattr(inst, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"modparams.{module}", dict(values), str(exc)) from None
    return inst


def _coerce(key: str, tp: Any, value: object) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
        origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "yes", "true", "on", "0", "no",
                                                        "false", "off"):
            return value.lower() in ("1", "yes", "true", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(key, value, "expected a boolean")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ConfigError(key, value, "expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise ConfigError(key, value, "expected a number") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "expected a string")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else (
            [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else None)
        if items is None:
            raise ConfigError(key, value, "expected a list of strings")
        return tuple(str(v) for v in items)
    return value
