"""TM with DNS in virtual time: t_relay and forward() to host names, DNS failover,
its switches, the blocklist, and what a DNS failure is answered (a scripted DNS
peer on Trio's clock, trio_sip/testing/dns.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.testing.dns import ScriptedDns, use_scripted_dns
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
A = Address("127.0.0.3", 5070)
B = Address("127.0.0.4", 5080)
IP_UAS = Address("127.0.0.9", 5060)


def zone() -> ScriptedDns:
    """example.test: NAPTR → _sip._udp SRV → a (priority 10), b (priority 20)."""
    dns = ScriptedDns()
    dns.naptr("example.test", (10, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"))
    dns.srv("_sip._udp.example.test", (10, 50, A.port, "a.example.test"),
            (20, 50, B.port, "b.example.test"))
    dns.a("a.example.test", A.host)
    dns.a("b.example.test", B.host)
    return dns


def routes(write_routes: Any, relay: str = "KSR.tm.t_relay()", pre: str = "",
           fr: int = 2000) -> str:
    return write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        f"  KSR.tm.t_set_fr(0, {fr})\n"
        f"  {pre}\n"
        f"  local rc = {relay}\n"
        "  if rc < 0 then KSR.sl.sl_reply_error() end\n"
        "end\n")


def invite(ua: SimUA, ruri: str) -> bytes:
    return ua.request("INVITE", ruri, body=b"v=0\r\n")


async def call(uac: SimUA, ruri: str, status: int) -> None:
    """Send an INVITE and wait for its final response, which must be ``status``."""
    start = len(uac.received)
    call_id = f"call-{start}-{ruri}"
    await uac.send(uac.request("INVITE", ruri, call_id=call_id, body=b"v=0\r\n"), PROXY)
    got = await uac.wait_for(
        lambda r: isinstance(r.msg, SipResponse) and r.msg.status >= 200
        and r.msg.call_id == call_id, within=5, start=start)
    assert isinstance(got.msg, SipResponse)
    assert got.msg.status == status


def invites(ua: SimUA) -> int:
    return sum(1 for r in ua.requests() if r.method == "INVITE")


def answers(ua: SimUA, code: int) -> None:
    def on_request(u: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            u.send_soon(source, u.response_to(req, code, "R"))

    ua.on_request = on_request


async def _serve(nursery: trio.Nursery, net: SimNetwork, path: str, dns: ScriptedDns,
                 config: dict[str, Any] | None = None) -> Any:
    cfg = {"lua": {"routes": path}, **(config or {})}
    server = await start_server(nursery, net, config=cfg)
    use_scripted_dns(server, dns)
    return server


async def test_no_reply_from_the_first_srv_target_fails_over_to_the_second(
        autojump_clock: Any, write_routes: Any) -> None:
    dns = zone()
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, routes(write_routes), dns)
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)  # a never answers
        answers(b, 200)
        start = trio.current_time()
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        ok = await uac.expect_response(200, within=10)
        assert a.requests()[0].method == "INVITE"
        got_b = b.received[0]
        assert got_b.at - start == 2.0  # fr_timer (t_set_fr) with no reply: next target
        assert ok.status == 200
        # the same request, a new branch (its own Via branch)
        assert a.requests()[0].vias[0].branch != b.requests()[0].vias[0].branch
        asked = [(q.rdtype, q.name) for q in dns.asked()]
        assert asked[:2] == [("NAPTR", "example.test"), ("SRV", "_sip._udp.example.test")]
        # the addresses of both SRV targets, asked together (concurrently)
        assert sorted(asked[2:]) == [("A", "a.example.test"), ("A", "b.example.test"),
                                     ("AAAA", "a.example.test"), ("AAAA", "b.example.test")]
        assert server.core.tm.stats["dns_failovers"] == 1
        nursery.cancel_scope.cancel()


async def test_503_fails_over_and_6xx_style_codes_do_not(autojump_clock: Any,
                                                         write_routes: Any) -> None:
    dns = zone()
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes), dns)
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)
        answers(a, 503)
        answers(b, 200)
        await call(uac, "sip:bob@example.test", 200)
        # a 486 is a real answer: no failover (failover_reply_codes is empty)
        answers(a, 486)
        await uac.send(invite(uac, "sip:carol@example.test"), PROXY)
        busy = await uac.expect_response(486, within=5)
        assert busy.status == 486
        assert invites(b) == 1
        nursery.cancel_scope.cancel()


async def test_failover_reply_codes_add_codes(autojump_clock: Any, write_routes: Any) -> None:
    dns = zone()
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes), dns,
                     {"dns": {"failover_reply_codes": "code=486;class=6"}})
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)
        answers(a, 486)
        answers(b, 200)
        await call(uac, "sip:bob@example.test", 200)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("how", "relay", "pre"), [
    ("t_relay_to_flags 0x04", "KSR.tm.t_relay_to_flags(4)", ""),
    ("t_set_disable_failover", "KSR.tm.t_relay()", "KSR.tm.t_set_disable_failover(1)"),
    ("dns.disable_failover", "KSR.tm.t_relay()", ""),
])
async def test_failover_can_be_disabled(autojump_clock: Any, write_routes: Any, how: str,
                                        relay: str, pre: str) -> None:
    dns = zone()
    cfg = {"dns": {"disable_failover": True}} if how == "dns.disable_failover" else None
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes, relay, pre), dns, cfg)
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)
        answers(a, 503)
        answers(b, 200)
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        final = await uac.expect_response(final=True, within=5)
        assert final.status == 500  # the 503, remapped as Kamailio does
        assert not b.received
        nursery.cancel_scope.cancel()


async def test_blocklist_skips_a_failed_target_until_it_expires(autojump_clock: Any,
                                                                write_routes: Any) -> None:
    dns = zone()
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, routes(write_routes), dns,
                              {"dns": {"use_blocklist": True, "blocklist_expire": 30.0}})
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)
        answers(a, 503)
        answers(b, 200)
        await call(uac, "sip:bob@example.test", 200)
        assert invites(a) == 1
        # a is blocklisted: the next call goes straight to b
        await call(uac, "sip:carol@example.test", 200)
        assert invites(a) == 1 and invites(b) == 2
        listed = await server.registry.call("dst_blocklist.view", [], server.mi)
        assert [(e["proto"], e["host"], e["port"]) for e in listed] == [("udp", A.host, A.port)]
        view = await server.registry.call("dns.view", [], server.mi)
        assert {(e["name"], e["type"]) for e in view} >= {("example.test", "NAPTR"),
                                                          ("a.example.test", "A")}
        assert (await server.registry.call("dns.stats", [], server.mi))["cache_hits"] > 0
        # after blocklist_expire, a is tried again
        await trio.sleep(31)
        await call(uac, "sip:dave@example.test", 200)
        assert invites(a) == 2
        nursery.cancel_scope.cancel()


async def test_a_dns_wait_is_bounded_by_fr(autojump_clock: Any, write_routes: Any) -> None:
    dns = zone()
    dns.fail("example.test", "timeout")  # 4 s
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes, fr=1000), dns)
        uac = SimUA(net, UAC)
        start = trio.current_time()
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        final = await uac.expect_response(final=True, within=10)
        assert final.status == 408
        assert next(r for r in uac.received if r.msg is final).at - start == 1.0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["nxdomain", "servfail", "timeout"])
async def test_dns_failures_are_answered_478(autojump_clock: Any, write_routes: Any,
                                             how: str) -> None:
    dns = zone()
    dns.fail("example.test", how)
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes, fr=10000), dns)
        uac = SimUA(net, UAC)
        start = trio.current_time()
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        final = await uac.expect_response(final=True, within=10)
        assert final.status == 478
        assert final.reason == "Unresolvable Destination"
        got = next(r for r in uac.received if r.msg is final)
        # a timeout costs the backend's timeout * attempts (2 s * 2), nothing else waits
        assert got.at - start == (4.0 if how == "timeout" else 0.0)
        nursery.cancel_scope.cancel()


async def test_a_slow_dns_server_delays_no_other_call(autojump_clock: Any,
                                                      write_routes: Any) -> None:
    dns = zone()
    dns.fail("example.test", "timeout")
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        await _serve(nursery, net, routes(write_routes, fr=10000), dns)
        uac, uas = SimUA(net, UAC), SimUA(net, IP_UAS)
        answers(uas, 200)
        start = trio.current_time()
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        await trio.sleep(0.5)
        await uac.send(invite(uac, f"sip:alice@{IP_UAS}"), PROXY)
        ok = await uac.expect_response(200, within=10)
        assert next(r for r in uac.received if r.msg is ok).at - start == 0.5
        await uac.expect_response(478, within=10)
        nursery.cancel_scope.cancel()


async def test_cancel_while_resolving_ends_the_lookup(autojump_clock: Any,
                                                      write_routes: Any) -> None:
    dns = zone()
    dns.delay("example.test", 3.0)
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, routes(write_routes), dns)
        uac, a = SimUA(net, UAC), SimUA(net, A)
        ruri = "sip:bob@example.test"
        inv = uac.request("INVITE", ruri, call_id="c-dns", branch="z9hG4bKdns1",
                          body=b"v=0\r\n")
        await uac.send(inv, PROXY)
        await uac.expect_response(100)
        await trio.sleep(1.0)  # the lookup takes 3 s
        cancel = uac.request("CANCEL", ruri, call_id="c-dns", branch="z9hG4bKdns1")
        await uac.send(cancel, PROXY)
        await uac.expect_response(487, within=10)
        await trio.sleep(40)  # past the lookup, wt and Timer H of the unacknowledged 487
        assert not a.received  # the lookup was cancelled: nothing was ever sent
        assert server.core.tm.statistics()["inuse_transactions"] == 0
        nursery.cancel_scope.cancel()


async def test_a_name_resolving_to_a_foreign_address_is_never_sent_to(
        autojump_clock: Any, write_routes: Any) -> None:
    dns = ScriptedDns()
    dns.a("evil.test", "192.0.2.10")
    dns.a("mixed.test", "192.0.2.11", B.host)
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, routes(write_routes), dns)
        uac, b = SimUA(net, UAC), SimUA(net, B)
        answers(b, 200)
        await uac.send(invite(uac, "sip:bob@evil.test:5080"), PROXY)
        final = await uac.expect_response(final=True, within=5)
        assert final.status == 477
        assert server.guard.refused >= 1
        # the loopback address of the same name is used, the foreign one skipped
        await call(uac, "sip:bob@mixed.test:5080", 200)
        nursery.cancel_scope.cancel()


async def test_cached_names_relay_without_waiting(autojump_clock: Any,
                                                  write_routes: Any) -> None:
    dns = zone()
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, routes(write_routes), dns)
        uac, a = SimUA(net, UAC), SimUA(net, A)
        answers(a, 200)
        await call(uac, "sip:bob@example.test", 200)
        before = len(dns.log)
        ops = server.core.stats["async_ops"]
        await call(uac, "sip:carol@example.test", 200)
        assert len(dns.log) == before  # from the cache
        assert server.core.stats["async_ops"] == ops  # t_relay did not even yield
        nursery.cancel_scope.cancel()


async def test_stateless_forward_uses_the_first_target(autojump_clock: Any,
                                                       write_routes: Any) -> None:
    dns = zone()
    path = write_routes(
        "function ksr_request_route()\n"
        "  local rc = KSR.forward()\n"
        "  if rc < 0 then KSR.sl.sl_reply_error() end\n"
        "end\n")
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        server = await _serve(nursery, net, path, dns)
        uac, a, b = SimUA(net, UAC), SimUA(net, A), SimUA(net, B)
        answers(a, 200)
        await call(uac, "sip:bob@example.test", 200)
        assert not b.received
        # no transaction was made for the wait: no 100 Trying, no 408 later
        await trio.sleep(40)
        assert [r.msg.status for r in uac.received] == [200]  # type: ignore[union-attr]
        assert server.core.tm.statistics().get("UAS_transactions", 0) == 0
        # an unresolvable name: -1 and sl_reply_error() answers 478
        await uac.send(invite(uac, "sip:bob@nowhere.test"), PROXY)
        await uac.expect_response(478, within=5)
        nursery.cancel_scope.cancel()


async def test_a_send_failure_fails_over_at_once_even_to_another_transport(
        autojump_clock: Any, write_routes: Any) -> None:
    dns = ScriptedDns()
    # NAPTR: TCP first (order 10), then UDP (order 20); nothing accepts TCP at a
    dns.naptr("example.test", (10, 10, "S", "SIP+D2T", "", "_sip._tcp.example.test"),
              (20, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"))
    dns.srv("_sip._tcp.example.test", (10, 0, A.port, "a.example.test"))
    dns.srv("_sip._udp.example.test", (10, 0, B.port, "b.example.test"))
    dns.a("a.example.test", A.host)
    dns.a("b.example.test", B.host)
    async with SimNetwork(seed=13) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes(write_routes),
                                    protos=("udp", "tcp"))
        use_scripted_dns(server, dns)
        uac, b = SimUA(net, UAC), SimUA(net, B)
        answers(b, 200)
        start = trio.current_time()
        await uac.send(invite(uac, "sip:bob@example.test"), PROXY)
        ok = await uac.expect_response(200, within=5)
        assert next(r for r in uac.received if r.msg is ok).at - start == 0.0
        # the UDP branch carries a UDP Via of ours
        assert b.requests()[0].vias[0].transport == "UDP"
        assert server.core.tm.stats["dns_failovers"] == 1
        nursery.cancel_scope.cancel()
