"""rtimer: timers from the config run Lua functions as timer routes, in virtual time with
exact tick times; a run that overruns its interval skips ticks (counted); a timer route
that waits delays neither SIP processing nor the other timers; the static checks know
the functions the config names."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from module_helpers import PROXY, serving

from trio_sip.config import ConfigError, config_from_dict
from trio_sip.modules import loader
from trio_sip.modules import rtimer as rtmod
from trio_sip.runtime import server as server_mod
from trio_sip.script.check import RouteCheckError
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptError
from trio_sip.script.exports import ModuleBuilder
from trio_sip.script.modparams import build_modparams
from trio_sip.sip.message import SipResponse

# A probe module, loaded as a third-party module: routes report when they run.
_probe = ModuleBuilder("probe", "Test probe: records (label, trio time).")
MARKS: list[tuple[str, float]] = []


@_probe.export(("str",))
def mark(ctx: MsgContext, label: str) -> int:
    MARKS.append((label, trio.current_time()))
    return 1


PROBE = _probe.build()


@dataclass
class _EntryPoint:
    name: str
    value: str
    target: Any

    def load(self) -> Any:
        return self.target


@pytest.fixture(autouse=True)
def _probe_module(monkeypatch: pytest.MonkeyPatch) -> None:
    MARKS.clear()
    monkeypatch.setattr(loader, "_entry_points", lambda: [_EntryPoint("probe", "t:P", PROBE)])


def marks(label: str) -> list[float]:
    return [t for lab, t in MARKS if lab == label]


def _config(timers: list[str], execs: list[str]) -> dict[str, Any]:
    return {"modparams": {"rtimer": {"timer": timers, "exec": execs}}}


REQUEST = """
function ksr_request_route()
  KSR.probe.mark("sip")
  KSR.sl.send_reply(200, "OK")
end
"""


# -- definitions ------------------------------------------------------------------------


def test_intervals_and_definitions() -> None:
    assert rtmod.parse_interval("10") == 10
    assert rtmod.parse_interval("250ms") == 0.25
    assert rtmod.parse_interval("100000u") == 0.1  # Kamailio's microseconds
    assert rtmod.parse_interval(" 2 s ") == 2
    for bad in ("", "1.5", "-1", "10m", "500u", "0"):
        with pytest.raises(rtmod.RtimerSpecError):
            rtmod.parse_interval(bad)
    p = build_modparams([rtmod.MODULE], _config(
        ["name=ta;interval=10;mode=1;", "name=tb;interval=100ms"],
        ["timer=ta;route=f1", "timer=ta;route=f2", "timer=tb;route=f3"]
    )["modparams"])["rtimer"]
    assert [(s.name, s.interval, s.mode, fns) for s, fns in p.timers()] == [
        ("ta", 10, 1, ["f1", "f2"]), ("tb", 0.1, 1, ["f3"])]
    cases = [
        (_config(["name=ta;interval=10", "name=ta;interval=5"], []), "defined twice"),
        (_config(["name=ta;interval=10"], ["timer=tx;route=f"]), "no timer 'tx'"),
        (_config(["name=ta"], []), "no interval"),
        (_config(["name=ta;interval=1h"], []), "interval '1h'"),
        (_config(["name=ta;interval=1;colour=red"], []), "unknown attribute"),
        (_config(["name=ta;interval=1"], ["timer=ta"]), "needs timer=NAME;route=FUNCTION"),
        (_config(["name=ta;interval=1;mode=x"], []), "mode must be an integer"),
    ]
    for raw, why in cases:
        with pytest.raises(ConfigError, match=r"modparams\.rtimer") as info:
            build_modparams([rtmod.MODULE], raw["modparams"])
        assert why in str(info.value)


# -- ticks ------------------------------------------------------------------------------


async def test_ticks_are_exact_and_each_exec_runs_in_order(autojump_clock: Any,
                                                            write_routes: Any) -> None:
    routes = write_routes(REQUEST + """
function every10(evname, timer)
  KSR.probe.mark("a:" .. evname .. ":" .. timer)
end
function also10() KSR.probe.mark("b") end
function fast() KSR.probe.mark("fast") end
function faked() KSR.probe.mark("faked:" .. KSR.corex.is_faked_msg()) end
""")
    config = _config(["name=ta;interval=10", "name=fast;interval=250ms",
                      "name=u;interval=1500000u"],
                     ["timer=ta;route=every10", "timer=ta;route=also10", "timer=fast;route=fast",
                      "timer=u;route=faked"])
    async with serving(routes, config=config) as env:
        t0 = trio.current_time()
        await trio.sleep(31.1)
        assert [t - t0 for t in marks("a:rtimer:ta")] == [10, 20, 30]
        assert [t - t0 for t in marks("b")] == [10, 20, 30]
        order = [lab for lab, _ in MARKS if lab in ("a:rtimer:ta", "b")]
        assert order == ["a:rtimer:ta", "b"] * 3
        fast = [t - t0 for t in marks("fast")]
        assert len(fast) == 124 and fast[:3] == [0.25, 0.5, 0.75] and fast[-1] == 31
        assert [t - t0 for t in marks("faked:1")][:2] == [1.5, 3.0]
        stats = env.server.core.rtimer.statistics()
        assert stats["ta:runs"] == 3 and stats["fast:runs"] == 124 and stats["skipped"] == 0


async def test_an_overrunning_run_skips_ticks(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(REQUEST + """
local n = 0
function slow()
  n = n + 1
  KSR.probe.mark("start")
  if n == 1 then KSR.async.sleep(25) end
  if n == 2 then KSR.async.sleep(10) end  -- exactly one interval: no tick is lost
  KSR.probe.mark("end")
end
""")
    config = _config(["name=ta;interval=10"], ["timer=ta;route=slow"])
    async with serving(routes, config=config) as env:
        t0 = trio.current_time()
        await trio.sleep(71)
        # run 1: 10..35, ticks 20 and 30 skipped; run 2: 40..50; then 50, 60, 70
        assert [t - t0 for t in marks("start")] == [10, 40, 50, 60, 70]
        assert [t - t0 for t in marks("end")] == [35, 50, 50, 60, 70]
        stats = env.server.core.rtimer.statistics()
        assert stats["ta:skipped"] == 2 and stats["skipped"] == 2 and stats["ta:runs"] == 5


async def test_a_waiting_timer_route_delays_neither_sip_nor_other_timers(
        autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(REQUEST + """
function sleeper()
  KSR.probe.mark("sleeping")
  KSR.async.sleep(100)
  KSR.probe.mark("woke")
end
function ticker() KSR.probe.mark("tick") end
""")
    config = _config(["name=slow;interval=1", "name=t;interval=3"],
                     ["timer=slow;route=sleeper", "timer=t;route=ticker"])
    async with serving(routes, config=config) as env:
        t0 = trio.current_time()
        await trio.sleep(15)
        sent = trio.current_time()
        await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1", call_id="m1"), PROXY)
        got = await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse))
        assert isinstance(got.msg, SipResponse) and got.msg.status == 200
        assert got.at == sent  # answered at once while the timer route sleeps
        await trio.sleep(15.5)
        assert [t - t0 for t in marks("sleeping")] == [1]
        assert marks("woke") == []
        assert [t - t0 for t in marks("tick")] == [3 * i for i in range(1, 11)]
        assert marks("sip") == [sent]


async def test_a_failing_run_is_logged_and_the_timer_goes_on(
        autojump_clock: Any, write_routes: Any, caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(REQUEST + """
function boom()
  KSR.probe.mark("boom")
  error("kaputt")
end
function quits()
  KSR.probe.mark("quit")
  KSR.x.exit()
  KSR.probe.mark("not reached")
end
""")
    config = _config(["name=ta;interval=2"], ["timer=ta;route=boom", "timer=ta;route=quits"])
    async with serving(routes, config=config) as env:
        await trio.sleep(7)
        assert len(marks("boom")) == 3 and len(marks("quit")) == 3
        assert marks("not reached") == []
        stats = env.server.core.rtimer.statistics()
        assert stats["ta:errors"] == 3 and stats["errors"] == 3 and stats["runs"] == 3
    assert "kaputt" in caplog.text and "routes.lua:" in caplog.text


# -- static checks -----------------------------------------------------------------------


def test_timer_functions_are_checked_like_routes(write_routes: Any) -> None:
    routes = write_routes(REQUEST + """
function on_timer()
  KSR.sl.sl_send_reply(200, "OK")
end
""")
    cfg = config_from_dict({"lua": {"routes": routes}, **_config(
        ["name=ta;interval=1"], ["timer=ta;route=on_timer", "timer=ta;route=missing"])})
    problems = server_mod.check(cfg)
    assert any("calls KSR.sl.sl_send_reply(), which is not allowed in timer_route" in p
               and "named by modparams.rtimer.exec" in p for p in problems), problems
    assert any('modparams.rtimer.exec "timer=ta;route=missing" names missing(), which is '
               "not defined" in p for p in problems), problems
    with pytest.raises(RouteCheckError):
        server_mod.build_engine(cfg)
    # a bad definition is reported by check too, as the server would refuse it
    cfg = config_from_dict({"lua": {"routes": routes}, **_config(
        ["name=ta;interval=1"], ["timer=tb;route=on_timer"])})
    problems = server_mod.check(cfg)
    assert problems[0].startswith("config error: modparams.rtimer = ") and \
        "no timer 'tb'" in problems[0], problems
    # a function only the config names is not "never called"
    routes = write_routes(REQUEST + "function on_timer() KSR.probe.mark('x') end\n")
    cfg = config_from_dict({"lua": {"routes": routes}, **_config(
        ["name=ta;interval=1"], ["timer=ta;route=on_timer"])})
    assert server_mod.check(cfg) == []


async def test_the_recipe_queue_in_sip_drain_in_a_timer_into_sql(
        autojump_clock: Any, write_routes: Any, tmp_path: Path) -> None:
    """Kamailio's background-work recipe: the SIP route queues and answers at once; the
    timer route drains the queue into SQLite (values bound), one tick later."""
    routes = write_routes("""
function ksr_request_route()
  KSR.mqueue.mq_add("jobs", KSR.hdr.get("X-Who"), KSR.pv.get("$rU"))
  KSR.sl.send_reply(202, "Queued")
end
function drain()
  if KSR.sqlops.sql_query("db", "CREATE TABLE IF NOT EXISTS missed (who TEXT, callee TEXT)")
      < 0 then return end
  while KSR.mqueue.mq_fetch("jobs") == 1 do
    KSR.sqlops.sql_query_params("db", "INSERT INTO missed VALUES (?, ?)", "",
        KSR.mqueue.mqk_get("jobs"), KSR.mqueue.mqv_get("jobs"))
    KSR.probe.mark("stored")
  end
end
""")
    db = tmp_path / "app.sqlite"
    config = {"modparams": {
        "mqueue": {"mqueue": ["name=jobs"]},
        "rtimer": {"timer": ["name=t;interval=5"], "exec": ["timer=t;route=drain"]},
        "sqlops": {"sqlcon": [f"db=>sqlite:///{db}"]}}}
    async with serving(routes, config=config) as env:
        t0 = trio.current_time()
        await trio.sleep(1)
        for who in ("alice", "o'brien"):
            await env.uac.send(env.uac.request(
                "MESSAGE", "sip:bob@127.0.0.1", call_id=f"q-{who}",
                headers=[("X-Who", who)]), PROXY)
            got = await env.uac.wait_for(lambda r, w=who: isinstance(r.msg, SipResponse)
                                         and r.msg.call_id == f"q-{w}")
            assert got.msg.status == 202 and got.at == t0 + 1  # type: ignore[union-attr]
        await trio.sleep(5)
        assert [t - t0 for t in marks("stored")] == [5, 5]
    with sqlite3.connect(db) as conn:
        assert list(conn.execute("SELECT who, callee FROM missed")) == [
            ("alice", "bob"), ("o'brien", "bob")]


# -- the module service hook the timers run on ---------------------------------------------


def _service_module(name: str, fail_before_start: bool) -> Any:
    b = ModuleBuilder(name, "test: a failing service")

    @b.on_service
    async def service(core: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if fail_before_start:
            raise RuntimeError("no socket for you")
        task_status.started()
        await trio.sleep(3)
        raise RuntimeError("went away")

    return b.build()


async def test_a_module_service_failing(autojump_clock: Any, write_routes: Any,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(REQUEST)
    monkeypatch.setattr(loader, "_entry_points", lambda: [
        _EntryPoint("probe", "t:P", PROBE),
        _EntryPoint("late", "t:L", _service_module("late", False))])
    async with serving(routes) as env:  # a failure after started ends that service only
        await trio.sleep(5)
        await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1", call_id="s1"), PROXY)
        got = await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse))
        assert got.msg.status == 200  # type: ignore[union-attr]
    assert "module 'late': its service stopped" in caplog.text and "went away" in caplog.text
    monkeypatch.setattr(loader, "_entry_points", lambda: [
        _EntryPoint("probe", "t:P", PROBE),
        _EntryPoint("early", "t:E", _service_module("early", True))])
    with pytest.RaisesGroup(pytest.RaisesExc(
            ScriptError, match="module 'early': service failed to start: RuntimeError: "
                               "no socket for you"), flatten_subgroups=True):
        async with serving(routes):
            pass
