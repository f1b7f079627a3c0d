"""The resolver against a real DNS server: dnsmasq on 127.0.0.1, started by the test
(tests/support/dnsmasq.py), asked through dnspython's async API on Trio."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from tests.dns.conftest import requires_dnsmasq
from tests.support.dnsmasq import Dnsmasq
from trio_sip.config import DnsConfig
from trio_sip.dns import DnsFailure, DnspythonBackend, Query, SipResolver, SrvRecord
from trio_sip.sip.uri import parse_uri_untrusted

pytestmark = requires_dnsmasq

ALL = ("udp", "tcp", "tls")


def resolver(server: Dnsmasq, seed: int = 1, **cfg: object) -> SipResolver:
    config = DnsConfig(nameservers=(server.nameserver,), timeout=1.0, **cfg)  # type: ignore[arg-type]
    return SipResolver(config, loopback_only=True, rng=random.Random(seed))


def texts(res: object) -> list[str]:
    return [str(t) for t in res.targets]  # type: ignore[attr-defined]


async def test_records_come_back_as_dnsmasq_serves_them(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    naptr = await r.lookup(Query.of("example.test", "NAPTR"))
    assert sorted((n.order, n.service, n.replacement) for n in naptr.records) == [  # type: ignore[union-attr]
        (10, "SIP+D2T", "_sip._tcp.example.test"), (20, "SIP+D2U", "_sip._udp.example.test")]
    assert naptr.ttl == 30
    srv = await r.lookup(Query.of("_sip._udp.example.test", "SRV"))
    assert SrvRecord(20, 0, 5075, "u4.example.test") in srv.records
    aaaa = await r.lookup(Query.of("u4.example.test", "AAAA"))
    assert aaaa.records == ("::1",)
    nx = await r.lookup(Query.of("missing.example.test", "A"))
    assert nx.failure is DnsFailure.NXDOMAIN
    nodata = await r.lookup(Query.of("plain.test", "AAAA"))
    assert nodata.failure is DnsFailure.NODATA


async def test_rfc3263_order_naptr_srv_a(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    res = await r.resolve(parse_uri_untrusted("sip:bob@example.test"), ALL)
    got = texts(res)
    # NAPTR order 10 (TCP) before 20 (UDP); within UDP priority 10 (u1..u3, weighted)
    # before priority 20 (u4, A before AAAA)
    assert got[0] == "tcp:127.0.0.11:5071"
    assert sorted(got[1:4]) == ["udp:127.0.0.21:5072", "udp:127.0.0.22:5073",
                                "udp:127.0.0.23:5074"]
    assert got[4:] == ["udp:127.0.0.24:5075", "udp:[::1]:5075"]
    # without TCP the NAPTR's UDP service is used
    res = await r.resolve(parse_uri_untrusted("sip:bob@example.test"), ("udp",))
    assert texts(res)[0].startswith("udp:")
    # transport=tcp: _sip._tcp only; an explicit port: A/AAAA only
    res = await r.resolve(parse_uri_untrusted("sip:bob@example.test;transport=tcp"), ALL)
    assert texts(res) == ["tcp:127.0.0.11:5071"]
    res = await r.resolve(parse_uri_untrusted("sip:bob@u4.example.test:6000"), ALL)
    assert texts(res) == ["udp:127.0.0.24:6000", "udp:[::1]:6000"]
    res = await resolver(dnsmasq, prefer_ipv6=True).resolve(
        parse_uri_untrusted("sip:bob@u4.example.test:6000"), ALL)
    assert texts(res) == ["udp:[::1]:6000", "udp:127.0.0.24:6000"]
    # no NAPTR: SRV per transport; no SRV: the A record at 5060
    res = await r.resolve(parse_uri_untrusted("sip:bob@nonaptr.test"), ALL)
    assert texts(res) == ["udp:127.0.0.21:5076"]
    res = await r.resolve(parse_uri_untrusted("sip:bob@plain.test"), ALL)
    assert texts(res) == ["udp:127.0.0.31:5060"]
    res = await r.resolve(parse_uri_untrusted("sip:bob@missing.test"), ALL)
    assert not res.ok and res.failure is DnsFailure.NXDOMAIN


async def test_srv_weights_over_real_answers(dnsmasq: Dnsmasq) -> None:
    """The weighted choice (10/30/60) among the priority-10 UDP targets, from answers
    dnsmasq sent (cached after the first resolution, re-ordered on every call):
    chi-square against the weights below 13.8 (2 degrees of freedom, p = 0.001); a
    uniform choice would give ~300 here, always taking the first answer ~6000."""
    r = resolver(dnsmasq, seed=3)
    uri = parse_uri_untrusted("sip:bob@example.test;transport=udp")
    n = 3000
    first: Counter[str] = Counter()
    for _ in range(n):
        res = await r.resolve(uri, ALL)
        first[res.targets[0].host] += 1
    # one SRV question, A and AAAA of its 4 targets, once: every other call is cached
    assert r.statistics()["queries"] == 9
    expected = {"127.0.0.21": 0.1 * n, "127.0.0.22": 0.3 * n, "127.0.0.23": 0.6 * n}
    chi2 = sum((first[k] - e) ** 2 / e for k, e in expected.items())
    assert set(first) == set(expected)
    assert chi2 < 13.8, first


async def test_a_server_that_never_answers_times_out() -> None:
    # a UDP socket that reads nothing: the question is lost, as with a dead server
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sink:
        await sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        backend = DnspythonBackend([("127.0.0.1", port)], timeout=0.2, attempts=2,
                                   loopback_only=True)
        a = await backend.query(Query.of("example.test", "A"))
    assert a.failure is DnsFailure.TIMEOUT
    assert backend.stats["timeouts"] == 2


async def test_the_loopback_guard_keeps_foreign_nameservers_unasked() -> None:
    backend = DnspythonBackend([("192.0.2.53", 53)], timeout=0.2, loopback_only=True)
    a = await backend.query(Query.of("example.test", "A"))
    assert a.failure is DnsFailure.REFUSED
    assert backend.stats["queries"] == 0


@pytest.mark.parametrize("text", ["127.0.0.1:30053", "[::1]:53", "127.0.0.1"])
def test_nameserver_syntax(text: str) -> None:
    DnsConfig(nameservers=(text,))


async def test_with_the_guard_on_the_system_resolver_is_not_asked() -> None:
    r = SipResolver(DnsConfig(), loopback_only=True)
    assert r.backend.nameservers == []  # type: ignore[attr-defined]
    res = await r.resolve(parse_uri_untrusted("sip:bob@example.com"), ALL)
    assert not res.ok and res.failure is DnsFailure.REFUSED
