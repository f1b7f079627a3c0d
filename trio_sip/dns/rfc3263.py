"""RFC 3263 server location for SIP and SIPS URIs, sans-IO.

Theory of operation
-------------------
:func:`locate` is a generator: it yields the DNS questions it needs next (a batch
that may be asked concurrently) and is sent back the answers; it returns the
ordered list of :class:`Target` to try. It never does I/O and never reads a
clock, so the same code runs against the cache alone (a synchronous fast path:
``resolver.cached``) and against the network (``resolver.resolve``), and is
tested with plain dicts.

::

    URI ──▶ numeric host?  ── yes ──▶ [host:port, transport param or the scheme's]
            explicit port? ── yes ──▶ A/AAAA(host) at that port            (§4.1, §4.2)
            transport=?    ── yes ──▶ SRV for it, else A/AAAA(host):default
            NAPTR(host)    ── usable records (SIP+D2U, SIP+D2T, SIPS+D2T whose
                              transport we serve), by order then preference,
                              each with flag "S" ──▶ SRV(replacement)
            none usable    ──▶ SRV _sip._udp / _sip._tcp / _sips._tcp for each
                              transport we serve (§4.1 last paragraph)
            no SRV at all  ──▶ A/AAAA(host) at 5060 (5061 for SIPS) over UDP (TLS)
            every SRV      ──▶ RFC 2782 order: priority ascending, weighted random
                              within a priority; then A/AAAA of each target

What is implemented and what is not:

* NAPTR records with the "S" flag only (RFC 3263 uses only "S"; "A"/"U"/"P" and
  regexp rewriting are not SIP server location and are skipped);
* transports: UDP, TCP and TLS (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``); SCTP and
  WebSocket services are skipped (no such transport here); for a SIPS URI only
  TLS is usable (§4.1);
* an SRV target "." means "no such service here" (RFC 2782) and yields nothing;
* the answers' ordering between A and AAAA follows ``prefer_ipv6``;
* duplicates (same transport, address and port) are dropped and the list is
  bounded by ``max_targets``;
* ``maddr`` is honoured as the host to resolve (RFC 3261 §16.5 / §19.1.1);
* a question the DNS does not answer (SERVFAIL, timeout) ends the resolution with that
  failure instead of going on to the next step (the same servers would be asked), and
  NXDOMAIN of the host ends it too (nothing exists at or below that name, RFC 8020);
  NODATA goes on to the next step, as RFC 3263 says.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from ..sip.iplit import parse_ip

__all__ = [
    "Answer",
    "DnsFailure",
    "NaptrRecord",
    "Query",
    "Resolution",
    "SrvRecord",
    "Target",
    "locate",
    "order_srv",
]

#: NAPTR service field -> our transport name (RFC 3263 §4.1, RFC 3261 §26)
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
#: transport -> the SRV prefix of RFC 3263 §4.1
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
#: when nothing says otherwise, transports in this order of preference (Kamailio's
#: dns_udp_pref > dns_tcp_pref > dns_tls_pref defaults)
DEFAULT_PREFERENCE = ("udp", "tcp", "tls")


class DnsFailure(enum.Enum):
    """Why a DNS question has no usable answer."""

    NXDOMAIN = "nxdomain"  # the name does not exist (RFC 2308 name error)
    NODATA = "nodata"  # the name exists, without records of that type
    SERVFAIL = "servfail"  # the server could not answer (SERVFAIL, REFUSED, FORMERR...)
    TIMEOUT = "timeout"  # no server answered in time
    REFUSED = "refused"  # not asked: no nameserver we may send to (loopback guard)


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." when the service is not offered


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str  # without the trailing dot


Record = str | SrvRecord | NaptrRecord


@dataclass(frozen=True, slots=True)
class Query:
    name: str  # lower-case, no trailing dot
    rdtype: str  # "A", "AAAA", "SRV", "NAPTR"

    @classmethod
    def of(cls, name: str, rdtype: str) -> Query:
        return cls(name.rstrip(".").lower(), rdtype)


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one question: records (possibly none, with ``failure``) and
    the TTL they may be kept for (seconds)."""

    records: tuple[Record, ...] = ()
    ttl: float = 0.0
    failure: DnsFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.records)


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send to: transport, IP address, port; ``name`` is the DNS name
    it came from (for logs and the blocklist's messages)."""

    proto: str
    host: str
    port: int
    name: str = ""

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto}:{h}:{self.port}"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The ordered targets for a URI, or why there are none (``failure``: the failure
    that decided it, e.g. NXDOMAIN of the host)."""

    targets: tuple[Target, ...]
    failure: DnsFailure | None = None

    @property
    def ok(self) -> bool:
        return bool(self.targets)


_IPV4_CHARS = frozenset("0123456789.")


def _is_ip(host: str) -> bool:
    # a name (letters, no ':') is never an address: skip ipaddress's exception path,
    # the common case of every resolution
    if ":" not in host and not _IPV4_CHARS.issuperset(host):
        return False
    return parse_ip(host) is not None


def order_srv(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, repeatedly pick
    a record with probability proportional to its weight (weight-0 records placed
    first in the running sum, so they are chosen only rarely when others have weight);
    records whose target is "." are dropped."""
    by_prio: dict[int, list[SrvRecord]] = {}
    for r in records:
        if r.target in (".", ""):
            continue
        by_prio.setdefault(r.priority, []).append(r)
    out: list[SrvRecord] = []
    for prio in sorted(by_prio):
        # zero weights first (RFC 2782), the rest in the order received
        left = sorted(by_prio[prio], key=lambda r: r.weight != 0)
        while left:
            total = sum(r.weight for r in left)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(left):
                running += r.weight
                if running >= pick:
                    out.append(left.pop(i))
                    break
    return out


def usable_naptr(records: Iterable[NaptrRecord], supported: Sequence[str],
                 secure: bool) -> list[tuple[str, NaptrRecord]]:
    """The NAPTR records we can follow, by order then preference, with their transport."""
    out: list[tuple[str, NaptrRecord]] = []
    for r in sorted(records, key=lambda r: (r.order, r.preference)):
        proto = NAPTR_SERVICES.get(r.service.upper())
        if proto is None or proto not in supported or r.flags.upper() != "S":
            continue
        if secure and proto != "tls":
            continue
        if not r.replacement or r.replacement == ".":
            continue
        out.append((proto, r))
    return out


#: NAPTR services followed at most (each is one SRV question)
_MAX_SERVICES = 8

#: failures that say "the DNS did not answer", not "there is no such record"
_HARD = frozenset({DnsFailure.TIMEOUT, DnsFailure.SERVFAIL, DnsFailure.REFUSED})

Plan = Generator[list[Query], dict[Query, Answer], Resolution]


def locate(scheme: str, host: str, port: int | None, transport: str, *,
           supported: Sequence[str] = DEFAULT_PREFERENCE, prefer_ipv6: bool = False,
           ipv6: bool = True, rng: random.Random | None = None,
           max_targets: int = 16) -> Plan:
    """The RFC 3263 §4 plan for ``scheme:host[:port][;transport=...]``: yields batches of
    questions, is sent their answers, returns the :class:`Resolution`.

    ``supported`` lists the transports this server can send over, in order of
    preference; ``transport`` is the URI's transport parameter ("" when absent)."""
    rng = rng if rng is not None else random.Random()
    secure = scheme == "sips"
    host = host.strip("[]").rstrip(".")
    transport = transport.lower()
    if transport == "tcp" and secure:
        transport = "tls"  # RFC 3261 §26.2.2: sips over TCP means TLS
    default_proto = transport or ("tls" if secure else "udp")
    default_port = 5061 if default_proto == "tls" else 5060
    if _is_ip(host):
        # §4.1: a numeric host is used as it is
        return Resolution((Target(default_proto, host, port or default_port, host),))
    if default_proto not in supported:
        return Resolution((), None)
    if port is not None:
        # §4.1/§4.2: an explicit port means A/AAAA only, over the transport given or
        # the scheme's default
        return (yield from _addresses([(default_proto, host, port)], prefer_ipv6, ipv6,
                                      max_targets))
    if transport:
        # §4.2: the SRV of that transport, else the host's addresses at the default port
        srv = yield from _srv_targets([(default_proto, SRV_PREFIX[default_proto] + host)], rng,
                                      max_targets)
        if srv.targets:
            return (yield from _addresses(srv.targets, prefer_ipv6, ipv6, max_targets))
        if srv.failure in _HARD:
            return Resolution((), srv.failure)
        return (yield from _addresses([(default_proto, host, default_port)], prefer_ipv6,
                                      ipv6, max_targets))
    q = Query.of(host, "NAPTR")
    answers = yield [q]
    naptr = answers[q]
    if naptr.failure in _HARD or naptr.failure is DnsFailure.NXDOMAIN:
        # NXDOMAIN: the host has no records of any type, nor names below it (RFC 8020)
        return Resolution((), naptr.failure)
    usable = usable_naptr((r for r in naptr.records if isinstance(r, NaptrRecord)),
                          supported, secure)
    if usable:
        services = [(proto, r.replacement) for proto, r in usable]
    else:
        protos = [p for p in supported if p in SRV_PREFIX and (p == "tls" or not secure)]
        services = [(p, SRV_PREFIX[p] + host) for p in protos]
    srv = yield from _srv_targets(services[:_MAX_SERVICES], rng, max_targets)
    if srv.targets:
        return (yield from _addresses(srv.targets, prefer_ipv6, ipv6, max_targets))
    if usable and srv.failure in _HARD:
        return Resolution((), srv.failure)
    # §4.2: no SRV records: the host's addresses at the default port
    return (yield from _addresses([(default_proto, host, default_port)], prefer_ipv6, ipv6,
                                  max_targets))


@dataclass(frozen=True, slots=True)
class _Srv:
    targets: list[tuple[str, str, int]]
    failure: DnsFailure | None


def _srv_targets(services: list[tuple[str, str]], rng: random.Random, max_targets: int
                 ) -> Generator[list[Query], dict[Query, Answer], _Srv]:
    """SRV answers of every service name (asked together), each ordered per RFC 2782,
    concatenated in the services' order: (transport, target host, port); at most
    ``max_targets`` of them (a hostile answer with thousands of records must not make
    us ask thousands of address questions)."""
    queries = [Query.of(name, "SRV") for _, name in services]
    answers = yield list(dict.fromkeys(queries))
    out: list[tuple[str, str, int]] = []
    failure: DnsFailure | None = None
    for (proto, _), q in zip(services, queries, strict=True):
        a = answers[q]
        if a.failure is not None and failure is None:
            failure = a.failure
        srvs = [r for r in a.records if isinstance(r, SrvRecord)]
        out.extend((proto, r.target.rstrip(".").lower(), r.port) for r in order_srv(srvs, rng))
    return _Srv(out[:max_targets], None if out else failure)


def _addresses(hosts: list[tuple[str, str, int]], prefer_ipv6: bool, ipv6: bool,
               max_targets: int) -> Plan:
    """A/AAAA of every (transport, host, port), asked together, in order."""
    queries: list[Query] = []
    for _, h, _ in hosts:
        if _is_ip(h):
            continue
        queries.append(Query.of(h, "A"))
        if ipv6:
            queries.append(Query.of(h, "AAAA"))
    answers = yield list(dict.fromkeys(queries)) if queries else []
    targets: list[Target] = []
    seen: set[tuple[str, str, int]] = set()
    failure: DnsFailure | None = None
    kinds = ("AAAA", "A") if prefer_ipv6 else ("A", "AAAA")
    for proto, h, port in hosts:
        if _is_ip(h):
            addrs = [h]
        else:
            addrs = []
            for kind in kinds:
                if kind == "AAAA" and not ipv6:
                    continue
                a = answers[Query.of(h, kind)]
                if a.failure is not None and failure in (None, DnsFailure.NODATA):
                    failure = a.failure
                addrs.extend(r for r in a.records if isinstance(r, str))
        for addr in addrs:
            key = (proto, addr, port)
            if key in seen:
                continue
            seen.add(key)
            targets.append(Target(proto, addr, port, h))
            if len(targets) >= max_targets:
                return Resolution(tuple(targets))
    return Resolution(tuple(targets), None if targets else (failure or DnsFailure.NODATA))
