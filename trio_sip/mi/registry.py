"""The management command registry and its JSON-RPC 2.0 processing.

A command is a :class:`~trio_sip.script.exports.MiCommand`: a name (Kamailio's RPC
names where they exist: ``tm.stats``, ``app_lua.reload``, ``core.uptime``), a
function ``func(params, ctx)`` returning JSON-able data (sync, or ``async def``:
awaited under a timeout), a doc line and, optionally, the names of its params.
The built-in commands are in :mod:`trio_sip.mi.commands`; modules declare theirs
with ``ModuleBuilder.mi`` and :meth:`MiRegistry.add_module` takes them in.

The same registry answers three callers, with one code path:

* the HTTP server (:mod:`trio_sip.mi.http`): :meth:`MiRegistry.handle`;
* ``KSR.mi`` from a route (:mod:`trio_sip.modules.mi`): :meth:`MiRegistry.handle_now`
  and :meth:`MiRegistry.call_now` for commands that do not wait (they run at once,
  inside the Lua call), :meth:`MiRegistry.call` awaited by the route's coroutine for
  those that do;
* tests and embedding code: :meth:`MiRegistry.call`.

Errors are JSON-RPC error objects. The codes: -32700 parse error, -32600 invalid
request, -32601 method not found, -32602 invalid params, -32603 internal error (a
bug: logged with its traceback), and server errors from -32000 down:
:data:`COMMAND_FAILED` (the command says why), :data:`TIMEOUT`,
:data:`UNAVAILABLE` (what it needs is not configured), :data:`CANNOT_WAIT` (an
async command called where the caller cannot wait).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from ..script.exports import MiCommand, Module

if TYPE_CHECKING:
    from ..runtime.core import ProxyCore
    from ..runtime.server import Server

__all__ = [
    "CANNOT_WAIT",
    "COMMAND_FAILED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "TIMEOUT",
    "UNAVAILABLE",
    "InvalidParams",
    "MiCommand",
    "MiContext",
    "MiError",
    "MiRegistry",
    "StatsProvider",
    "add_module_stats",
]

log = logging.getLogger("trio_sip.mi")

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
#: the command ran and failed; its message says why (a reload that does not load...)
COMMAND_FAILED: Final = -32000
#: an async command did not finish in time (its work is cancelled)
TIMEOUT: Final = -32001
#: the command needs something that is not configured or not running (rtpengine...)
UNAVAILABLE: Final = -32002
#: an async command called where the caller cannot wait (a route that cannot wait)
CANNOT_WAIT: Final = -32003

#: at most this many requests in one batch
MAX_BATCH: Final = 100


class MiError(Exception):
    """A JSON-RPC error: raised by commands, answered as ``{"code", "message"[, "data"]}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


class InvalidParams(MiError):
    """-32602: the params do not fit the command."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_PARAMS, f"Invalid params: {message}")


#: a statistics group: a function returning ``{name: int}``, and optionally one that
#: resets the named counters (all of the group when given None)
StatsProvider = Callable[[], Mapping[str, int]]
StatsReset = Callable[[Iterable[str] | None], Iterable[str]]


@dataclass
class MiContext:
    """What commands see: the server's proxy core (``core``), the :class:`Server`
    (``server``; None when the core runs without one, as in unit tests), the registry
    and the management counters. One per server, shared by every caller."""

    core: ProxyCore
    registry: MiRegistry
    server: Server | None = None
    #: when the server started, wall-clock seconds (core.uptime)
    started: float = field(default_factory=time.time)
    #: management counters (the "mi" statistics group)
    stats: Counter[str] = field(default_factory=Counter)


class MiRegistry:
    """Commands by name, statistics groups by name, and the JSON-RPC processing."""

    def __init__(self, *, default_timeout: float = 30.0, max_batch: int = MAX_BATCH) -> None:
        self.default_timeout = default_timeout
        self.max_batch = max_batch
        self._commands: dict[str, MiCommand] = {}
        self._stats: dict[str, tuple[StatsProvider, StatsReset | None]] = {}
        self._gauges: dict[str, frozenset[str]] = {}

    # -- commands -----------------------------------------------------------------------

    def add(self, command: MiCommand, *, replace: bool = False) -> None:
        """Register a command; a second command of the same name is a ValueError
        unless ``replace``."""
        if not command.name or any(c.isspace() for c in command.name):
            raise ValueError(f"bad MI command name {command.name!r}")
        if command.name in self._commands and not replace:
            raise ValueError(f"MI command {command.name} is already registered")
        if command.params is not None:
            _check_param_names(command)
        self._commands[command.name] = command

    def add_module(self, module: Module) -> None:
        """Register every MI command a module declares (``ModuleBuilder.mi``)."""
        for cmd in module.mi_commands:
            self.add(cmd)

    def command(self, name: str) -> MiCommand | None:
        return self._commands.get(name)

    def commands(self) -> list[MiCommand]:
        """Every command, sorted by name."""
        return [self._commands[n] for n in sorted(self._commands)]

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __len__(self) -> int:
        return len(self._commands)

    # -- statistics groups ------------------------------------------------------------------

    def add_stats_group(self, name: str, provider: StatsProvider,
                        reset: StatsReset | None = None, *, gauges: Iterable[str] = ()) -> None:
        """A statistics group for ``stats.get_statistics`` (``"usrloc:"``...);
        ``gauges`` names its statistics that go up and down (``/metrics`` types them
        as gauges; the others are counters)."""
        if not name or ":" in name or "." in name:
            raise ValueError(f"bad statistics group name {name!r}")
        self._stats[name] = (provider, reset)
        self._gauges[name] = frozenset(gauges)

    def stats_gauges(self) -> dict[str, frozenset[str]]:
        """The gauges each statistics group declared."""
        return dict(self._gauges)

    def stats_groups(self) -> dict[str, tuple[StatsProvider, StatsReset | None]]:
        return dict(self._stats)

    # -- calling ------------------------------------------------------------------------------

    def bind(self, command: MiCommand, params: Any) -> Any:
        """The params as ``command.func`` receives them; InvalidParams if they do not fit."""
        if params is None:
            params = []
        if not isinstance(params, (list, dict)):
            raise InvalidParams("params must be an array or an object")
        spec = command.params
        if spec is None:
            return params
        names = [_name_of(p) for p in spec]
        rest = next((p[1:] for p in spec if p.startswith("*")), None)
        fixed = [p for p in spec if not p.startswith("*")]
        out: dict[str, Any] = {}
        if isinstance(params, list):
            if len(params) > len(fixed) and rest is None:
                raise InvalidParams(f"{command.name} takes at most {len(fixed)} "
                                    f"param(s) ({_usage(spec)}), got {len(params)}")
            for p, value in zip(fixed, params, strict=False):
                out[_name_of(p)] = value
            if rest is not None:
                out[rest] = list(params[len(fixed):])
        else:
            for key, value in params.items():
                if key not in names:
                    raise InvalidParams(f"{command.name} has no param {key!r} "
                                        f"({_usage(spec) or 'no params'})")
                out[key] = value
            if rest is not None:
                given = out.get(rest, [])
                out[rest] = given if isinstance(given, list) else [given]
        missing = [_name_of(p) for p in fixed if not p.endswith("?") and _name_of(p) not in out]
        if missing:
            raise InvalidParams(f"{command.name} needs {', '.join(missing)} ({_usage(spec)})")
        return out

    async def call(self, name: str, params: Any, ctx: MiContext, *,
                   can_wait: bool = True) -> Any:
        """Run the command ``name``; returns its result or raises :class:`MiError`.

        An async command is awaited under its timeout (:data:`TIMEOUT` when it runs
        out); with ``can_wait`` false it is refused with :data:`CANNOT_WAIT` before it
        starts. A sync command runs without ever yielding to Trio, which is what lets
        :meth:`call_now` run this coroutine to its end in one step."""
        command = self._commands.get(name)
        if command is None:
            ctx.stats["unknown_commands"] += 1
            raise MiError(METHOD_NOT_FOUND, f"Method not found: {name}")
        bound = self.bind(command, params)
        ctx.stats["commands"] += 1
        try:
            if not command.is_async:
                return command.func(bound, ctx)
            if not can_wait:
                raise MiError(CANNOT_WAIT, f"{name} waits, and this caller cannot wait "
                              "(from Lua: call it in a route that can wait)")
            timeout = command.timeout if command.timeout is not None else self.default_timeout
            with trio.move_on_after(timeout) as scope:
                return await command.func(bound, ctx)
            assert scope.cancelled_caught
            raise MiError(TIMEOUT, f"{name} did not finish in {timeout:g} s")
        except MiError:
            ctx.stats["command_errors"] += 1
            raise
        except Exception as exc:
            ctx.stats["command_errors"] += 1
            log.exception("MI command %s failed", name)
            raise MiError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}") from exc

    def call_now(self, name: str, params: Any, ctx: MiContext) -> Any:
        """:meth:`call` for a caller that cannot wait (a Lua export): an async command
        raises :data:`CANNOT_WAIT`."""
        return run_without_waiting(self.call(name, params, ctx, can_wait=False))

    def is_async(self, name: str) -> bool:
        command = self._commands.get(name)
        return command is not None and command.is_async

    # -- JSON-RPC 2.0 ---------------------------------------------------------------------------

    async def handle(self, payload: bytes | str, ctx: MiContext, *,
                     can_wait: bool = True) -> str | None:
        """Answer a JSON-RPC 2.0 request or batch (the HTTP body): the reply text, or
        None when there is nothing to answer (only notifications). Never raises for
        anything in ``payload``; batch members run one after the other, in order."""
        ctx.stats["requests"] += 1
        try:
            text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
            doc = json.loads(text, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            ctx.stats["parse_errors"] += 1
            return _dump(_error_reply(None, MiError(PARSE_ERROR, f"Parse error: {_short(exc)}")))
        if isinstance(doc, list):
            if not doc:
                return _dump(_error_reply(None, MiError(INVALID_REQUEST,
                                                        "Invalid Request: empty batch")))
            if len(doc) > self.max_batch:
                return _dump(_error_reply(None, MiError(
                    INVALID_REQUEST, f"Invalid Request: batch of {len(doc)} requests "
                    f"(at most {self.max_batch})")))
            parts = []
            for item in doc:
                reply = await self._one(item, ctx, can_wait)
                if reply is not None:
                    parts.append(reply)
            return "[" + ",".join(parts) + "]" if parts else None
        return await self._one(doc, ctx, can_wait)

    def handle_now(self, payload: bytes | str, ctx: MiContext) -> str | None:
        """:meth:`handle` for a caller that cannot wait: async commands answer
        :data:`CANNOT_WAIT`, everything else as :meth:`handle`."""
        reply: str | None = run_without_waiting(self.handle(payload, ctx, can_wait=False))
        return reply

    def methods_in(self, payload: str) -> list[str] | None:
        """The methods a JSON-RPC payload calls (None if it does not parse): lets a
        caller choose between :meth:`handle_now` and waiting for :meth:`handle`."""
        try:
            doc = json.loads(payload, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return None
        items = doc if isinstance(doc, list) else [doc]
        return [i["method"] for i in items
                if isinstance(i, dict) and isinstance(i.get("method"), str)]

    async def _one(self, req: Any, ctx: MiContext, can_wait: bool) -> str | None:
        if not isinstance(req, dict):
            return _dump(_error_reply(None, MiError(INVALID_REQUEST,
                                                    "Invalid Request: not an object")))
        has_id = "id" in req
        rid = req.get("id")
        if has_id and not _valid_id(rid):
            return _dump(_error_reply(None, MiError(
                INVALID_REQUEST, "Invalid Request: id must be a string, a number or null")))
        if req.get("jsonrpc") != "2.0":
            return _dump(_error_reply(rid, MiError(INVALID_REQUEST,
                                                   'Invalid Request: "jsonrpc" must be "2.0"')))
        method = req.get("method")
        if not isinstance(method, str):
            return _dump(_error_reply(rid, MiError(INVALID_REQUEST,
                                                   'Invalid Request: "method" must be a string')))
        params = req.get("params")
        if "params" in req and not isinstance(params, (list, dict)):
            return _dump(_error_reply(rid, InvalidParams("params must be an array or an object")))
        try:
            result = await self.call(method, params, ctx, can_wait=can_wait)
        except MiError as exc:
            if not has_id:
                log.info("MI notification %s failed: %s", method, exc.message)
                return None
            return _dump(_error_reply(rid, exc))
        if not has_id:
            return None
        try:
            return _dump({"jsonrpc": "2.0", "result": result, "id": rid})
        except (TypeError, ValueError) as exc:
            log.error("MI command %s returned a value that is not JSON: %s", method, exc)
            return _dump(_error_reply(rid, MiError(
                INTERNAL_ERROR, f"Internal error: the result of {method} is not JSON")))


def add_module_stats(core: Any, name: str, provider: StatsProvider,
                     reset: StatsReset | None = None, *, gauges: Iterable[str] = ()) -> bool:
    """Register a module's statistics group on the server's MI registry, with the
    names of its gauges (statistics that go up and down; ``/metrics`` types them as
    gauges, the others as counters): the one way a module declares its group, called
    from its init hook. A core without MI (``core.mi`` unset, as in unit tests) gets
    nothing; returns whether the group was registered. Registering a group again
    replaces it."""
    mi = getattr(core, "mi", None)
    if not isinstance(mi, MiContext):
        return False
    mi.registry.add_stats_group(name, provider, reset, gauges=gauges)
    return True


def run_without_waiting(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (it awaits nothing that suspends) to its end,
    in one step, from synchronous code. Used to answer a Lua call inside the call:
    the MI paths taken for sync commands await nothing. A coroutine that does try to
    suspend is closed and reported as an internal error, never left half-run."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise MiError(INTERNAL_ERROR, "Internal error: a command tried to wait in a sync call")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _valid_id(rid: Any) -> bool:
    return rid is None or isinstance(rid, str) or (
        isinstance(rid, (int, float)) and not isinstance(rid, bool))


def _error_reply(rid: Any, exc: MiError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": exc.to_json(), "id": rid}


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _name_of(p: str) -> str:
    return p.lstrip("*").rstrip("?")


def _usage(spec: tuple[str, ...]) -> str:
    words = []
    for p in spec:
        n = _name_of(p)
        words.append(f"[{n}]" if p.endswith("?") else f"[{n}...]" if p.startswith("*") else n)
    return " ".join(words)


def _check_param_names(command: MiCommand) -> None:
    assert command.params is not None
    seen: set[str] = set()
    optional = False
    for i, p in enumerate(command.params):
        n = _name_of(p)
        if not n or n in seen:
            raise ValueError(f"MI command {command.name}: bad or repeated param {p!r}")
        seen.add(n)
        if p.startswith("*") and i != len(command.params) - 1:
            raise ValueError(f"MI command {command.name}: {p!r} must be the last param")
        if p.endswith("?"):
            optional = True
        elif optional and not p.startswith("*"):
            raise ValueError(f"MI command {command.name}: required {p!r} after an optional one")
