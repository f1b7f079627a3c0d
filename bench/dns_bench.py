"""DNS lookups/s: from the resolver's cache and from a real DNS server (dnsmasq).

    python bench/dns_bench.py [--seconds 1] [--repeat 5] [--concurrency 16]

Starts dnsmasq on 127.0.0.1:<free port> (tests/support/dnsmasq.py) with example.test
(NAPTR → _sip._udp SRV with 3 targets → A/AAAA), then measures, each as the median of
the repeats (the machines are shared and noisy):

* ``cache sync``: ``SipResolver.cached()`` of ``sip:bob@example.test``: the whole RFC
  3263 plan answered from the cache, no await (what t_relay/forward do for a name they
  saw recently), RFC 2782 ordering included;
* ``cache async``: ``await SipResolver.resolve()`` of the same, from the cache;
* ``server A``: one A question to dnsmasq per lookup (cache off), one at a time;
* ``server A xN``: the same with N lookups in flight (``--concurrency``);
* ``server 3263``: a full resolution from dnsmasq (NAPTR, SRV, then A and AAAA of 3
  targets concurrently: 8 questions), one at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.dnsmasq import Dnsmasq, DnsRecords
from trio_sip.config import DnsConfig
from trio_sip.dns import Query, SipResolver
from trio_sip.sip.uri import parse_uri_untrusted

ALL = ("udp", "tcp", "tls")
URI = parse_uri_untrusted("sip:bob@example.test")


def records() -> DnsRecords:
    r = DnsRecords(zone="test", ttl=3600)
    r.naptr("example.test", 10, 10, "S", "SIP+D2U", "_sip._udp.example.test")
    for i, w in enumerate((10, 30, 60), start=1):
        r.srv("_sip._udp.example.test", f"u{i}.example.test", 5060 + i, priority=10, weight=w)
        r.host(f"u{i}.example.test", f"127.0.0.{20 + i}", "::1")
    return r


async def rate(fn: Callable[[], Awaitable[object]], seconds: float, batch: int = 1) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        await fn()
        n += batch
    return n / (time.perf_counter() - start)


def sync_rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        n += 100
    return n / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    with Dnsmasq(records()).start() as server:
        ns = (server.nameserver,)
        cached = SipResolver(DnsConfig(nameservers=ns), loopback_only=True)
        uncached = SipResolver(DnsConfig(nameservers=ns, cache_size=0), loopback_only=True)
        res = await cached.resolve(URI, ALL)
        assert len(res.targets) == 6, res
        results: dict[str, list[float]] = {}

        def keep(name: str, value: float) -> None:
            results.setdefault(name, []).append(value)

        async def parallel_a() -> None:
            async with trio.open_nursery() as n:
                for _ in range(args.concurrency):
                    n.start_soon(uncached.lookup, Query.of("u1.example.test", "A"))

        for _ in range(args.repeat):
            keep("cache sync", sync_rate(lambda: cached.cached(URI, ALL), args.seconds))
            keep("cache async", await rate(lambda: cached.resolve(URI, ALL), args.seconds))
            keep("server A", await rate(
                lambda: uncached.lookup(Query.of("u1.example.test", "A")), args.seconds))
            keep(f"server A x{args.concurrency}",
                 await rate(parallel_a, args.seconds, batch=args.concurrency))
            keep("server 3263", await rate(lambda: uncached.resolve(URI, ALL), args.seconds))
        stats = uncached.statistics()
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"load {os.getloadavg()[0]:.2f}, {args.repeat} x {args.seconds} s, "
          f"dnsmasq on {server.nameserver}")
    print(f"{'what':<16} | {'lookups/s':>10} | {'us/lookup':>9} | spread (min..max)")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<16} | {med:>10.0f} | {1e6 / med:>9.1f} | "
              f"{min(values):.0f}..{max(values):.0f}")
    print(f"questions to dnsmasq: {stats.get('queries', 0)}, timeouts: "
          f"{stats.get('backend_timeouts', 0)}, errors: {stats.get('backend_errors', 0)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    trio.run(main, p.parse_args())
