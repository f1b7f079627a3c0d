"""The CANCEL of a late 1xx to an ended INVITE branch is a non-INVITE client
transaction of its own (runtime/transactions.py _LateCancel): with a 487 or a 2xx
arriving meanwhile, at shutdown, over TCP, and after the branch's record expired.
Sent once, as before, a lost CANCEL left the callee ringing."""

from __future__ import annotations

import itertools
import logging

import trio
import trio.testing

from tests.support.routes import proxy_routes
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.testing import SimNetwork, SimUA, start_server, stop_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)

def relay_routes() -> str:
    return proxy_routes("  KSR.tm.t_set_fr(0, 2000)\n  KSR.tm.t_relay()\n")




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


async def test_late_cancel_is_retransmitted_until_answered(
        autojump_clock, write_routes) -> None:
    """Over UDP the CANCEL is retransmitted on Timer E (T1, 2*T1, ... T2) until its final
    response; a second late 180 while it runs starts no second CANCEL."""
    async with SimNetwork(seed=26) as net, trio.open_nursery() as nursery:
        server, uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 2)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        # the callee "lost" the copies at 0, 0.5, 1.5 and 3.5; it answers the fifth
        await trio.sleep_until(t0 + 7.5 + 0.1)
        assert uas.times(t0, "CANCEL") == [0.0, 0.5, 1.5, 3.5, 7.5]
        cancels = [r for r in uas.requests() if r.method == "CANCEL"]
        assert {c.cseq_num for c in cancels} == {1}
        await uas.send(uas.response_to(cancels[-1], 200, "OK"), inv.source)
        await trio.sleep(40)  # no more copies after its 200, and none beyond Timer F
        assert uas.times(t0, "CANCEL") == [0.0, 0.5, 1.5, 3.5, 7.5]
        assert server.core.tm.clients == {}
        assert uac.times(t0, status=180) == []
        nursery.cancel_scope.cancel()


async def test_unanswered_late_cancel_gives_up_at_timer_f(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=27) as net, trio.open_nursery() as nursery:
        server, _, uas, inv, t0 = await ended_branch(net, nursery, write_routes)
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(60)
        sent = uas.times(t0, "CANCEL")
        # T1 = 0.5 doubling to T2 = 4, then every 4 s, until Timer F = 64*T1 = 32 s
        assert sent[:5] == [0.0, 0.5, 1.5, 3.5, 7.5]
        assert all(b - a == 4.0 for a, b in itertools.pairwise(sent[4:]))
        assert sent[-1] < 32.0 <= sent[-1] + 4.0
        assert server.core.tm.clients == {}
        nursery.cancel_scope.cancel()


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
        assert uas.times(t0, method="ACK") == [1.0]
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep_until(t0 + 4)
        assert uas.times(t0, method="CANCEL") == [0.0, 0.5, 1.5, 3.5]
        last = [r for r in uas.requests() if r.method == "CANCEL"][-1]
        await uas.send(uas.response_to(last, 200, "OK"), inv.source)
        await trio.sleep_until(t0 + 10)  # the CANCEL's Timer K (T4) is over
        assert server.core.tm.clients == {}
        # a reordered 180 after the 487: absorbed, no new CANCEL
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(60)
        assert uas.times(t0, method="CANCEL") == [0.0, 0.5, 1.5, 3.5]
        assert uas.times(t0, method="ACK") == [1.0]
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
        assert uac.times(t0, status=180) == []
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
        # a late 180 once stopped (the stopped server's transports have left the
        # network, so it is handed to the layer directly): absorbed, nothing started
        n = len(uas.times(t0, method="CANCEL"))
        late = parse_message_untrusted(uas.response_to(inv.msg, 180, "Ringing"))
        assert isinstance(late, SipResponse)
        assert tm.nursery is None
        assert tm.match_response(late) is True
        await trio.sleep(5)
        assert tm.clients == {}
        assert len(uas.times(t0, method="CANCEL")) == n
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if "late CANCEL" in r.getMessage()]


async def test_late_cancel_over_tcp_is_sent_once(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=34) as net, trio.open_nursery() as nursery:
        server, _uac, uas, inv, t0 = await ended_branch(net, nursery, write_routes, "tcp")
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(20)
        assert uas.times(t0, method="CANCEL") == [0.0]
        assert len(server.core.tm.clients) == 1  # waiting for its final until Timer F
        await trio.sleep(20)
        assert uas.times(t0, method="CANCEL") == [0.0]
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
        assert uas.times(t0, method="CANCEL") == []
        assert uac.times(t0, status=180) == []
        assert server.core.tm.clients == {}
        nursery.cancel_scope.cancel()
