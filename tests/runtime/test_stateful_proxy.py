"""Ring 2/3: the stateful proxy (routes/stateful.lua) on the simulated network, in
virtual time, with exact timer assertions."""

from __future__ import annotations

from pathlib import Path

import trio

from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")
PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
UAS2 = Address("127.0.0.4", 5060)


def invite_to(ua: SimUA, target: Address, **kw: object) -> bytes:
    return ua.request("INVITE", f"sip:bob@{target}", body=b"v=0\r\n", **kw)  # type: ignore[arg-type]


def answer(uas: SimUA, *codes: int) -> None:
    """Make ``uas`` answer every INVITE with ``codes`` in order, ACK-free."""

    def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            ua.send_soon(source, *(ua.response_to(req, code, "R") for code in codes))
        elif req.method in ("BYE", "CANCEL"):
            ua.send_soon(source, ua.response_to(req, 200, "OK"))

    uas.on_request = on_request


async def test_call_setup_with_100_180_200_ack_bye(autojump_clock) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        answer(uas, 180, 200)
        await uac.send(invite_to(uac, UAS), PROXY)
        trying = await uac.expect_response(100)
        assert trying.to_tag == ""
        await uac.expect_response(180)
        ok = await uac.expect_response(200)
        assert len(ok.vias) == 1
        # the UAS saw our Via, its Record-Route and Max-Forwards decremented
        inv = uas.requests()[0]
        assert inv.vias[0].host == "127.0.0.1"
        assert inv.get("Record-Route") is not None
        # ACK and BYE follow the route set through the proxy
        rr = ok.get("Record-Route")
        ack = uac.request("ACK", f"sip:uas@{UAS}", call_id=ok.call_id, cseq=1,
                          to_tag=ok.to_tag, headers=[("Route", rr or "")])
        await uac.send(ack, PROXY)
        await uas.expect_request("ACK")
        bye = uac.request("BYE", f"sip:uas@{UAS}", call_id=ok.call_id, cseq=2,
                          to_tag=ok.to_tag, headers=[("Route", rr or "")])
        await uac.send(bye, PROXY)
        await uac.expect_response(200, method="BYE")
        stats = server.core.tm.statistics()
        assert stats["UAS_transactions"] == 2  # INVITE and BYE (the ACK has none)
        assert stats["2xx_transactions"] == 2
        # every transaction is gone once wt (5 s) has passed
        await trio.sleep(6)
        assert server.core.tm.statistics()["inuse_transactions"] == 0
        assert not server.core.tm.clients
        nursery.cancel_scope.cancel()


async def test_invite_retransmissions_follow_timer_a_and_fr_gives_408(autojump_clock) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)  # the UAS never answers
        start = trio.current_time()
        await uac.send(invite_to(uac, UAS), PROXY)
        final = await uac.expect_response(408, within=60)
        times = [r.at - start for r in uas.received]
        # Timer A: T1 doubling: 0, 0.5, 1.5, 3.5, 7.5, 15.5 (then fr_timer 30 s ends it)
        assert times == [0, 0.5, 1.5, 3.5, 7.5, 15.5]
        got = next(r for r in uac.received if r.msg is final)
        assert got.at - start == 30.0  # fr_timer, Kamailio's default
        # no provisional: no CANCEL was sent
        assert all(r.msg.method == "INVITE" for r in uas.received)  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_ringing_callee_is_cancelled_after_fr_inv(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        "  KSR.tm.t_set_fr(5000, 2000)\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        answer(uas, 180)
        start = trio.current_time()
        await uac.send(invite_to(uac, UAS), PROXY)
        await uac.expect_response(180)
        cancel = await uas.expect_request("CANCEL", within=20)
        assert cancel.at - start == 5.0  # fr_inv_timer set by t_set_fr(5000, ...)
        final = await uac.expect_response(final=True, within=60)
        assert final.status == 408
        nursery.cancel_scope.cancel()


async def test_parallel_forking_busy_and_answer(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        f"  KSR.corex.append_branch_uri('sip:alice@{UAS2}')\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, busy, ok = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, UAS2)
        answer(busy, 486)
        answer(ok, 180, 200)
        await uac.send(invite_to(uac, UAS), PROXY)
        final = await uac.expect_response(final=True)
        assert final.status == 200
        await trio.sleep(1)
        assert [r.status for r in uac.responses() if r.status >= 200] == [200]
        nursery.cancel_scope.cancel()


async def test_serial_forking_from_failure_route(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        "  KSR.tm.t_on_failure('next_hop')\n"
        "  KSR.tm.t_relay()\n"
        "end\n"
        "function next_hop()\n"
        "  if KSR.tm.t_check_status('486') > 0 then\n"
        f"    KSR.pv.sets('$ru', 'sip:alice@{UAS2}')\n"
        "    KSR.tm.t_relay()\n"
        "  end\n"
        "end\n")
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, busy, ok = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, UAS2)
        answer(busy, 486)
        answer(ok, 200)
        await uac.send(invite_to(uac, UAS), PROXY)
        final = await uac.expect_response(final=True)
        assert final.status == 200
        got = await ok.expect_request("INVITE")
        assert got.msg.ruri_text == f"sip:alice@{UAS2}"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_6xx_cancels_the_other_branch(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        f"  KSR.corex.append_branch_uri('sip:alice@{UAS2}')\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, decline, ringing = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, UAS2)
        answer(ringing, 180)
        await uac.send(invite_to(uac, UAS), PROXY)
        inv = await decline.expect_request("INVITE")
        await ringing.expect_request("INVITE")
        await trio.sleep(0.1)
        decline.send_soon(inv.source, decline.response_to(inv.msg, 603, "Decline"))  # type: ignore[arg-type]
        await ringing.expect_request("CANCEL")
        final = await uac.expect_response(final=True)
        assert final.status == 603
        nursery.cancel_scope.cancel()


async def test_caller_cancel_gets_200_and_487(autojump_clock) -> None:
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)

        def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
            if req.method == "INVITE":
                ua.invite = req  # type: ignore[attr-defined]
                ua.send_soon(source, ua.response_to(req, 180, "Ringing"))
            elif req.method == "CANCEL":
                ua.send_soon(source, ua.response_to(req, 200, "OK"),
                             ua.response_to(ua.invite, 487, "Terminated"))  # type: ignore[attr-defined]

        uas.on_request = on_request
        invite = invite_to(uac, UAS, branch="z9hG4bKcancelme", call_id="c1")
        await uac.send(invite, PROXY)
        await uac.expect_response(180)
        cancel = uac.request("CANCEL", f"sip:bob@{UAS}", branch="z9hG4bKcancelme",
                             call_id="c1")
        await uac.send(cancel, PROXY)
        await uac.expect_response(200, method="CANCEL")
        final = await uac.expect_response(487, method="INVITE")
        assert isinstance(final, SipResponse)
        # the ACK for the 487 is absorbed by the proxy (hop by hop)
        ack = uac.request("ACK", f"sip:bob@{UAS}", branch="z9hG4bKcancelme", call_id="c1",
                          to_tag=final.to_tag)
        await uac.send(ack, PROXY)
        await trio.sleep(1)
        assert sum(1 for r in uas.requests() if r.method == "ACK") == 1  # the proxy's own
        nursery.cancel_scope.cancel()
