"""Ring 3: the stateless proxy with Lua routes, end to end on the simulated network.

Addresses are on 127.0.0.0/8 so the server's loopback-only guard stays on; the
simulated network needs no real sockets and runs in virtual time.
"""

from __future__ import annotations

import logging

import pytest
import trio

from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)


async def test_options_to_the_server_gets_200_with_received_and_rport(autojump_clock) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac = SimUA(net, Address("127.0.0.2", 5071))
        # sent-by names another host: the reply must go to the source (received)
        req = uac.request("OPTIONS", "sip:127.0.0.1:5060").replace(
            b"127.0.0.2:5071;branch", b"127.0.0.9:5071;branch")
        await uac.send(req, PROXY)
        resp = await uac.expect_response(200)
        via = resp.via1
        assert via is not None
        assert via.received == "127.0.0.2"
        assert via.rport == "5071"
        assert resp.to_tag  # a generated To-tag
        assert resp.get("Allow") is not None
        nursery.cancel_scope.cancel()


async def test_invite_relayed_with_via_record_route_and_max_forwards(autojump_clock) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        await uac.send(uac.request("INVITE", "sip:bob@127.0.0.3:5060", body=b"v=0\r\n"), PROXY)
        got = await uas.expect_request("INVITE")
        inv = got.msg
        assert isinstance(inv, SipRequest)
        vias = inv.vias
        assert len(vias) == 2
        assert vias[0].host == "127.0.0.1" and vias[0].port == 5060
        assert vias[0].branch and vias[0].branch.startswith("z9hG4bK")
        # RFC 3581 §4: with rport, received is added even when it equals sent-by
        assert vias[1].received == "127.0.0.2" and vias[1].rport == "5060"
        # rr append_fromtag is on by default, as in Kamailio
        assert inv.get("Record-Route") == "<sip:127.0.0.1:5060;lr;ftag=ft1>"
        assert inv.get("Max-Forwards") == "69"
        assert inv.body == b"v=0\r\n"
        # The headers above our Via are untouched bytes of the original.
        assert inv.raw.endswith(b"v=0\r\n")
        await uas.send(uas.response_to(inv, 180, "Ringing"), got.source)
        await uas.send(uas.response_to(inv, 200, "OK"), got.source)
        ringing = await uac.expect_response(180)
        ok = await uac.expect_response(200)
        assert len(ok.vias) == 1 and ok.via1 is not None and ok.via1.host == "127.0.0.2"
        assert ringing.get("Record-Route") == "<sip:127.0.0.1:5060;lr;ftag=ft1>"
        nursery.cancel_scope.cancel()


async def test_retransmission_gets_the_same_branch(autojump_clock) -> None:
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        req = uac.request("INVITE", "sip:bob@127.0.0.3:5060")
        await uac.send(req, PROXY)
        await trio.sleep(0.5)
        await uac.send(req, PROXY)
        first = await uas.expect_request("INVITE")
        second = await uas.wait_for(lambda r: r is not first, start=1)
        b1, b2 = first.msg.vias[0].branch, second.msg.vias[0].branch
        assert b1 == b2
        nursery.cancel_scope.cancel()


async def test_max_forwards_zero_is_483(autojump_clock) -> None:
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.3", max_forwards=0), PROXY)
        await uac.expect_response(483)
        nursery.cancel_scope.cancel()


async def test_unparseable_request_is_answered_400_and_counted(autojump_clock) -> None:
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net)
        uac = SimUA(net, UAC)
        bad = uac.request("OPTIONS", "sip:bob@127.0.0.3").replace(b"CSeq: 1 OPTIONS",
                                                                  b"CSeq: 1 INVITE")
        await uac.send(bad, PROXY)
        await uac.expect_response(400)
        assert server.core.stats["bad_msg"] == 1
        nursery.cancel_scope.cancel()


async def test_non_loopback_destination_is_refused_by_the_guard(autojump_clock) -> None:
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:bob@192.0.2.10"), PROXY)
        resp = await uac.expect_response(477)
        assert resp.status == 477
        assert server.guard.refused == 1
        assert all(e.dst.host != "192.0.2.10" for e in net.trace)
        nursery.cancel_scope.cancel()


async def test_broken_route_answers_500_and_logs_file_and_line(
        autojump_clock, write_routes, caplog) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local x = nil\n"
        "  return x.field\n"
        "end\n"
    )
    caplog.set_level(logging.ERROR, logger="trio_sip")
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.3"), PROXY)
        await uac.expect_response(500)
        # and it keeps serving
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.3"), PROXY)
        await uac.wait_for(lambda r: True, start=1)
        nursery.cancel_scope.cancel()
    assert any("routes.lua:3" in r.getMessage() for r in caplog.records)


async def test_export_in_wrong_route_type_is_a_script_error(
        autojump_clock, write_routes, caplog) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        # through an alias: `trio-sip check` refuses the direct call at start
        "function ksr_reply_route() local rr = KSR.rr; rr.loose_route() end\n"
    )
    caplog.set_level(logging.ERROR, logger="trio_sip")
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        await uac.send(uac.request("OPTIONS", "sip:bob@127.0.0.3"), PROXY)
        got = await uas.expect_request("OPTIONS")
        await uas.send(uas.response_to(got.msg, 200, "OK"), got.source)
        # the reply route failed, but the reply is still relayed (Kamailio does the same)
        await uac.expect_response(200)
        nursery.cancel_scope.cancel()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "KSR.rr.loose_route: not allowed in reply_route" in text
    assert "allowed in request_route" in text


@pytest.mark.parametrize("strict", [False, True])
async def test_loose_route_in_dialog(autojump_clock, strict: bool) -> None:
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        if strict:
            # the previous hop was a strict router: our URI is the R-URI and the
            # real target is the last Route
            req = uac.request("BYE", "sip:127.0.0.1:5060;lr", to_tag="x1",
                              headers=[("Route", "<sip:bob@127.0.0.3:5060>")])
        else:
            req = uac.request("BYE", "sip:bob@127.0.0.3:5060", to_tag="x1",
                              headers=[("Route", "<sip:127.0.0.1:5060;lr>")])
        await uac.send(req, PROXY)
        got = await uas.expect_request("BYE")
        bye = got.msg
        assert isinstance(bye, SipRequest)
        assert bye.ruri_text == "sip:bob@127.0.0.3:5060"
        assert not bye.has("Route")
        nursery.cancel_scope.cancel()


async def test_loose_route_to_next_hop_sets_destination(autojump_clock) -> None:
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net)
        uac, hop = SimUA(net, UAC), SimUA(net, Address("127.0.0.4", 5060))
        req = uac.request("BYE", "sip:bob@127.0.0.3:5060", to_tag="x1",
                          headers=[("Route", "<sip:127.0.0.1:5060;lr>, <sip:127.0.0.4;lr>")])
        await uac.send(req, PROXY)
        got = await hop.expect_request("BYE")
        assert got.msg.get("Route") == "<sip:127.0.0.4;lr>"
        assert got.msg.ruri_text == "sip:bob@127.0.0.3:5060"  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


def test_server_refuses_a_route_that_calls_an_export_in_the_wrong_route(write_routes) -> None:
    from trio_sip.config import config_from_dict
    from trio_sip.runtime.server import build_engine
    from trio_sip.script.check import RouteCheckError

    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        "function ksr_reply_route() KSR.rr.loose_route() end\n"
    )
    with pytest.raises(RouteCheckError, match=r"routes.lua:2:.*loose_route.*not allowed in reply_route"):
        build_engine(config_from_dict({"lua": {"routes": routes}}))
