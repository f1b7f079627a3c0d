"""rtimer: Lua functions run on timers (Kamailio ``rtimer``), each timer a Trio task.

Config (Kamailio's syntax)::

    [modparams.rtimer]
    timer = ["name=ta;interval=10;mode=1", "name=fast;interval=250ms"]
    exec = ["timer=ta;route=ksr_rtimer_ta", "timer=fast;route=drain_queue"]

``interval`` is seconds (``10``), microseconds with a ``u`` suffix as in Kamailio
(``100000u``), or milliseconds with ``ms`` (a trio-sip addition: ``250ms``); it must be
at least 1 ms. Each ``exec`` names a Lua function; several on one timer run one after
the other, in config order, on each tick. The function is called as
``fn("rtimer", timer_name)`` (Kamailio passes the module name as the event name; the
timer's name is a trio-sip addition that Kamailio scripts simply ignore). A function
that does not exist refuses to start (and ``trio-sip check`` says so), and the
static route checks check it as a timer route.

Theory of operation
-------------------
The module's service (script/exports.py) starts one task per timer in the server's
nursery once the listeners are bound. A timer's ticks are ``start + k * interval`` on
trio's clock (so they are exact under MockClock, and immune to wall-clock steps); the
first is one interval after the start, as in Kamailio.

Each run is a route coroutine with a faked message (Kamailio gives timer routes a
static faked OPTIONS: ``KSR.corex.is_faked_msg()`` is 1) in route type TIMER
(``timer_route``): exports that need a real request (``sl_send_reply``, ``t_relay``)
are refused there, and ``trio-sip check`` reports such calls. The route may wait
(``KSR.async.sleep``, HTTP, SQL, MI, ``uac_req_send``...): it waits in its timer's
task, so SIP processing and the other timers go on meanwhile. A timer never runs two
copies of its routes at once: a run that is still going at the next tick makes that
tick (and any other it overruns) skipped, counted in ``skipped``, and the next run
starts at the first tick after it ends::

    interval 10        tick 10      tick 20      tick 30      tick 40
    run               [===== 25 s =====....]            [run]
                                   skipped    (ends 35)  ^ next run at 40

Kamailio's ``mode`` (0: the shared timer process, N: N dedicated processes) is
accepted and has no effect: every timer here is its own task, and its runs never
overlap.

A Lua error in a run is logged with its traceback and counted (``errors``); the timer
goes on. Statistics (group ``rtimer``): ``runs``, ``skipped``, ``errors`` over all
timers, and ``NAME:runs``, ``NAME:skipped``, ``NAME:errors`` per timer.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from ..script.context import faked_context
from ..script.exports import ModuleBuilder, RouteType
from ..script.modparams import modparams_of
from ..storage.spec import SpecError, parse_attrs

log = logging.getLogger("trio_sip.rtimer")

#: the shortest interval accepted (seconds)
MIN_INTERVAL = 0.001
_INTERVAL_RE = re.compile(r"\s*(\d+)\s*(u|ms|s)?\s*", re.IGNORECASE)

class RtimerSpecError(SpecError):
    """A timer or exec definition that cannot be used."""


@dataclass(frozen=True, slots=True)
class TimerSpec:
    name: str
    #: seconds
    interval: float
    mode: int = 1


def parse_interval(text: str) -> float:
    """``"10"`` s, ``"100000u"`` µs (Kamailio), ``"250ms"`` ms -> seconds."""
    m = _INTERVAL_RE.fullmatch(text)
    if m is None:
        raise RtimerSpecError(f"interval {text!r}: use seconds (10), milliseconds (250ms) "
                              "or microseconds (100000u)")
    value = int(m.group(1))
    unit = (m.group(2) or "s").lower()
    seconds = value / {"s": 1, "ms": 1_000, "u": 1_000_000}[unit]
    if seconds < MIN_INTERVAL:
        raise RtimerSpecError(f"interval {text!r}: must be at least 1 ms")
    return seconds


def _attrs(text: str, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    return parse_attrs(text, allowed, what, RtimerSpecError)


def parse_timer_spec(text: str) -> TimerSpec:
    """``"name=ta;interval=10;mode=1"``."""
    a = _attrs(text, ("name", "interval", "mode"), "timer")
    if not a.get("name"):
        raise RtimerSpecError(f"timer {text!r}: no name")
    if "interval" not in a:
        raise RtimerSpecError(f"timer {text!r}: no interval")
    try:
        interval = parse_interval(a["interval"])
    except RtimerSpecError as exc:
        raise RtimerSpecError(f"timer {text!r}: {exc}") from None
    try:
        mode = int(a.get("mode", "1"))
    except ValueError:
        raise RtimerSpecError(f"timer {text!r}: mode must be an integer") from None
    if mode < 0:
        raise RtimerSpecError(f"timer {text!r}: mode must be >= 0")
    return TimerSpec(a["name"], interval, mode)


def parse_exec_spec(text: str) -> tuple[str, str]:
    """``"timer=ta;route=fn"`` -> (timer, function)."""
    a = _attrs(text, ("timer", "route"), "exec")
    if not a.get("timer") or not a.get("route"):
        raise RtimerSpecError(f"exec {text!r}: needs timer=NAME;route=FUNCTION")
    return a["timer"], a["route"]


@dataclass(frozen=True)
class RtimerParams:
    """``[modparams.rtimer]``."""

    #: timer definitions: "name=ta;interval=10;mode=1" (interval: s, "250ms", "100000u")
    timer: tuple[str, ...] = ()
    #: what each timer runs: "timer=ta;route=lua_function"
    exec: tuple[str, ...] = ()

    def validate(self) -> None:
        self.timers()

    def timers(self) -> list[tuple[TimerSpec, list[str]]]:
        """Each timer with the functions it runs, in config order."""
        try:
            specs = [parse_timer_spec(t) for t in self.timer]
            execs = [parse_exec_spec(e) for e in self.exec]
        except RtimerSpecError as exc:
            raise ValueError(str(exc)) from None
        routes: dict[str, list[str]] = {}
        for s in specs:
            if s.name in routes:
                raise ValueError(f"timer {s.name} is defined twice")
            routes[s.name] = []
        for timer, fn in execs:
            if timer not in routes:
                raise ValueError(f"exec \"timer={timer};route={fn}\": no timer {timer!r} "
                                 f"(timers: {', '.join(routes) or 'none'})")
            routes[timer].append(fn)
        return [(s, routes[s.name]) for s in specs]

    def route_functions(self) -> list[tuple[str, RouteType, str]]:
        """For ``trio-sip check``: every exec'd function, checked as a timer route."""
        return [(fn, RouteType.TIMER, f"modparams.rtimer.exec \"timer={t};route={fn}\"")
                for t, fn in (parse_exec_spec(e) for e in self.exec)]


m = ModuleBuilder("rtimer", "Lua functions run on timers, each timer a task.",
                  params=RtimerParams)


class Timer:
    """One timer: its spec, its functions and its counters."""

    def __init__(self, spec: TimerSpec, routes: list[str]) -> None:
        self.spec = spec
        self.routes = routes
        self.stats: Counter[str] = Counter()
        #: trio time of the next tick (set while running)
        self.next_tick = math.inf
        self.running = False


class Timers:
    """The server's timers (``core.rtimer``): run by the module's service."""

    def __init__(self, timers: list[Timer]) -> None:
        self.timers = {t.spec.name: t for t in timers}

    def statistics(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        out: dict[str, int] = {}
        for t in self.timers.values():
            for k in ("runs", "skipped", "errors"):
                out[f"{t.spec.name}:{k}"] = t.stats[k]
                total[k] += t.stats[k]
        out.update({k: total[k] for k in ("runs", "skipped", "errors")})
        return out

    async def run(self, core: Any, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            for t in self.timers.values():
                if t.routes:
                    nursery.start_soon(_run_timer, core, t, start)
                else:
                    log.warning("rtimer: timer %s runs nothing (no exec names it)",
                                t.spec.name)
            task_status.started()


async def _run_timer(core: Any, timer: Timer, start: float) -> None:
    interval = timer.spec.interval
    k = 1
    while True:
        timer.next_tick = start + k * interval
        await trio.sleep_until(timer.next_tick)
        timer.running = True
        try:
            for fn in timer.routes:
                try:
                    await _run_route(core, timer, fn)
                except Exception:  # a bug below the route must not stop the timers
                    timer.stats["errors"] += 1
                    log.exception("rtimer: timer %s: %s() failed", timer.spec.name, fn)
        finally:
            timer.running = False
        timer.stats["runs"] += 1
        # the first tick at or after now; the ticks in between were overrun
        now = trio.current_time()
        nxt = max(k + 1, math.ceil(round((now - start) / interval, 9)))
        if nxt > k + 1:
            skipped = nxt - k - 1
            timer.stats["skipped"] += skipped
            log.warning("rtimer: timer %s: a run took %.3f s, longer than its interval "
                        "(%s s): %d tick(s) skipped", timer.spec.name,
                        now - (start + k * interval), interval, skipped)
        k = nxt


async def _run_route(core: Any, timer: Timer, fn_name: str) -> None:
    engine = core.engine
    fn = engine.function(fn_name)
    if fn is None:  # removed by a reload since the start
        timer.stats["errors"] += 1
        log.error("rtimer: timer %s: no function %s() in the routes", timer.spec.name,
                  fn_name)
        return
    ctx = faked_context(core, RouteType.TIMER)
    step = engine.start(fn, ctx, "rtimer", timer.spec.name)
    step = await core._drive(ctx, step)
    await core.flush(ctx)
    if step.failed:
        timer.stats["errors"] += 1
        log.error("rtimer: timer %s: %s() failed: %s", timer.spec.name, fn_name,
                  step.traceback or step.value)


def timers_for(core: Any) -> Timers:
    """The server's timers, made on first use from ``[modparams.rtimer]``."""
    ts = getattr(core, "rtimer", None)
    if isinstance(ts, Timers):
        return ts
    params = modparams_of(core, "rtimer", RtimerParams)
    ts = Timers([Timer(spec, routes) for spec, routes in params.timers()])
    core.rtimer = ts
    return ts


@m.on_init
def _init(core: Any) -> None:
    ts = timers_for(core)
    for t in ts.timers.values():
        for fn in t.routes:
            if core.engine.function(fn) is None:
                raise ValueError(f"modparams.rtimer.exec: timer {t.spec.name} runs "
                                 f"{fn}(), which is not a function of the routes")
        if t.spec.mode > 1:
            log.info("rtimer: timer %s: mode=%d is the same as 1 here (one task, runs "
                     "never overlap)", t.spec.name, t.spec.mode)


@m.on_service
async def _service(core: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    if getattr(core, "worker_index", 0) != 0:
        # trio-sip run --workers N: the timers run in worker 0 only (docs/workers.md),
        # as Kamailio runs each rtimer in its own single process
        task_status.started()
        return
    await timers_for(core).run(core, task_status=task_status)


MODULE = m.build()

__all__ = [
    "MODULE",
    "RtimerParams",
    "TimerSpec",
    "Timers",
    "parse_interval",
    "timers_for",
]
