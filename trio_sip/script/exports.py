"""Module export tables, as data (Kamailio ``cmd_export_t`` / ``sr_kemi_t``, OpenSIPS
``cmd_export_t``).

A module declares each Lua-visible function once: its name, the Python
function, parameter types, the return convention, the route types it may run
in and whether it waits. The Lua ``KSR`` table, the route-type checks, the
``trio-sip check`` static analysis and the API reference in docs/ are all built
from these declarations, so none of them can drift from the others.

    sl = ModuleBuilder("sl", "Stateless replies.")

    @sl.export(params=("int", "str"), routes=REQUEST | FAILURE | BRANCH)
    def sl_send_reply(ctx: MsgContext, code: int, reason: str) -> int:
        ...

    MODULE = sl.build()

A module declares its management (MI) commands the same way; they are served by
the management interface (trio_sip/mi/) over JSON-RPC and from Lua (``KSR.mi``)::

    @sl.mi("sl.stats")
    def sl_stats(params: dict[str, Any], ctx: MiContext) -> Any:
        return {"200": ctx.core.stats["sent_replies"]}

Lifecycle hooks (Kamailio ``mod_init`` / ``child_init`` / ``destroy``), each
``hook(core)`` with the server's proxy core, plain or ``async def``::

    @sl.on_init
    async def sl_init(core: Any) -> None:      # once at start, modparams built
        ...

``init`` runs once when the server starts, after the modparams are built
(``core.modparams``) and before it reports started (an async hook is awaited);
an exception refuses to start. ``child_init`` runs per worker process: trio-sip
has a single process, so it runs once, right after every module's ``init``.
``shutdown`` runs on graceful stop, in reverse module order, each bounded by a
timeout (runtime/server.py ``SHUTDOWN_TIMEOUT``); its errors are logged.

A module that needs long-running tasks (Kamailio's timer and worker processes:
rtimer's timers, a queue's writer) declares a *service*, started in the server's
nursery once the listeners are bound, with Trio's start protocol::

    @sl.on_service
    async def sl_service(core: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        ...                       # set up; an exception here refuses to start
        task_status.started()
        await trio.sleep_forever()  # cancelled when the server stops

An exception after ``started()`` is logged and ends that service only, never the
server.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

ParamType = Literal["int", "str", "any", "func"]
F = TypeVar("F", bound=Callable[..., Any])
RetType = Literal["int", "bool", "xval", "str", "none"]
#: a lifecycle hook: ``hook(core)``, returning None or an awaitable
Hook = Callable[[Any], Any]
H = TypeVar("H", bound=Hook)
#: a module service: ``async def service(core, *, task_status)`` (Trio start protocol)
Service = Callable[..., Awaitable[None]]
S = TypeVar("S", bound=Service)


class RouteType(enum.IntFlag):
    """Route types, with Kamailio's bit values (``src/core/route.h``)."""

    REQUEST = 1 << 0
    FAILURE = 1 << 1
    ONREPLY = 1 << 2  # tm onreply route (t_on_reply)
    BRANCH = 1 << 3
    ONSEND = 1 << 4
    ERROR = 1 << 5
    LOCAL = 1 << 6
    CORE_REPLY = 1 << 7  # ksr_reply_route
    BRANCH_FAILURE = 1 << 8
    EVENT = 1 << 9  # module events, t_continue, async resumes without a message change
    TIMER = 1 << 10  # rtimer routes
    STARTUP = 1 << 11

    @property
    def label(self) -> str:
        names = [_LABELS[m] for m in RouteType if m in self and m in _LABELS]
        return "|".join(names) if names else "none"


_LABELS = {
    RouteType.REQUEST: "request_route",
    RouteType.FAILURE: "failure_route",
    RouteType.ONREPLY: "onreply_route",
    RouteType.BRANCH: "branch_route",
    RouteType.ONSEND: "onsend_route",
    RouteType.ERROR: "error_route",
    RouteType.LOCAL: "local_route",
    RouteType.CORE_REPLY: "reply_route",
    RouteType.BRANCH_FAILURE: "branch_failure_route",
    RouteType.EVENT: "event_route",
    RouteType.TIMER: "timer_route",
    RouteType.STARTUP: "startup_route",
}

ANY_ROUTE = RouteType(sum(RouteType))
#: Routes that process a request (Kamailio's REQUEST_ROUTE|FAILURE_ROUTE|BRANCH_ROUTE|...).
REQUEST_ROUTES = (
    RouteType.REQUEST | RouteType.FAILURE | RouteType.BRANCH | RouteType.BRANCH_FAILURE
    | RouteType.EVENT | RouteType.LOCAL | RouteType.ONSEND
)
REPLY_ROUTES = RouteType.ONREPLY | RouteType.CORE_REPLY


@dataclass(frozen=True, slots=True)
class Export:
    """One Lua-visible function ``KSR.<module>.<name>``."""

    name: str
    func: Callable[..., Any]
    params: tuple[ParamType, ...] = ()
    #: how many parameters are mandatory (defaults to all)
    min_args: int | None = None
    ret: RetType = "int"
    routes: RouteType = ANY_ROUTE
    #: an async export returns an operation that the runtime awaits; the route's
    #: coroutine yields until it is done (see script/engine.py).
    is_async: bool = False
    #: implemented in Lua (the function is Lua source text), e.g. KSR.x.exit
    lua: str | None = None
    doc: str = ""
    #: an optional Lua fast path, ``function(method, ...)``: called with the method of
    #: the message the running route works on (the CSeq method for a reply) and the
    #: call's arguments; what it returns is the result, unless it is nil, in which case
    #: the Python export runs as usual (also whenever no route is running). For the
    #: frequent method tests (KSR.is_INVITE()...): no crossing into Python at all.
    lua_fast: str | None = None

    @property
    def required(self) -> int:
        return len(self.params) if self.min_args is None else self.min_args


@dataclass(frozen=True, slots=True)
class MiCommand:
    """One management command (Kamailio RPC / OpenSIPS MI), e.g. ``tm.stats``.

    ``func(params, ctx)`` gets the call's params and an ``trio_sip.mi.MiContext``
    (``ctx.core`` is the server's proxy core) and returns JSON-able data; it may be
    an ``async def`` (then ``is_async`` is true and the call is awaited under
    ``timeout``). It raises ``trio_sip.mi.MiError`` (or ``InvalidParams``) to
    answer a JSON-RPC error.

    ``params`` names the parameters, in positional order: ``"name"`` is required,
    ``"name?"`` optional, ``"*name"`` takes the rest (a list). With names declared,
    positional and named calls are both accepted and ``func`` receives a dict of the
    given ones (an unknown name, a missing required one or too many positional ones
    is a -32602 error). ``None`` passes the raw params through (a list or a dict,
    ``[]`` when absent).
    """

    name: str
    func: Callable[..., Any]
    doc: str = ""
    is_async: bool = False
    params: tuple[str, ...] | None = None
    #: seconds an async command may take; None: the registry's default
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Module:
    """A module: a name (``""`` for the functions directly under ``KSR``) and its exports."""

    name: str
    doc: str
    exports: tuple[Export, ...]
    #: a dataclass type holding the module's params, set from ``[modparams.NAME]``
    params: type | None = None
    #: management commands (trio_sip/mi/): served over JSON-RPC and by ``KSR.mi``
    mi_commands: tuple[MiCommand, ...] = ()
    #: lifecycle hooks ``hook(core)``, plain or async (see the module docstring)
    init: Hook | None = None
    child_init: Hook | None = None
    shutdown: Hook | None = None
    #: a long-running task in the server's nursery (see the module docstring)
    service: Service | None = None

    def export(self, name: str) -> Export | None:
        for e in self.exports:
            if e.name == name:
                return e
        return None


@dataclass
class ModuleBuilder:
    """Collects exports with a decorator, then :meth:`build` freezes them into a Module."""

    name: str
    doc: str
    params: type | None = None
    init: Hook | None = None
    child_init: Hook | None = None
    shutdown: Hook | None = None
    service: Service | None = None
    _exports: list[Export] = field(default_factory=list)
    _mi: list[MiCommand] = field(default_factory=list)

    def on_init(self, func: H) -> H:
        """Decorator: the module's ``init(core)`` hook."""
        self.init = func
        return func

    def on_child_init(self, func: H) -> H:
        """Decorator: the module's ``child_init(core)`` hook."""
        self.child_init = func
        return func

    def on_shutdown(self, func: H) -> H:
        """Decorator: the module's ``shutdown(core)`` hook."""
        self.shutdown = func
        return func

    def on_service(self, func: S) -> S:
        """Decorator: the module's service ``async def service(core, *, task_status)``."""
        self.service = func
        return func

    def export(
        self,
        params: tuple[ParamType, ...] = (),
        *,
        ret: RetType = "int",
        routes: RouteType = ANY_ROUTE,
        min_args: int | None = None,
        name: str | None = None,
        is_async: bool = False,
        lua_fast: str | None = None,
    ) -> Callable[[F], F]:
        def deco(func: F) -> F:
            doc = (func.__doc__ or "").strip()
            self._exports.append(
                Export(name or func.__name__, func, params, min_args, ret, routes, is_async,
                       None, doc, lua_fast)
            )
            return func

        return deco

    def alias(self, name: str, of: str) -> None:
        """Export an existing function under a second name (Kamailio has several)."""
        for e in self._exports:
            if e.name == of:
                self._exports.append(
                    Export(name, e.func, e.params, e.min_args, e.ret, e.routes, e.is_async,
                           e.lua, f"Alias of {of}(). " + e.doc, e.lua_fast)
                )
                return
        raise KeyError(of)

    def lua_export(self, name: str, source: str, *, doc: str, params: tuple[ParamType, ...] = (),
                   ret: RetType = "none", routes: RouteType = ANY_ROUTE,
                   min_args: int | None = None, is_async: bool = False) -> None:
        """An export written in Lua (a function expression), e.g. ``KSR.x.exit``.
        ``is_async``: it calls an async export (documented and checked as waiting)."""
        self._exports.append(
            Export(name, _lua_only, params, min_args, ret, routes, is_async, source, doc)
        )

    def mi(
        self,
        name: str | None = None,
        doc: str | None = None,
        *,
        params: tuple[str, ...] | None = None,
        is_async: bool | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Declare a management command ``func(params, ctx)``; see :class:`MiCommand`.

        ``name`` defaults to the function's name; a name without a dot is put in the
        module's namespace (``"stats"`` in module ``htable`` is ``htable.stats``).
        ``doc`` defaults to the docstring, ``is_async`` to whether ``func`` is an
        ``async def``."""

        def deco(func: F) -> F:
            cmd = name or func.__name__
            if "." not in cmd and self.name:
                cmd = f"{self.name}.{cmd}"
            waits = inspect.iscoroutinefunction(func) if is_async is None else is_async
            text = (func.__doc__ or "").strip() if doc is None else doc
            if any(c.name == cmd for c in self._mi):
                raise ValueError(f"MI command {cmd} declared twice in module {self.name!r}")
            self._mi.append(MiCommand(cmd, func, text, waits, params, timeout))
            return func

        return deco

    def build(self) -> Module:
        return Module(self.name, self.doc, tuple(self._exports), self.params, tuple(self._mi),
                      self.init, self.child_init, self.shutdown, self.service)


def _lua_only(*_args: Any) -> Any:  # pragma: no cover - never called
    raise RuntimeError("Lua-implemented export called from Python")
