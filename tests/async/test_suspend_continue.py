"""KSR.tmx suspend/continue and event waits, end to end in virtual time: a transaction
suspended by one request is resumed from another request's route; every failure case of
t_continue returns -1 without a second final; t_wait_event is woken by t_notify_event,
times out at exactly its timeout, and a waiter cancelled with its transaction is gone."""

from __future__ import annotations

import trio

from trio_sip.modules.tmx import waiters
from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
OTHER = Address("127.0.0.5", 5060)

SUSPEND = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
    "  if KSR.is_INVITE() then\n"
    "    KSR.tm.t_set_fr(0, 3000)\n"
    "    local r = KSR.tmx.t_suspend()\n"
    "    KSR.pv.seti('$shv(suspend)', r)\n"
    "    KSR.pv.seti('$shv(idx)', KSR.pv.get('$T(id_index)'))\n"
    "    KSR.pv.seti('$shv(lbl)', KSR.pv.get('$T(id_label)'))\n"
    "    return\n"
    "  end\n"
    "  local r = KSR.tmx.t_continue(KSR.pv.geti('$shv(idx)'), KSR.pv.geti('$shv(lbl)'),\n"
    "                               'resume')\n"
    "  KSR.sl.sl_send_reply(200, 'continue ' .. r)\n"
    "end\n"
    "function resume()\n"
    "  KSR.pv.sets('$shv(resumed)', KSR.pv.get('$rm'))\n"
    "  KSR.tm.t_relay()\n"
    "end\n"
)


def _answering(ua: SimUA) -> None:
    def answer(u: SimUA, req: SipRequest, src: Address) -> None:
        if req.method == "INVITE":
            u.send_soon(src, u.response_to(req, 200, "OK"))

    ua.on_request = answer


async def _continue(other: SimUA) -> str:
    await other.send(other.request("MESSAGE", f"sip:x@{PROXY}"), PROXY)
    resp = await other.expect_response(200, method="MESSAGE")
    other.received.clear()
    return resp.reason


async def test_suspend_then_continue_from_another_route_relays(autojump_clock,
                                                               write_routes) -> None:
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(SUSPEND))
        uac, uas, other = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, OTHER)
        _answering(uas)
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        await uac.expect_response(100)
        await trio.sleep(1)
        assert server.core.shv["suspend"] == 1
        assert uas.requests() == []  # suspended: nothing relayed
        assert await _continue(other) == "continue 1"
        await uas.expect_request("INVITE")
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 200  # the callee's answer
        assert server.core.shv["resumed"] == "INVITE"  # ran in the suspended transaction
        assert await _continue(other) == "continue -1"  # continued twice
        assert [r.status for r in uac.responses() if r.status >= 200] == [200]
        nursery.cancel_scope.cancel()


async def test_suspended_transaction_gets_408_at_its_fr_and_continue_fails(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(SUSPEND))
        uac, uas, other = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, OTHER)
        start = trio.current_time()
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 408
        got = next(r for r in uac.received if r.msg is final)
        assert got.at - start == 3.0  # exactly t_set_fr(0, 3000)
        assert await _continue(other) == "continue -1"
        await trio.sleep(5)
        assert uas.requests() == []
        assert "resumed" not in server.core.shv
        assert sum(1 for r in uac.responses() if r.status == 408) >= 1
        assert all(r.status in (100, 408) for r in uac.responses())  # no second final
        nursery.cancel_scope.cancel()


async def test_continue_after_cancel_fails(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(SUSPEND))
        uac, uas, other = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, OTHER)
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", branch="z9hG4bKs1",
                                   call_id="cs"), PROXY)
        await uac.expect_response(100)
        await trio.sleep(0.5)
        await uac.send(uac.request("CANCEL", f"sip:bob@{UAS}", branch="z9hG4bKs1",
                                   call_id="cs"), PROXY)
        await uac.expect_response(200, method="CANCEL")
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        await uac.send(uac.request("ACK", f"sip:bob@{UAS}", branch="z9hG4bKs1", call_id="cs",
                                   to_tag=final.to_tag), PROXY)
        assert await _continue(other) == "continue -1"
        await trio.sleep(1)
        assert uas.requests() == []
        assert "resumed" not in server.core.shv
        assert [r.status for r in uac.responses()
                if r.status >= 200 and r.cseq_method == "INVITE"] == [487]
        nursery.cancel_scope.cancel()


async def test_continue_of_an_unknown_transaction_fails(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.sl.sl_send_reply(200, 'continue ' .. KSR.tmx.t_continue(999999, 1, 'f'))\n"
        "end\n"
        "function f() end\n")
    async with SimNetwork(seed=14) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        other = SimUA(net, OTHER)
        assert await _continue(other) == "continue -1"
        nursery.cancel_scope.cancel()


WAIT = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.is_ACK() then return end\n"
    "  if KSR.is_MESSAGE() then\n"
    "    local n = KSR.tmx.t_notify_event('k', 'hello')\n"
    "    KSR.sl.sl_send_reply(200, 'woke ' .. n)\n"
    "    return\n"
    "  end\n"
    "  local v = KSR.tmx.t_wait_event('k', 5000)\n"
    "  KSR.tm.t_reply(200, 'got ' .. tostring(v))\n"
    "end\n"
)


async def test_wait_event_is_woken_by_notify_with_the_value(autojump_clock,
                                                            write_routes) -> None:
    async with SimNetwork(seed=15) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(WAIT))
        a, b, other = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, OTHER)
        await a.send(a.request("OPTIONS", f"sip:x@{PROXY}"), PROXY)
        await b.send(b.request("OPTIONS", f"sip:x@{PROXY}"), PROXY)
        await trio.sleep(1)
        assert len(waiters(server.core)["k"]) == 2
        assert a.responses() == [] and b.responses() == []
        start = trio.current_time()
        assert await _continue(other) == "woke 2"
        for ua in (a, b):
            final = await ua.expect_response(200)
            assert final.reason == "got hello"
            assert next(r for r in ua.received if r.msg is final).at - start < 0.1
        assert waiters(server.core) == {}
        assert await _continue(other) == "woke -1"  # nobody waits any more
        nursery.cancel_scope.cancel()


async def test_wait_event_times_out_at_exactly_its_timeout(autojump_clock,
                                                           write_routes) -> None:
    async with SimNetwork(seed=16) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(WAIT))
        a = SimUA(net, UAC)
        start = trio.current_time()
        await a.send(a.request("OPTIONS", f"sip:x@{PROXY}"), PROXY)
        final = await a.expect_response(200)
        assert final.reason == "got -2"
        assert next(r for r in a.received if r.msg is final).at - start == 5.0
        assert waiters(server.core) == {}
        nursery.cancel_scope.cancel()


async def test_waiter_cancelled_with_its_transaction_is_removed(autojump_clock,
                                                                write_routes) -> None:
    async with SimNetwork(seed=17) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(WAIT))
        uac, other = SimUA(net, UAC), SimUA(net, OTHER)
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", branch="z9hG4bKw1",
                                   call_id="cw"), PROXY)
        await uac.expect_response(100)
        await trio.sleep(0.5)
        assert len(waiters(server.core)["k"]) == 1
        await uac.send(uac.request("CANCEL", f"sip:bob@{UAS}", branch="z9hG4bKw1",
                                   call_id="cw"), PROXY)
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        await trio.sleep(0.1)
        assert waiters(server.core) == {}
        assert await _continue(other) == "woke -1"
        assert server.engine.pending_coroutines == 0
        nursery.cancel_scope.cancel()
