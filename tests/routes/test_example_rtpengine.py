"""examples/rtpengine/routes.lua against the kit's scripted rtpengine (virtual time):
offers and answers rewritten, the call deleted on BYE, and what the route does when
rtpengine is slow or gone. (tests/rtpengine/ runs the same routes against the real
daemon.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.sip.message import SipRequest
from trio_sip.testing import FakeRtpengine, SimNetwork, SimUA, attach_rtpengine
from trio_sip.transport.base import Address

from .conftest import routes

ROUTES = routes("examples/rtpengine/routes.lua")
NG = Address("127.0.0.1", 2223)
SDP_HEADERS = [("Content-Type", "application/sdp")]
ALICE_SDP = (b"v=0\r\no=alice 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
             b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n")
BOB_SDP = (b"v=0\r\no=bob 2 2 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\n"
           b"t=0 0\r\nm=audio 50000 RTP/AVP 0\r\n")


async def server_with(sip_server: Any, sip_net: SimNetwork, ng: FakeRtpengine) -> Any:
    server = await sip_server(routes=ROUTES, config={"modparams": {"rtpengine": {
        "rtpengine_sock": ng.sock, "rtpengine_tout_ms": 1000, "rtpengine_retr": 2}}})
    await attach_rtpengine(server, sip_net)
    return server


def bob_answers_with_sdp(bob: SimUA) -> None:
    def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            ua.send_later(0.5, source, ua.response_to(req, 200, body=BOB_SDP,
                                                      headers=SDP_HEADERS))
        elif req.method == "BYE":
            ua.send_soon(source, ua.response_to(req, 200))

    bob.on_request = on_request


async def test_media_anchored_and_released(
        autojump_clock: trio.testing.MockClock, sip_server: Any, sip_net: SimNetwork,
        sip_ua: Callable[..., SimUA]) -> None:
    ng = FakeRtpengine(sip_net, NG, media_port=31000)
    server = await server_with(sip_server, sip_net, ng)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob_answers_with_sdp(bob)
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", body=ALICE_SDP,
                                   headers=SDP_HEADERS), server.address())
    got = await bob.expect_request("INVITE", at=t0)  # the fake answers at once
    assert b"c=IN IP4 127.0.0.1\r\n" in got.msg.body and b"m=audio 31000 " in got.msg.body
    ok = await alice.expect_response(200, at=t0 + 0.5)
    assert b"m=audio 31002 " in ok.body  # the answer went through rtpengine too
    assert [g.command["command"] for g in ng.commands()] == ["ping", "offer", "answer"]
    call_id = ok.call_id
    # alice hangs up (in dialog, along the Record-Route)
    route = ok.get("Record-Route") or ""
    bye = alice.request("BYE", "sip:bob@127.0.0.3", call_id=call_id, cseq=2,
                        to_tag=ok.to_tag, headers=[("Route", route)])
    await alice.send(bye, server.address())
    await alice.expect_response(200, method="BYE")
    assert ng.commands()[-1].command["command"] == "delete"
    assert ng.calls() == set()


@pytest.mark.parametrize(("mode", "status", "waited"), [
    ("silent", 503, 2.0),   # 2 tries of 1 s, then the route answers 503
    ("error", 503, 0.0),    # rtpengine refuses: at once
])
async def test_rtpengine_failures(autojump_clock: trio.testing.MockClock, sip_server: Any,
                                  sip_net: SimNetwork, sip_ua: Callable[..., SimUA],
                                  mode: str, status: int, waited: float) -> None:
    ng = FakeRtpengine(sip_net, NG, mode=mode)
    server = await server_with(sip_server, sip_net, ng)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", body=ALICE_SDP,
                                   headers=SDP_HEADERS), server.address())
    await alice.expect_response(status, at=t0 + waited)
    assert bob.received == []


async def test_slow_rtpengine_delays_the_call(
        autojump_clock: trio.testing.MockClock, sip_server: Any, sip_net: SimNetwork,
        sip_ua: Callable[..., SimUA]) -> None:
    ng = FakeRtpengine(sip_net, NG, mode="slow", delay=0.8)
    server = await server_with(sip_server, sip_net, ng)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", body=ALICE_SDP,
                                   headers=SDP_HEADERS), server.address())
    await bob.expect_request("INVITE", at=t0 + 0.8)
