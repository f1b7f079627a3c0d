"""[lua] route_budget_ms: a route that runs away is stopped, answered 500, and logged
with its file:line; the server goes on serving. Kamailio has no such limit: a looping
route holds its worker for good (and in one process here, the whole server)."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from trio_sip.config import ConfigError, load_config
from trio_sip.runtime.server import default_modules
from trio_sip.script.engine import ENGINES, ScriptEngine
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
BUDGET = {"lua": {"route_budget_ms": 50}}

SPIN = """
function spin() local x = 0 while true do x = x + 1 end end
function spin_in_pcall()
  while true do pcall(function() while true do end end) end
end
function light() local s = 0 for i = 1, 200 do s = s + i end return s end
function waits_then_spins(op)
  coroutine.yield(op)
  local x = 0 while true do x = x + 1 end
end
"""


@pytest.mark.parametrize("lua", list(ENGINES))
@pytest.mark.parametrize("fn", ["spin", "spin_in_pcall"])
def test_a_run_past_the_budget_fails_with_its_line(lua: str, fn: str) -> None:
    engine = ScriptEngine(default_modules(), engine=lua)
    engine.load_string(SPIN, "=spin.lua")
    engine.set_route_budget(50)
    started = time.process_time()
    step = engine.start(engine.function(fn), None)
    spent = time.process_time() - started
    assert step.failed
    assert "route budget exceeded (50 ms of CPU without a wait)" in str(step.value)
    assert str(step.value).startswith("spin.lua:")
    assert 0.045 < spent < 2.0
    # the engine is fine afterwards, and a light run pays no error
    assert engine.start(engine.function("light"), None).value == 20100


@pytest.mark.parametrize("lua", ["luajit", "lua54"])
def test_the_budget_is_per_run_between_waits(lua: str) -> None:
    engine = ScriptEngine(default_modules(), engine=lua)
    engine.load_string(SPIN, "=spin.lua")
    engine.set_route_budget(50)
    step = engine.start(engine.function("waits_then_spins"), None, "op")
    assert step.yielded and step.value == "op"
    # the time it waited is nobody's: the resumed run gets a budget of its own
    step = engine.resume(step.co_id, None, None)
    assert step.failed and "route budget exceeded" in str(step.value)
    assert engine.pending_coroutines == 0


def test_no_budget_means_no_hook() -> None:
    engine = ScriptEngine(default_modules(), engine="lua54")
    engine.load_string(SPIN + "function hooked() return debug.gethook() ~= nil end\n")
    engine.set_route_budget(0)
    assert engine.start(engine.function("hooked"), None).value is False
    engine.set_route_budget(10)
    assert engine.start(engine.function("hooked"), None).value is True


def test_the_default_and_the_bounds() -> None:
    assert load_config(None).lua.route_budget_ms == 1000
    with pytest.raises(ConfigError, match=r"lua\.route_budget_ms"):
        load_config(None, overrides=["lua.route_budget_ms=-1"])


async def test_a_looping_route_gets_500_and_the_server_goes_on(
        autojump_clock, write_routes, caplog) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.pv.get('$rU') == 'loop' then\n"
        "    while true do pcall(function() while true do end end) end\n"
        "  end\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    caplog.set_level(logging.ERROR, logger="trio_sip")
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes, config=BUDGET)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:loop@127.0.0.1"), PROXY)
        await uac.expect_response(500)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.1"), PROXY)
        assert (await uac.expect_response(final=True, start=1)).status == 200
        nursery.cancel_scope.cancel()
    assert any("routes.lua:3: route budget exceeded" in r.getMessage()
               for r in caplog.records)


async def test_a_branch_route_that_loops_inside_t_relay(
        autojump_clock, write_routes, caplog) -> None:
    """A branch route runs inside the request route's t_relay (a run within a run):
    its budget stops it alone; the request route's own budget carries on after it."""
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.tm.t_on_branch('spin')\n"
        "  KSR.tm.t_relay()\n"
        "  local s = 0 for i = 1, 1000 do s = s + i end\n"
        "  KSR.info('request route ended ' .. s)\n"
        "end\n"
        "function spin()\n"
        "  while true do end\n"
        "end\n"
    )
    caplog.set_level(logging.INFO, logger="trio_sip")
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes, config=BUDGET)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("INVITE", "sip:bob@127.0.0.3"), PROXY)
        final = await uac.expect_response(final=True)
        assert final.status == 500
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("routes.lua:8: route budget exceeded" in m for m in messages)
    assert any("request route ended 500500" in m for m in messages)


async def test_the_budget_is_settable_at_runtime(autojump_clock, write_routes) -> None:
    """cfg.set lua route_budget_ms: checked as at start, applied to the next route run."""
    from trio_sip.mi.registry import MiError

    routes = write_routes(
        "function ksr_request_route()\n"
        "  local t = os.clock() while os.clock() - t < 0.03 do end\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, config=BUDGET)
        assert server.registry is not None and server.mi is not None
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.1"), PROXY)
        assert (await uac.expect_response(final=True)).status == 200  # 30 ms < 50 ms
        got = server.registry.call_now("cfg.set", ["lua", "route_budget_ms", 10], server.mi)
        assert got == {"group": "lua", "name": "route_budget_ms", "old": 50, "new": 10}
        assert server.engine.route_budget_ms == 10
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.1"), PROXY)
        assert (await uac.expect_response(final=True, start=1)).status == 500
        with pytest.raises(MiError, match=r"lua\.route_budget_ms"):
            server.registry.call_now("cfg.set", ["lua", "route_budget_ms", -1], server.mi)
        server.registry.call_now("cfg.set", ["lua", "route_budget_ms", 0], server.mi)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.1"), PROXY)
        assert (await uac.expect_response(final=True, start=2)).status == 200
        nursery.cancel_scope.cancel()
