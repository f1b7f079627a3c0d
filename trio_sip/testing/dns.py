"""A scripted DNS peer for virtual-time tests: a resolver backend on Trio's clock.

:class:`ScriptedDns` has the ``query`` method of a resolver backend
(trio_sip/dns/backend.py). It holds a small authoritative zone and a script of
misbehaviour per name: a delay, SERVFAIL, no answer at all (the backend's timeout,
slept on Trio's clock, so with ``MockClock(autojump_threshold=0)`` a 4 s DNS timeout
takes no real time). Every question is logged with the (virtual) time it came.

    dns = ScriptedDns()
    dns.naptr("example.test", (10, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"))
    dns.srv("_sip._udp.example.test", (10, 50, 5070, "a.example.test"))
    dns.a("a.example.test", "127.0.0.5", ttl=30)
    dns.fail("b.example.test", "servfail")
    server = await start_server(nursery, net, routes=...)
    use_scripted_dns(server, dns)

A name with no records at all answers NXDOMAIN, a name with records of other types
NODATA, as an authoritative server does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from ..dns.rfc3263 import Answer, DnsFailure, NaptrRecord, Query, Record, SrvRecord

__all__ = ["ScriptedDns", "use_scripted_dns"]


@dataclass
class _RRset:
    records: tuple[Record, ...]
    ttl: float


class ScriptedDns:
    """A resolver backend answering from a zone and a script (see the module docstring).

    ``timeout`` and ``attempts`` are what a real backend would spend on a server that
    never answers: a question scripted "timeout" sleeps ``timeout * attempts`` then
    answers TIMEOUT. ``negative_ttl`` is the SOA minimum sent with NXDOMAIN/NODATA.
    """

    def __init__(self, *, timeout: float = 2.0, attempts: int = 2,
                 negative_ttl: float = 30.0) -> None:
        self.timeout = timeout
        self.attempts = attempts
        self.negative_ttl = negative_ttl
        self._zone: dict[Query, _RRset] = {}
        self._names: dict[str, int] = {}
        self._failures: dict[tuple[str, str | None], str] = {}
        self._delays: dict[str, float] = {}
        #: (virtual time, query) of every question asked
        self.log: list[tuple[float, Query]] = []

    # -- the zone ------------------------------------------------------------------

    def add(self, name: str, rdtype: str, records: Iterable[Record], ttl: float = 300.0
            ) -> None:
        q = Query.of(name, rdtype)
        if q not in self._zone:
            self._names[q.name] = self._names.get(q.name, 0) + 1
        self._zone[q] = _RRset(tuple(records), ttl)

    def remove(self, name: str, rdtype: str) -> None:
        q = Query.of(name, rdtype)
        if self._zone.pop(q, None) is not None:
            self._names[q.name] -= 1
            if not self._names[q.name]:
                del self._names[q.name]

    def a(self, name: str, *addrs: str, ttl: float = 300.0) -> None:
        self.add(name, "A", addrs, ttl)

    def aaaa(self, name: str, *addrs: str, ttl: float = 300.0) -> None:
        self.add(name, "AAAA", addrs, ttl)

    def srv(self, name: str, *records: tuple[int, int, int, str], ttl: float = 300.0) -> None:
        """``(priority, weight, port, target)`` records."""
        self.add(name, "SRV", [SrvRecord(p, w, port, t.rstrip(".").lower())
                               for p, w, port, t in records], ttl)

    def naptr(self, name: str, *records: tuple[int, int, str, str, str, str],
              ttl: float = 300.0) -> None:
        """``(order, preference, flags, service, regexp, replacement)`` records."""
        self.add(name, "NAPTR", [NaptrRecord(o, p, f, s, r, rep.rstrip(".").lower())
                                 for o, p, f, s, r, rep in records], ttl)

    # -- the script --------------------------------------------------------------------

    def fail(self, name: str, how: str, rdtype: str | None = None) -> None:
        """Make questions about ``name`` (of ``rdtype``, or any type) fail: ``how`` is
        "servfail", "timeout" or "nxdomain"."""
        if how not in ("servfail", "timeout", "nxdomain"):
            raise ValueError(f"unknown failure {how!r}")
        self._failures[(Query.of(name, "A").name, rdtype)] = how

    def heal(self, name: str) -> None:
        """Stop failing ``name`` (every type)."""
        n = Query.of(name, "A").name
        for key in [k for k in self._failures if k[0] == n]:
            del self._failures[key]

    def delay(self, name: str, seconds: float) -> None:
        """Answer questions about ``name`` after ``seconds`` (of Trio's clock)."""
        self._delays[Query.of(name, "A").name] = seconds

    def asked(self, name: str | None = None, rdtype: str | None = None) -> list[Query]:
        return [q for _, q in self.log
                if (name is None or q.name == Query.of(name, "A").name)
                and (rdtype is None or q.rdtype == rdtype)]

    # -- the backend interface ------------------------------------------------------------

    async def query(self, q: Query) -> Answer:
        self.log.append((trio.current_time(), q))
        how = self._failures.get((q.name, q.rdtype)) or self._failures.get((q.name, None))
        if how == "timeout":
            await trio.sleep(self.timeout * self.attempts)
            return Answer((), 0.0, DnsFailure.TIMEOUT)
        delay = self._delays.get(q.name, 0.0)
        if delay:
            await trio.sleep(delay)
        if how == "servfail":
            return Answer((), 0.0, DnsFailure.SERVFAIL)
        if how == "nxdomain":
            return Answer((), self.negative_ttl, DnsFailure.NXDOMAIN)
        rrset = self._zone.get(q)
        if rrset is not None and rrset.records:
            return Answer(rrset.records, rrset.ttl)
        if q.name in self._names:
            return Answer((), self.negative_ttl, DnsFailure.NODATA)
        return Answer((), self.negative_ttl, DnsFailure.NXDOMAIN)


def use_scripted_dns(server: Any, dns: ScriptedDns) -> None:
    """Make a running server's resolver ask ``dns`` (its cache is emptied)."""
    server.core.dns.backend = dns
    server.core.dns.cache.clear()
