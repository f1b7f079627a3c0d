"""KSR.async: waiting in place, delayed routes, and detached tasks (Kamailio ``async``
module, plus what Kamailio cannot do in KEMI).

* ``sleep(s)`` / ``ms_sleep(ms)``: the route waits and goes on at the next line, its
  local variables intact; other calls are served meanwhile. (Kamailio has no KEMI
  sleep: its async_sleep resumes "with the next action" of native cfg only.)
* ``route(fn, s)`` / ``ms_route(fn, ms)``: Kamailio's: wait, then run ``fn`` in the
  same transaction; the calling route stops there.
* ``task_route(fn)``: run ``fn`` at once as the continuation (Kamailio runs it in an
  async worker process; here every route is already asynchronous).
* ``launch(fn[, report_fn[, param]])``: OpenSIPS's launch(): run ``fn`` as a detached
  task in the server's nursery, not the transaction's, so it outlives the request;
  the route continues at once. ``report_fn`` is called with fn's return value and
  ``param`` when it ends.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..script.context import MsgContext
from ..script.exports import ModuleBuilder
from ..script.ops import SleepOp

log = logging.getLogger("trio_sip.script")

m = ModuleBuilder("async", "Waiting in place, delayed routes and detached tasks.")

_MAX_ROUTE_S = 100  # Kamailio's async.route limit
_MAX_MS = 30000  # Kamailio's ms_route limit


@m.export(("int",), is_async=True, ret="int")
def sleep(ctx: MsgContext, seconds: int) -> Any:
    """Wait ``seconds`` and go on at the next line. Returns 1 (negative on bad input)."""
    if seconds < 0:
        return -1
    return SleepOp(float(seconds))


@m.export(("int",), is_async=True, ret="int")
def ms_sleep(ctx: MsgContext, ms: int) -> Any:
    """Wait ``ms`` milliseconds and go on at the next line. Returns 1."""
    if ms < 0:
        return -1
    return SleepOp(ms / 1000)


@m.export(("int",), is_async=True, ret="int", name="_delay")
def _delay(ctx: MsgContext, ms: int) -> Any:
    """Internal: the wait of route()/ms_route()."""
    return SleepOp(max(0, ms) / 1000)


# route(fn, s): wait, run fn, stop the calling route (Kamailio semantics).
m.lua_export(
    "route",
    "function(fn, secs) "
    f"if type(secs) ~= 'number' or secs < 0 or secs > {_MAX_ROUTE_S} then return -1 end "
    "local f = _G[fn] if type(f) ~= 'function' then "
    "  KSR.err('KSR.async.route: no function ' .. tostring(fn)) return -1 end "
    "KSR.async._delay(math.floor(secs * 1000)) f() error('~~ksr~exit~~', 0) end",
    params=("str", "int"), ret="int",
    doc="Wait ``secs`` seconds (at most 100), then run the function named ``fn``; the "
        "calling route stops there (Kamailio async.route).",
)
m.lua_export(
    "ms_route",
    "function(fn, ms) "
    f"if type(ms) ~= 'number' or ms < 0 or ms > {_MAX_MS} then return -1 end "
    "local f = _G[fn] if type(f) ~= 'function' then "
    "  KSR.err('KSR.async.ms_route: no function ' .. tostring(fn)) return -1 end "
    "KSR.async._delay(ms) f() error('~~ksr~exit~~', 0) end",
    params=("str", "int"), ret="int",
    doc="Wait ``ms`` milliseconds (at most 30000), then run the function named ``fn``; the "
        "calling route stops there (Kamailio async.ms_route).",
)
m.lua_export(
    "task_route",
    "function(fn) local f = _G[fn] if type(f) ~= 'function' then "
    "  KSR.err('KSR.async.task_route: no function ' .. tostring(fn)) return -1 end "
    "KSR.async._delay(0) f() error('~~ksr~exit~~', 0) end",
    params=("str",), ret="int",
    doc="Run the function named ``fn`` as the route's continuation and stop the calling "
        "route (Kamailio async.task_route).",
)


@m.export(("int",))
def set_timeout(ctx: MsgContext, ms: int) -> int:
    """Bound the route's next wait (any async function) to ``ms`` milliseconds, below the
    function's own timeout; on expiry it returns -2 and the route goes on. Returns 1."""
    if ms <= 0:
        return -1
    ctx.next_wait_timeout = ms / 1000
    return 1


@m.export()
def now_ms(ctx: MsgContext) -> int:
    """trio-sip: the server's monotonic clock in milliseconds (Trio's clock: virtual time
    in tests), for one deadline across several waits (``$Ts`` is the wall clock)."""
    return int(trio.current_time() * 1000)


@m.export(("str", "str", "str"), min_args=1)
def launch(ctx: MsgContext, fn: str, report_fn: str = "", param: str = "") -> int:
    """Run the function ``fn`` as a detached task in the server's nursery (it may wait and
    outlives the request); the route goes on at once. ``report_fn(result, param)`` runs when
    it ends. Returns 1, or -1 if a function does not exist."""
    engine = ctx.core.engine
    if engine.function(fn) is None or (report_fn and engine.function(report_fn) is None):
        log.error("KSR.async.launch: no function %r", report_fn if engine.function(fn) else fn)
        return -1
    return 1 if ctx.core.launch(ctx, fn, report_fn or None, param) else -1


MODULE = m.build()
