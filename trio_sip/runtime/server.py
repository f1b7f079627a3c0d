"""The server: config in, listening transports and a loaded script out.

``serve(config, task_status=...)`` follows Trio's start protocol: it reports
started (with the :class:`Server`, whose transports know their real ports) only
after every listener is bound and the routes are loaded. It also serves the
management interface (``[mi]``, trio_sip/mi/): ``server.registry`` holds the
commands, ``server.mi`` (also ``core.mi``) is what they run with, and
``server.mi_address`` is where JSON-RPC is served (None when not served).
Module lifecycle hooks (script/exports.py): every module's ``init(core)`` runs
once the core (and its modparams) exists, awaited when async, before the server
reports started; then every ``child_init(core)`` (one worker process: right after
init); once the listeners are bound, every module's service (``service(core,
task_status=...)``, a task in the server's nursery: rtimer's timers, a queue's
writer); on graceful stop every ``shutdown(core)``, in reverse order, each bounded by
``SHUTDOWN_TIMEOUT``. Modules come from :func:`default_modules`: the built-in
ones, then third-party ones from the ``trio_sip.modules`` entry points
(modules/loader.py).
``run(config)`` is what ``trio-sip run`` calls: it serves until SIGINT/SIGTERM, then stops
gracefully. ``check(config)`` loads everything without binding and returns the
problems it found (``trio-sip check``).
"""

from __future__ import annotations

import gc
import inspect
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .. import __version__
from ..config import Config, ConfigError
from ..mi.commands import build_registry
from ..mi.http import serve_mi
from ..mi.registry import MiContext, MiRegistry
from ..mi.reload import ReloadedEngine
from ..modules import builtin_modules
from ..modules import mi as mi_module
from ..modules.loader import load_modules
from ..script.check import Problem, RouteCheckError, check_routes, format_problem
from ..script.engine import ScriptEngine, ScriptError
from ..script.exports import Hook, Module, RouteType
from ..script.modparams import build_modparams
from ..transport.base import Address, MessageHandler, Transport
from ..transport.guard import LoopbackGuard
from ..transport.tcp import TcpTransport
from ..transport.udp import UdpTransport
from .core import ProxyCore

if TYPE_CHECKING:
    from .workers import WorkerSockets

log = logging.getLogger("trio_sip.server")

#: seconds each module's shutdown hook may take on a graceful stop
SHUTDOWN_TIMEOUT = 5.0


@dataclass
class Server:
    """A running server: its core, engine and bound transports."""

    config: Config
    core: ProxyCore
    engine: ScriptEngine
    guard: LoopbackGuard
    transports: list[Transport] = field(default_factory=list)
    #: the management commands of this server (built-in and the modules')
    registry: MiRegistry | None = None
    #: what the management commands run with (also ``core.mi``)
    mi: MiContext | None = None
    #: where the management interface serves JSON-RPC over HTTP, if it does
    mi_address: Address | None = None

    def address(self, proto: str = "udp") -> Address:
        for t in self.transports:
            if t.proto == proto:
                return t.local
        raise LookupError(f"no {proto} transport")


def default_modules() -> list[Module]:
    """The modules a server loads: the built-in ones, KSR.mi / KSR.jsonrpcs (the
    management interface from routes) if they are not among them yet, then the
    third-party ones (entry points ``trio_sip.modules``; a name clash or a module
    failing to import raises ModuleLoadError, a ScriptError)."""
    mods = builtin_modules()
    names = {m.name for m in mods}
    mods += [m for m in (mi_module.MODULE, mi_module.JSONRPCS_MODULE) if m.name not in names]
    return load_modules(mods)


async def _call_hook(hook: Hook, core: ProxyCore) -> None:
    result = hook(core)
    if inspect.isawaitable(result):
        await result


async def run_init_hooks(modules: Sequence[Module], core: ProxyCore) -> list[Module]:
    """Every module's ``init`` then every ``child_init``; a failure raises ScriptError
    naming the module, after shutting down the modules whose init ran. Returns the
    modules (to shut down later)."""
    inited: list[Module] = []
    for stage in ("init", "child_init"):
        for mod in modules:
            hook: Hook | None = getattr(mod, stage)
            try:
                if hook is not None:
                    await _call_hook(hook, core)
            except Exception as exc:
                await run_shutdown_hooks(inited, core)
                raise ScriptError(f"module {mod.name or 'core'!r}: {stage} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if stage == "init":
                inited.append(mod)
    return inited


async def run_shutdown_hooks(modules: Sequence[Module], core: ProxyCore,
                             seconds: float = SHUTDOWN_TIMEOUT) -> None:
    """Every module's ``shutdown``, in reverse order, each bounded by ``seconds`` and
    shielded from the cancellation that stops the server; errors are logged."""
    for mod in reversed(modules):
        if mod.shutdown is None:
            continue
        with trio.CancelScope(shield=True):
            with trio.move_on_after(seconds) as scope:
                try:
                    await _call_hook(mod.shutdown, core)
                except Exception:
                    log.exception("module %r: shutdown failed", mod.name)
            if scope.cancelled_caught:
                log.warning("module %r: shutdown took more than %.1fs, abandoned",
                            mod.name, seconds)


class _ServiceStatus:
    """The task_status a module's service gets: remembers whether it reported started."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self.started_ = False

    def started(self, value: None = None) -> None:
        self.started_ = True
        self._status.started(value)


async def _run_service(mod: Module, core: ProxyCore, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A module's service (script/exports.py): an error before it reports started refuses
    to start the server (a ScriptError naming the module); after, it is logged and ends
    this service only."""
    assert mod.service is not None
    status = _ServiceStatus(task_status)
    try:
        await mod.service(core, task_status=status)
    except Exception as exc:
        if not status.started_:
            raise ScriptError(f"module {mod.name!r}: service failed to start: "
                              f"{type(exc).__name__}: {exc}") from exc
        log.exception("module %r: its service stopped", mod.name)
    if not status.started_:  # returned without starting: nothing to wait for
        status.started()


def config_routes(modules: Sequence[Module], config: Config
                  ) -> list[tuple[str, RouteType, str]]:
    """The functions the modparams name as routes (rtimer's ``exec``), from each params
    object's ``route_functions()``: ``(name, route type, config key)``. Modparams that
    do not build give none here (the core reports them when it starts)."""
    try:
        params = build_modparams(modules, config.modparams)
    except ConfigError:
        return []
    out: list[tuple[str, RouteType, str]] = []
    for inst in params.values():
        fn = getattr(inst, "route_functions", None)
        if callable(fn):
            out.extend(fn())
    return out


def build_engine(config: Config, modules: Sequence[Module] | None = None, *,
                 previous: ScriptEngine | None = None) -> ScriptEngine:
    """A script engine with the routes loaded; raises ScriptError on a broken script.

    With ``previous`` (``app_lua.reload``) the new engine takes over the coroutines
    still waiting in ``previous`` (trio_sip/mi/reload.py) once it is put in place;
    building it changes nothing in ``previous``.

    After loading, the routes go through the static checks (script/check.py): like
    OpenSIPS, the server refuses to start when a route calls an unknown function, passes
    arguments that cannot work, arms a function that does not exist or calls a function
    in a route type where it is not allowed (:class:`RouteCheckError` lists them all).
    Warnings are logged and do not stop it."""
    mods = list(modules) if modules is not None else default_modules()
    engine = (ScriptEngine(mods, engine=config.lua.engine, lua_path=config.lua.path)
              if previous is None else
              ReloadedEngine(mods, engine=config.lua.engine, lua_path=config.lua.path,
                             previous=previous))
    engine.set_route_budget(config.lua.route_budget_ms)
    engine.load_routes(config.lua.routes)
    problems = check_routes(
        config.lua.routes, mods, request_route=config.lua.request_route,
        reply_route=config.lua.reply_route, lua_path=config.lua.path,
        config_routes=config_routes(mods, config),
    )
    errors: list[Problem] = []
    for p in problems:
        if p.severity == "error" and p.check == "syntax":
            # Lua loaded the file, so the checker's own parser is at fault: check less
            # rather than refuse a script Lua accepts.
            log.warning("static route checks skipped: %s", format_problem(p))
        elif p.severity == "error":
            errors.append(p)
        else:
            log.warning("%s", format_problem(p))
    if errors:
        raise RouteCheckError(errors)
    if engine.function(config.lua.request_route) is None:
        raise ScriptError(
            f"{config.lua.routes}: no function {config.lua.request_route}() "
            "(the request route entry point)"
        )
    return engine


#: Makes the server's transports from its message handler and guard, instead of the
#: configured listeners (tests bind SimNetwork transports this way).
TransportFactory = Callable[[MessageHandler, LoopbackGuard], Sequence[Transport]]


async def serve(
    config: Config,
    *,
    transports: TransportFactory | None = None,
    mi: bool | None = None,
    worker: WorkerSockets | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until cancelled; report started once every listener is bound.

    The management interface is served on ``config.mi.listen`` (unless it is "")
    when ``mi`` is true; by default (None) only when the server binds its own
    listeners: a server on injected transports (``transports``, the in-memory
    network of tests) opens no real socket unless asked with ``mi=True``. Its
    registry and context exist either way (``KSR.mi`` works).

    ``worker`` (``trio-sip run --workers N``, runtime/workers.py): this process is one
    of N; it serves on the sockets the supervisor bound (the shared SO_REUSEPORT
    listeners and its own UDP port) and its management interface on its own port."""
    engine = build_engine(config)
    guard = LoopbackGuard(config.core.loopback_only)
    core = ProxyCore(config, engine, guard)
    if worker is not None:
        core.worker_index, core.workers = worker.index, worker.count
    server = Server(config, core, engine, guard)
    server.registry = build_registry(engine.modules.values(),
                                     default_timeout=config.mi.command_timeout)
    server.mi = MiContext(core, server.registry, server)
    core.mi = server.mi  # read by KSR.mi (modules/mi.py)
    serve_http = bool(config.mi.listen) and (mi if mi is not None else transports is None)
    started = await run_init_hooks(list(engine.modules.values()), core)
    try:
        await _serve(config, server, transports, serve_http, worker, task_status)
    finally:
        await run_shutdown_hooks(started, core)


def listen_transports(config: Config, handler: MessageHandler, guard: LoopbackGuard
                      ) -> list[UdpTransport | TcpTransport]:
    """The transports of ``core.listen``, not started yet."""
    out: list[UdpTransport | TcpTransport] = []
    for spec in config.core.listen:
        local = Address(spec.host, spec.port)
        if spec.proto == "udp":
            out.append(UdpTransport(
                local, handler, guard, queue_size=config.core.udp_queue_size,
                max_message_size=config.core.max_message_size))
        else:
            out.append(TcpTransport(
                local, handler, guard, max_message_size=config.core.max_message_size,
                max_connections=config.core.tcp_max_connections,
                idle_timeout=config.core.tcp_idle_timeout,
                connect_timeout=config.core.tcp_connect_timeout))
    return out


async def _serve(config: Config, server: Server, transports: TransportFactory | None,
                 serve_http: bool, worker: WorkerSockets | None,
                 task_status: trio.TaskStatus[Server]) -> None:
    core, engine, guard = server.core, server.engine, server.guard
    # Module services (rtimer's timers, mqueue's writer...) run in a nursery of their own
    # around the transaction layer's: they outlive every transaction, and the layer's
    # nursery holds transactions and listeners only (tests assert it empties).
    async with trio.open_nursery() as services:
        try:
            async with trio.open_nursery() as nursery:
                core.tm.nursery = nursery
                if transports is not None:
                    for t in transports(core.on_message, guard):
                        core.add_transport(t)
                        server.transports.append(t)
                else:
                    listeners = (worker.transports(config, core.on_message, guard)
                                 if worker is not None else
                                 listen_transports(config, core.on_message, guard))
                    for listener in listeners:
                        await nursery.start(listener.serve)
                        core.add_transport(listener)
                        server.transports.append(listener)
                if serve_http:
                    server.mi_address = await nursery.start(
                        serve_mi, server, worker.mi_listen if worker is not None else None)
                for mod in engine.modules.values():
                    if mod.service is not None:
                        await services.start(_run_service, mod, core)
                log.info(
                    "trio-sip %s listening on %s (routes %s, %s)", __version__,
                    ", ".join(f"{t.proto}:{t.local}" for t in server.transports),
                    config.lua.routes, engine.implementation,
                )
                if config.core.loopback_only:
                    log.info("loopback-only guard is on: "
                             "sends to non-loopback addresses are refused")
                task_status.started(server)
                await trio.sleep_forever()
        finally:
            # closed now: what still reaches the layer (a transport outside it, as the
            # simulated network's) finds no nursery instead of one that refuses tasks
            core.tm.nursery = None
            services.cancel_scope.cancel()


def tune_gc(threshold: int) -> None:
    """Set a server process's cyclic GC up, once it started (``core.gc_threshold``).

    Everything made while starting (modules, the Lua runtime, the routes: ~60k objects)
    lives as long as the process: ``gc.freeze()`` moves it out of the generations every
    full collection walks. Calls themselves leave no cyclic garbage (an ended transaction
    breaks its own cycles), so the collector's work is walking live objects over and
    over: with Python's young threshold of 700, a full collection every few hundred
    calls took ~110 ms (a stall of the whole process) and the GC ~12 % of the CPU at
    200 calls/s; with 50,000, about 2 %. Measured in docs/performance.md."""
    gc.collect()
    gc.freeze()
    if threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)


async def _serve_until_signal(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, config)
            tune_gc(config.core.gc_threshold)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run(config: Config) -> int:
    """``trio-sip run``: serve until SIGINT/SIGTERM. Returns the process exit code."""
    try:
        trio.run(_serve_until_signal, config)
    except ScriptError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        # a listener that cannot bind fails inside the server's nursery: the error
        # comes wrapped in exception groups; say it in one line, as above
        leaves = _leaves(group)
        if leaves and isinstance(leaves[0], ConfigError):
            # a [modparams.*] value the modules refuse: the command says it and exits 2
            raise leaves[0] from None
        if not leaves or not all(isinstance(e, (OSError, ScriptError)) for e in leaves):
            raise
        for e in leaves:
            if isinstance(e, ScriptError):
                log.error("%s", e)
            else:
                log.error("cannot start: %s", e)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def check(config: Config) -> list[str]:
    """``trio-sip check``: load the routes and report problems (empty list: all good).

    The list holds the errors: a ``[modparams.*]`` value the modules refuse (the
    ``config error: KEY = VALUE: RULE`` the server would stop on), then the routes'
    problems, one ``file:line:col: error: ...`` each (the command exits 1 when it is not
    empty); warnings are logged by :func:`build_engine`."""
    problems: list[str] = []
    try:
        build_modparams(default_modules(), config.modparams)
    except ConfigError as exc:
        problems.append(str(exc))
    except ScriptError as exc:  # a third-party module that does not load
        return [str(exc)]
    try:
        build_engine(config)
    except RouteCheckError as exc:
        problems += [format_problem(p) for p in exc.problems]
    except ScriptError as exc:
        problems.append(str(exc))
    return problems
