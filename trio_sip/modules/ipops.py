"""KSR.ipops: IP address helpers and DNS queries from routes (Kamailio ``ipops``).

DNS queries wait without blocking: the route yields while the server's resolver
(trio_sip/dns/, its cache and nameservers: ``[dns]``) asks, and goes on at the next
line with the result in a pseudo-variable container named by ``pvid``:

* ``dns_query(hostname, pvid)``: A then AAAA records (AAAA only with ``dns.ipv6``);
  ``$dns(pvid=>count)``, ``$dns(pvid=>ipv4)`` / ``=>ipv6`` (1 if any), ``$dns(pvid=>addr[i])``,
  ``$dns(pvid=>type[i])`` (4 or 6). 1 on success, -1 when the name has no address,
  -2 on a DNS failure (SERVFAIL, timeout).
* ``srv_query(srvcname, pvid)``: SRV records in RFC 2782 order (priority, then weighted
  random); ``$srvquery(pvid=>count)``, ``=>target[i]``, ``=>port[i]``, ``=>priority[i]``,
  ``=>weight[i]``. 1 / -1 / -2 as above.
* ``naptr_query(domain, pvid)``: NAPTR records by order and preference;
  ``$naptrquery(pvid=>count)``, ``=>order[i]``, ``=>pref[i]``, ``=>flags[i]``,
  ``=>services[i]``, ``=>regex[i]``, ``=>replace[i]``.
* ``dns_int_match_ip(hostname, ip)``: 1 if ``ip`` is one of the name's addresses (from the
  server's resolver), -1 if not, -2 on a DNS failure.

Indexes start at 0; a negative index counts from the end, as in Kamailio. The
containers belong to the message (its routes, including after a wait), not to the
worker process as in Kamailio. In a request route, waiting creates the transaction
(as any wait does here: retransmissions are absorbed meanwhile).

Address helpers (no waiting): ``is_ip``, ``is_pure_ip``, ``is_ipv4``, ``is_ipv6``,
``is_ipv6_reference``, ``ip_type`` (1 IPv4, 2 IPv6, 3 IPv6 reference, -1 none),
``compare_ips``, ``compare_pure_ips``, ``is_ip_rfc1918``, ``is_in_subnet`` (subnets
comma-separated).

MI commands (Kamailio's core RPC names): ``dns.view`` (the cache), ``dns.delete_all``,
``dns.stats``, ``dst_blocklist.view``.

Not implemented: ``dns_sys_match_ip`` (the system resolver would bypass ``[dns]`` and the
loopback guard's nameserver rule), ``detailed_ipv4_type``/``detailed_ipv6_type``,
``ptr_query``, ``dns_set_local_ttl``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

from ..dns.rfc3263 import Answer, DnsFailure, NaptrRecord, Query, SrvRecord, order_srv
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder
from ..script.ops import AsyncOp
from ..sip.iplit import parse_ip

log = logging.getLogger("trio_sip.ipops")

m = ModuleBuilder("ipops", "IP address helpers and DNS queries (A/AAAA, SRV, NAPTR) that wait "
                           "without blocking.")

_PVID_RE = re.compile(r"[A-Za-z0-9_]{1,64}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})\Z")
#: what a route waits at most for one query (the resolver's own timeouts come first)
_QUERY_TIMEOUT = 30.0


# -- address helpers -----------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, IPv6 in brackets or not."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    return parse_ip(t)


def _pure(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address written bare (no brackets)."""
    return parse_ip(text.strip())


@m.export(("str",))
def is_ip(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv4 address, an IPv6 address or an IPv6 reference ([..])."""
    return 1 if _ip(text) is not None else -1


@m.export(("str",))
def is_pure_ip(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv4 or IPv6 address (not an IPv6 reference)."""
    return 1 if _pure(text) is not None else -1


@m.export(("str",))
def is_ipv4(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv4 address."""
    return 1 if isinstance(_pure(text), ipaddress.IPv4Address) else -1


@m.export(("str",))
def is_ipv6(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv6 address (without brackets)."""
    return 1 if isinstance(_pure(text), ipaddress.IPv6Address) else -1


@m.export(("str",))
def is_ipv6_reference(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv6 reference: an IPv6 address in brackets."""
    t = text.strip()
    ok = t.startswith("[") and t.endswith("]") and isinstance(_pure(t[1:-1]),
                                                                ipaddress.IPv6Address)
    return 1 if ok else -1


@m.export(("str",))
def ip_type(ctx: MsgContext, text: str) -> int:
    """1 IPv4, 2 IPv6, 3 IPv6 reference, -1 not an IP address."""
    t = text.strip()
    if is_ipv6_reference(ctx, t) > 0:
        return 3
    ip = _pure(t)
    if ip is None:
        return -1
    return 1 if ip.version == 4 else 2


@m.export(("str", "str"))
def compare_ips(ctx: MsgContext, a: str, b: str) -> int:
    """1 if both are the same IP address (IPv6 references allowed), -1 otherwise."""
    x, y = _ip(a), _ip(b)
    return 1 if x is not None and x == y else -1


@m.export(("str", "str"))
def compare_pure_ips(ctx: MsgContext, a: str, b: str) -> int:
    """1 if both are the same IP address (no IPv6 references), -1 otherwise."""
    x, y = _pure(a), _pure(b)
    return 1 if x is not None and x == y else -1


@m.export(("str",))
def is_ip_rfc1918(ctx: MsgContext, text: str) -> int:
    """1 if ``text`` is an IPv4 address in the RFC 1918 private ranges."""
    ip = _pure(text)
    if not isinstance(ip, ipaddress.IPv4Address):
        return -1
    nets = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    return 1 if any(ip in ipaddress.ip_network(n) for n in nets) else -1


@m.export(("str", "str"))
def is_in_subnet(ctx: MsgContext, text: str, subnets: str) -> int:
    """1 if the address is in one of the subnets ("10.0.0.0/8,fd00::/8"), -1 otherwise
    (also for a malformed subnet, which is logged)."""
    ip = _ip(text)
    if ip is None:
        return -1
    for s in subnets.split(","):
        s = s.strip()
        if not s:
            continue
        try:
            net = ipaddress.ip_network(s.strip("[]") if "/" not in s else s, strict=False)
        except ValueError:
            log.error("is_in_subnet: bad subnet %r", s)
            return -1
        if ip.version == net.version and ip in net:
            return 1
    return -1


# -- DNS -------------------------------------------------------------------------------


class _QueryOp(AsyncOp):
    """Ask the server's resolver, store the result in the message's container."""

    timeout = _QUERY_TIMEOUT

    def __init__(self, kind: str, name: str, pvid: str) -> None:
        self.kind, self.qname, self.pvid = kind, name.rstrip("."), pvid
        self.name = f"ipops.{kind}"

    async def run(self, ctx: MsgContext) -> Any:
        dns = ctx.core.dns
        if self.kind == "dns_query":
            kinds = ("A", "AAAA") if dns.config.ipv6 else ("A",)
            answers = [await dns.lookup(Query.of(self.qname, k)) for k in kinds]
            addrs = [(r, 6 if ":" in r else 4) for a in answers for r in a.records
                     if isinstance(r, str)]
            _containers(ctx, "dns")[self.pvid] = addrs
            return 1 if addrs else _failure_code(answers)
        if self.kind == "dns_int_match_ip":
            want = _ip(self.pvid)
            answers = [await dns.lookup(Query.of(self.qname, k)) for k in ("A", "AAAA")]
            found = {_ip(r) for a in answers for r in a.records if isinstance(r, str)}
            if want is not None and want in found:
                return 1
            return -1 if found or _failure_code(answers) == -1 else -2
        rdtype = "SRV" if self.kind == "srv_query" else "NAPTR"
        a = await dns.lookup(Query.of(self.qname, rdtype))
        if rdtype == "SRV":
            recs: list[Any] = order_srv((r for r in a.records if isinstance(r, SrvRecord)),
                                        dns.rng)
        else:
            recs = sorted((r for r in a.records if isinstance(r, NaptrRecord)),
                          key=lambda r: (r.order, r.preference))
        _containers(ctx, "srvquery" if rdtype == "SRV" else "naptrquery")[self.pvid] = recs
        return 1 if recs else _failure_code([a])


def _failure_code(answers: list[Answer]) -> int:
    """-1: no such records (NXDOMAIN, NODATA); -2: the DNS failed (SERVFAIL, timeout...)."""
    hard = {DnsFailure.SERVFAIL, DnsFailure.TIMEOUT, DnsFailure.REFUSED}
    return -2 if any(a.failure in hard for a in answers) else -1


def _containers(ctx: MsgContext, kind: str) -> dict[str, Any]:
    key = f"\0ipops.{kind}"
    store: dict[str, Any] | None = ctx.vars.get(key)
    if store is None:
        store = ctx.vars[key] = {}
    return store


def _query(kind: str, name: str, pvid: str) -> Any:
    if not _NAME_RE.match(name.rstrip(".")):
        log.error("ipops.%s: not a DNS name: %r", kind, name)
        return -1
    if kind != "dns_int_match_ip" and not _PVID_RE.match(pvid):
        log.error("ipops.%s: bad container name %r (letters, digits, _)", kind, pvid)
        return -1
    return _QueryOp(kind, name, pvid)


@m.export(("str", "str"), is_async=True)
def dns_query(ctx: MsgContext, hostname: str, pvid: str) -> Any:
    """Resolve A (and AAAA) of ``hostname`` into ``$dns(pvid=>...)``: 1, -1 no address,
    -2 DNS failure. Waits without blocking (the resolver's cache answers at once)."""
    return _query("dns_query", hostname, pvid)


@m.export(("str", "str"), is_async=True)
def srv_query(ctx: MsgContext, srvcname: str, pvid: str) -> Any:
    """Resolve SRV records of ``srvcname`` (e.g. "_sip._udp.example.com") into
    ``$srvquery(pvid=>...)``, in RFC 2782 order: 1, -1 none, -2 DNS failure."""
    return _query("srv_query", srvcname, pvid)


@m.export(("str", "str"), is_async=True)
def naptr_query(ctx: MsgContext, domain: str, pvid: str) -> Any:
    """Resolve NAPTR records of ``domain`` into ``$naptrquery(pvid=>...)``, by order and
    preference: 1, -1 none, -2 DNS failure."""
    return _query("naptr_query", domain, pvid)


@m.export(("str", "str"), is_async=True)
def dns_int_match_ip(ctx: MsgContext, hostname: str, ip: str) -> Any:
    """1 if ``ip`` is one of the addresses of ``hostname`` (A/AAAA from the server's
    resolver), -1 if not, -2 on a DNS failure."""
    return _query("dns_int_match_ip", hostname, ip)


# -- management commands (Kamailio's core RPC names) -------------------------------------


@m.mi("dns.view")
def mi_dns_view(params: Any, ctx: Any) -> Any:
    """The DNS cache: every live answer with its remaining TTL."""
    import trio

    return ctx.core.dns.cache.dump(trio.current_time())


@m.mi("dns.delete_all")
def mi_dns_delete_all(params: Any, ctx: Any) -> Any:
    """Empty the DNS cache."""
    n = len(ctx.core.dns.cache)
    ctx.core.dns.cache.clear()
    return {"deleted": n}


@m.mi("dns.stats")
def mi_dns_stats(params: Any, ctx: Any) -> Any:
    """Resolver, cache, blocklist and nameserver counters."""
    return ctx.core.dns.statistics()


@m.mi("dst_blocklist.view")
def mi_blocklist_view(params: Any, ctx: Any) -> Any:
    """The destinations DNS failover blocklisted, with the seconds left."""
    import trio

    return ctx.core.dns.blocklist.dump(trio.current_time())


MODULE = m.build()


# -- pseudo-variables ----------------------------------------------------------------------

_KEY_RE = re.compile(r"\s*([A-Za-z0-9_]+)\s*=>\s*([a-z0-9]+)(?:\[(-?\d+)\])?\s*\Z")


def _parse(arg: str) -> tuple[str, str, int] | None:
    mt = _KEY_RE.match(arg)
    if mt is None:
        return None
    return mt[1], mt[2], int(mt[3]) if mt[3] is not None else 0


def _index(items: list[Any], i: int) -> Any:
    if -len(items) <= i < len(items):
        return items[i]
    return None


def _dns_get(ctx: MsgContext, arg: str) -> Any:
    p = _parse(arg)
    if p is None:
        return None
    pvid, key, i = p
    addrs = _containers(ctx, "dns").get(pvid)
    if addrs is None:
        return None
    if key == "count":
        return len(addrs)
    if key in ("ipv4", "ipv6"):
        return 1 if any(v == int(key[-1]) for _, v in addrs) else 0
    item = _index(addrs, i)
    if item is None:
        return None
    return item[0] if key == "addr" else item[1] if key == "type" else None


_SRV_KEYS = {"target": "target", "port": "port", "priority": "priority", "weight": "weight"}
_NAPTR_KEYS = {"order": "order", "pref": "preference", "flags": "flags",
               "services": "service", "regex": "regexp", "replace": "replacement"}


def _records_get(kind: str, keys: dict[str, str]) -> Any:
    def get(ctx: MsgContext, arg: str) -> Any:
        p = _parse(arg)
        if p is None:
            return None
        pvid, key, i = p
        recs = _containers(ctx, kind).get(pvid)
        if recs is None:
            return None
        if key == "count":
            return len(recs)
        attr = keys.get(key)
        item = _index(recs, i)
        return getattr(item, attr) if attr is not None and item is not None else None

    return get


pv.register("dns", _dns_get, needs_arg=True)
pv.register("srvquery", _records_get("srvquery", _SRV_KEYS), needs_arg=True)
pv.register("naptrquery", _records_get("naptrquery", _NAPTR_KEYS), needs_arg=True)
