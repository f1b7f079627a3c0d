"""Asking DNS servers: dnspython's async query functions on Trio.

A backend answers one :class:`~trio_sip.dns.rfc3263.Query` with an
:class:`~trio_sip.dns.rfc3263.Answer` and never raises for what a DNS server or
the network does (a timeout, SERVFAIL, a garbled packet are answers with a
``failure``); it may be cancelled at any await (the lookup belongs to a
transaction's nursery). Tests swap in :class:`trio_sip.testing.dns.ScriptedDns`,
which has the same ``query`` method and runs on Trio's (virtual) clock.

:class:`DnspythonBackend` sends the question over UDP (TCP when the answer is
truncated, ``dns.asyncquery.udp_with_fallback``) with the recursion-desired
flag to each configured nameserver in turn, ``attempts`` rounds, each try bounded
by ``timeout`` on Trio's clock (dnspython's own timeouts read the wall clock, so
they are not used). NXDOMAIN and NODATA are final answers; SERVFAIL, REFUSED and
other rcodes move on to the next server. CNAME chains in the answer are followed
(bounded). With the loopback guard on, only loopback nameservers are asked.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import trio

from ..transport.guard import is_loopback_host
from .rfc3263 import Answer, DnsFailure, NaptrRecord, Query, Record, SrvRecord

__all__ = ["Backend", "DnspythonBackend", "parse_nameserver", "system_nameservers"]

log = logging.getLogger("trio_sip.dns")

_MAX_CNAMES = 8


class Backend(Protocol):
    """What the resolver asks: one question, one answer (never raises for DNS or
    network outcomes)."""

    async def query(self, q: Query) -> Answer: ...


def parse_nameserver(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT`` (an IP address; port 53 by default).
    ValueError says the rule."""
    t = text.strip()
    port = 53
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError("expected [IPV6]:PORT")
            port = int(rest[1:])
    elif t.count(":") == 1:
        host, p = t.split(":")
        if not p.isdigit():
            raise ValueError("PORT must be a number")
        port = int(p)
    else:
        host = t
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a nameserver is an IP address, not {host!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"PORT must be 1..65535, not {port}")
    return host, port


def system_nameservers() -> list[tuple[str, int]]:
    """The machine's nameservers (/etc/resolv.conf), [] when it has none."""
    try:
        r = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        return []
    return [(str(ns), r.port) for ns in r.nameservers]


def _records(rrset: Any) -> list[Record]:
    out: list[Record] = []
    for rd in rrset:
        t = rd.rdtype
        if t in (dns.rdatatype.A, dns.rdatatype.AAAA):
            out.append(str(rd.address))
        elif t == dns.rdatatype.SRV:
            out.append(SrvRecord(int(rd.priority), int(rd.weight), int(rd.port),
                                 rd.target.to_text(omit_final_dot=True).lower() or "."))
        elif t == dns.rdatatype.NAPTR:
            out.append(NaptrRecord(int(rd.order), int(rd.preference),
                                   rd.flags.decode("ascii", "replace"),
                                   rd.service.decode("ascii", "replace"),
                                   rd.regexp.decode("ascii", "replace"),
                                   rd.replacement.to_text(omit_final_dot=True).lower() or "."))
    return out


def _negative_ttl(resp: dns.message.Message) -> float:
    """RFC 2308 §5: the SOA's TTL, capped by its MINIMUM field; 0 if absent."""
    for rrset in resp.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            for rd in rrset:
                return float(min(rrset.ttl, rd.minimum))
    return 0.0


def answer_from_message(q: Query, resp: dns.message.Message) -> Answer | None:
    """The Answer of a response, or None when the rcode says "ask another server"."""
    rcode = resp.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer((), _negative_ttl(resp), DnsFailure.NXDOMAIN)
    if rcode != dns.rcode.NOERROR:
        return None
    want = dns.rdatatype.from_text(q.rdtype)
    name = dns.name.from_text(q.name)
    ttl: float | None = None
    for _ in range(_MAX_CNAMES):
        found = None
        cname = None
        for rrset in resp.answer:
            if rrset.name != name:
                continue
            if rrset.rdtype == want:
                found = rrset
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cname = rrset
        if found is not None:
            ttl = found.ttl if ttl is None else min(ttl, found.ttl)
            records = _records(found)
            if records:
                return Answer(tuple(records), float(ttl))
            break
        if cname is None:
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        name = next(iter(cname)).target
    return Answer((), _negative_ttl(resp), DnsFailure.NODATA)


class DnspythonBackend:
    """Queries real DNS servers (see the module docstring)."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], *, timeout: float = 2.0,
                 attempts: int = 2, loopback_only: bool = False) -> None:
        #: the servers asked, in turn; and those the loopback guard keeps us from asking
        self.nameservers = [(h, p) for h, p in nameservers
                            if not loopback_only or is_loopback_host(h)]
        self.refused = [(h, p) for h, p in nameservers if (h, p) not in self.nameservers]
        self._warned = False
        self.timeout = timeout
        self.attempts = attempts
        self.stats: Counter[str] = Counter()
        self._backend = dns.asyncbackend.get_backend("trio")

    async def query(self, q: Query) -> Answer:
        if not self.nameservers:
            self.stats["refused"] += 1
            if not self._warned:
                self._warned = True
                log.warning("dns: no nameserver may be asked (%s); set dns.nameservers",
                            "refused by the loopback guard: " + ", ".join(
                                f"{h}:{p}" for h, p in self.refused)
                            if self.refused else "none configured; with core.loopback_only "
                            "on, the system's resolver is not used")
            return Answer((), 0.0, DnsFailure.REFUSED)
        msg = dns.message.make_query(q.name + ".", q.rdtype)
        msg.flags |= dns.flags.RD
        failure = DnsFailure.TIMEOUT
        for _attempt in range(self.attempts):
            for host, port in self.nameservers:
                self.stats["queries"] += 1
                resp: dns.message.Message | None = None
                with trio.move_on_after(self.timeout):
                    try:
                        resp, used_tcp = await dns.asyncquery.udp_with_fallback(
                            msg, host, port=port, ignore_unexpected=True, backend=self._backend)
                        if used_tcp:
                            self.stats["tcp_fallbacks"] += 1
                    except (OSError, EOFError, dns.exception.DNSException) as exc:
                        self.stats["errors"] += 1
                        log.debug("dns %s %s @%s:%d: %s", q.name, q.rdtype, host, port, exc)
                        failure = DnsFailure.SERVFAIL
                        continue
                if resp is None:
                    self.stats["timeouts"] += 1
                    log.debug("dns %s %s @%s:%d: no answer in %.3g s", q.name, q.rdtype,
                              host, port, self.timeout)
                    continue
                answer = answer_from_message(q, resp)
                if answer is not None:
                    return answer
                self.stats["servfail"] += 1
                failure = DnsFailure.SERVFAIL
        return Answer((), 0.0, failure)
