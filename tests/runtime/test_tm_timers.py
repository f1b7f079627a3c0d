"""Ring 2: the transaction timers of the stateful proxy, through the whole server (parser,
core, Lua routes, tm), on the simulated network in virtual time. Every time asserted
here is exact: MockClock(autojump_threshold=0) and zero link delay make each send
happen at a deadline, and deadlines are sums of binary fractions.

Schedules (RFC 3261 §17, Kamailio tm defaults T1 0.5 s, T2 4 s, fr 30 s, fr_inv 120 s,
wt 5 s):

* INVITE branch over UDP, Timer A: 0, 0.5, 1.5, 3.5, 7.5, 15.5 (doubling, no cap);
  fr 30 s without a provisional gives a local 408, and the retransmissions stop;
* non-INVITE branch, Timer E: 0, 0.5, 1.5, 3.5, 7.5, then every T2; after a 1xx every T2;
* INVITE server transaction, Timer G: the non-2xx final at 0, 0.5, 1.5, 3.5, 7.5, then
  every T2 until the ACK (then Timer I, T4) or Timer H (64*T1);
* wt: a completed transaction lingers exactly wt, then it is gone from the tables.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.support.routes import proxy_routes
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")
PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)

G_SCHEDULE = [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
E_SCHEDULE_30S = [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5]


def relay_routes(before_relay: str = "", extra: str = "") -> str:
    """Runs counted in $shv(runs); ``before_relay`` sets things up before t_relay."""
    return proxy_routes(before_relay + "  KSR.tm.t_relay()\n", extra, count_runs=True)


class Caller:
    """The caller's side of one request, with fixed bytes so that a resend is a
    retransmission (same branch, same Call-ID)."""

    def __init__(self, ua: SimUA, method: str = "INVITE", target: Address = UAS, *,
                 name: str = "c1", ruri: str | None = None) -> None:
        self.ua = ua
        self.method = method
        self.branch = f"z9hG4bK{name}"
        self.call_id = f"{name}@test"
        self.ruri = ruri or f"sip:bob@{target}"
        self.data = ua.request(method, self.ruri, branch=self.branch, call_id=self.call_id,
                               body=b"v=0\r\n" if method == "INVITE" else b"hi")

    async def send(self) -> None:
        await self.ua.send(self.data, PROXY)

    async def ack(self, final: SipResponse) -> None:
        """The ACK of a non-2xx final: same branch, hop by hop (§17.1.1.3)."""
        await self.ua.send(self.ua.request("ACK", self.ruri, branch=self.branch,
                                           call_id=self.call_id, to_tag=final.to_tag), PROXY)

    async def cancel(self) -> None:
        await self.ua.send(self.ua.request("CANCEL", self.ruri, branch=self.branch,
                                           call_id=self.call_id), PROXY)




def at(ua: SimUA, msg: SipResponse | SipRequest) -> float:
    return next(r.at for r in ua.received if r.msg is msg)


def inuse(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.core.tm.statistics()["inuse_transactions"])


async def assert_gone_at(server, when: float, *, before: int = 1) -> None:  # type: ignore[no-untyped-def]
    """The server's transactions (``before`` of them in the table) are there just
    before ``when`` and gone at ``when`` exactly: the table, the client transactions
    and the transaction tasks."""
    tm = server.core.tm
    await trio.sleep_until(when - 0.001)
    assert inuse(server) == before
    assert tm.nursery.child_tasks
    await trio.sleep_until(when)
    await trio.testing.wait_all_tasks_blocked()
    assert inuse(server) == 0
    assert not tm.clients
    assert not tm.nursery.child_tasks


def on_invite(uas: SimUA, *codes: int, also_non_invite: bool = False) -> None:
    """``uas`` answers the first copy of each request with ``codes`` (in order, all at
    once); a CANCEL gets 200 and the INVITE 487."""
    seen: set[str] = set()
    invites: dict[str, SipRequest] = {}

    def handler(ua: SimUA, req: SipRequest, source: Address) -> None:
        key = f"{req.call_id}/{req.cseq_num}/{req.method}"
        if req.method == "CANCEL":
            ua.send_soon(source, ua.response_to(req, 200, "OK"),
                         ua.response_to(invites[req.call_id], 487, "Terminated"))
            return
        if req.method == "ACK" or key in seen:
            return
        seen.add(key)
        if req.method == "INVITE":
            invites[req.call_id] = req
        if req.method == "INVITE" or also_non_invite:
            ua.send_soon(source, *(ua.response_to(req, c, "R") for c in codes))

    uas.on_request = handler


# -- INVITE client side: Timer A, fr, fr_inv ------------------------------------------


async def test_invite_timer_a_then_408_at_fr_and_retransmissions_stop(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)  # the callee never answers
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        trying = await uac.expect_response(100)
        assert at(uac, trying) == t0
        final = await uac.expect_response(final=True, within=60)
        assert final.status == 408
        assert at(uac, final) - t0 == 30.0
        assert uas.times(t0, method="INVITE") == [0, 0.5, 1.5, 3.5, 7.5, 15.5]
        await call.ack(final)
        # Timer I (T4) after the ACK; the branch, settled locally, lingers until then
        await assert_gone_at(server, t0 + 35.0)
        await trio.sleep(60)
        # no INVITE after fr (Timer A stopped), and no CANCEL: nothing rang
        assert uas.times(t0, method="INVITE") == [0, 0.5, 1.5, 3.5, 7.5, 15.5]
        assert uas.times(t0, method="CANCEL") == []
        assert server.core.shv["runs"] == 1  # the ACK was absorbed, not routed
        nursery.cancel_scope.cancel()


async def test_ringing_callee_cancelled_at_fr_inv_and_caller_gets_408(
        autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(5000, 2000)\n"))
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 180)  # rings; answers a CANCEL with 200 + 487
        t0 = trio.current_time()
        await Caller(uac).send()
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - t0 == 5.0  # fr_inv from t_set_fr, not fr (2 s)
        final = await uac.expect_response(final=True)
        assert (final.status, at(uac, final) - t0) == (408, 5.0)
        await trio.sleep(40)
        # the callee's 487 was ACKed by the branch and not forwarded: one final only
        # (the 408 several times: Timer G, the caller never ACKs here)
        assert {r.status for r in uac.responses() if r.status >= 200} == {408}
        assert uas.times(t0, method="ACK") == [5.0]
        assert uas.times(t0, method="INVITE") == [0]  # a 180 stops Timer A
        assert server.core.tm.statistics()["rpl_absorbed"] >= 1
        nursery.cancel_scope.cancel()


async def test_unanswered_cancel_after_fr_inv_gives_up_at_64_t1(
        autojump_clock, write_routes) -> None:
    """fr_inv fires, the CANCEL is never answered (the callee rings on and ignores it):
    the CANCEL is retransmitted (Timer E) until 64*T1, then the branch gives up and the
    transaction ends. Before the fix the branch, already settled by its 408, spun on the
    passed 64*T1 deadline forever (virtual time stood still: the test hung)."""
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(5000, 2000)\n"))
    async with SimNetwork(seed=20) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 180)
        uas.on_request = lambda ua, req, source: (  # rings, ignores the CANCEL
            ua.send_soon(source, ua.response_to(req, 180, "Ringing"))
            if req.method == "INVITE" else None)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        final = await uac.expect_response(final=True, within=20)
        assert (final.status, at(uac, final) - t0) == (408, 5.0)
        await call.ack(final)
        # the IST ended at 10 s (Timer I); the transaction's task waits for the
        # CANCEL's outcome, 64*T1 after it
        await assert_gone_at(server, t0 + 5.0 + 32.0, before=0)
        assert uas.times(t0, method="CANCEL") == [5 + t for t in G_SCHEDULE]
        nursery.cancel_scope.cancel()


async def test_t_set_fr_beyond_64_t1_is_honoured(autojump_clock, write_routes) -> None:
    # fr 45 s: before the fix Timer B (64*T1 = 32 s) cut the branch first
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(0, 45000)\n"))
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 45.0)
        assert uas.times(t0, method="INVITE") == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
        nursery.cancel_scope.cancel()


async def test_t_set_retr_before_relay_sets_timer_a(autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_retr(250, 1000)\n"))
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 30.0)  # fr, not 64*T1 = 16 s
        # Timer A doubles from the new T1, without the T2 cap
        assert uas.times(t0, method="INVITE") == [0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
        # ...and the 408 goes up with Timer G from the new T1, capped at the new T2
        await trio.sleep(6)
        assert uac.times(t0, status=408) == [30, 30.25, 30.75, 31.75, 32.75, 33.75, 34.75,
                                             35.75]
        nursery.cancel_scope.cancel()


async def test_t_set_retr_mid_transaction_takes_effect_after_the_current_interval(
        autojump_clock, write_routes) -> None:
    # the onreply route changes T2 to 1 s when the 100 comes, at 1.5 s: Timer E was
    # armed for 3.5 s (interval 2 s) and keeps that deadline; then Proceeding resends
    # every (new) T2
    routes = write_routes(relay_routes(
        "  KSR.tm.t_on_reply('on_reply')\n",
        "function on_reply()\n"
        "  if KSR.pv.get('$rs') == 100 then KSR.tm.t_set_retr(500, 1000) end\n"
        "end\n"))
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        copies = 0

        def third_copy_gets_100(ua: SimUA, req: SipRequest, source: Address) -> None:
            nonlocal copies
            copies += 1
            if copies == 3:
                ua.send_soon(source, ua.response_to(req, 100, "Trying"))

        uas.on_request = third_copy_gets_100
        t0 = trio.current_time()
        await Caller(uac, "MESSAGE").send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 30.0)  # fr: a 1xx does not extend it
        assert uas.times(t0, method="MESSAGE") == [0, 0.5, 1.5, *(3.5 + i for i in range(27))]
        assert uac.times(t0, status=100) == []
        nursery.cancel_scope.cancel()


async def test_t_set_max_lifetime_cancels_the_ringing_branch(
        autojump_clock, write_routes) -> None:
    # lifetime 10 s beats fr_inv (120 s): the branch gets a local 408 AND a CANCEL
    # (before the fix the 408 made it non-pending and the CANCEL was never sent)
    routes = write_routes(relay_routes("  KSR.tm.t_set_max_lifetime(10000, 0)\n"))
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 180)
        t0 = trio.current_time()
        call = Caller(uac)
        await call.send()
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - t0 == 10.0
        final = await uac.expect_response(final=True)
        assert (final.status, at(uac, final) - t0) == (408, 10.0)
        await call.ack(final)
        await assert_gone_at(server, t0 + 15.0)  # ACK at 10, Timer I
        assert uas.times(t0, method="ACK") == [10.0]  # the 487 was ACKed downstream
        nursery.cancel_scope.cancel()


async def test_lifetime_expiry_with_a_callee_that_never_answers_ends_cleanly(
        autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_max_lifetime(10000, 0)\n"))
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        final = await uac.expect_response(final=True, within=20)
        assert (final.status, at(uac, final) - t0) == (408, 10.0)
        assert uas.times(t0, method="INVITE") == [0, 0.5, 1.5, 3.5, 7.5]
        # no ACK from the caller: Timer G until Timer H (64*T1) ends it
        await assert_gone_at(server, t0 + 42.0)
        assert uac.times(t0, status=408) == [10 + t for t in G_SCHEDULE]
        nursery.cancel_scope.cancel()


async def test_restart_fr_on_each_reply_on_restarts_fr_inv_on_each_180(
        autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(4000, 0)\n"))
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        for delay in (0, 3, 3):  # 180 at 0, 3 and 6 s
            await trio.sleep(delay)
            await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - t0 == 10.0  # 6 + fr_inv 4
        nursery.cancel_scope.cancel()


async def test_restart_fr_on_each_reply_off_restarts_only_on_increasing_codes(
        autojump_clock, write_routes) -> None:
    # Kamailio with restart_fr_on_each_reply=0: fr_inv starts on the first 1xx and
    # restarts on a higher code >= 180 only (100 at 0, 180 at 2: restart; 180 at 5: no)
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(4000, 0)\n"))
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes,
                           config={"tm": {"restart_fr_on_each_reply": False}})
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 100, "Trying"), inv.source)
        await trio.sleep(2)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(3)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - t0 == 6.0
        nursery.cancel_scope.cancel()


async def test_restart_fr_on_each_reply_off_single_180(autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(4000, 0)\n"))
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes,
                           config={"tm": {"restart_fr_on_each_reply": False}})
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac).send()
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        for delay in (0, 3, 3):  # the same 180 again at 3 and 6 s: no restart
            await trio.sleep(delay)
            await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - t0 == 4.0
        nursery.cancel_scope.cancel()


# -- non-INVITE client side: Timer E ---------------------------------------------------


async def test_non_invite_timer_e_capped_at_t2_then_408_at_fr(autojump_clock) -> None:
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac, "MESSAGE").send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 30.0)
        assert uas.times(t0, method="MESSAGE") == E_SCHEDULE_30S
        await assert_gone_at(server, t0 + 35.0)  # Timer J = wt
        await trio.sleep(10)
        assert uas.times(t0, method="MESSAGE") == E_SCHEDULE_30S  # and no more
        nursery.cancel_scope.cancel()


async def test_non_invite_after_a_1xx_retransmits_every_t2(autojump_clock) -> None:
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 100, also_non_invite=True)  # 100 Trying on the first copy, then silence
        t0 = trio.current_time()
        await Caller(uac, "MESSAGE").send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 30.0)
        # E was armed for 0.5 s; from then on, in Proceeding, every T2
        assert uas.times(t0, method="MESSAGE") == [0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5,
                                                    28.5]
        assert uac.times(t0, status=100) == []  # a 100 is not forwarded (§16.7 step 5)
        nursery.cancel_scope.cancel()


# -- server side: Timer G/H/I, wt ------------------------------------------------------


async def test_ist_retransmits_the_non_2xx_final_with_timer_g_until_timer_h(
        autojump_clock) -> None:
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 486)
        t0 = trio.current_time()
        await Caller(uac).send()
        busy = await uac.expect_response(486)
        t1 = at(uac, busy)
        assert t1 == t0
        await assert_gone_at(server, t1 + 32.0)  # Timer H = 64*T1: no ACK came
        assert uac.times(t1, status=486) == G_SCHEDULE
        assert server.core.tm.statistics()["timer_h_expired"] == 1
        assert uas.times(t0, method="ACK") == [0]  # downstream, the branch ACKed at once
        await trio.sleep(10)
        assert uac.times(t1, status=486) == G_SCHEDULE
        nursery.cancel_scope.cancel()


async def test_ist_stops_timer_g_on_the_ack_and_lingers_timer_i(autojump_clock) -> None:
    async with SimNetwork(seed=14) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 486)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        busy = await uac.expect_response(486)
        await trio.sleep(0.75)  # two copies came (0 and 0.5)
        await call.ack(busy)
        await call.ack(busy)  # a retransmitted ACK is absorbed too (Confirmed)
        await assert_gone_at(server, t0 + 0.75 + 5.0)  # Timer I = T4
        assert uac.times(t0, status=486) == [0, 0.5]
        assert server.core.tm.statistics()["ack_absorbed"] == 2
        nursery.cancel_scope.cancel()


async def test_wt_linger_after_a_2xx_and_after_a_non_invite_final(autojump_clock) -> None:
    async with SimNetwork(seed=15) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 180, 200, also_non_invite=False)
        t0 = trio.current_time()
        await Caller(uac).send()
        ok = await uac.expect_response(200)
        assert at(uac, ok) == t0
        # Timer L (IST) and Timer M (the branch's ICT) are both wt
        await assert_gone_at(server, t0 + 5.0)

        on_invite(uas, 200, also_non_invite=True)
        t2 = trio.current_time()
        await Caller(uac, "MESSAGE", name="m1").send()
        await uac.expect_response(200, method="MESSAGE")
        await assert_gone_at(server, t2 + 5.0)  # Timer J = wt (and K = T4 = 5 s)
        nursery.cancel_scope.cancel()


async def test_tm_config_params(autojump_clock) -> None:
    config = {"tm": {"retr_timer1": 250, "retr_timer2": 1000, "fr_timer": 4000,
                     "wt_timer": 2000, "t4": 2000}}
    async with SimNetwork(seed=16) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL, config=config)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        t0 = trio.current_time()
        await Caller(uac, "MESSAGE").send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 4.0)
        assert uas.times(t0, method="MESSAGE") == [0, 0.25, 0.75, 1.75, 2.75, 3.75]
        await assert_gone_at(server, t0 + 6.0)  # wt 2 s

        t1 = trio.current_time()
        call = Caller(uac, name="c2")
        await call.send()
        final = await uac.expect_response(final=True, method="INVITE", within=60)
        assert (final.status, at(uac, final) - t1) == (408, 4.0)
        assert uas.times(t1, method="INVITE") == [0, 0.25, 0.75, 1.75, 3.75]
        await trio.sleep_until(t1 + 5.8)
        assert uac.times(t1, status=408) == [4, 4.25, 4.75, 5.75]  # G from T1 0.25
        await call.ack(final)
        await assert_gone_at(server, t1 + 5.8 + 2.0)  # Timer I = t4
        nursery.cancel_scope.cancel()


# -- TCP: no retransmissions ------------------------------------------------------------


async def test_tcp_has_no_retransmissions(autojump_clock) -> None:
    async with SimNetwork(seed=17) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL, protos=("tcp",))
        uac, uas = SimUA(net, UAC, proto="tcp"), SimUA(net, UAS, proto="tcp")
        ruri = f"sip:bob@{UAS};transport=tcp"
        t0 = trio.current_time()
        await Caller(uac, ruri=ruri).send()
        final = await uac.expect_response(final=True, within=60)
        assert (final.status, at(uac, final) - t0) == (408, 30.0)
        assert uas.times(t0, method="INVITE") == [0]  # no Timer A

        t1 = trio.current_time()
        await Caller(uac, "MESSAGE", name="m1", ruri=ruri).send()
        final = await uac.expect_response(final=True, method="MESSAGE", within=60)
        assert (final.status, at(uac, final) - t1) == (408, 30.0)
        assert uas.times(t1, method="MESSAGE") == [0]  # no Timer E
        # J is zero on a reliable transport: the MESSAGE transaction ended at once
        assert inuse(server) == 1  # only the INVITE, waiting for its ACK (Timer H)

        on_invite(uas, 486)
        t2 = trio.current_time()
        await Caller(uac, name="c3", ruri=ruri).send()
        busy = await uac.expect_response(486)
        await trio.sleep(40)
        assert uac.times(t2, status=486) == [0]  # no Timer G
        assert inuse(server) == 0  # Timer H ended both INVITE transactions
        assert server.core.tm.statistics().get("retransmissions", 0) == 0
        assert busy.status == 486
        nursery.cancel_scope.cancel()


# -- retransmitted requests are absorbed ----------------------------------------------------


async def test_retransmitted_invite_is_answered_from_the_transaction(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=18) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        await uac.expect_response(100)
        await trio.sleep(0.25)
        await call.send()  # before any 1xx from downstream: the 100 again
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await uac.expect_response(180)
        await trio.sleep(1)
        await call.send()  # after the 180: the 180 again
        await trio.sleep(0.1)
        assert uac.times(t0, status=100) == [0, 0.25]
        assert uac.times(t0, status=180) == [0.25, 1.25]
        # the callee got the proxy's copies only (Timer A: 0, then a 1xx stopped it)
        assert uas.times(t0, method="INVITE") == [0]
        await uas.send(uas.response_to(inv.msg, 486, "Busy"), inv.source)
        busy = await uac.expect_response(486)
        await call.send()  # after the final: the final again
        await trio.sleep(0.1)
        assert len(uac.times(t0, status=486)) == 2
        await call.ack(busy)
        assert server.core.shv["runs"] == 1  # the script ran once
        assert server.core.tm.statistics()["req_retransmissions"] == 3
        nursery.cancel_scope.cancel()


async def test_retransmitted_non_invite_is_absorbed_then_answered(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=19) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac, "MESSAGE")
        t0 = trio.current_time()
        await call.send()
        await trio.sleep(0.25)
        await call.send()  # Trying: absorbed, nothing to answer yet
        req = await uas.expect_request("MESSAGE")
        assert isinstance(req.msg, SipRequest)
        await trio.sleep(0.125)
        await uas.send(uas.response_to(req.msg, 200, "OK"), req.source)
        await uac.expect_response(200)
        await call.send()  # Completed: the 200 again
        await trio.sleep(0.1)
        assert uac.times(t0, status=200) == [0.375, 0.375]
        assert server.core.shv["runs"] == 1
        assert uas.times(t0, method="MESSAGE") == [0]
        nursery.cancel_scope.cancel()


# -- after wt: late copies are still answered as the RFC's longer timers would ------------


async def test_invite_retransmitted_after_wt_is_absorbed_not_routed_again(
        autojump_clock, write_routes) -> None:
    """wt (Timer L here) is 5 s where RFC 6026 has 64*T1: an INVITE copy from a caller
    that missed every 2xx must not run the script again (a second transaction: the
    callee gets a merged request). Before the fix it did."""
    async with SimNetwork(seed=21) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 200)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        await uac.expect_response(200)
        await assert_gone_at(server, t0 + 5.0)  # Timer L = wt
        await trio.sleep(2)
        await call.send()  # at 7 s
        await trio.sleep(1)
        assert server.core.shv["runs"] == 1
        assert uas.times(t0, method="INVITE") == [0]
        assert [r.status for r in uac.responses()] == [100, 200]  # absorbed silently
        nursery.cancel_scope.cancel()


async def test_non_invite_retransmitted_after_wt_gets_the_final_again(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=22) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        on_invite(uas, 200, also_non_invite=True)
        call = Caller(uac, "MESSAGE")
        t0 = trio.current_time()
        await call.send()
        await uac.expect_response(200)
        await assert_gone_at(server, t0 + 5.0)  # Timer J = wt
        await trio.sleep_until(t0 + 8)
        await call.send()  # the client never got the 200: it retransmits (Timer E)
        await trio.sleep(0.1)
        assert uac.times(t0, status=200) == [0, 8]
        assert server.core.shv["runs"] == 1
        assert uas.times(t0, method="MESSAGE") == [0]
        # 64*T1 (32 s) after the transaction ended, the request is a new one
        await trio.sleep_until(t0 + 5 + 32)
        await call.send()
        await trio.sleep(0.1)
        assert server.core.shv["runs"] == 2
        nursery.cancel_scope.cancel()


async def test_final_retransmitted_after_timer_d_is_acked_not_forwarded(
        autojump_clock, write_routes) -> None:
    """Timer D is wt (5 s) where RFC 3261 wants >= 32 s: a callee whose ACKs were lost
    retransmits its final later. It is ACKed again and absorbed (§16.7 step 10); before,
    it was forwarded statelessly: the caller got a final after its transaction ended."""
    async with SimNetwork(seed=23) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        busy = uas.response_to(inv.msg, 486, "Busy")
        await uas.send(busy, inv.source)
        final = await uac.expect_response(486)
        await call.ack(final)
        await trio.sleep_until(t0 + 8)  # the branch ended at 5 s (Timer D = wt)
        await uas.send(busy, inv.source)
        await trio.sleep(1)
        assert uas.times(t0, method="ACK") == [0, 8]
        assert uac.times(t0, status=486) == [0]
        # both ACKs copy the INVITE as the proxy sent it (§17.1.1.3): its top Via (the
        # proxy's branch, which the callee matches on) and its R-URI, not the caller's
        acks = [r for r in uas.requests() if r.method == "ACK"]
        sent_branch = inv.msg.via1.branch if inv.msg.via1 else None
        assert [a.via1.branch if a.via1 else None for a in acks] == [sent_branch] * 2
        assert {a.ruri_text for a in acks} == {inv.msg.ruri_text}
        nursery.cancel_scope.cancel()


async def test_a_final_after_the_ended_branch_record_expired_is_not_forwarded(
        autojump_clock, write_routes) -> None:
    """The record of an ended INVITE branch lives 64*T1 (32 s). A callee that sends a
    final later still (after a long partition) answers a branch of ours whose
    transaction sent its final long ago: it is absorbed, not forwarded statelessly (the
    caller got a 486 long after its transaction had ended: chaos seed 1133). A 2xx would
    still be forwarded (§16.7 step 5)."""
    async with SimNetwork(seed=23) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(relay_routes()))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        inv = await uas.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        busy = uas.response_to(inv.msg, 486, "Busy")
        await uas.send(busy, inv.source)
        final = await uac.expect_response(486)
        await call.ack(final)
        # the branch ended at 5 s (Timer D = wt), its record at 5 + 32 s
        await trio.sleep_until(t0 + 60)
        await uas.send(busy, inv.source)
        await uas.send(uas.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(1)
        assert uac.times(t0, status=486) == [0]
        assert uac.times(t0, status=180) == []
        assert uas.times(t0, method="ACK") == [0]  # no record left to build an ACK from
        assert server.core.tm.stats["rpl_absorbed"] >= 2
        nursery.cancel_scope.cancel()


async def test_late_180_on_a_branch_that_gave_up_is_cancelled(
        autojump_clock, write_routes) -> None:
    """fr fired on a silent branch (local 408). A 180 that comes later, while the
    transaction lingers or after it ended, is CANCELled (Kamailio cancel_b_method 1)
    and not forwarded; before, the callee rang on, unCANCELled."""
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(0, 2000)\n"))
    async with SimNetwork(seed=24) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, ua1 = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        inv = await ua1.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        final = await uac.expect_response(final=True)
        assert (final.status, at(uac, final) - t0) == (408, 2.0)
        await call.ack(final)
        await trio.sleep_until(t0 + 4)
        await ua1.send(ua1.response_to(inv.msg, 180, "Ringing"), inv.source)
        cancel = await ua1.expect_request("CANCEL")
        assert cancel.at - t0 == 4.0  # the lingering branch CANCELs at once
        assert isinstance(cancel.msg, SipRequest)
        await ua1.send(ua1.response_to(cancel.msg, 200, "OK"), cancel.source)
        await ua1.send(ua1.response_to(inv.msg, 487, "Terminated"), inv.source)
        await trio.sleep(1)
        assert ua1.times(t0, method="ACK") == [4.0]
        assert uac.times(t0, status=180) == []
        assert {r.status for r in uac.responses() if r.status >= 200} == {408}
        await assert_gone_at(server, t0 + 7.0)  # Timer I (5 s) after the ACK at 2 s
        # a 180 after the 487 is a reordered one: absorbed, nothing sent
        await ua1.send(ua1.response_to(inv.msg, 180, "Ringing"), inv.source)
        await trio.sleep(1)
        assert ua1.times(t0, method="CANCEL") == [4.0]
        assert uac.times(t0, status=180) == []
        nursery.cancel_scope.cancel()


async def test_180_after_the_transaction_ended_is_cancelled(
        autojump_clock, write_routes) -> None:
    routes = write_routes(relay_routes("  KSR.tm.t_set_fr(0, 2000)\n"))
    async with SimNetwork(seed=25) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, ua1 = SimUA(net, UAC), SimUA(net, UAS)
        call = Caller(uac)
        t0 = trio.current_time()
        await call.send()
        inv = await ua1.expect_request("INVITE")
        assert isinstance(inv.msg, SipRequest)
        final = await uac.expect_response(final=True)
        await call.ack(final)
        await assert_gone_at(server, t0 + 7.0)  # the lingering branch ended with it
        await trio.sleep_until(t0 + 10)
        await ua1.send(ua1.response_to(inv.msg, 180, "Ringing"), inv.source)
        cancel = await ua1.expect_request("CANCEL")
        assert cancel.at - t0 == 10.0
        assert isinstance(cancel.msg, SipRequest)
        assert cancel.msg.cseq_num == 1 and cancel.msg.vias[0].branch == inv.msg.vias[0].branch
        await ua1.send(ua1.response_to(inv.msg, 487, "Terminated"), inv.source)
        ack = await ua1.expect_request("ACK")
        assert ack.at - t0 == 10.0
        await trio.sleep(1)
        assert uac.times(t0, status=180) == []
        assert {r.status for r in uac.responses() if r.status >= 200} == {408}
        nursery.cancel_scope.cancel()

