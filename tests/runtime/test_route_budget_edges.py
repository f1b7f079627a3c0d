"""The route budget's edges (script/engine.py _DRIVER): coroutines a route creates,
debug.sethook, loops of C calls, runs nested in runs (a branch route inside t_relay),
app_lua chunks across nested runs, no hook left behind. Written by a review that
found each of these broken in the first version (all fixed); test_route_budget.py has
the main behaviour."""

from __future__ import annotations

import logging
import time

import pytest
import trio
import trio.testing

from trio_sip.runtime.server import default_modules
from trio_sip.script.engine import ScriptEngine
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)

LUAS = ["luajit", "lua54"]

# CPU-bound helpers, bounded so that a test never hangs when the budget misses them
HELPERS = """
function cpu(seconds)
  local t = os.clock() while os.clock() - t < seconds do end
end
function in_wrap()
  return coroutine.wrap(function() cpu(0.5) return 'ran 500 ms' end)()
end
function in_create()
  local co = coroutine.create(function() cpu(0.5) return 'ran 500 ms' end)
  local ok, v = coroutine.resume(co)
  return v
end
function unhooks()
  debug.sethook()
  cpu(0.5)
  return 'ran 500 ms'
end
function own_hook()
  local n = 0
  debug.sethook(function() n = n + 1 end, '', 1000000)
  cpu(0.5)
  return 'ran 500 ms'
end
function light() local s = 0 for i = 1, 200 do s = s + i end return s end
function hook_now() return debug.gethook() ~= nil end
"""


def engine_with(lua: str, budget: int, extra: str = "") -> ScriptEngine:
    engine = ScriptEngine(default_modules(), engine=lua)
    engine.load_string(HELPERS + extra, "=h.lua")
    engine.set_route_budget(budget)
    return engine


@pytest.mark.parametrize("lua", LUAS)
@pytest.mark.parametrize("fn", ["in_wrap", "in_create"])
def test_cpu_in_a_coroutine_the_route_creates_is_budgeted(lua: str, fn: str) -> None:
    """A route that spins inside a coroutine it created itself (coroutine.wrap/create in
    the route body) spends the CPU of its run all the same."""
    engine = engine_with(lua, 50)
    started = time.process_time()
    step = engine.start(engine.function(fn), None)
    spent = time.process_time() - started
    assert step.failed, (step.value, spent)
    assert "route budget exceeded" in str(step.value)
    assert spent < 0.3  # stopped near its 50 ms, not after the 500 ms it would take


@pytest.mark.parametrize("lua", LUAS)
@pytest.mark.parametrize("fn", ["unhooks", "own_hook"])
def test_debug_sethook_in_a_route_does_not_lift_the_budget(lua: str, fn: str) -> None:
    """A route calling debug.sethook (to clear the hook, or to set one of its own) would
    escape the route budget: it is refused while the budget is on, as app_lua refuses
    it inside a budgeted chunk. With the budget off it works."""
    engine = engine_with(lua, 50)
    step = engine.start(engine.function(fn), None)
    assert step.failed, step.value
    assert "h.lua:" in str(step.value)
    assert "debug.sethook is not allowed in a route while [lua] route_budget_ms is on" \
        in str(step.value)
    engine.set_route_budget(0)
    assert engine.start(engine.function(fn), None).value == "ran 500 ms"


@pytest.mark.parametrize("lua", LUAS)
def test_a_loop_of_costly_c_calls_is_stopped(lua: str) -> None:
    """Only Lua instructions are counted (a count hook every 1,000): a loop whose time
    goes into C functions (string.rep of 4 MiB, a few instructions a turn) is checked
    less often, but stopped all the same."""
    engine = engine_with(lua, 50, "function c_loop() while true do "
                                  "local s = string.rep('x', 4 * 1024 * 1024) end end")
    started = time.process_time()
    step = engine.start(engine.function("c_loop"), None)
    spent = time.process_time() - started
    assert step.failed and "route budget exceeded" in str(step.value)
    assert spent < 5.0


NESTED = """
function outer(pre, post_s)
  local s = 0 for i = 1, pre do s = s + i end
  local r = nest()
  cpu(post_s)
  return r
end
function inner(s) cpu(s) return 'inner done' end
function inner_spins() while true do end end
"""


def nested_engine(lua: str, budget: int, inner: str, *args: object):  # type: ignore[no-untyped-def]
    engine = engine_with(lua, budget, NESTED)
    steps = []
    nested_cpu = [0.0]  # CPU spent in the nested starts (Python side included)

    def nest() -> object:
        started = time.process_time()
        step = engine.start(engine.function(inner), None, *args)
        nested_cpu[0] += time.process_time() - started
        steps.append(step)
        return "failed" if step.failed else step.value

    engine.lua.globals().nest = nest
    engine.nested_cpu = nested_cpu  # type: ignore[attr-defined]
    return engine, steps


@pytest.mark.parametrize("lua", LUAS)
def test_a_nested_run_is_charged_to_the_outer_run_consistently(lua: str) -> None:
    """A run within a run (a branch route inside t_relay): the outer run with a 100 ms
    budget spends ~1 ms, a nested run 80 ms (within its own budget), then the outer 30 ms.
    Whether the outer is charged for the nested run must not depend on how many
    instructions the outer ran before it (0 or 20,000)."""
    outcomes = []
    for pre in (0, 20000):
        engine, steps = nested_engine(lua, 100, "inner", 0.08)
        step = engine.start(engine.function("outer"), None, pre, 0.03)
        assert steps and steps[0].done
        outcomes.append((pre, step.code, str(step.value)))
    assert outcomes[0][1] == outcomes[1][1], outcomes


@pytest.mark.parametrize("lua", LUAS)
def test_outer_run_goes_on_after_a_nested_run_over_budget(lua: str) -> None:
    """The nested run loops and is stopped by its own budget; the outer run, which did
    some work before (20,000 instructions, ~1 ms) and does 10 ms after, must end
    normally (test_route_budget: "the request route's own budget carries on after it")."""
    engine, steps = nested_engine(lua, 50, "inner_spins")
    step = engine.start(engine.function("outer"), None, 20000, 0.01)
    assert steps and steps[0].failed
    assert "route budget exceeded" in str(steps[0].value)
    assert step.done, step.value
    assert step.value == "failed"


@pytest.mark.parametrize("lua", LUAS)
def test_an_outer_run_that_keeps_starting_nested_runs_is_still_budgeted(lua: str) -> None:
    """The outer run loops for 500 ms: each turn ~200 instructions of its own (fewer than
    the hook's 1,000), then a light nested run (as a route calling t_relay with a branch
    route again and again). Each nested run sets the outer's count hook afresh, so it
    never comes round: the outer's time is looked at each time a nested run returns."""
    extra = """
    function outer_loops()
      local t, turns = os.clock(), 0
      while os.clock() - t < 0.5 do
        local s = 0 for i = 1, 50 do s = s + i end
        nest()
        turns = turns + 1
      end
      return turns
    end
    """
    engine, steps = nested_engine(lua, 50, "light")
    engine.load_string(extra, "=o.lua")
    started = time.process_time()
    step = engine.start(engine.function("outer_loops"), None)
    spent = time.process_time() - started
    assert steps and all(s.done for s in steps)
    assert step.failed, (step.value, spent)
    assert "route budget exceeded" in str(step.value)
    assert spent < 0.3  # stopped near its 50 ms of its own, not after 500 ms


@pytest.mark.parametrize("lua", LUAS)
def test_app_lua_chunk_keeps_its_budget_across_a_nested_run(lua: str) -> None:
    """An app_lua chunk (tsip_app_lua_exec, 100 ms budget) inside a route (route budget
    5 s) starts a nested route run (as KSR.tm.t_relay with a branch route does), then
    spins 1 s: its own budget must still stop it."""
    extra = """
    function route_with_chunk()
      local r = {tsip_app_lua_exec(function() nest() cpu(1.0) return 'chunk ran 1 s' end,
                                   0, 100)}
      return tostring(r[1]) .. ' ' .. tostring(r[2])
    end
    """
    engine, steps = nested_engine(lua, 5000, "light")
    engine.load_string(extra, "=c.lua")
    step = engine.start(engine.function("route_with_chunk"), None)
    assert steps and steps[0].done
    assert step.done, step.value
    assert "time budget exceeded" in str(step.value)


@pytest.mark.parametrize("lua", LUAS)
def test_no_hook_is_left_behind(lua: str) -> None:
    """After done, failed, yielded and nested runs, no hook stays set: not on the main
    thread, not in a later run with the budget turned off."""
    extra = """
    function yields() coroutine.yield('op') return 1 end
    function outer_light() nest() return light() end
    """
    engine, _steps = nested_engine(lua, 50, "inner_spins")
    engine.load_string(extra, "=y.lua")
    assert engine.start(engine.function("light"), None).done
    assert engine.start(engine.function("outer_light"), None).done
    y = engine.start(engine.function("yields"), None)
    assert y.yielded
    assert engine.lua.eval("(debug.gethook())") is None
    assert engine.resume(y.co_id, None, None).done
    assert engine.lua.eval("(debug.gethook())") is None
    engine.set_route_budget(0)
    assert engine.start(engine.function("hook_now"), None).value is False


@pytest.mark.parametrize("lua", LUAS)
def test_light_run_after_an_over_budget_one(lua: str) -> None:
    engine = engine_with(lua, 50, "function spin() while true do end end")
    assert engine.start(engine.function("spin"), None).failed
    for _ in range(3):
        step = engine.start(engine.function("light"), None)
        assert step.done and step.value == 20100


async def test_request_route_that_ran_before_t_relay_survives_a_looping_branch_route(
        autojump_clock, write_routes, caplog) -> None:
    """test_route_budget.test_a_branch_route_that_loops_inside_t_relay with one change:
    the request route does ~20,000 cheap instructions (~1 ms) before t_relay. Its
    branch route is stopped by its own budget; the request route, which then spends
    ~10 ms of its own, must still end ("the request route's own budget carries on")."""
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local s = 0 for i = 1, 20000 do s = s + i end\n"
        "  KSR.tm.t_on_branch('spin')\n"
        "  KSR.tm.t_relay()\n"
        "  local t = os.clock() while os.clock() - t < 0.01 do end\n"
        "  KSR.info('request route ended ' .. s)\n"
        "end\n"
        "function spin()\n"
        "  while true do end\n"
        "end\n"
    )
    caplog.set_level(logging.INFO, logger="trio_sip")
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes,
                           config={"lua": {"route_budget_ms": 50}})
        uac = SimUA(net, UAC)
        await uac.send(uac.request("INVITE", "sip:bob@127.0.0.3"), PROXY)
        await uac.expect_response(final=True)
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("routes.lua:9: route budget exceeded" in m for m in messages), messages
    assert not any("routes.lua:5: route budget exceeded" in m for m in messages), messages
    assert any("request route ended 200010000" in m for m in messages), messages


@pytest.mark.parametrize("lua", LUAS)
async def test_runstring_chunk_budget_survives_t_relay_with_a_branch_route(
        autojump_clock, write_routes, caplog, lua: str) -> None:
    """A KSR.app_lua.runstring chunk ([modparams.app_lua]
    budget_ms = 100) calls t_relay with a branch route, then spins (bounded at 1 s): the
    chunk's own budget must stop it (the route budget is 5 s)."""
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local r = KSR.app_lua.runstring(\"KSR.tm.t_on_branch('br') KSR.tm.t_relay() \"\n"
        "    .. \"local t = os.clock() while os.clock() - t < 1.0 do end\")\n"
        "  KSR.info('runstring returned ' .. r)\n"
        "end\n"
        "function br() end\n"
    )
    caplog.set_level(logging.INFO, logger="trio_sip")
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes,
                           config={"lua": {"route_budget_ms": 5000, "engine": lua},
                                   "modparams": {"app_lua": {"budget_ms": 100}}})
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        await uac.send(uac.request("INVITE", "sip:bob@127.0.0.3"), PROXY)
        await uas.expect_request("INVITE")
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("time budget exceeded" in m for m in messages), messages
    assert any("runstring returned -1" in m for m in messages), messages


