"""Ring 2: branches driven by their server transaction's task (runtime/branch.py,
ServerTx._loop) and the transaction's inbox (runtime/mailbox.py), under faults, in
virtual time (MockClock with autojump, zero link delay: every time asserted is exact).

What the old design (a task per branch, a memory channel per inbox) did and these pin:
a branch added while the loop waits gets its timers served; a CANCEL from the caller
while a send is in progress still reaches the branch; a branch handler that raises ends
that branch only; a lingering branch of an earlier serial leg is still served; the
server stops cleanly while a transaction is parked or sending. And what it did that the
driven design must keep: one branch's slow send (a TCP connect to a host that does not
answer: up to ``tcp_connect_timeout``) does not hold up the other branches of a
parallel fork, nor the responses of those branches.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.routes import proxy_routes
from trio_sip.runtime.branch import Branch
from trio_sip.runtime.mailbox import Mailbox
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS1 = Address("127.0.0.3", 5060)
UAS2 = Address("127.0.0.4", 5060)


def routes(body: str, extra: str = "") -> str:
    return proxy_routes(body, extra)


def invite(ua: SimUA, target: Address = UAS1, name: str = "c1", uri_params: str = "") -> bytes:
    return ua.request("INVITE", f"sip:bob@{target}{uri_params}", branch=f"z9hG4bK{name}",
                      call_id=f"{name}@test", body=b"v=0\r\n")


def cancel(ua: SimUA, target: Address = UAS1, name: str = "c1") -> bytes:
    return ua.request("CANCEL", f"sip:bob@{target}", branch=f"z9hG4bK{name}",
                      call_id=f"{name}@test")


def answer(uas: SimUA, *codes: int) -> None:
    """``uas`` answers the first copy of each INVITE with ``codes`` at once; a CANCEL
    gets 200 and the INVITE 487 (unless a final was sent)."""
    invites: dict[str, SipRequest] = {}
    finals: set[str] = set()

    def handler(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "CANCEL":
            out = [ua.response_to(req, 200, "OK")]
            if req.call_id in invites and req.call_id not in finals:
                finals.add(req.call_id)
                out.append(ua.response_to(invites[req.call_id], 487, "Terminated"))
            ua.send_soon(source, *out)
            return
        if req.method != "INVITE" or req.call_id in invites:
            return
        invites[req.call_id] = req
        if any(c >= 200 for c in codes):
            finals.add(req.call_id)
        if codes:
            ua.send_soon(source, *(ua.response_to(req, c, "R") for c in codes))

    uas.on_request = handler




def slow_sends_to(server: Any, dest: Address, delay: float, ok: bool = False,
                  count: int = 1000, proto: str = "udp") -> list[float]:
    """Make the server's ``proto`` sends to ``dest`` take ``delay`` seconds and then
    succeed or fail (``ok``), as a TCP send does that must connect first to a host that
    does not answer (tcp_connect_timeout, 5 s by default). (A UDP send never waits but
    for room in the socket buffer.) Returns the start times of those sends."""
    transport = server.core.transport_for(proto)
    real: Callable[..., Awaitable[bool]] = transport.send
    started: list[float] = []

    async def send(data: bytes, to: Address, *, conn_id: int | None = None) -> bool:
        if to == dest and len(started) < count:
            started.append(trio.current_time())
            await trio.sleep(delay)
            if not ok:
                return False
        return await real(data, to, conn_id=conn_id)

    transport.send = send
    return started


# -- one branch's slow send must not freeze the others -----------------------------------


async def test_slow_send_on_one_branch_does_not_delay_the_other_branches(
        autojump_clock, write_routes) -> None:
    """Parallel fork to UAS1 and UAS2; the send to UAS1 takes 5 s and fails (a TCP
    connect timing out). With a task per branch, UAS2 got its INVITE at once and its
    200 went up at once. Driven by the transaction's task, ``begin()`` of the branches
    runs one after the other and awaits each send: UAS2's INVITE waits 5 s behind
    UAS1's connect, and the caller waits 5 s for a call that was answered at once."""
    r = write_routes(routes(f"  KSR.corex.append_branch_uri('sip:bob@{UAS2}')\n"
                            "  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r, protos=("udp", "tcp"))
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1, proto="tcp"), SimUA(net, UAS2)
        answer(uas2, 180, 200)
        slow_sends_to(server, UAS1, 5.0, proto="tcp")
        t0 = trio.current_time()
        await uac.send(invite(uac, uri_params=";transport=tcp"), PROXY)
        ok = await uac.expect_response(200, within=20)
        assert ok.status == 200
        await trio.sleep(1)
        assert uas2.times(t0, method="INVITE") == [0.0]
        assert uac.times(t0, status=200) == [0.0]
        assert uas1.times(t0, method="INVITE") == []
        nursery.cancel_scope.cancel()


async def test_slow_send_on_one_branch_does_not_hold_up_responses_of_another(
        autojump_clock, write_routes) -> None:
    """Both INVITEs are out; at 1 s the fr of UAS1's branch (t_set_fr 1 s, no 1xx) has
    nothing to CANCEL yet, UAS1 rings at 2 s and the CANCEL to it takes 5 s to send (a
    TCP connection that has to be made again). UAS2 answers 200 at 3 s: with a task per
    branch it went up at 3 s; driven by one task, the 200 waits in the inbox until the
    CANCEL's send returns at 7 s (and 2xx retransmissions, ACK timing, Timer G of
    the other branches wait with it)."""
    r = write_routes(routes("  KSR.tm.t_set_fr(0, 1000)\n"
                            f"  KSR.corex.append_branch_uri('sip:bob@{UAS2}')\n"
                            "  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r, protos=("udp", "tcp"))
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1, proto="tcp"), SimUA(net, UAS2)
        uas2.on_request = None
        t0 = trio.current_time()
        await uac.send(invite(uac, uri_params=";transport=tcp"), PROXY)
        inv1 = await uas1.expect_request("INVITE")
        inv2 = await uas2.expect_request("INVITE")
        assert isinstance(inv1.msg, SipRequest) and isinstance(inv2.msg, SipRequest)
        await trio.sleep_until(t0 + 0.25)
        # UAS2 rings first, so its fr_inv (not fr) runs: it stays pending
        await uas2.send(uas2.response_to(inv2.msg, 180, "Ringing"), inv2.source)
        await trio.sleep_until(t0 + 2)
        slow_sends_to(server, UAS1, 5.0, ok=True, count=1, proto="tcp")
        await uas1.send(uas1.response_to(inv1.msg, 180, "Ringing"), inv1.source)
        await trio.sleep_until(t0 + 3)
        await uas2.send(uas2.response_to(inv2.msg, 200, "OK", to_tag="uas2"), inv2.source)
        await uac.expect_response(200, within=20)
        assert uac.times(t0, status=200) == [3.0]
        nursery.cancel_scope.cancel()


async def test_a_2xx_goes_up_before_the_cancels_to_the_other_branches(
        autojump_clock, write_routes) -> None:
    """Both branches ring; UAS2 answers 200 at 1 s. §16.7 step 5: the 2xx is forwarded
    at once; step 10: the other branches are CANCELled. The CANCEL to UAS1 takes 5 s to
    send (the connection has to be made again). Driven by one task, the prepare pass
    (the CANCELs) runs before the flush of the upstream sends: the caller gets its 200
    only when the CANCEL's send returns. With a task per branch the transaction flushed
    the 200 first."""
    r = write_routes(routes(f"  KSR.corex.append_branch_uri('sip:bob@{UAS2}')\n"
                            "  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=16) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r, protos=("udp", "tcp"))
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1, proto="tcp"), SimUA(net, UAS2)
        answer(uas1, 180)
        uas2.on_request = None
        t0 = trio.current_time()
        await uac.send(invite(uac, uri_params=";transport=tcp"), PROXY)
        inv2 = await uas2.expect_request("INVITE")
        assert isinstance(inv2.msg, SipRequest)
        await trio.sleep_until(t0 + 1)
        slow_sends_to(server, UAS1, 5.0, ok=True, count=1, proto="tcp")  # the CANCEL
        await uas2.send(uas2.response_to(inv2.msg, 200, "OK", to_tag="uas2"), inv2.source)
        await uac.expect_response(200, within=10)
        assert uac.times(t0, status=200) == [1.0]
        nursery.cancel_scope.cancel()


async def test_after_serving_deadlines_the_inbox_is_served_first(autojump_clock) -> None:
    """ServerTx._wait: normally a deadline that has passed wins over a queued event (a
    timer due at the instant a message arrives fires first); but right after a pass that
    served deadlines, what is queued is taken first, however overdue the next deadline,
    so a stream of overdue timers (a branch whose every send takes longer than T1)
    cannot starve the inbox. (The scenario below no longer reaches this rule: its slow
    TCP branch runs in a task of its own now.)"""
    from types import SimpleNamespace

    from trio_sip.runtime.transactions import ServerTx

    inbox: Mailbox[str] = Mailbox(4)
    tx = SimpleNamespace(inbox=inbox)
    overdue = trio.current_time() - 1
    inbox.put("200 OK")
    assert await ServerTx._wait(tx, overdue, False) is None  # type: ignore[arg-type]
    assert await ServerTx._wait(tx, overdue, True) == "200 OK"  # type: ignore[arg-type]
    assert await ServerTx._wait(tx, overdue, True) is None  # type: ignore[arg-type]


async def test_queued_response_is_not_starved_by_overdue_timers(
        autojump_clock, write_routes) -> None:
    """As above, but every send to UAS1 takes 5 s (a peer whose TCP window stays
    closed until the write times out). The CANCEL's Timer E is overdue each time a send
    returns, and an overdue deadline wins over queued events (Mailbox.get): the loop
    goes from one retransmission to the next and UAS2's 200, queued at 3 s, is not
    forwarded at all while the CANCEL is retransmitted (up to 64*T1)."""
    r = write_routes(routes("  KSR.tm.t_set_fr(0, 1000)\n"
                            f"  KSR.corex.append_branch_uri('sip:bob@{UAS2}')\n"
                            "  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r, protos=("udp", "tcp"))
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1, proto="tcp"), SimUA(net, UAS2)
        t0 = trio.current_time()
        await uac.send(invite(uac, uri_params=";transport=tcp"), PROXY)
        inv1 = await uas1.expect_request("INVITE")
        inv2 = await uas2.expect_request("INVITE")
        assert isinstance(inv1.msg, SipRequest) and isinstance(inv2.msg, SipRequest)
        await trio.sleep_until(t0 + 0.25)
        await uas2.send(uas2.response_to(inv2.msg, 180, "Ringing"), inv2.source)
        await trio.sleep_until(t0 + 2)
        slow_sends_to(server, UAS1, 5.0, ok=True, proto="tcp")
        await uas1.send(uas1.response_to(inv1.msg, 180, "Ringing"), inv1.source)
        await trio.sleep_until(t0 + 3)
        await uas2.send(uas2.response_to(inv2.msg, 200, "OK", to_tag="uas2"), inv2.source)
        await uac.expect_response(200, within=20)
        assert uac.times(t0, status=200) == [3.0]
        nursery.cancel_scope.cancel()


# -- timers still served ---------------------------------------------------------------------


async def test_branch_added_by_a_route_continuation_while_the_loop_waits_is_served(
        autojump_clock, write_routes) -> None:
    """t_newtran, then the route waits 1 s (the transaction's loop is parked on its
    inbox, then opens its nursery), then relays: the new branch's Timer A and fr are
    served from that moment."""
    r = write_routes(routes("  KSR.tm.t_set_fr(0, 4000)\n"
                            "  KSR.tm.t_newtran()\n"
                            "  KSR.async.ms_sleep(1000)\n"
                            "  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        final = await uac.expect_response(final=True, within=20)
        assert final.status == 408
        assert uas1.times(t0, method="INVITE") == [1.0, 1.5, 2.5, 4.5]
        assert uac.times(t0, status=408)[0] == 5.0  # fr (4 s) from the relay at 1 s
        assert server.core.tm.stats["tx_errors"] == 0
        nursery.cancel_scope.cancel()


async def test_caller_cancel_while_the_invite_send_is_in_progress(
        autojump_clock, write_routes) -> None:
    """The INVITE's send takes 2 s; the caller CANCELs at 1 s, during it. The branch
    has nothing to CANCEL until a 1xx comes; UAS1 rings at 3 s and gets the CANCEL at
    once; its 487 goes up to the caller."""
    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        answer(uas1)
        slow = slow_sends_to(server, UAS1, 2.0, ok=True, count=1)
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        await trio.sleep_until(t0 + 1)
        await uac.send(cancel(uac), PROXY)
        inv = await uas1.expect_request("INVITE")
        assert inv.at - t0 == 2.0 and slow[0] == t0
        assert isinstance(inv.msg, SipRequest)
        await trio.sleep_until(t0 + 3)
        await uas1.send(uas1.response_to(inv.msg, 180, "Ringing"), inv.source)
        c = await uas1.expect_request("CANCEL")
        assert c.at - t0 == 3.0
        final = await uac.expect_response(final=True, method="INVITE", within=10)
        assert (final.status, uac.times(t0, status=487)) == (487, [3.0])
        assert server.core.tm.stats["tx_errors"] == 0
        nursery.cancel_scope.cancel()


async def test_lingering_branch_of_an_earlier_serial_leg_is_still_served(
        autojump_clock, write_routes) -> None:
    """UAS1 is silent: fr (1 s) gives a local 408 and the failure route relays to UAS2
    (serial forking); UAS1's branch lingers. UAS1 rings late at 2 s: its branch CANCELs
    it at once, and the callee's 487 is ACKed and absorbed while UAS2's leg goes on and
    its 200 goes up."""
    extra = (
        "function failure()\n"
        "  if KSR.tm.t_is_canceled() > 0 then return end\n"
        f"  KSR.pv.sets('$du', 'sip:{UAS2}')\n"
        "  KSR.tm.t_set_fr(0, 10000)\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    r = write_routes(routes("  KSR.tm.t_set_fr(0, 1000)\n"
                            "  KSR.tm.t_on_failure('failure')\n"
                            "  KSR.tm.t_relay()\n", extra))
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)
        uas1.on_request = None
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        inv1 = await uas1.expect_request("INVITE")
        inv2 = await uas2.expect_request("INVITE", within=5)
        assert inv2.at - t0 == 1.0
        assert isinstance(inv1.msg, SipRequest) and isinstance(inv2.msg, SipRequest)
        await uas2.send(uas2.response_to(inv2.msg, 180, "Ringing", to_tag="uas2"), inv2.source)
        await trio.sleep_until(t0 + 2)
        await uas1.send(uas1.response_to(inv1.msg, 180, "Ringing"), inv1.source)
        c = await uas1.expect_request("CANCEL")
        assert c.at - t0 == 2.0
        assert isinstance(c.msg, SipRequest)
        await uas1.send(uas1.response_to(c.msg, 200, "OK"), c.source)
        await uas1.send(uas1.response_to(inv1.msg, 487, "Terminated"), inv1.source)
        ack = await uas1.expect_request("ACK")
        assert ack.at - t0 == 2.0
        await trio.sleep_until(t0 + 3)
        await uas2.send(uas2.response_to(inv2.msg, 200, "OK", to_tag="uas2"), inv2.source)
        ok = await uac.expect_response(200)
        assert ok.status == 200
        # one 180 (UAS2's), no 487 and no second final upstream
        assert uac.times(t0, status=487) == []
        assert uac.times(t0, status=180) == [1.0]
        assert server.core.tm.stats["tx_errors"] == 0
        nursery.cancel_scope.cancel()


# -- faults in the driver ----------------------------------------------------------------------


async def test_a_branch_handler_that_raises_ends_that_branch_only(
        autojump_clock, write_routes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one branch's handler (here: its response handling raises for UAS1's
    486) ends that branch with a local 500, counted in tx_errors; the transaction and
    its other branch go on, and UAS2's 200 goes up."""
    r = write_routes(routes(f"  KSR.corex.append_branch_uri('sip:bob@{UAS2}')\n"
                            "  KSR.tm.t_relay()\n"))
    real = Branch._on_response

    async def broken(self: Branch, resp: SipResponse, now: float) -> None:
        if resp.status == 486:
            raise RuntimeError("injected")
        await real(self, resp, now)

    monkeypatch.setattr(Branch, "_on_response", broken)
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)
        answer(uas1, 486)
        uas2.on_request = None
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        inv2 = await uas2.expect_request("INVITE")
        assert isinstance(inv2.msg, SipRequest)
        await trio.sleep_until(t0 + 1)
        assert server.core.tm.stats["tx_errors"] == 1
        await uas2.send(uas2.response_to(inv2.msg, 200, "OK", to_tag="uas2"), inv2.source)
        ok = await uac.expect_response(final=True)
        assert (ok.status, uac.times(t0, status=200)) == (200, [1.0])
        nursery.cancel_scope.cancel()


async def test_server_stops_while_a_transaction_sends_and_while_one_waits(
        autojump_clock, write_routes) -> None:
    """Shutdown cancels one transaction parked on its inbox and one in the middle of a
    branch's send (begin): both end, and neither leaves a client or server transaction
    in the layer's tables."""
    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=7) as net:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, net, routes=r)
            uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
            SimUA(net, UAS2)
            answer(uas1, 180)
            slow_sends_to(server, UAS2, 10.0, ok=True)
            await uac.send(invite(uac, UAS1, "a"), PROXY)
            await uac.send(invite(uac, UAS2, "b"), PROXY)
            await uac.expect_response(180)
            await trio.sleep(1)
            tm = server.core.tm
            assert len(tm.servers) == 2 and len(tm.clients) == 2
            nursery.cancel_scope.cancel()
        assert not tm.servers and not tm.clients


# -- the inbox -----------------------------------------------------------------------------


async def test_mailbox_semantics(autojump_clock) -> None:
    box: Mailbox[int] = Mailbox(2)
    # a wake before get: the next get returns None at once, the one after waits
    box.wake()
    assert await box.get() is None
    t0 = trio.current_time()
    assert await box.get(t0 + 1) is None and trio.current_time() == t0 + 1
    # items in order; full means refused
    assert box.put(1) and box.put(2) and not box.put(3)
    assert len(box) == 2
    assert await box.get() == 1
    # a deadline already passed wins over a queued item, which stays queued
    assert await box.get(trio.current_time()) is None
    assert await box.get(-math.inf) is None
    assert await box.get() == 2
    # a put wakes the parked consumer; a wake too, without an item
    async with trio.open_nursery() as n:
        got: list[int | None] = []

        async def consume() -> None:
            got.append(await box.get())
            got.append(await box.get(trio.current_time() + 100))

        n.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        box.put(7)
        await trio.testing.wait_all_tasks_blocked()
        box.wake()
    assert got == [7, None]
    assert trio.current_time() == t0 + 1  # nobody waited out a deadline
    # cancelled while parked: the box stays usable, the waiter is gone
    with trio.move_on_after(1):
        await box.get()
    assert box.put(5) and await box.get() == 5
    # closed: puts are taken silently and dropped, nothing is queued
    box.close()
    assert box.put(9) and len(box) == 0


async def test_a_flood_of_provisionals_does_not_lose_the_final(
        autojump_clock, write_routes) -> None:
    """A callee (or someone spoofing it) sends 400 copies of a 183 and then its 486,
    which it retransmits (Timer G) until ACKed. Copies beyond the inbox's bound may be
    dropped, but the final must get through and up: the caller has the 486 within
    Timer G's first retransmissions, not at the transaction's lifetime."""
    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        uas1.on_request = None
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        inv = await uas1.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        ringing = uas1.response_to(inv.msg, 183, "Progress")
        busy = uas1.response_to(inv.msg, 486, "Busy")
        uas1.send_soon(inv.source, *([ringing] * 400), busy)
        for at in (0.5, 1.5, 3.5):  # Timer G until the ACK
            await trio.sleep_until(t0 + at)
            if not uas1.times(t0, method="ACK"):
                await uas1.send(busy, inv.source)
        final = await uac.expect_response(final=True, method="INVITE", within=200)
        assert final.status == 486
        assert uac.times(t0, status=486)[0] <= 3.5, dict(server.core.tm.stats)
        nursery.cancel_scope.cancel()



async def _flood_during_the_ack(server: Any, uac: SimUA, uas1: SimUA, t0: float) -> None:
    """The callee answers 486; the ACK's send takes 5 s; meanwhile 400 reordered (or
    spoofed) 183s come, and the callee retransmits its 486 (Timer G) until the ACK."""
    await uac.send(invite(uac), PROXY)
    inv = await uas1.expect_request("INVITE")
    assert isinstance(inv.msg, SipRequest)
    slow_sends_to(server, UAS1, 5.0, ok=True, count=1)  # the ACK
    busy = uas1.response_to(inv.msg, 486, "Busy")
    await uas1.send(busy, inv.source)
    await trio.sleep(0.1)
    uas1.send_soon(inv.source, *([uas1.response_to(inv.msg, 183, "P")] * 400))
    for at in (0.5, 1.5, 3.5):  # Timer G until the ACK
        await trio.sleep_until(t0 + at)
        if not uas1.times(t0, method="ACK"):
            await uas1.send(busy, inv.source)
    await trio.sleep_until(t0 + 6)
    assert uas1.times(t0, method="ACK") == [5.0]


async def test_a_flood_during_a_send_does_not_crowd_out_the_branchs_own_final(
        autojump_clock, write_routes) -> None:
    """The branch passes its 486 up when the ACK's send returns, at 5 s, while a flood
    has filled the transaction's inbox. The branch's event goes on the transaction's own
    queue (ServerTx.report), so the 486 is relayed then, once. Through the inbox it was
    dropped (events_dropped), the machine had absorbed the 486 already, and the
    transaction relayed it only at its lifetime (180 s)."""
    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        uas1.on_request = None
        t0 = trio.current_time()
        await _flood_during_the_ack(server, uac, uas1, t0)
        stats = server.core.tm.stats
        assert (stats["4xx_transactions"], stats["rpl_relayed"]) == (1, 1), dict(stats)
        nursery.cancel_scope.cancel()


async def test_a_reliable_branchs_final_is_not_lost_to_a_full_inbox(
        autojump_clock, write_routes) -> None:
    """A branch over TCP runs in a task of its own (a send may wait for a connect), but
    its events go on its transaction's own queue as a driven branch's do (report, then
    wake), never into the bounded inbox that a flood from outside (the caller's
    retransmissions) can fill. Here the inbox is full at the moment the branch tells of
    the callee's 486: through the inbox the event was dropped and the 486 went up only
    at the transaction's lifetime (180 s)."""
    from trio_sip.runtime import transactions as txmod

    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r, protos=("udp", "tcp"))
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1, proto="tcp")
        t0 = trio.current_time()
        await uac.send(invite(uac, uri_params=";transport=tcp"), PROXY)
        inv = await uas1.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        tx = next(iter(server.core.tm.servers.values()))
        branch = tx.branches[0]
        assert not branch.driven
        tell = branch._tell

        def tell_into_a_full_inbox(event: Any) -> None:
            while tx.post(txmod._Retransmission()):
                pass
            tell(event)

        branch._tell = tell_into_a_full_inbox  # type: ignore[method-assign]
        await uas1.send(uas1.response_to(inv.msg, 486, "Busy"), inv.source)
        await uac.expect_response(486, within=2)
        assert server.core.tm.stats["events_dropped"] > 0  # the inbox was full
        assert uac.times(t0, status=486)[0] < 1.0
        nursery.cancel_scope.cancel()


async def test_a_response_the_inbox_cannot_take_is_not_forwarded_statelessly(
        autojump_clock, write_routes) -> None:
    """A response that matches a client transaction whose inbox is full is dropped
    (counted in rpl_dropped; a final is retransmitted by the callee), never forwarded
    statelessly. When ``deliver`` returning False made ``match_response`` say "no
    match", the core forwarded it: the caller got ~150 of the 183s the ICT absorbs, and
    the callee's 486 retransmissions went up outside the transaction, a final it never
    chose (§16.7: a proxy forwards the best final, once)."""
    r = write_routes(routes("  KSR.tm.t_relay()\n"))
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        uas1.on_request = None
        t0 = trio.current_time()
        await _flood_during_the_ack(server, uac, uas1, t0)
        assert server.core.tm.stats["rpl_dropped"] > 0
        assert uac.times(t0, status=183) == []
        # not before the transaction relays it when the ACK's send returns (5 s); then
        # the server transaction's own Timer G copies (the caller sends no ACK here)
        assert uac.times(t0, status=486) == [5.0, 5.5]
        nursery.cancel_scope.cancel()


# -- after the end: what _break_cycles clears ------------------------------------------------


async def test_watch_still_sees_a_resume_after_its_transaction_ended(
        autojump_clock, write_routes) -> None:
    """testing/invariants.Watch reports a Lua coroutine resumed on a transaction whose
    task ended (a route running on a transaction that is gone) by looking at
    ``ctx.transaction.finished``. ServerTx._break_cycles sets ``ctx.transaction`` to
    None when the task ends, so the check sees no transaction and the chaos suite's
    invariant is silently off for every real transaction. (The same None makes such
    a late route's t_relay create a second transaction for an answered request, where
    it used to get "already answered".)"""
    from trio_sip.testing.invariants import Watch

    r = write_routes(routes("  KSR.tm.t_reply(404, 'Not Here')\n",
                            "function late() coroutine.yield(1) return 2 end\n"))
    with Watch() as watch:
        async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
            server = await start_server(nursery, net, routes=r)
            uac = SimUA(net, UAC)
            await uac.send(uac.request("MESSAGE", f"sip:bob@{UAS1}", branch="z9hG4bKm1",
                                       call_id="m1@test", body=b"hi"), PROXY)
            await uac.expect_response(404)
            tx = next(iter(server.core.tm.servers.values()))
            ctx = tx.ctx
            await tx.finished.wait()
            engine = server.core.engine
            step = engine.start(engine.function("late"), ctx)
            assert step.yielded
            engine.resume(step.co_id, ctx, None)
            nursery.cancel_scope.cancel()
    assert [t for _, t, _ in watch.late_resumes] == [tx.index]


async def test_route_code_on_an_ended_transactions_context_does_not_relay_again(
        autojump_clock, write_routes) -> None:
    """Route code that still runs on a request's context after its transaction ended
    (a route that went on as a task of the server after a stateless wait, dns/ops.py,
    then made the transaction and waited again outside it) must not start over: before
    _break_cycles its t_relay found the ended transaction and got -1 ("already
    answered 404"); with ``ctx.transaction`` None it makes a second server transaction
    for the same request and relays the answered request to the callee."""
    r = write_routes(routes("  KSR.tm.t_reply(404, 'Not Here')\n",
                            "function again()\n"
                            "  KSR.pv.seti('$shv(rc)', KSR.tm.t_relay())\n"
                            "end\n"))
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        await uac.send(uac.request("MESSAGE", f"sip:bob@{UAS1}", branch="z9hG4bKm2",
                                   call_id="m2@test", body=b"hi"), PROXY)
        await uac.expect_response(404)
        tx = next(iter(server.core.tm.servers.values()))
        ctx = tx.ctx
        await tx.finished.wait()
        engine = server.core.engine
        engine.start(engine.function("again"), ctx)
        await server.core.flush(ctx)
        await trio.sleep(1)
        assert server.core.shv["rc"] == -1
        assert not server.core.tm.servers and uas1.requests() == []
        nursery.cancel_scope.cancel()


async def test_a_replica_branch_handler_that_raises_does_not_take_the_server_down(
        autojump_clock, write_routes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Branch.run (t_replicate's copy, the local UAC) drives a branch in a task of the
    layer's nursery, without the _drive guard the server transaction has: a bug in its
    handler (here: handling the copy's 486 raises) propagates into the layer's nursery.
    The proxied call must go on, and the server keep serving."""
    r = write_routes(routes(f"  KSR.tm.t_replicate('sip:{UAS2}')\n  KSR.tm.t_relay()\n"))
    real = Branch._on_response

    async def broken(self: Branch, resp: SipResponse, now: float) -> None:
        if resp.status == 486:
            raise RuntimeError("injected")
        await real(self, resp, now)

    monkeypatch.setattr(Branch, "_on_response", broken)
    async with SimNetwork(seed=14) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=r)
        uac, uas1, uas2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)
        answer(uas1, 200)
        answer(uas2, 486)
        await uac.send(invite(uac), PROXY)
        ok = await uac.expect_response(final=True, method="INVITE", within=5)
        assert ok.status == 200
        await trio.sleep(1)
        await uac.send(invite(uac, name="c2"), PROXY)
        ok2 = await uac.expect_response(200, within=5, start=len(uac.received))
        assert ok2.status == 200
        nursery.cancel_scope.cancel()


async def test_branch_timers_run_while_a_failure_route_waits(
        autojump_clock, write_routes) -> None:
    """UAS1 rings and ignores CANCELs. fr_inv (1 s) CANCELs it and the failure route
    runs, and waits 3 s (KSR.async.ms_sleep) before it answers. The failure route waits
    in the transaction's task; the branch's CANCEL must still be retransmitted on Timer
    E (1, 1.5, 2.5, 4.5 s), as it was when the branch had a task of its own, not held
    until the route is done."""
    extra = ("function failure()\n"
             "  KSR.async.ms_sleep(3000)\n"
             "  KSR.tm.t_reply(480, 'Later')\n"
             "end\n")
    r = write_routes(routes("  KSR.tm.t_set_fr(1000, 0)\n"
                            "  KSR.tm.t_on_failure('failure')\n"
                            "  KSR.tm.t_relay()\n", extra))
    async with SimNetwork(seed=15) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=r)
        uac, uas1 = SimUA(net, UAC), SimUA(net, UAS1)
        uas1.on_request = lambda ua, req, source: (
            ua.send_soon(source, ua.response_to(req, 180, "Ringing"))
            if req.method == "INVITE" else None)
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        final = await uac.expect_response(final=True, method="INVITE", within=10)
        assert final.status == 480
        assert uac.times(t0, status=480)[0] == 4.0
        await trio.sleep_until(t0 + 5)
        assert uas1.times(t0, method="CANCEL") == [1.0, 1.5, 2.5, 4.5]
        assert server.core.tm.stats["tx_errors"] == 0
        nursery.cancel_scope.cancel()


async def test_timer_g_runs_for_a_reply_sent_by_a_route_that_goes_on_waiting(
        autojump_clock, write_routes) -> None:
    """A route continuation (the request route after a wait) answers 486 and then waits
    again (e.g. an HTTP query for accounting). The reply arms the IST's Timer G in a
    task other than the transaction's, which is parked on a deadline computed before:
    nothing tells it, so the 486 is not retransmitted until the route ends. Timer G
    must run from the reply (1, 1.5, 2.5, 4.5 s, the caller never ACKs).
    (Also on 80fed91: reply_local posts no wake-up; the same holds for tmx
    t_reply_callid and t_set_max_lifetime from a continuation.)"""
    r = write_routes(routes("  KSR.tm.t_newtran()\n"
                            "  KSR.async.ms_sleep(1000)\n"
                            "  KSR.tm.t_reply(486, 'Busy')\n"
                            "  KSR.async.ms_sleep(10000)\n"))
    async with SimNetwork(seed=17) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=r)
        uac = SimUA(net, UAC)
        SimUA(net, UAS1)
        t0 = trio.current_time()
        await uac.send(invite(uac), PROXY)
        await trio.sleep_until(t0 + 5)
        assert uac.times(t0, status=486) == [1.0, 1.5, 2.5, 4.5]
        nursery.cancel_scope.cancel()
