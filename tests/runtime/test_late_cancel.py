"""The CANCEL of a late 1xx to an ended INVITE branch is a non-INVITE client
transaction of its own (runtime/transactions.py _LateCancel): with a 487 or a 2xx
arriving meanwhile, at shutdown, over TCP, and after the branch's record expired.
test_tm_timers.py has its retransmission schedule."""

from __future__ import annotations

import logging

import trio
import trio.testing

from trio_sip.runtime.server import default_modules
from trio_sip.script.engine import ScriptEngine
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server, stop_server
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
function c_heavy()
  -- 300 ms of CPU, in fewer than 10,000 VM instructions: most of it inside string.rep
  local s, n, t = nil, 0, os.clock()
  while os.clock() - t < 0.3 and n < 700 do s = string.rep('x', 32 * 1024 * 1024) n = n + 1 end
  return n
end
function light() local s = 0 for i = 1, 200 do s = s + i end return s end
function hook_now() return debug.gethook() ~= nil end
"""


def engine_with(lua: str, budget: int, extra: str = "") -> ScriptEngine:
    engine = ScriptEngine(default_modules(), engine=lua)
    engine.load_string(HELPERS + extra, "=h.lua")
    engine.set_route_budget(budget)
    return engine


def relay_routes() -> str:
    return (
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() then\n"
        "    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end\n"
        "    return\n"
        "  end\n"
        "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        "  KSR.tm.t_set_fr(0, 2000)\n"
        "  KSR.tm.t_relay()\n"
        "end\n"
    )


def times(ua: SimUA, t0: float, *, method: str | None = None, status: int | None = None
          ) -> list[float]:
    out = []
    for r in ua.received:
        m = r.msg
        if r.at < t0:
            continue
        if status is None:
            if isinstance(m, SipRequest) and m.method == method:
                out.append(r.at - t0)
        elif isinstance(m, SipResponse) and m.status == status and (
                method is None or m.cseq_method == method):
            out.append(r.at - t0)
    return out


async def ended_branch(net: SimNetwork, nursery: trio.Nursery, write_routes,  # type: ignore[no-untyped-def]
                       proto: str = "udp"):
    """An INVITE whose branch timed out (fr_inv 2 s: local 408, ACKed); at t0 + 10 the
    transaction and its branch have ended. Returns (server, uac, uas, invite, t0 + 10)."""
    protos = ("udp", "tcp") if proto == "tcp" else ("udp",)
    server = await start_server(nursery, net, routes=write_routes(relay_routes()),
                                protos=protos)
    uac = SimUA(net, UAC)
    uas = SimUA(net, UAS, proto=proto)
    t0 = trio.current_time()
    ruri = "sip:bob@127.0.0.3;transport=tcp" if proto == "tcp" else "sip:bob@127.0.0.3"
    data = uac.request("INVITE", ruri, branch="z9hG4bKs4", call_id="s4@test")
    await uac.send(data, PROXY)
    inv = await uas.expect_request("INVITE")
    final = await uac.expect_response(final=True)
    assert final.status == 408
    await uac.send(uac.request("ACK", ruri, branch="z9hG4bKs4", call_id="s4@test",
                               to_tag=final.to_tag), PROXY)
    await trio.sleep_until(t0 + 10)
    await trio.testing.wait_all_tasks_blocked()
    assert server.core.tm.servers == {}
    assert server.core.tm.clients == {}
    return server, uac, uas, inv, t0 + 10


async def test_487_while_the_late_cancel_retransmits(autojump_clock, write_routes) -> None:
    """A late 180 starts the CANCEL; the callee's 487 comes while the CANCEL is being
    retransmitted (its 200 to the CANCEL lost): the 487 is ACKed once, absorbed, a
    further 180 starts no second CANCEL transaction, and the CANCEL goes on until its
    own 200."""
    async with SimNetwork(seed=31) as net, trio.open_nursery() as nursery:
        server, uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 1)
        await uas.send(uas.response_to(inv.msg, 487, "Terminated"), inv.source)
        await trio.sleep_until(t0 + 2)
        assert times(uas, t0, method="ACK") == [1.0]
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 4)
        assert times(uas, t0, method="CANCEL") == [0.0, 0.5, 1.5, 3.5]
        last = [r for r in uas.requests() if r.method == "CANCEL"][-1]
        await uas.send(uas.response_to(last, 200, "OK"), inv.source)
        await trio.sleep_until(t0 + 10)  # the CANCEL's Timer K (T4) is over
        assert server.core.tm.clients == {}
        # a reordered 180 after the 487: absorbed, no new CANCEL
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(60)
        assert times(uas, t0, method="CANCEL") == [0.0, 0.5, 1.5, 3.5]
        assert times(uas, t0, method="ACK") == [1.0]
        assert server.core.tm.clients == {}
        assert [r for r in uac.received if r.at > t0 - 1] == []
        nursery.cancel_scope.cancel()


async def test_late_2xx_while_the_late_cancel_runs_is_forwarded(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=32) as net, trio.open_nursery() as nursery:
        server, uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 0.7)
        await uas.send(uas.response_to(inv.msg, 200, "OK"), inv.source)
        ok = await uac.expect_response(200)
        assert ok.cseq_method == "INVITE"
        assert times(uac, t0, status=180) == []
        # the CANCEL still runs (no final of its own yet): it is not the 2xx's business
        assert len(server.core.tm.clients) == 1
        await trio.sleep(60)
        assert server.core.tm.clients == {}
        nursery.cancel_scope.cancel()


async def test_shutdown_while_a_late_cancel_runs(autojump_clock, write_routes, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sip")
    async with SimNetwork(seed=33) as net, trio.open_nursery() as nursery:
        server, _uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 1)
        assert len(server.core.tm.clients) == 1
        tm = server.core.tm
        await stop_server(server)
        assert tm.clients == {}
        # a late 180 once stopped: nothing sent, no entry
        n = len(times(uas, t0, method="CANCEL"))
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(5)
        assert tm.clients == {}
        assert len(times(uas, t0, method="CANCEL")) == n
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if "late CANCEL" in r.getMessage()]


async def test_late_cancel_over_tcp_is_sent_once(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=34) as net, trio.open_nursery() as nursery:
        server, _uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes, "tcp")
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(20)
        assert times(uas, t0, method="CANCEL") == [0.0]
        assert len(server.core.tm.clients) == 1  # waiting for its final until Timer F
        await trio.sleep(20)
        assert times(uas, t0, method="CANCEL") == [0.0]
        assert server.core.tm.clients == {}
        nursery.cancel_scope.cancel()


async def test_late_180_after_the_record_expired_is_not_cancelled(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=35) as net, trio.open_nursery() as nursery:
        server, uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await trio.sleep_until(t0 + 50)  # the branch ended at ~7 s, its record at +32 s
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(5)
        assert times(uas, t0, method="CANCEL") == []
        assert times(uac, t0, status=180) == []
        assert server.core.tm.clients == {}
        nursery.cancel_scope.cancel()
