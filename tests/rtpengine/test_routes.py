"""Ring 3: Lua routes calling KSR.rtpengine.* in the server on the SimNetwork, against
the real rtpengine over real UDP (the ng client uses real sockets). Real time, every
wait bounded."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_sip.modules import builtin_modules
from trio_sip.modules import rtpengine as rtpmod
from trio_sip.rtpengine import NgReplyError
from trio_sip.runtime import server as server_mod
from trio_sip.runtime.server import Server
from trio_sip.runtime.transactions import ServerTx
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

from .conftest import Rtpengine

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
LIMIT = 10.0
CALLER_SDP = (b"v=0\r\no=alice 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
              b"t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
              b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
CALLEE_SDP = (b"v=0\r\no=bob 2 2 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\n"
              b"t=0 0\r\nm=audio 50000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")

#: the request route may wait (an async export in the request route) once ServerTx can
#: run the rest of the route as a task of the transaction (core.py calls tx.spawn)
REQUEST_ROUTE_MAY_WAIT = hasattr(ServerTx, "spawn")


@pytest.fixture
def with_rtpengine_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    modules = builtin_modules()
    if not any(m.name == "rtpengine" for m in modules):
        monkeypatch.setattr(server_mod, "builtin_modules", lambda: [*modules, rtpmod.MODULE])
    yield


@asynccontextmanager
async def serving(routes: str, r: Rtpengine) -> AsyncIterator[tuple[SimNetwork, Server]]:
    config: dict[str, Any] = {"modparams": {"rtpengine": {
        "rtpengine_sock": r.sock, "rtpengine_tout_ms": 500, "rtpengine_retr": 2}}}
    with trio.fail_after(LIMIT):
        async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
            server = await start_server(nursery, net, routes=routes, config=config)
            yield net, server
            nursery.cancel_scope.cancel()


def media(body: bytes) -> tuple[str, int]:
    c = re.search(rb"^c=IN IP4 (\S+)\r$", body, re.M)
    m = re.search(rb"^m=audio (\d+) ", body, re.M)
    assert c and m, body
    return c.group(1).decode(), int(m.group(1))


def callee(ua: SimUA) -> None:
    def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            ua.send_soon(source, ua.response_to(req, 200, "OK", body=CALLEE_SDP,
                                                headers=[("Content-Type", "application/sdp")]))
        elif req.method == "BYE":
            ua.send_soon(source, ua.response_to(req, 200, "OK"))

    ua.on_request = on_request


async def next_response(ua: SimUA, status: int, method: str) -> SipResponse:
    seen = len(ua.received)
    got = await ua.wait_for(lambda r: isinstance(r.msg, SipResponse) and r.msg.status == status
                            and r.msg.cseq_method == method, start=seen, within=LIMIT)
    assert isinstance(got.msg, SipResponse)
    return got.msg


LATE_OFFER = """
FLAGS = "replace-origin replace-session-connection trust-address"
function ksr_request_route()
  if KSR.is_ACK() then
    local rc = KSR.rtpengine.rtpengine_manage(FLAGS)
    KSR.hdr.append("X-Rtpengine: " .. rc .. "\\r\\n")
    KSR.tm.t_relay()
    return
  end
  KSR.tm.t_on_reply("on_reply")
  KSR.tm.t_relay()
end
function on_reply()
  local rc = KSR.rtpengine.rtpengine_manage(FLAGS)
  KSR.hdr.append("X-Rtpengine: " .. rc .. "\\r\\n")
end
"""


async def test_late_offer_call_through_the_real_rtpengine(
        rtpengine: Rtpengine, write_routes: Any, with_rtpengine_module: None) -> None:
    """INVITE without SDP; the 200's SDP is the offer (rtpengine_manage in the onreply
    route), the ACK's the answer (request route); the BYE's 200 deletes the call."""
    async with serving(write_routes(LATE_OFFER), rtpengine) as (net, server):
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        callee(uas)
        call_id = "late-offer-1@127.0.0.2"
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", call_id=call_id), PROXY)
        ok = await next_response(uac, 200, "INVITE")
        assert ok.get("X-Rtpengine") == "1"
        addr, port = media(ok.body)
        assert addr == "127.0.0.1" and rtpengine.port_min <= port <= rtpengine.port_max
        assert int(ok.get("Content-Length") or 0) == len(ok.body)
        ack = uac.request("ACK", f"sip:uas@{UAS}", call_id=call_id, to_tag=ok.to_tag,
                          body=CALLER_SDP, headers=[("Content-Type", "application/sdp")])
        await uac.send(ack, PROXY)
        got = await uas.expect_request("ACK", within=LIMIT)
        assert got.msg.get("X-Rtpengine") == "1"
        addr2, port2 = media(got.msg.body)
        assert addr2 == "127.0.0.1" and port2 != port
        assert rtpengine.port_min <= port2 <= rtpengine.port_max
        client = rtpmod.client_for(server.core)
        q = await client.request({"command": "query", "call-id": call_id})
        assert set(q["tags"]) == {"ft1", "uas1"}
        bye = uac.request("BYE", f"sip:uas@{UAS}", call_id=call_id, cseq=2, to_tag=ok.to_tag)
        await uac.send(bye, PROXY)
        done = await next_response(uac, 200, "BYE")
        assert done.get("X-Rtpengine") == "1"
        with pytest.raises(NgReplyError, match="Unknown call-id"):
            await client.request({"command": "query", "call-id": call_id})
        stats = client.statistics()
        assert stats["requests_offer"] == 1 and stats["requests_answer"] == 1
        assert stats["requests_delete"] == 1 and stats["retransmissions"] == 0


OFFER_THEN_RELAY = """
function ksr_request_route()
  if KSR.is_INVITE() then
    local before = "route state kept"
    local rc = KSR.rtpengine.rtpengine_offer("replace-origin trust-address")
    KSR.hdr.append("X-Rtpengine: " .. rc .. " " .. before .. "\\r\\n")
    KSR.tm.t_on_reply("on_reply")
  end
  KSR.tm.t_relay()
end
function on_reply()
  if KSR.pv.get("$rs") == 200 then
    KSR.rtpengine.rtpengine_answer("replace-origin trust-address")
  end
end
"""


@pytest.mark.skipif(not REQUEST_ROUTE_MAY_WAIT,
                    reason="the request route cannot wait yet (ServerTx.spawn is missing)")
async def test_offer_in_the_request_route_then_relay(
        rtpengine: Rtpengine, write_routes: Any, with_rtpengine_module: None) -> None:
    async with serving(write_routes(OFFER_THEN_RELAY), rtpengine) as (net, server):
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        callee(uas)
        call_id = "offer-relay-1@127.0.0.2"
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", call_id=call_id,
                                   body=CALLER_SDP,
                                   headers=[("Content-Type", "application/sdp")]), PROXY)
        got = await uas.expect_request("INVITE", within=LIMIT)
        # the callee sees rtpengine's SDP, and the route went on with its locals
        assert got.msg.get("X-Rtpengine") == "1 route state kept"
        addr, port = media(got.msg.body)
        assert addr == "127.0.0.1" and rtpengine.port_min <= port <= rtpengine.port_max
        assert b"a=rtpmap:101 telephone-event/8000" in got.msg.body
        ok = await next_response(uac, 200, "INVITE")
        addr2, port2 = media(ok.body)
        assert addr2 == "127.0.0.1" and port2 != port
        client = rtpmod.client_for(server.core)
        await client.request({"command": "delete", "call-id": call_id})
