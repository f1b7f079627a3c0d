"""KSR.rtpengine: commands built from messages as Kamailio builds them, rtpengine_manage's
choice, module params, and the exports run against a scripted peer in virtual time
(in reply routes through the whole server: a dead rtpengine does not stall it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.config import ConfigError
from trio_sip.modules import builtin_modules
from trio_sip.modules import rtpengine as rtpmod
from trio_sip.modules.rtpengine import (
    CommandError,
    RtpengineOp,
    RtpengineParams,
    build_command,
    manage_operation,
)
from trio_sip.rtpengine import ClientConfig, RtpengineClient, sim_endpoints
from trio_sip.runtime import server as server_mod
from trio_sip.script.context import MsgContext
from trio_sip.script.exports import RouteType
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

from .fake_ng import FakeNg

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
NG = Address("127.0.0.1", 2223)
NG2 = Address("127.0.0.1", 2224)
SDP = b"v=0\r\no=a 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
SDP_B = b"v=0\r\no=b 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n"


def invite(body: bytes = SDP, *, method: str = "INVITE", to_tag: str = "",
           cseq: str = "1 INVITE", ctype: str = "application/sdp") -> bytes:
    to = "<sip:bob@127.0.0.3>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"{method} sip:bob@127.0.0.3 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKcaller;rport\r\n"
            "From: <sip:alice@127.0.0.2>;tag=alice\r\n"
            f"To: {to}\r\nCall-ID: call-1@127.0.0.2\r\nCSeq: {cseq}\r\n")
    if body:
        head += f"Content-Type: {ctype}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def reply(status: int = 200, body: bytes = SDP_B, cseq: str = "1 INVITE") -> bytes:
    head = (f"SIP/2.0 {status} X\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy\r\n"
            "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKcaller;rport=5060\r\n"
            "From: <sip:alice@127.0.0.2>;tag=alice\r\n"
            "To: <sip:bob@127.0.0.3>;tag=bob\r\nCall-ID: call-1@127.0.0.2\r\n"
            f"CSeq: {cseq}\r\n")
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class FakeTransport:
    proto: str = "udp"
    local: Address = PROXY
    reliable: bool = False


@dataclass
class FakeCore:
    rtpengine: Any = None
    config: Any = None


@dataclass
class FakeTx:
    request: SipRequest


@dataclass
class Ctx:
    route: RouteType = RouteType.REQUEST
    core: FakeCore = field(default_factory=FakeCore)

    def __call__(self, data: bytes, route: RouteType | None = None,
                 tx: Any = None) -> MsgContext:
        msg = parse_message_untrusted(data)
        source = UAS if isinstance(msg, SipResponse) else UAC
        return MsgContext(msg, source, FakeTransport(), None,  # type: ignore[arg-type]
                          route or self.route, self.core, transaction=tx)


def wire(c: dict[str, Any]) -> dict[str, Any]:
    def text(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, list):
            return [text(x) for x in v]
        if isinstance(v, dict):
            return {k: text(x) for k, x in v.items()}
        return v
    out: dict[str, Any] = text(c)
    return out


# -- commands from messages ------------------------------------------------------------


def test_offer_in_a_request() -> None:
    b = build_command(Ctx()(invite()), "offer", "replace-origin trust-address via-branch=1")
    assert wire(b.command) == {
        "command": "offer", "call-id": "call-1@127.0.0.2", "from-tag": "alice",
        "sdp": SDP.decode(), "replace": ["origin"], "flags": ["trust-address"],
        "received-from": ["IP4", "127.0.0.2"], "via-branch": "z9hG4bKcaller",
        "supports": ["load limit"],
    }
    assert b.via_branch == "z9hG4bKcaller" and b.call_id == "call-1@127.0.0.2"
    assert b.sdp is not None and b.sdp.whole
    assert isinstance(b.command["sdp"], bytes)


def test_offer0_has_no_flags_and_no_received_from() -> None:
    c = wire(build_command(Ctx()(invite()), "offer", None).command)
    assert "received-from" not in c and "flags" not in c and "via-branch" not in c


def test_tags_by_direction() -> None:
    ctx = Ctx()
    # answer in a reply: From tag / To tag as they are
    c = wire(build_command(ctx(reply(), RouteType.ONREPLY), "answer", "").command)
    assert (c["from-tag"], c["to-tag"]) == ("alice", "bob")
    # offer in a reply (late offer): swapped
    c = wire(build_command(ctx(reply(), RouteType.ONREPLY), "offer", "").command)
    assert (c["from-tag"], c["to-tag"]) == ("bob", "alice")
    # answer in a request (ACK with SDP): swapped
    ack = invite(method="ACK", to_tag="bob", cseq="1 ACK")
    c = wire(build_command(ctx(ack), "answer", "").command)
    assert (c["from-tag"], c["to-tag"]) == ("bob", "alice")
    # ... unless directional
    c = wire(build_command(ctx(ack), "answer", "directional").command)
    assert (c["from-tag"], c["to-tag"]) == ("alice", "bob")
    # an in-dialog offer (re-INVITE) carries both tags
    c = wire(build_command(ctx(invite(to_tag="bob")), "offer", "").command)
    assert (c["from-tag"], c["to-tag"]) == ("alice", "bob")
    # delete: no To tag unless asked for
    bye = invite(b"", method="BYE", to_tag="bob", cseq="2 BYE")
    c = wire(build_command(ctx(bye), "delete", "").command)
    assert c["from-tag"] == "alice" and "to-tag" not in c and "sdp" not in c
    c = wire(build_command(ctx(bye), "delete", "to-tag").command)
    assert c["to-tag"] == "bob"
    # a reply's delete sends the From tag
    c = wire(build_command(ctx(reply(486, b""), RouteType.ONREPLY), "delete", "").command)
    assert c["from-tag"] == "alice" and "to-tag" not in c
    # block DTMF: tags only when directional
    c = wire(build_command(ctx(bye), "block_dtmf", "").command)
    assert c["command"] == "block DTMF" and "from-tag" not in c
    c = wire(build_command(ctx(bye), "block_dtmf", "from-tag=x").command)
    assert (c["from-tag"], c["to-tag"]) == ("x", "bob")


def test_overrides_via_branch_modes_and_force_answer() -> None:
    ctx = Ctx()
    c = wire(build_command(ctx(invite()), "offer",
                           "call-id=other from-tag=F to-tag=T force-answer").command)
    assert (c["command"], c["call-id"], c["from-tag"], c["to-tag"]) == (
        "answer", "other", "F", "T")
    # auto: Via 1 in a request, Via 2 (the caller's, below ours) in a reply
    r = build_command(ctx(reply(), RouteType.ONREPLY), "answer", "via-branch=auto")
    assert r.via_branch == "z9hG4bKcaller"
    r = build_command(ctx(reply(), RouteType.ONREPLY), "answer", "via-branch=1")
    assert r.via_branch == "z9hG4bKproxy"
    # the 2-variants' second argument
    r = build_command(ctx(invite()), "offer", "", "auto")
    assert r.via_branch == "z9hG4bKcaller"
    assert build_command(ctx(invite()), "offer", "", "none").via_branch == ""
    c = wire(build_command(ctx(invite()), "offer", "received-from=10.0.0.1").command)
    assert c["received-from"] == ["IP4", "10.0.0.1"]


@pytest.mark.parametrize(("data", "op", "flags", "why"), [
    (invite(b""), "offer", "", "no SDP"),
    (invite(b"hello", ctype="text/plain"), "offer", "", "no SDP"),
    (invite(method="ACK", cseq="1 ACK"), "answer", "", "No to-tag"),
    (invite(), "offer", "via-branch=next", "not supported"),
    (invite(), "offer", "via-branch=2", "Via #2"),
    (invite(), "answer", "force-answer", "non-offer"),
])
def test_commands_that_cannot_be_built(data: bytes, op: str, flags: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        build_command(Ctx()(data), op, flags)


def test_manage_chooses_like_kamailio() -> None:
    ctx = Ctx()
    inv = parse_message_untrusted(invite())
    late = parse_message_untrusted(invite(b""))
    assert isinstance(inv, SipRequest) and isinstance(late, SipRequest)
    cases = [
        (ctx(invite()), "offer"),
        (ctx(invite(), RouteType.FAILURE), "delete"),
        (ctx(invite(b"")), None),
        (ctx(invite(method="ACK", cseq="1 ACK", to_tag="b")), "answer"),
        (ctx(invite(b"", method="ACK", cseq="1 ACK", to_tag="b")), None),
        (ctx(invite(method="PRACK", cseq="2 PRACK", to_tag="b")), "answer"),
        (ctx(invite(method="UPDATE", cseq="2 UPDATE", to_tag="b")), "offer"),
        (ctx(invite(b"", method="BYE", cseq="2 BYE")), "delete"),
        (ctx(invite(b"", method="CANCEL", cseq="1 CANCEL")), "delete"),
        (ctx(invite(b"", method="OPTIONS", cseq="1 OPTIONS")), None),
        (ctx(reply(), RouteType.ONREPLY, FakeTx(inv)), "answer"),
        (ctx(reply(), RouteType.ONREPLY, FakeTx(late)), "offer"),
        (ctx(reply(), RouteType.ONREPLY), "answer"),
        (ctx(reply(183), RouteType.ONREPLY, FakeTx(inv)), "answer"),
        (ctx(reply(180, b""), RouteType.ONREPLY), None),
        (ctx(reply(486, b""), RouteType.ONREPLY), "delete"),
        (ctx(reply(cseq="2 UPDATE"), RouteType.ONREPLY, FakeTx(late)), "answer"),
        (ctx(reply(486, b""), RouteType.BRANCH_FAILURE), "nothing"),
    ]
    assert [manage_operation(c) for c, _ in cases] == [want for _, want in cases]


# -- params ------------------------------------------------------------------------------


def test_params_from_modparams() -> None:
    p = RtpengineParams.from_modparams({"rtpengine_sock": "udp:127.0.0.1:2223",
                                        "rtpengine_tout_ms": 300})
    assert p.rtpengine_sock == ("udp:127.0.0.1:2223",)
    cfg = p.client_config()
    assert (cfg.tout_ms, cfg.retr, cfg.disable_tout, cfg.hash_table_tout) == (300, 5, 60, 3600)
    p = RtpengineParams.from_modparams({"rtpengine_sock": ("1 == udp:127.0.0.1:1",
                                                           "udp:127.0.0.1:2")})
    assert len(p.rtpengine_sock) == 2


@pytest.mark.parametrize(("raw", "key"), [
    ({"rtpengine_tout": 1}, "modparams.rtpengine.rtpengine_tout"),
    ({"rtpengine_sock": "tcp:127.0.0.1:1"}, "modparams.rtpengine.rtpengine_sock"),
    ({"rtpengine_sock": 5}, "modparams.rtpengine.rtpengine_sock"),
    ({"rtpengine_retr": "5"}, "modparams.rtpengine.rtpengine_retr"),
    ({"rtpengine_retr": True}, "modparams.rtpengine.rtpengine_retr"),
    ({"rtpengine_retr": 0}, "modparams.rtpengine"),
])
def test_bad_params_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RtpengineParams.from_modparams(raw)
    assert info.value.key == key
    if "tout" in str(raw):
        assert "did you mean 'rtpengine_tout_ms'" in str(info.value)


def test_exports_follow_the_kemi_signatures() -> None:
    import json
    from pathlib import Path

    sigs = json.loads((Path(__file__).resolve().parents[2] / "docs" / "kemi-signatures.json")
                      .read_text())["modules"]["rtpengine"]
    exports = {e.name: e for e in rtpmod.MODULE.exports}
    assert set(exports) == set(sigs)
    for name, sig in sigs.items():
        assert list(exports[name].params) == sig["params"], name
    assert exports["rtpengine_offer"].is_async and not exports["set_rtpengine_set"].is_async
    assert not exports["rtpengine_offer"].routes & RouteType.BRANCH


# -- the operation against a scripted peer (virtual time) ------------------------------


@asynccontextmanager
async def sim_client(net: SimNetwork, *socks: str, **cfg: Any
                     ) -> AsyncIterator[RtpengineClient]:
    cfg.setdefault("ping_mode", 0)
    client = RtpengineClient(ClientConfig(sock=socks, **cfg), open_endpoint=sim_endpoints(net))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def test_offer_op_replaces_the_sdp(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net:
        fake = FakeNg(net, NG, media_port=31000)
        async with sim_client(net, fake.sock) as client:
            ctx = Ctx(core=FakeCore(client))(invite())
            assert await RtpengineOp("rtpengine_offer", "offer", "replace-origin",
                                     None).run(ctx) == 1
            out = ctx.msg.to_bytes()
            assert b"c=IN IP4 127.0.0.1\r\n" in out and b"m=audio 31000 RTP/AVP" in out
            body = out.split(b"\r\n\r\n", 1)[1]
            assert f"Content-Length: {len(body)}\r\n".encode() in out
            got = fake.commands("offer")[0].command
            assert got["replace"] == ["origin"] and got["from-tag"] == "alice"


async def test_op_failures_return_minus_one(autojump_clock: trio.testing.MockClock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    async with SimNetwork(seed=2) as net:
        fake = FakeNg(net, NG, mode="silent")
        async with sim_client(net, fake.sock) as client:
            ctx = Ctx(core=FakeCore(client))(invite())
            start = trio.current_time()
            op = RtpengineOp("rtpengine_offer", "offer", "", None)
            assert await op.run(ctx) == -1
            assert trio.current_time() - start == 5
            assert ctx.msg.to_bytes() == ctx.msg.raw  # untouched
            start = trio.current_time()
            assert await op.run(ctx) == -1  # all nodes down: at once
            assert trio.current_time() == start
            # no SDP: -1 without asking rtpengine
            n = len(fake.received)
            assert await op.run(Ctx(core=FakeCore(client))(invite(b""))) == -1
            assert len(fake.received) == n
    assert "no rtpengine node available" in caplog.text


async def test_query_v_and_sets(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=3) as net:
        one, two = FakeNg(net, NG, media_port=31000), FakeNg(net, NG2, media_port=32000)
        async with sim_client(net, one.sock, f"2 == {two.sock}") as client:
            core = FakeCore(client)
            ctx = Ctx(core=core)(invite())
            assert rtpmod.set_rtpengine_set(ctx, 2) == 1
            assert rtpmod.set_rtpengine_set(ctx, 7) == -1
            assert await RtpengineOp("rtpengine_offer", "offer", "", None).run(ctx) == 1
            assert two.commands("offer") and not one.commands("offer")
            # the choice is per message: a new message goes to the default set
            ctx2 = Ctx(core=core)(invite())
            op = RtpengineOp("rtpengine_query_v", "query", None, None,
                             query_v=("j", "$var(q)"))
            assert await op.run(ctx2) == 1
            assert ctx2.vars["q"] == '{"result":"ok","x-call-id":"call-1@127.0.0.2"}'
            # two sets: the offer goes through set 0 then set 2, each one's SDP feeding
            # the next; an answer goes the other way
            ctx3 = Ctx(core=core)(invite())
            assert rtpmod.set_rtpengine_set2(ctx3, 0, 2) == 1
            assert await RtpengineOp("rtpengine_offer", "offer", "", None).run(ctx3) == 1
            first = one.commands("offer")[-1].command
            second = two.commands("offer")[-1].command
            assert "m=audio 31000" in second["sdp"] and "m=audio 40000" in first["sdp"]
            assert b"m=audio 32002" in ctx3.msg.to_bytes()


# -- through the server: reply routes wait, the server does not -------------------------


@pytest.fixture
def with_rtpengine_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """KSR.rtpengine in the server's engine (until the module is in builtin_modules())."""
    modules = builtin_modules()
    if not any(m.name == "rtpengine" for m in modules):
        monkeypatch.setattr(server_mod, "builtin_modules", lambda: [*modules, rtpmod.MODULE])
    yield


REPLY_ROUTES = """
function ksr_request_route()
  if KSR.is_OPTIONS() then KSR.sl.sl_send_reply(200, "Alive") return end
  KSR.tm.t_on_reply("on_reply")
  KSR.tm.t_relay()
end
function on_reply()
  local before = KSR.pv.get("$T_reply_code")
  local rc = KSR.rtpengine.rtpengine_manage("replace-origin replace-session-connection")
  KSR.hdr.append("X-Rtpengine: " .. rc .. " after " .. before .. "\\r\\n")
end
"""


def _uas_answers(uas: SimUA, body: bytes) -> None:
    def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            ua.send_soon(source, ua.response_to(
                req, 200, "OK", body=body, headers=[("Content-Type", "application/sdp")]))

    uas.on_request = on_request


async def test_reply_route_waits_for_rtpengine_and_others_are_served(
        autojump_clock: trio.testing.MockClock, write_routes: Any,
        with_rtpengine_module: None) -> None:
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        fake = FakeNg(net, NG, media_port=33000)
        fake.mode = "silent"
        server = await start_server(nursery, net, routes=write_routes(REPLY_ROUTES))
        client = RtpengineClient(ClientConfig(sock=(fake.sock,), ping_mode=0),
                                 open_endpoint=sim_endpoints(net))
        await nursery.start(client.run)
        server.core.rtpengine = client  # type: ignore[attr-defined]  # until ProxyCore has it
        uac, uas, other = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, Address("127.0.0.9", 5060))
        _uas_answers(uas, SDP_B)
        # a late-offer INVITE: the 200's SDP is the offer; rtpengine is dead for 5 s
        start = trio.current_time()
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        await trio.sleep(1)
        # meanwhile the server answers others at once
        t = trio.current_time()
        await other.send(other.request("OPTIONS", f"sip:x@{PROXY}"), PROXY)
        await other.expect_response(200)
        assert trio.current_time() == t
        ok = await uac.expect_response(200, within=20)
        assert trio.current_time() - start == 5  # the reply route waited 5 x 1 s
        assert ok.get("X-Rtpengine") == "-1 after 200"  # all sends lost: -1
        assert ok.body == SDP_B
        # rtpengine comes back: the next call's 200 carries rtpengine's SDP
        fake.mode = "answer"
        assert await client.enable(fake.sock, True) == "enable"
        seen = len(uac.received)
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        got = await uac.wait_for(lambda r: isinstance(r.msg, SipResponse)
                                 and r.msg.status == 200, start=seen)
        ok2 = got.msg
        assert isinstance(ok2, SipResponse)
        assert ok2.get("X-Rtpengine") == "1 after 200"
        assert b"c=IN IP4 127.0.0.1" in ok2.body and b"m=audio 33000" in ok2.body
        offer = fake.commands("offer")[-1].command
        assert (offer["from-tag"], offer["to-tag"]) == ("uas1", "ft1")  # swapped: a reply
        nursery.cancel_scope.cancel()
