"""The built-in management commands, with Kamailio's RPC names.

=========================  ======================================================
``core.uptime``            now, up_since, uptime (seconds), as Kamailio
``core.version``           the version string
``core.info``              version, Python, Trio, Lua engine, pid
``core.ps``                the Trio tasks (there are no worker processes), by name
``core.shmmem``            memory: RSS, peak RSS, Lua heaps, Python GC counts
``core.stats``             every statistics group as ``{group: {name: value}}``
``stats.get_statistics``   ``all`` / ``group:`` / ``group:name`` / ``name``, as
                           Kamailio's ``["group:name = value", ...]``
``stats.fetch``            the same selectors, as ``{"group.name": value}``
``stats.reset_statistics`` reset counters (core, tm, mi); ``stats.clear_statistics``
``tm.stats``               Kamailio's tm.stats keys, from the transaction layer
``tm.list``                the server transactions: call-id, method, state, age
``transport.stats``        each listening transport's counters
``app_lua.reload``         reload the routes (trio_sip/mi/reload.py)
``app_lua.list``           the routes file, engine, generation, coroutines waiting
``app_lua.api_list``       every KSR export (module, name, params, return, routes)
``mi.list``                every command with its params and doc
``system.listMethods``     the command names; ``system.methodHelp NAME`` its doc
``rtpengine.show|ping|enable``  Kamailio's, when the rtpengine module is loaded
``cfg.get|set|seti|sets|list|help``  runtime-settable values (trio_sip/mi/cfg.py)
``corex.debug``, ``debug.level``  get or set the log level (trio_sip/mi/cfg.py)
``tm.t_reply``             reply to a pending or suspended transaction (tm_reply.py)
=========================  ======================================================

``GET /metrics`` on the same listener exposes every statistic to Prometheus
(trio_sip/mi/metrics.py).

Modules add theirs with ``ModuleBuilder.mi`` (see :func:`build_registry`).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from .. import __version__
from ..script.exports import MiCommand, Module
from .cfg import commands as cfg_commands
from .registry import (
    COMMAND_FAILED,
    UNAVAILABLE,
    InvalidParams,
    MiContext,
    MiError,
    MiRegistry,
)
from .reload import engine_generation as _generation
from .reload import engines_in_flight as _in_flight
from .reload import own_pending as _own_pending
from .tm_reply import commands as tm_reply_commands

__all__ = ["build_registry", "builtin_commands", "statistics"]

_commands: list[MiCommand] = []


def _command(name: str, *, params: tuple[str, ...] | None = (), timeout: float | None = None
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        import inspect

        _commands.append(MiCommand(name, func, (func.__doc__ or "").strip(),
                                   inspect.iscoroutinefunction(func), params, timeout))
        return func

    return deco


def builtin_commands() -> list[MiCommand]:
    return list(_commands)


def build_registry(modules: Iterable[Module], *, default_timeout: float = 30.0) -> MiRegistry:
    """The registry of a server: the built-in commands, the rtpengine commands when
    that module is loaded, and every command the modules declare."""
    registry = MiRegistry(default_timeout=default_timeout)
    mods = list(modules)
    names = {m.name for m in mods}
    for cmd in _commands:
        if cmd.name.startswith("rtpengine.") and "rtpengine" not in names:
            continue
        registry.add(cmd)
    for cmd in (*cfg_commands(), *tm_reply_commands()):
        registry.add(cmd)
    for mod in mods:
        for cmd in mod.mi_commands:
            # a module's own declaration wins over a built-in stand-in of the same name
            registry.add(cmd, replace=cmd.name in registry)
    return registry


# -- params -------------------------------------------------------------------------------


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    v = params.get(name, default)
    if isinstance(v, bool):
        raise InvalidParams(f"{name} must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("+-").isdigit():
        return int(v)
    raise InvalidParams(f"{name} must be an integer, not {v!r}")


def _str(params: Mapping[str, Any], name: str, default: str) -> str:
    v = params.get(name, default)
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise InvalidParams(f"{name} must be a string, not {v!r}")


def _strings(params: Mapping[str, Any], name: str) -> list[str]:
    values = params.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidParams(f"{name} must be strings")
    return values


# -- core ------------------------------------------------------------------------------------


@_command("core.uptime")
def core_uptime(params: Any, ctx: MiContext) -> Any:
    """The time now, the start time, and the seconds between (Kamailio core.uptime)."""
    now = time.time()
    return {"now": time.ctime(now), "up_since": time.ctime(ctx.started),
            "uptime": int(now - ctx.started)}


@_command("core.version")
def core_version(params: Any, ctx: MiContext) -> Any:
    """The server's version string."""
    return f"trio-sip {__version__} ({platform.machine()}/{sys.platform})"


@_command("core.info")
def core_info(params: Any, ctx: MiContext) -> Any:
    """Version, Python, Trio and Lua engine, pid."""
    engine = ctx.core.engine
    return {"version": f"trio-sip {__version__}", "python": platform.python_version(),
            "trio": trio.__version__, "lua": engine.implementation,
            "lua_engine": engine.engine_name, "pid": os.getpid()}


def _task_tree() -> list[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    out: list[trio.lowlevel.Task] = []
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        out.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return out


@_command("core.ps")
def core_ps(params: Any, ctx: MiContext) -> Any:
    """The process and its Trio tasks (trio-sip has no worker processes: each
    transaction, connection and listener is a task), counted by task name."""
    tasks = _task_tree()
    by_name = Counter(t.name.rsplit(".", 1)[-1] if "<locals>" in t.name else t.name
                      for t in tasks)
    return {"pid": os.getpid(), "tasks": len(tasks),
            "by_name": dict(sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0])))}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@_command("core.shmmem")
def core_shmmem(params: Any, ctx: MiContext) -> Any:
    """Memory (no shared memory here): the resident size, its peak, each Lua engine's
    heap and Python's garbage-collector counts, in bytes."""
    engines = [ctx.core.engine, *(e for e, _n, _t in _in_flight(ctx.core))]
    lua = []
    for e in engines:
        kib = e.lua.eval("collectgarbage('count')")
        lua.append({"generation": _generation(e), "bytes": int(float(kib) * 1024)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                 else 1024)
    return {"rss": _rss(), "max_rss": peak, "lua": lua, "gc_counts": list(gc.get_count())}


@_command("core.stats")
def core_stats(params: Any, ctx: MiContext) -> Any:
    """Every statistics group: ``{group: {name: value}}``."""
    return {g: dict(sorted(v.items())) for g, v in statistics(ctx).items()}


# -- statistics --------------------------------------------------------------------------------


def _transport_groups(ctx: MiContext) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for t in _transports(ctx):
        stats = getattr(t, "statistics", None)
        if stats is None:
            continue
        values = _as_dict(stats())
        group = out.setdefault(t.proto, Counter())
        for k, v in values.items():
            if isinstance(v, int):
                group[k] += v
    return {g: dict(c) for g, c in out.items()}


def _as_dict(snapshot: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        return dataclasses.asdict(snapshot)
    return dict(snapshot)


def _transports(ctx: MiContext) -> list[Any]:
    if ctx.server is not None and ctx.server.transports:
        return list(ctx.server.transports)
    return list(ctx.core.transports.values())


def _script_stats(ctx: MiContext) -> dict[str, int]:
    engine = ctx.core.engine
    return {"generation": _generation(engine), "pending_coroutines": engine.pending_coroutines,
            "engines_in_flight": len(_in_flight(ctx.core))}


def statistics(ctx: MiContext) -> dict[str, dict[str, int]]:
    """Every statistics group: core, tm, one per transport protocol, script, mi, a
    module's runtime object that has ``statistics()`` (``core.rtpengine``...), and the
    groups added with ``MiRegistry.add_stats_group``."""
    core = ctx.core
    groups: dict[str, dict[str, int]] = {
        "core": dict(core.statistics()),
        "tm": dict(core.tm.statistics()),
    }
    groups.update(_transport_groups(ctx))
    groups["script"] = _script_stats(ctx)
    groups["mi"] = dict(ctx.stats)
    for name in core.engine.modules:
        if not name or name in groups:
            continue
        obj = getattr(core, name, None)
        fn = getattr(obj, "statistics", None)
        if callable(fn):
            values = fn()
            if isinstance(values, Mapping):
                groups[name] = {k: v for k, v in values.items() if isinstance(v, int)}
    for name, (provider, _reset) in ctx.registry.stats_groups().items():
        groups[name] = dict(provider())
    return groups


def _select(groups: Mapping[str, Mapping[str, int]], selectors: list[str]
            ) -> list[tuple[str, str, int]]:
    """``all``, ``group:``, ``group:name`` or ``name`` (in any group)."""
    if not selectors:
        raise InvalidParams("name the statistics: all, group: or group:name")
    out: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str]] = set()

    def add(g: str, n: str) -> None:
        if (g, n) not in seen:
            seen.add((g, n))
            out.append((g, n, groups[g][n]))

    for sel in selectors:
        if sel == "all":
            for g in sorted(groups):
                for n in sorted(groups[g]):
                    add(g, n)
        elif ":" in sel:
            g, _, n = sel.partition(":")
            if g not in groups:
                continue
            for name in sorted(groups[g]) if not n else [n] if n in groups[g] else []:
                add(g, name)
        else:
            for g in sorted(groups):
                if sel in groups[g]:
                    add(g, sel)
    return out


@_command("stats.get_statistics", params=("*names",))
def stats_get_statistics(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Statistics as Kamailio lists them: ``["group:name = value", ...]``; params are
    ``all``, ``group:`` (a whole group), ``group:name`` or ``name`` (in any group)."""
    found = _select(statistics(ctx), _strings(params, "names"))
    return [f"{g}:{n} = {v}" for g, n, v in found]


@_command("stats.fetch", params=("*names",))
def stats_fetch(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Statistics as ``{"group.name": value}``; params as stats.get_statistics."""
    found = _select(statistics(ctx), _strings(params, "names"))
    return {f"{g}.{n}": v for g, n, v in found}


def _reset(params: Mapping[str, Any], ctx: MiContext) -> Any:
    selectors = _strings(params, "names") or ["all"]
    counters: dict[str, Counter[str]] = {"core": ctx.core.stats, "tm": ctx.core.tm.stats,
                                         "mi": ctx.stats}
    groups = statistics(ctx)
    done: list[str] = []
    for g, n, _v in _select(groups, selectors):
        c = counters.get(g)
        if c is not None and n in c:
            del c[n]
            done.append(f"{g}:{n}")
            continue
        hook = ctx.registry.stats_groups().get(g)
        if hook is not None and hook[1] is not None:
            done.extend(f"{g}:{x}" for x in hook[1]([n]))
    return {"reset": done}


@_command("stats.reset_statistics", params=("*names",))
def stats_reset_statistics(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Reset counters to 0 (selectors as stats.get_statistics; none: all). Gauges
    (transactions in use, connections open...) and transport counters do not reset."""
    return _reset(params, ctx)


@_command("stats.clear_statistics", params=("*names",))
def stats_clear_statistics(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """The same as stats.reset_statistics."""
    return _reset(params, ctx)


# -- tm -------------------------------------------------------------------------------------------


@_command("tm.stats")
def tm_stats(params: Any, ctx: MiContext) -> Any:
    """Kamailio's tm.stats: current, waiting (final sent, lingering), total, total_local,
    rpl_received, rpl_generated, rpl_sent, 6xx..2xx, created, freed, delayed_free."""
    layer = ctx.core.tm
    s = layer.statistics()
    servers = list(layer.servers.values())
    current = len(servers)
    waiting = sum(1 for tx in servers if getattr(tx, "final_status", 0) >= 200)
    total_local = int(s.get("local_transactions", 0))
    total = int(s.get("UAS_transactions", 0)) + total_local
    out: dict[str, int] = {
        "current": current, "waiting": waiting, "total": total, "total_local": total_local,
        "rpl_received": int(s.get("rpl_received", 0)),
        "rpl_generated": int(s.get("rpl_generated", 0)),
        "rpl_sent": int(s.get("rpl_sent", 0)),
    }
    for n in (6, 5, 4, 3, 2):
        out[f"{n}xx"] = int(s.get(f"{n}xx_transactions", 0))
    out["created"] = total
    out["freed"] = max(0, total - current)
    out["delayed_free"] = 0
    return out


@_command("tm.list", params=("limit?",))
def tm_list(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """The server transactions, oldest first (at most ``limit``, default 100): index,
    label, call-id, method, R-URI, state, age (s), final status, branches."""
    limit = _int(params, "limit", 100)
    if limit < 0:
        raise InvalidParams("limit must be >= 0")
    now = trio.current_time()
    txs = sorted(ctx.core.tm.servers.values(), key=lambda t: getattr(t, "created", 0.0))
    out = []
    for tx in txs[:limit]:
        req = tx.request
        machine = getattr(tx, "machine", None)
        state = getattr(getattr(machine, "state", None), "name", "?")
        out.append({
            "index": getattr(tx, "index", 0), "label": getattr(tx, "label", 0),
            "call_id": req.call_id, "method": req.method, "ruri": req.current_uri,
            "state": state, "age": round(now - getattr(tx, "created", now), 3),
            "status": getattr(tx, "final_status", 0),
            "branches": len(getattr(tx, "branches", ())),
            "canceled": bool(getattr(tx, "canceled", False)),
            "suspended": bool(getattr(tx, "suspended", False)),
        })
    return {"count": len(txs), "transactions": out}


# -- transports ----------------------------------------------------------------------------------


@_command("transport.stats")
def transport_stats(params: Any, ctx: MiContext) -> Any:
    """Each listening transport's counters, by ``proto:address``."""
    out = {}
    for t in _transports(ctx):
        stats = getattr(t, "statistics", None)
        if stats is None:
            continue
        out[f"{t.proto}:{t.local}"] = _as_dict(stats())
    return out


# -- app_lua ---------------------------------------------------------------------------------------


@_command("app_lua.reload", params=("sid?",))
def app_lua_reload(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Reload the routes: a new Lua engine loads and checks the file and replaces the
    running one only if that succeeded (else the error says why and nothing changed).
    Calls in flight finish on the code they started with: routes waiting at the time,
    and the failure/onreply/branch routes their transactions armed."""
    from ..script.engine import ScriptError
    from .reload import reload_routes

    sid = _int(params, "sid", 0)
    if sid != 0:
        raise InvalidParams(f"no script {sid} (one routes file, sid 0)")
    if ctx.server is None:
        raise MiError(UNAVAILABLE, "reload needs the running server")
    try:
        engine = reload_routes(ctx.server)
    except ScriptError as exc:
        ctx.stats["reload_errors"] += 1
        raise MiError(COMMAND_FAILED, f"reload failed, the old routes stay: {exc}") from None
    ctx.stats["reloads"] += 1
    return {"reloaded": ctx.server.config.lua.routes, "engine": engine.implementation,
            "generation": _generation(engine),
            "pending_on_older": engine.pending_coroutines - _own_pending(engine)}


@_command("app_lua.list")
def app_lua_list(params: Any, ctx: MiContext) -> Any:
    """The routes file and the engine running it: generation (1 at start, +1 per
    reload), coroutines waiting in it; and the older generations still finishing
    calls: their waiting coroutines and the transactions that started in them."""
    engine = ctx.core.engine
    return {
        "scripts": [{"sid": 0, "filename": engine.routes_path, "engine": engine.engine_name,
                     "implementation": engine.implementation,
                     "version": _generation(engine),
                     "pending_coroutines": _own_pending(engine)}],
        "older": [{"version": _generation(e), "pending_coroutines": n, "transactions": t}
                  for e, n, t in _in_flight(ctx.core)],
    }


@_command("app_lua.api_list")
def app_lua_api_list(params: Any, ctx: MiContext) -> Any:
    """Every KSR export: module, name, params, return type, route types, async."""
    methods = []
    for mod in ctx.core.engine.modules.values():
        for e in mod.exports:
            if e.name.startswith("_"):
                continue
            methods.append({"func": {
                "module": mod.name, "name": e.name, "params": list(e.params),
                "required": e.required, "ret": e.ret, "routes": e.routes.label,
                "async": e.is_async,
            }})
    return {"msize": len(methods), "methods": methods}


# -- the registry itself ------------------------------------------------------------------------------


@_command("mi.list")
def mi_list(params: Any, ctx: MiContext) -> Any:
    """Every command: name, params, whether it waits, doc."""
    return [{"name": c.name, "params": list(c.params) if c.params is not None else None,
             "async": c.is_async, "doc": c.doc} for c in ctx.registry.commands()]


@_command("system.listMethods")
def system_list_methods(params: Any, ctx: MiContext) -> Any:
    """The command names (Kamailio system.listMethods)."""
    return ctx.registry.names()


@_command("system.methodHelp", params=("name",))
def system_method_help(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """The doc of one command."""
    name = _str(params, "name", "")
    cmd = ctx.registry.command(name)
    if cmd is None:
        raise InvalidParams(f"no command {name!r}")
    return cmd.doc


# -- rtpengine (registered when the rtpengine module is loaded) -------------------------------------


def _rtpengine(ctx: MiContext) -> Any:
    from ..config import ConfigError
    from ..modules.rtpengine import client_for
    from ..rtpengine.protocol import NgError

    try:
        return client_for(ctx.core)
    except (NgError, ConfigError) as exc:
        raise MiError(UNAVAILABLE, f"rtpengine: {exc}") from None


async def _running(client: Any) -> Any:
    """The client made on first use starts in the server's nursery: wait the moment
    it needs to bind its socket. Its ping()/enable() do not wait for that themselves
    (its request() does), hence the private call until they do."""
    from ..rtpengine.protocol import NgError

    try:
        await client._wait_ready()
    except NgError as exc:
        raise MiError(UNAVAILABLE, f"rtpengine: {exc}") from None
    return client


@_command("rtpengine.show", params=("url?",))
def rtpengine_show(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """The rtpengine nodes (``all`` or one URL): url, set, weight, disabled, recheck
    time, counters (Kamailio rtpengine.show)."""
    return _rtpengine(ctx).show(_str(params, "url", "all"))


@_command("rtpengine.ping", params=("url?",))
async def rtpengine_ping(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Ping the nodes (``all`` or one URL) now: a node that answers is enabled, one that
    does not disabled. "success" if every one answered (Kamailio rtpengine.ping)."""
    client = await _running(_rtpengine(ctx))
    url = _str(params, "url", "all")
    try:
        ok = await client.ping(url)
    except LookupError as exc:
        raise MiError(COMMAND_FAILED, str(exc).strip("'\"")) from None
    return {"url": url, "status": "success" if ok else "fail"}


@_command("rtpengine.enable", params=("url", "flag"))
async def rtpengine_enable(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """``URL 1`` pings the node(s) and enables them ("enable", or "fail" without an
    answer); ``URL 0`` disables them until enabled by hand (Kamailio rtpengine.enable)."""
    url = _str(params, "url", "all")
    flag = _int(params, "flag", 1)
    if flag not in (0, 1):
        raise InvalidParams("flag must be 0 or 1")
    client = await _running(_rtpengine(ctx))
    try:
        status = await client.enable(url, bool(flag))
    except LookupError as exc:
        raise MiError(COMMAND_FAILED, str(exc).strip("'\"")) from None
    return {"url": url, "status": status}
