"""Ring 2: local UAC transactions (runtime/uac.py) through the whole server on the
simulated network, in virtual time. Times are exact (MockClock autojump, zero link
delay), as in test_tm_timers.py.

Schedules (Kamailio tm defaults: T1 0.5 s, T2 4 s, fr 30 s):

* non-INVITE over UDP, Timer E: 0, 0.5, 1.5, 3.5, 7.5, then every T2 (11.5 ... 27.5),
  a local 408 at fr (30 s) and nothing sent after;
* INVITE over UDP, Timer A: 0, 0.5, 1.5, 3.5, 7.5, 15.5 (doubling without a cap), 408 at
  30 s; after a 1xx fr_inv runs instead.
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sip.runtime.uac import UacError, UacRequest, local_uacs
from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

SERVER = Address("127.0.0.1", 5060)
UAS = Address("127.0.0.3", 5060)
PROXY2 = Address("127.0.0.4", 5060)
ROUTES = "function ksr_request_route() KSR.sl.sl_send_reply(404, 'Not here') end\n"
E_SCHEDULE = [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5]
A_SCHEDULE = [0, 0.5, 1.5, 3.5, 7.5, 15.5]


def answer(uas: SimUA, *codes: int, delay: float = 0.0, cancel_487: bool = True,
           body: bytes = b"") -> None:
    """``uas`` answers the first copy of each request with ``codes`` after ``delay``; a
    CANCEL gets 200 and its INVITE 487; ACKs and retransmissions are ignored."""
    seen: set[str] = set()
    invites: dict[str, SipRequest] = {}

    def handler(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "CANCEL":
            if cancel_487:
                ua.send_soon(source, ua.response_to(req, 200, "OK"),
                             ua.response_to(invites[req.call_id], 487, "Terminated"))
            return
        key = f"{req.call_id}/{req.cseq_num}/{req.method}"
        if req.method == "ACK" or key in seen:
            return
        seen.add(key)
        if req.method == "INVITE":
            invites[req.call_id] = req
        msgs = [ua.response_to(req, c, "OK" if c == 200 else "R",
                               body=body if c >= 200 else b"") for c in codes]
        if delay:
            async def later() -> None:
                await trio.sleep(delay)
                for data in msgs:
                    await ua.send(data, source)
            ua._net._nursery.start_soon(later)  # type: ignore[union-attr]
        else:
            ua.send_soon(source, *msgs)

    uas.on_request = handler


async def test_non_invite_timer_e_then_local_408_at_fr(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)  # never answers
        layer = local_uacs(server.core)
        t0 = trio.current_time()
        uac = layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}"))
        result = await uac.wait()
        assert (result.code, result.reason, result.local) == (408, "Request Timeout", True)
        assert trio.current_time() - t0 == 30.0
        assert uas.times(t0, "OPTIONS") == E_SCHEDULE
        await trio.sleep(60)
        assert uas.times(t0, "OPTIONS") == E_SCHEDULE  # nothing after the 408
        await trio.testing.wait_all_tasks_blocked()
        assert not layer.pending and not server.core.tm.clients
        stats = server.core.tm.statistics()
        assert stats["UAC_transactions"] == 1 and stats["timeouts"] == 1
        assert stats["retransmissions"] == len(E_SCHEDULE) - 1
        nursery.cancel_scope.cancel()


async def test_invite_timer_a_then_408(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("INVITE", f"sip:bob@{UAS}",
                                                      body=b"v=0\r\n"))
        result = await uac.wait()
        assert (result.code, trio.current_time() - t0) == (408, 30.0)
        await trio.sleep(60)
        assert uas.times(t0, "INVITE") == A_SCHEDULE
        assert uas.times(t0, "CANCEL") == []  # nothing rang: nothing to cancel
        nursery.cancel_scope.cancel()


async def test_message_answered_after_one_second(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        answer(uas, 200, delay=1.0, body=b"pong")
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest(
            "MESSAGE", f"sip:bob@{UAS}", from_uri="sip:server@example.com",
            headers="Content-Type: text/plain\r\nX-Test: 1", body=b"hello"))
        result = await uac.wait()
        assert (result.code, result.reason, result.body) == (200, "OK", b"pong")
        assert trio.current_time() - t0 == 1.0
        assert uas.times(t0, "MESSAGE") == [0, 0.5]  # Timer E, then the 200 at 1.0
        req = uas.requests()[0]
        assert req.get("x-test") == "1" and req.body == b"hello"
        assert req.get("content-type") == "text/plain"
        assert req.from_.uri is not None and str(req.from_.uri) == "sip:server@example.com"
        assert req.from_tag and not req.to_tag
        assert str(req.to.uri) == f"sip:bob@{UAS}"  # To defaults to the R-URI
        assert req.cseq_num == 10 and req.get("max-forwards") == "70"
        assert req.via1 is not None and req.via1.branch.startswith("z9hG4bK")
        await trio.sleep(40)
        assert uas.times(t0, "MESSAGE") == [0, 0.5]
        nursery.cancel_scope.cancel()


async def test_invite_200_is_acked_each_time_and_fr_inv_after_ringing(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        answer(uas, 180, 200)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("INVITE", f"sip:bob@{UAS}",
                                                      body=b"v=0\r\n"))
        result = await uac.wait()
        assert result.code == 200 and trio.current_time() == t0
        ack = await uas.expect_request("ACK", within=1)
        inv = uas.requests()[0]
        assert isinstance(ack.msg, SipRequest)
        assert ack.msg.ruri_text == f"sip:uas@{UAS}"  # the 2xx's Contact
        assert ack.msg.cseq_num == inv.cseq_num and ack.msg.to_tag == "uas1"
        assert ack.msg.via1.branch != inv.via1.branch  # type: ignore[union-attr]
        assert inv.get("contact") == f"<sip:{SERVER}>"  # a Contact for the INVITE
        # a retransmitted 200 gets the same ACK again (§13.2.2.4)
        await uas.send(uas.response_to(inv, 200, "OK"), SERVER)
        await trio.sleep(0.1)
        acks = [r.msg for r in uas.received if isinstance(r.msg, SipRequest)
                and r.msg.method == "ACK"]
        assert len(acks) == 2 and acks[0].raw == acks[1].raw
        # still at 31 s (RFC 6026 Timer M, 64*T1 = 32 s, not the proxy's wt of 5 s): a
        # callee whose first ACKs were lost still gets one
        await trio.sleep_until(t0 + 31)
        await uas.send(uas.response_to(inv, 200, "OK"), SERVER)
        await trio.sleep(0.1)
        assert len([r for r in uas.requests() if r.method == "ACK"]) == 3
        await trio.sleep_until(t0 + 32.5)
        await trio.testing.wait_all_tasks_blocked()
        assert not local_uacs(server.core).pending  # Timer M ended it at 32 s
        nursery.cancel_scope.cancel()


async def test_fr_inv_after_180_then_cancel_and_408(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES),
                                    config={"tm": {"fr_inv_timer": 4000}})
        uas = SimUA(net, UAS)
        answer(uas, 180)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("INVITE", f"sip:bob@{UAS}"))
        result = await uac.wait()
        assert (result.code, trio.current_time() - t0) == (408, 4.0)
        cancel = await uas.expect_request("CANCEL", within=1)
        assert cancel.at - t0 == 4.0  # §16.8 for the local INVITE too
        await trio.sleep(1)
        assert uas.times(t0, "ACK") == [4.0]  # the 487 after the CANCEL, ACKed
        nursery.cancel_scope.cancel()


async def test_cancel_a_ringing_invite(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        answer(uas, 180)
        layer = local_uacs(server.core)
        uac = layer.send(UacRequest("INVITE", f"sip:bob@{UAS}", call_id="c1@x", cseq=7))
        await trio.sleep(2)
        assert uac.provisional is not None and uac.result is None
        assert layer.find("c1@x", 7) is uac
        t1 = trio.current_time()
        assert uac.cancel("SIP;cause=480;text=\"gone\"")
        result = await uac.wait()
        assert result.code == 487 and trio.current_time() == t1
        cancel = next(r for r in uas.requests() if r.method == "CANCEL")
        assert cancel.get("reason") == "SIP;cause=480;text=\"gone\""
        assert cancel.cseq_num == 7 and cancel.call_id == "c1@x"
        assert not uac.cancel()  # already final
        nursery.cancel_scope.cancel()


async def test_cancel_before_any_provisional_waits_for_one(autojump_clock,
                                                           write_routes) -> None:
    """Kamailio cancel_b_method 1: no CANCEL before a provisional (§9.1); when the 180
    comes the CANCEL goes at once."""
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        answer(uas, 180, delay=3.0)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("INVITE", f"sip:bob@{UAS}"))
        await trio.sleep(1)
        assert uac.cancel()
        result = await uac.wait()
        assert result.code == 487
        assert uas.times(t0, "CANCEL") == [3.0]
        nursery.cancel_scope.cancel()


async def test_per_request_timeout_and_outbound_proxy(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas, proxy = SimUA(net, UAS), SimUA(net, PROXY2)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest(
            "NOTIFY", f"sip:bob@{UAS}", outbound=f"sip:{PROXY2}", timeout=2.0))
        result = await uac.wait()
        assert (result.code, trio.current_time() - t0) == (408, 2.0)
        assert proxy.times(t0, "NOTIFY") == [0, 0.5, 1.5]
        assert uas.received == []
        assert proxy.requests()[0].ruri_text == f"sip:bob@{UAS}"  # R-URI kept
        nursery.cancel_scope.cancel()


async def test_tcp_next_hop_without_listener_is_a_local_477(autojump_clock,
                                                            write_routes) -> None:
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES),
                                    protos=("udp", "tcp"))
        uac = local_uacs(server.core).send(
            UacRequest("OPTIONS", f"sip:bob@{UAS};transport=tcp"))
        result = await uac.wait()
        assert (result.code, result.local) == (477, True)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("req", "status", "words"), [
    (UacRequest("OPTIONS", "sip:bob@192.0.2.1"), 477, "not allowed"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3;transport=tcp"), 503, "no tcp transport"),
    (UacRequest("OPTIONS", "mailto:bob@127.0.0.3"), 400, "bad URI"),
    (UacRequest("OPT IONS", "sip:bob@127.0.0.3"), 400, "bad method"),
    (UacRequest("ACK", "sip:bob@127.0.0.3"), 400, "ACK"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="Via: x"), 400, "Via"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="no colon"), 400, "bad header"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="X: a\r\n\r\nBODY: b"), 400, None),
    # header lines: the shared rules (tests/sip/test_header_lines.py), the line named
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="X: a\rX-Evil: b"), 400,
     "bad header line 1 'X: a\\rX-Evil: b': '\\r' in the line (CR, LF and NUL are refused: "
     "header injection)"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="X: a\x00"), 400, "header injection"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="X Evil: 1"), 400,
     "header name 'X Evil' is not a token"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="X: 1\r\n\r\nv=0"), 400,
     "bad header line 3 'v=0': no colon"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers=" X: 1"), 400, "no header line before"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", headers="i: x@y"), 400,
     "header i is set by the request's own fields"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", from_uri="<sip:a@b"), 400, "From"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", call_id="a b"), 400, "Call-ID"),
    (UacRequest("OPTIONS", "sip:bob@127.0.0.3", transport="tcp"), 400, "socket"),
])
async def test_bad_requests_are_refused_before_sending(autojump_clock, write_routes, req,
                                                        status, words) -> None:
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        layer = local_uacs(server.core)
        if words is None:  # an empty line inside headers is folded away, not a body
            uac = layer.send(req)
            await trio.sleep(0.1)
            sent = uas.requests()[0]
            assert sent.get("body") == "b" and sent.body == b""
            uac.cancel()
        else:
            with pytest.raises(UacError) as info:
                layer.send(req)
            assert info.value.status == status and words in info.value.message
            await trio.sleep(1)
            assert uas.received == []
            assert not layer.pending
        nursery.cancel_scope.cancel()


async def test_duplicate_call_id_and_cseq_is_refused(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        SimUA(net, UAS)
        layer = local_uacs(server.core)
        layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}", call_id="dup", cseq=1))
        with pytest.raises(UacError, match="pending"):
            layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}", call_id="dup", cseq=1))
        layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}", call_id="dup", cseq=2))
        assert len(layer.pending) == 2
        nursery.cancel_scope.cancel()


async def test_over_tcp_no_retransmissions(autojump_clock, write_routes) -> None:
    """A reliable transport: the request is sent once (no Timer E, §17.1.2.2); the reply
    comes back on the connection and is matched to the local transaction."""
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES),
                                    protos=("udp", "tcp"))
        uas = SimUA(net, UAS, proto="tcp")
        answer(uas, 202, delay=5.0)
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("MESSAGE", f"sip:bob@{UAS};transport=tcp"))
        result = await uac.wait()
        assert (result.code, trio.current_time() - t0) == (202, 5.0)
        assert uas.times(t0, "MESSAGE") == [0]
        assert uas.requests()[0].via1.transport.upper() == "TCP"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_lifetime_bounds_an_invite_that_keeps_ringing(autojump_clock, write_routes) -> None:
    """A 180 every 10 s restarts fr_inv (restart_fr_on_each_reply) for ever; the lifetime
    (max_inv_lifetime, 60 s here) ends it: CANCEL, local 408."""
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES), config={
            "lua": {"routes": write_routes(ROUTES)},
            "tm": {"fr_inv_timer": 15000, "max_inv_lifetime": 60000}})
        uas = SimUA(net, UAS)

        def ring(ua: SimUA, req: SipRequest, source: Address) -> None:
            if req.method == "INVITE":
                async def keep_ringing() -> None:
                    for _ in range(20):
                        await ua.send(ua.response_to(req, 180, "Ringing"), source)
                        await trio.sleep(10)
                ua._net._nursery.start_soon(keep_ringing)  # type: ignore[union-attr]
            elif req.method == "CANCEL":
                ua.send_soon(source, ua.response_to(req, 200, "OK"))

        uas.on_request = ring
        t0 = trio.current_time()
        uac = local_uacs(server.core).send(UacRequest("INVITE", f"sip:bob@{UAS}"))
        result = await uac.wait()
        assert (result.code, result.local, trio.current_time() - t0) == (408, True, 60.0)
        cancel = await uas.expect_request("CANCEL", within=1)
        assert cancel.at - t0 == 60.0
        nursery.cancel_scope.cancel()


def challenger(uas: SimUA, code: int = 401, *, qop: bool = True, times_: int = 1,
               password: str = "secret") -> list[SipRequest]:
    """``uas`` challenges the first ``times_`` requests with ``code`` (Digest, realm
    "trio", nonce "n1"); a later one is checked by an independent RFC 2617 computation:
    200 when the response is right, 403 otherwise. Returns the requests it saw."""
    import hashlib
    import re

    seen: list[SipRequest] = []
    hname = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
    aname = "authorization" if code == 401 else "proxy-authorization"

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    def handler(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "ACK" or any(r.raw == req.raw for r in seen):
            return
        seen.append(req)
        if len(seen) <= times_:
            value = 'Digest realm="trio", nonce="n1", opaque="op"' + (', qop="auth"' if qop else "")
            ua.send_soon(source, ua.response_to(req, code, "Auth", headers=[(hname, value)]))
            return
        f = dict(re.findall(r'(\w+)="?([^",]*)"?', req.get(aname) or ""))
        ha1 = md5(f"alice:trio:{password}")
        ha2 = md5(f"{req.method}:{f.get('uri')}")
        want = (md5(f"{ha1}:n1:{f.get('nc')}:{f.get('cnonce')}:auth:{ha2}") if qop
                else md5(f"{ha1}:n1:{ha2}"))
        ok = f.get("response") == want and f.get("opaque") == "op" and f.get("uri") == req.ruri_text
        ua.send_soon(source, ua.response_to(req, 200 if ok else 403, "OK" if ok else "Wrong"))

    uas.on_request = handler
    return seen


@pytest.mark.parametrize(("code", "qop", "method"), [
    (401, True, "MESSAGE"), (407, False, "OPTIONS"), (407, True, "INVITE")])
async def test_digest_authentication_of_a_challenged_request(
        autojump_clock, write_routes, code, qop, method) -> None:
    async with SimNetwork(seed=14) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        seen = challenger(uas, code, qop=qop)
        layer = local_uacs(server.core)
        uac = layer.send(UacRequest(method, f"sip:bob@{UAS}", auth_user="alice",
                                    auth_password="secret", call_id="auth-1"))
        result = await uac.wait()
        assert result.code == 200
        first, second = seen
        assert (first.cseq_num, second.cseq_num) == (10, 11)
        assert second.call_id == first.call_id == "auth-1"
        assert second.from_tag == first.from_tag
        assert second.via1.branch != first.via1.branch  # type: ignore[union-attr]
        assert layer.stats["auth_sent"] == 1
        assert layer.find("auth-1", 11) is uac and layer.find("auth-1", 10) is None
        if method == "INVITE":  # the challenged INVITE was ACKed by its transaction
            await trio.sleep(0.1)
            acks = [r for r in uas.requests() if r.method == "ACK"]
            assert acks and acks[0].cseq_num == 10
        await trio.sleep(40)  # Timer K (T4) / M (64*T1): then the table forgets it
        assert not layer.pending
        nursery.cancel_scope.cancel()


async def test_a_second_challenge_or_wrong_password_is_the_outcome(autojump_clock,
                                                                  write_routes) -> None:
    async with SimNetwork(seed=15) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        seen = challenger(uas, 401, times_=2)
        layer = local_uacs(server.core)
        r1 = await layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}", auth_user="alice",
                                         auth_password="secret")).wait()
        assert r1.code == 401 and len(seen) == 2  # answered once, not in a loop
        challenger(uas, 401, password="other")
        r2 = await layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}", auth_user="alice",
                                         auth_password="secret")).wait()
        assert r2.code == 403
        challenger(uas, 401)
        r3 = await layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}")).wait()
        assert r3.code == 401  # no credentials: the challenge is the outcome
        nursery.cancel_scope.cancel()


def test_digest_credentials_rfc_2617_example() -> None:
    from trio_sip.sip.digest import DigestError, digest_credentials, parse_challenge_untrusted

    value = digest_credentials(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
        "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b")
    scheme, p = parse_challenge_untrusted(value)
    assert scheme == "digest" and p["response"] == "6629fae49393a05397450978507c4ef1"
    assert (p["qop"], p["nc"], p["cnonce"]) == ("auth", "00000001", "0a4f113b")
    for bad in ('Basic realm="x"', 'Digest realm="x"', 'Digest realm="x", nonce="n", '
                'algorithm=MD5-sess', 'Digest realm="x", nonce="n", qop="auth-int"',
                'Digest realm="x" nonce'):
        with pytest.raises(DigestError):
            digest_credentials(bad, "GET", "/", "u", "p", "c")


async def test_a_next_hop_by_name_is_resolved(autojump_clock, write_routes) -> None:
    """RFC 3263 through core.dns: the first lookup waits (0.5 s scripted delay), the
    request goes to the A record; the next one is served from the cache at once; a name
    that does not exist is a local 478; a lookup longer than fr a local 408."""
    from trio_sip.testing.dns import ScriptedDns, use_scripted_dns

    dns = ScriptedDns()
    dns.a("uas.test", "127.0.0.3")
    dns.delay("uas.test", 0.5)
    dns.a("slow.test", "127.0.0.3")
    dns.delay("slow.test", 10)
    async with SimNetwork(seed=16) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        use_scripted_dns(server, dns)
        uas = SimUA(net, UAS)
        answer(uas, 200)
        layer = local_uacs(server.core)
        t0 = trio.current_time()
        r1 = await layer.send(UacRequest("MESSAGE", "sip:bob@uas.test:5060")).wait()
        assert (r1.code, trio.current_time() - t0) == (200, 0.5)
        assert uas.requests()[0].ruri_text == "sip:bob@uas.test:5060"
        t1 = trio.current_time()
        r2 = await layer.send(UacRequest("MESSAGE", "sip:bob@uas.test:5060")).wait()
        assert (r2.code, trio.current_time() - t1) == (200, 0.0)  # cached
        r3 = await layer.send(UacRequest("MESSAGE", "sip:bob@nowhere.test")).wait()
        assert (r3.code, r3.local) == (478, True)
        t3 = trio.current_time()
        slow = layer.send(UacRequest("MESSAGE", "sip:bob@slow.test", timeout=4.0))
        r4 = await slow.wait()
        assert (r4.code, trio.current_time() - t3) == (408, 4.0)
        # an INVITE cancelled while its next hop is being resolved: nothing is sent
        dns.delay("uas.test", 3)
        server.core.dns.cache.clear()
        n = len(uas.requests())
        inv = layer.send(UacRequest("INVITE", "sip:bob@uas.test:5060"))
        await trio.sleep(1)
        assert inv.cancel()
        assert (await inv.wait()).code == 487
        await trio.sleep(5)
        assert len(uas.requests()) == n
        await trio.testing.wait_all_tasks_blocked()
        assert not layer.pending
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", [21, 22, 23])
async def test_lossy_duplicating_reordering_network(autojump_clock, write_routes, seed) -> None:
    """Chaos-style: 40 local MESSAGEs and 10 INVITEs over links that lose 25 %, duplicate
    and reorder; the UAS answers every copy as its server transaction would (the same
    final again). Every request ends with exactly one outcome: a 200, or a 408 at fr
    only when the network delivered none of its 200s (each of its ~10 transmissions
    before fr lost one way or the other: ~1 request in 4,000 at 25 % loss each way;
    which one varies from run to run: trio orders timers due at the same virtual
    instant by object identity and shuffles each batch of runnable tasks); every 2xx to
    an INVITE is ACKed, and nothing is left."""
    from trio_sip.testing import LinkSpec

    async with SimNetwork(seed=seed) as net, trio.open_nursery() as nursery:
        net.set_default(LinkSpec(loss=0.25, duplicate=0.1, delay=(0.005, 0.05),
                                 reorder=0.2, reorder_delay=(0.0, 0.3)))
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)

        acks: set[str] = set()
        retransmitting: set[str] = set()

        def every_copy(ua: SimUA, req: SipRequest, source: Address) -> None:
            if req.method == "ACK":
                acks.add(req.call_id)
                return
            ok = ua.response_to(req, 200, "OK", to_tag=f"t{req.call_id}")
            ua.send_soon(source, ok)
            if req.method == "INVITE" and req.call_id not in retransmitting:
                # §13.3.1.4: the UAS core retransmits its 2xx until the ACK comes
                retransmitting.add(req.call_id)

                async def until_acked(call_id: str = req.call_id) -> None:
                    interval = 0.5
                    for _ in range(10):
                        await trio.sleep(interval)
                        if call_id in acks:
                            return
                        await ua.send(ok, source)
                        interval = min(interval * 2, 4.0)
                ua._net._nursery.start_soon(until_acked)  # type: ignore[union-attr]

        uas.on_request = every_copy
        layer = local_uacs(server.core)
        uacs = [layer.send(UacRequest("MESSAGE" if i < 40 else "INVITE", f"sip:u{i}@{UAS}",
                                      call_id=f"c{i}")) for i in range(50)]
        outcomes: list[int] = []
        settled = 0

        def count(u) -> None:  # type: ignore[no-untyped-def]
            nonlocal settled
            settled += 1

        for u in uacs:
            u.on_final.append(count)
        for u in uacs:
            outcomes.append((await u.wait()).code)
        assert settled == 50 and set(outcomes) <= {200, 408}, outcomes
        got_200 = {m.group(1).decode() for e in net.trace
                   if e.src == UAS and e.fate != "lost" and e.data.startswith(b"SIP/2.0 200")
                   for m in [re.search(rb"\r\nCall-ID: (c\d+)\r\n", e.data)] if m}
        timed_out = {f"c{i}" for i, code in enumerate(outcomes) if code == 408}
        assert not timed_out & got_200, (timed_out, "a 200 was delivered")
        assert len(timed_out) <= 1, timed_out
        await trio.sleep(40)  # Timer K (T4) and M (64*T1 for a local INVITE), stragglers
        acked = {r.call_id for r in uas.requests() if r.method == "ACK"}
        assert acked == {f"c{i}" for i in range(40, 50)} - timed_out
        await trio.testing.wait_all_tasks_blocked()
        assert not layer.pending and not server.core.tm.clients
        nursery.cancel_scope.cancel()


async def test_max_pending_bounds_the_table(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=17) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES), config={
            "lua": {"routes": write_routes(ROUTES)}, "modparams": {"uac": {"max_pending": 3}}})
        SimUA(net, UAS)  # silent
        layer = local_uacs(server.core)
        for _ in range(3):
            layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}"))
        with pytest.raises(UacError, match="too many") as info:
            layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}"))
        assert info.value.status == 503 and layer.stats["refused"] == 1
        await trio.sleep(31)  # the three time out (fr): room again
        layer.send(UacRequest("OPTIONS", f"sip:bob@{UAS}"))
        nursery.cancel_scope.cancel()


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_challenge_parser_raises_only_bad_message(text: str) -> None:
    """Whatever a peer puts in WWW-Authenticate: a parse or BadMessage (the _untrusted
    contract), and digest_credentials then only DigestError."""
    from trio_sip.sip.digest import DigestError, digest_credentials, parse_challenge_untrusted
    from trio_sip.sip.errors import BadMessage

    try:
        parse_challenge_untrusted(text)
    except BadMessage:
        pass
    try:
        digest_credentials(text, "INVITE", "sip:a@b", "u", "p", "c")
    except DigestError:
        pass


async def test_header_lines_folded_and_trailing_crlf(autojump_clock, write_routes) -> None:
    """A trailing CRLF (as Kamailio scripts write) and a blank line are harmless, folded
    lines are joined; a compact Contact (m:) replaces the INVITE's own."""
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(ROUTES))
        uas = SimUA(net, UAS)
        answer(uas, 486)
        uac = local_uacs(server.core).send(UacRequest(
            "INVITE", f"sip:bob@{UAS}",
            headers="Subject: a\r\n\tfolded\r\n\r\nm: <sip:me@127.0.0.1>\r\nX-B : 2\r\n"))
        assert (await uac.wait()).code == 486
        req = uas.requests()[0]
        assert (req.get("subject"), req.get("x-b")) == ("a folded", "2")
        assert [h.text for h in req.headers if h.name.lower() in ("contact", "m")] == [
            "<sip:me@127.0.0.1>"]
        assert req.body == b""
        nursery.cancel_scope.cancel()
