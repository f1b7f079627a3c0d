"""The resolver in virtual time against a scripted DNS peer: RFC 3263 order, the
cache (TTL, negative caching, bounds), failures, and RFC 2782 SRV ordering."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import trio

from trio_sip.config import DnsConfig
from trio_sip.dns import DnsCache, DnsFailure, Query, SipResolver, SrvRecord, Target, order_srv
from trio_sip.dns.rfc3263 import Answer
from trio_sip.sip.uri import parse_uri_untrusted
from trio_sip.testing.dns import ScriptedDns

ALL = ("udp", "tcp", "tls")


def resolver(dns: ScriptedDns, **cfg: Any) -> SipResolver:
    return SipResolver(DnsConfig(**cfg), backend=dns, rng=random.Random(7))


def targets(res: Any) -> list[str]:
    return [str(t) for t in res.targets]


def full_zone() -> ScriptedDns:
    dns = ScriptedDns()
    # NAPTR order 10 is TCP, order 20 UDP: order beats preference and service order
    dns.naptr("example.test",
              (20, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"),
              (10, 50, "S", "SIP+D2T", "", "_sip._tcp.example.test"),
              (10, 10, "S", "SIPS+D2T", "", "_sips._tcp.example.test"),
              (5, 10, "S", "SIP+D2S", "", "_sip._sctp.example.test"),  # no SCTP here
              (5, 10, "U", "E2U+sip", "!^.*$!sip:x@y!", "."))  # not server location
    dns.srv("_sip._udp.example.test", (10, 0, 5060, "u.example.test"))
    dns.srv("_sip._tcp.example.test", (10, 0, 5070, "t.example.test"))
    dns.srv("_sips._tcp.example.test", (10, 0, 5061, "s.example.test"))
    dns.srv("_sip._sctp.example.test", (10, 0, 5090, "x.example.test"))
    dns.a("u.example.test", "127.0.0.10")
    dns.a("t.example.test", "127.0.0.11")
    dns.aaaa("t.example.test", "::1")
    dns.a("s.example.test", "127.0.0.12")
    dns.a("x.example.test", "127.0.0.13")
    dns.a("example.test", "127.0.0.14")
    return dns


async def test_numeric_host_asks_nothing(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    r = resolver(dns)
    res = await r.resolve(parse_uri_untrusted("sip:bob@127.0.0.5;transport=tcp"), ALL)
    assert targets(res) == ["tcp:127.0.0.5:5060"]
    res = await r.resolve(parse_uri_untrusted("sips:bob@[::1]"), ALL)
    assert targets(res) == ["tls:[::1]:5061"]
    assert dns.log == []


async def test_explicit_port_means_a_and_aaaa_only(autojump_clock: Any) -> None:
    dns = full_zone()
    r = resolver(dns)
    res = await r.resolve(parse_uri_untrusted("sip:bob@t.example.test:5999"), ALL)
    assert targets(res) == ["udp:127.0.0.11:5999", "udp:[::1]:5999"]
    assert {q.rdtype for q in dns.asked()} == {"A", "AAAA"}
    res = await resolver(dns, prefer_ipv6=True).resolve(
        parse_uri_untrusted("sip:bob@t.example.test:5999;transport=tcp"), ALL)
    assert targets(res) == ["tcp:[::1]:5999", "tcp:127.0.0.11:5999"]


async def test_naptr_order_then_srv_then_addresses(autojump_clock: Any) -> None:
    dns = full_zone()
    res = await resolver(dns).resolve(parse_uri_untrusted("sip:bob@example.test"), ALL)
    # order 10: SIPS+D2T (pref 10) then SIP+D2T (pref 50); order 20: SIP+D2U; the SCTP
    # and non-"S" records are skipped
    assert targets(res) == ["tls:127.0.0.12:5061", "tcp:127.0.0.11:5070", "tcp:[::1]:5070",
                            "udp:127.0.0.10:5060"]
    assert dns.asked("_sip._sctp.example.test") == []
    assert dns.asked("x.example.test") == []


async def test_naptr_restricted_to_the_transports_we_have(autojump_clock: Any) -> None:
    dns = full_zone()
    res = await resolver(dns).resolve(parse_uri_untrusted("sip:bob@example.test"), ("udp",))
    assert targets(res) == ["udp:127.0.0.10:5060"]


async def test_sips_uses_only_tls(autojump_clock: Any) -> None:
    dns = full_zone()
    res = await resolver(dns).resolve(parse_uri_untrusted("sips:bob@example.test"), ALL)
    assert targets(res) == ["tls:127.0.0.12:5061"]
    res = await resolver(dns).resolve(parse_uri_untrusted("sips:bob@example.test"),
                                      ("udp", "tcp"))
    assert not res.ok


async def test_transport_param_asks_its_srv_only(autojump_clock: Any) -> None:
    dns = full_zone()
    r = resolver(dns)
    res = await r.resolve(parse_uri_untrusted("sip:bob@example.test;transport=tcp"), ALL)
    assert targets(res) == ["tcp:127.0.0.11:5070", "tcp:[::1]:5070"]
    assert dns.asked(rdtype="NAPTR") == []
    assert [q.name for q in dns.asked(rdtype="SRV")] == ["_sip._tcp.example.test"]


async def test_no_naptr_means_srv_per_transport_then_a(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.srv("_sip._tcp.nonaptr.test", (10, 0, 5070, "t.nonaptr.test"))
    dns.a("t.nonaptr.test", "127.0.0.21")
    dns.a("nonaptr.test", "127.0.0.22")
    dns.a("plain.test", "127.0.0.23")
    r = resolver(dns)
    res = await r.resolve(parse_uri_untrusted("sip:bob@nonaptr.test"), ALL)
    assert targets(res) == ["tcp:127.0.0.21:5070"]
    assert sorted(q.name for q in dns.asked(rdtype="SRV")) == [
        "_sip._tcp.nonaptr.test", "_sip._udp.nonaptr.test", "_sips._tcp.nonaptr.test"]
    # no NAPTR, no SRV: the host's address at 5060 over UDP (RFC 3263 §4.2)
    res = await r.resolve(parse_uri_untrusted("sip:bob@plain.test"), ALL)
    assert targets(res) == ["udp:127.0.0.23:5060"]
    res = await r.resolve(parse_uri_untrusted("sips:bob@plain.test"), ALL)
    assert targets(res) == ["tls:127.0.0.23:5061"]


async def test_srv_target_dot_means_no_service(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.srv("_sip._udp.dot.test", (0, 0, 0, "."))
    dns.a("dot.test", "127.0.0.30")
    res = await resolver(dns).resolve(parse_uri_untrusted("sip:bob@dot.test;transport=udp"),
                                      ALL)
    # "." leaves no SRV target: the host itself (its SRV said nothing usable)
    assert targets(res) == ["udp:127.0.0.30:5060"]


async def test_maddr_is_resolved_instead_of_the_host(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("m.test", "127.0.0.40")
    res = await resolver(dns).resolve(
        parse_uri_untrusted("sip:bob@elsewhere.test:5080;maddr=m.test"), ALL)
    assert targets(res) == ["udp:127.0.0.40:5080"]


async def test_ttl_expiry_asks_again(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("ttl.test", "127.0.0.50", ttl=10)
    r = resolver(dns, ipv6=False)
    uri = parse_uri_untrusted("sip:bob@ttl.test:5060")
    await r.resolve(uri, ALL)
    assert len(dns.log) == 1
    await trio.sleep(9.5)
    assert r.cached(uri, ALL) is not None
    await r.resolve(uri, ALL)
    assert len(dns.log) == 1  # still cached
    dns.a("ttl.test", "127.0.0.51", ttl=10)
    await trio.sleep(0.5)  # the 10 s TTL is over
    assert r.cached(uri, ALL) is None
    res = await r.resolve(uri, ALL)
    assert targets(res) == ["udp:127.0.0.51:5060"]
    assert len(dns.log) == 2


async def test_ttl_is_clamped_by_max_and_min_ttl(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("long.test", "127.0.0.52", ttl=1_000_000)
    dns.a("short.test", "127.0.0.53", ttl=0)
    r = resolver(dns, ipv6=False, max_ttl=60.0, min_ttl=5.0)
    await r.resolve(parse_uri_untrusted("sip:a@long.test:1"), ALL)
    await r.resolve(parse_uri_untrusted("sip:a@short.test:1"), ALL)
    await trio.sleep(4.9)
    assert r.cached(parse_uri_untrusted("sip:a@short.test:1"), ALL) is not None
    await trio.sleep(55.2)  # 60.1 s in all
    assert r.cached(parse_uri_untrusted("sip:a@long.test:1"), ALL) is None


async def test_nxdomain_is_cached_for_negative_ttl(autojump_clock: Any) -> None:
    dns = ScriptedDns(negative_ttl=3600)  # the zone's SOA says an hour
    r = resolver(dns, negative_ttl=20.0)  # we keep it 20 s at most
    uri = parse_uri_untrusted("sip:bob@missing.test")
    res = await r.resolve(uri, ALL)
    assert not res.ok and res.failure is DnsFailure.NXDOMAIN
    assert [q.rdtype for q in dns.asked()] == ["NAPTR"]  # NXDOMAIN ends it (RFC 8020)
    await trio.sleep(19)
    cached = r.cached(uri, ALL)
    assert cached is not None and cached.failure is DnsFailure.NXDOMAIN
    await trio.sleep(1.5)
    assert r.cached(uri, ALL) is None


@pytest.mark.parametrize("how", ["servfail", "timeout"])
async def test_servfail_and_timeouts_are_not_cached(autojump_clock: Any, how: str) -> None:
    dns = ScriptedDns(timeout=1.5, attempts=2)
    dns.a("flaky.test", "127.0.0.60")
    dns.fail("flaky.test", how)
    r = resolver(dns, ipv6=False)
    uri = parse_uri_untrusted("sip:bob@flaky.test:5060")
    start = trio.current_time()
    res = await r.resolve(uri, ALL)
    assert res.failure is (DnsFailure.SERVFAIL if how == "servfail" else DnsFailure.TIMEOUT)
    assert trio.current_time() - start == (3.0 if how == "timeout" else 0.0)
    assert r.cached(uri, ALL) is None
    dns.heal("flaky.test")
    assert targets(await r.resolve(uri, ALL)) == ["udp:127.0.0.60:5060"]


async def test_nodata_is_not_nxdomain(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.aaaa("v6only.test", "::1")
    res = await resolver(dns, ipv6=False).resolve(
        parse_uri_untrusted("sip:bob@v6only.test:5060"), ALL)
    assert res.failure is DnsFailure.NODATA
    res = await resolver(dns).resolve(parse_uri_untrusted("sip:bob@v6only.test:5060"), ALL)
    assert targets(res) == ["udp:[::1]:5060"]


async def test_cache_is_bounded_lru() -> None:
    c = DnsCache(2)
    for i in range(3):
        c.put(Query.of(f"n{i}.test", "A"), Answer((f"127.0.0.{i}",), 100), 0.0)
    assert c.get(Query.of("n0.test", "A"), 1.0) is None
    assert c.get(Query.of("n2.test", "A"), 1.0) is not None
    assert c.stats["evicted"] == 1
    left = c.get(Query.of("n1.test", "A"), 40.0)
    assert left is not None and left.ttl == 60.0  # what is left of the TTL


async def test_concurrent_lookups_do_not_wait_for_each_other(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("slow.test", "127.0.0.70")
    dns.a("fast.test", "127.0.0.71")
    dns.delay("slow.test", 5.0)
    r = resolver(dns, ipv6=False)
    done: dict[str, float] = {}

    async def go(name: str) -> None:
        await r.resolve(parse_uri_untrusted(f"sip:x@{name}:5060"), ALL)
        done[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as n:
        n.start_soon(go, "slow.test")
        n.start_soon(go, "fast.test")
    assert done["fast.test"] - start == 0.0
    assert done["slow.test"] - start == 5.0


async def test_a_cancelled_lookup_caches_nothing(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("slow.test", "127.0.0.72")
    dns.delay("slow.test", 5.0)
    r = resolver(dns, ipv6=False)
    with trio.move_on_after(1.0):
        await r.resolve(parse_uri_untrusted("sip:x@slow.test:5060"), ALL)
    assert len(r.cache) == 0


# -- RFC 2782 ordering ---------------------------------------------------------------


def test_srv_priority_comes_first_whatever_the_weights() -> None:
    recs = [SrvRecord(20, 1000, 1, "b"), SrvRecord(10, 0, 2, "a"), SrvRecord(30, 5, 3, "c")]
    for seed in range(50):
        assert [r.target for r in order_srv(recs, random.Random(seed))] == ["a", "b", "c"]


def test_srv_weight_distribution() -> None:
    """Within one priority the first pick follows the weights (RFC 2782): with weights
    10/30/60 over 6000 orderings, a chi-square test against 10/30/60 % (2 degrees of
    freedom, 99.9 % quantile 13.8) passes, and the uniform or "in order received"
    distributions that ignoring the weights would give fail it."""
    recs = [SrvRecord(10, 10, 1, "w10"), SrvRecord(10, 30, 2, "w30"),
            SrvRecord(10, 60, 3, "w60")]
    rng = random.Random(2026)
    n = 6000
    first = Counter(order_srv(recs, rng)[0].target for _ in range(n))
    expected = {"w10": 0.1 * n, "w30": 0.3 * n, "w60": 0.6 * n}

    def chi2(observed: dict[str, float]) -> float:
        return sum((observed.get(k, 0) - e) ** 2 / e for k, e in expected.items())

    assert chi2(first) < 13.8
    assert chi2({k: n / 3 for k in expected}) > 13.8  # what a uniform choice would give
    assert chi2({"w10": n}) > 13.8  # what "the first record" would give
    # the second place: after w60 is taken, w30 leads 3:1
    second = Counter(order(recs, rng) for _ in range(2000))
    assert 0.65 < second[("w60", "w30")] / (second[("w60", "w30")] + second[("w60", "w10")]) < 0.85


def order(recs: list[SrvRecord], rng: random.Random) -> tuple[str, str]:
    o = order_srv(recs, rng)
    return o[0].target, o[1].target


def test_srv_zero_weights_are_rarely_first_but_kept() -> None:
    recs = [SrvRecord(10, 0, 1, "zero"), SrvRecord(10, 100, 2, "heavy")]
    rng = random.Random(1)
    firsts = Counter(order_srv(recs, rng)[0].target for _ in range(2000))
    assert firsts["zero"] < 60  # 1/101 expected: ~20
    assert all(len(order_srv(recs, rng)) == 2 for _ in range(10))


def test_target_text() -> None:
    assert str(Target("tcp", "::1", 5060)) == "tcp:[::1]:5060"


async def test_concurrent_resolutions_of_one_name_ask_once(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("burst.test", "127.0.0.80")
    dns.delay("burst.test", 1.0)
    r = resolver(dns, ipv6=False)
    got: list[list[str]] = []

    async def go() -> None:
        got.append(targets(await r.resolve(parse_uri_untrusted("sip:x@burst.test:5060"), ALL)))

    async with trio.open_nursery() as n:
        for _ in range(20):
            n.start_soon(go)
    assert got == [["udp:127.0.0.80:5060"]] * 20
    assert len(dns.asked("burst.test")) == 1
    assert r.statistics()["coalesced"] == 19


async def test_when_the_asker_is_cancelled_a_waiter_asks_itself(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.a("burst.test", "127.0.0.81")
    dns.delay("burst.test", 2.0)
    r = resolver(dns, ipv6=False)
    uri = parse_uri_untrusted("sip:x@burst.test:5060")
    result: list[list[str]] = []

    async def first() -> None:
        with trio.move_on_after(1.0):
            await r.resolve(uri, ALL)

    async def second() -> None:
        await trio.sleep(0.5)
        result.append(targets(await r.resolve(uri, ALL)))

    start = trio.current_time()
    async with trio.open_nursery() as n:
        n.start_soon(first)
        n.start_soon(second)
    assert result == [["udp:127.0.0.81:5060"]]
    assert len(dns.asked("burst.test")) == 2  # the second asked again at 1.0 s
    assert trio.current_time() - start == 3.0


async def test_a_huge_srv_answer_is_bounded(autojump_clock: Any) -> None:
    dns = ScriptedDns()
    dns.srv("_sip._udp.huge.test", *[(10, 1, 5000 + i, f"h{i}.huge.test") for i in range(500)])
    for i in range(500):
        dns.a(f"h{i}.huge.test", "127.0.0.90")
    res = await resolver(dns, ipv6=False, max_targets=4).resolve(
        parse_uri_untrusted("sip:x@huge.test;transport=udp"), ALL)
    assert len(res.targets) == 4
    assert len(dns.asked(rdtype="A")) == 4  # addresses of 4 SRV targets only
