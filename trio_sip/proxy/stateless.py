"""RFC 3261 §16 proxy steps that need no state (sans-IO).

Each function takes parsed messages and plain values and returns what to
change or where to send; nothing here sends, sleeps or reads a clock.

* ``via_received_edit``: §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via.
* ``reply_destination``: §18.2.2 (and RFC 3581 §4) where a response to a request goes.
* ``stateless_branch``: §16.11 a branch that is the same for every retransmission.
* ``response_next_hop``: §16.7 step 3/§18.2.2 where to forward a response.
* ``loose_route``: §16.4 and §16.12, Kamailio ``loose_route()`` semantics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..sip.errors import BadMessage
from ..sip.headers import NameAddr, Via
from ..sip.iplit import parse_ip
from ..sip.message import SipRequest, SipResponse
from ..sip.uri import URI, parse_uri_untrusted

MAGIC_COOKIE: Final = "z9hG4bK"

#: ``is_myself(host, port, proto) -> bool``: does this host:port name this server?
IsMyself = Callable[[str, "int | None", str], bool]


def _same_ip(a: str, b: str) -> bool:
    if a == b:
        return True
    ia, ib = parse_ip(a), parse_ip(b)
    if ia is None or ib is None:
        return a.lower() == b.lower()
    return ia == ib


def via_received_edit(
    req: SipRequest | SipResponse, src_host: str, src_port: int, *, force_rport: bool = False
) -> tuple[int, int, str] | None:
    """The edit that adds ``received``/``rport`` to the top Via, as (start, end, text)
    in message offsets, or None when nothing is to be added.

    §18.2.1: add ``received`` when sent-by's host differs from the source address.
    RFC 3581 §4: when ``rport`` is present without a value, fill it with the source
    port and add ``received`` even if the host matches.
    """
    via = req.via1
    if via is None:
        return None
    first = next((h for h in req.headers if h.key == "via"), None)
    if first is None:
        return None
    base = first.value_start
    rport_idx = next((i for i, (k, _) in enumerate(via.params) if k.lower() == "rport"), None)
    want_rport = force_rport or (rport_idx is not None and via.params[rport_idx][1] is None)
    need_received = want_rport or not _same_ip(via.host_bare, src_host)
    if not need_received and not want_rport:
        return None
    host = f"[{src_host}]" if ":" in src_host else src_host
    received = f";received={host}" if need_received and via.received is None else ""
    if want_rport:
        if rport_idx is not None and via.params[rport_idx][1] is None:
            s, e = via.param_spans[rport_idx]
            return base + s, base + e, f"{received};rport={src_port}"
        if rport_idx is None:
            pos = base + via.params_end
            return pos, pos, f"{received};rport={src_port}"
    if not received:
        return None
    pos = base + via.params_end
    return pos, pos, received


def reply_destination(
    via: Via | None, src_host: str, src_port: int, *, force_rport: bool = False
) -> tuple[str, int]:
    """Where a response to a request that arrived over an unreliable transport goes.

    §18.2.2: to the ``received`` address (the source IP), at the sent-by port (or
    5060); RFC 3581: at the source port when the request asked with ``rport``.
    ``maddr`` (multicast) is not honoured: we never send to an address a peer
    names unless it is the one the request came from.
    """
    if via is None:
        return src_host, src_port
    if force_rport or via.rport is not None:
        return src_host, src_port
    port = via.port if via.port is not None else (5061 if via.transport == "TLS" else 5060)
    return src_host, port


def stateless_branch(req: SipRequest, target: str, secret: bytes = b"") -> str:
    """§16.11: a branch for a statelessly forwarded request that every retransmission
    (and the CANCEL of an INVITE) reproduces. With an RFC 3261 branch upstream we hash
    it; for RFC 2543 peers we hash what identifies the transaction instead."""
    via = req.via1
    upstream = via.branch if via is not None else None
    h = hashlib.blake2b(digest_size=10, key=secret[:64] if secret else b"")
    if upstream and upstream.startswith(MAGIC_COOKIE) and len(upstream) > len(MAGIC_COOKIE):
        h.update(f"{upstream}\0{via.sent_by if via else ''}\0{target}".encode("latin-1"))
    else:
        h.update(
            f"{req.to_tag}\0{req.from_tag}\0{req.call_id}\0{req.ruri_text}\0"
            f"{via.sent_by if via else ''}\0{req.cseq_num}\0{target}".encode("latin-1")
        )
    return MAGIC_COOKIE + "sl" + h.hexdigest()


def via_line(proto: str, host: str, port: int, branch: str, *, rport: bool = True) -> str:
    """Our Via header line for a forwarded request."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"Via: SIP/2.0/{proto.upper()} {h}:{port};branch={branch}" + (";rport" if rport else "")


def record_route_line(proto: str, host: str, port: int, params: str = "") -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    transport = "" if proto.lower() == "udp" else f";transport={proto.lower()}"
    return f"Record-Route: <sip:{h}:{port}{transport};lr{params}>"


def remove_top_via(resp: SipResponse) -> None:
    """Record the removal of the top via-parm (ours) before a response goes upstream
    (§16.7 step 3): the whole Via line when it holds only that one, else the via-parm and
    the comma after it. Uses the top Via the parser already located; nothing is re-parsed."""
    via = resp.via1
    first = next((i for i, h in enumerate(resp.headers) if h.key == "via"), None)
    if via is None or first is None:
        return
    h = resp.headers[first]
    if via.end >= len(h.value):  # the only via-parm of the line
        resp.remove_header_at(first)
    else:  # via.end is the comma that ends it
        resp.replace_span(h.value_start + via.start, h.value_start + via.end + 1, "")


@dataclass(frozen=True, slots=True)
class NextHop:
    proto: str  # "udp" | "tcp" | ...
    host: str  # bare (no brackets)
    port: int


def response_next_hop(resp: SipResponse) -> NextHop | None:
    """§18.2.2 for a response we forward: the Via below ours (which the caller removes)."""
    vias = resp.vias
    if len(vias) < 2:
        return None
    via = vias[1]
    host = via.received or via.host_bare
    if host.startswith("["):
        host = host[1:-1]
    rport = via.rport
    if rport:
        port = int(rport) if rport.isdigit() else (via.port or 5060)
    else:
        port = via.port if via.port is not None else (5061 if via.transport == "TLS" else 5060)
    return NextHop(via.transport.lower(), host, port)


def target_of_uri(uri: URI) -> NextHop:
    """The transport address a SIP URI names without DNS (numeric hosts, RFC 3263 §4
    without NAPTR/SRV): maddr, else host; port or the scheme's default; transport param."""
    if not uri.is_sip:
        raise BadMessage(f"cannot route to a {uri.scheme}: URI", status=416)
    host = uri.param("maddr") or uri.host
    if host.startswith("["):
        host = host[1:-1]
    proto = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    default_port = 5061 if proto == "tls" or uri.scheme == "sips" else 5060
    return NextHop(proto, host, uri.port if uri.port is not None else default_port)


@dataclass(slots=True)
class LooseRouteResult:
    """What ``loose_route`` decided; the caller applies it to the message."""

    code: int  # 1 done, -1 no Route / not for us
    remove_headers: list[int]  # header indexes of Route headers to drop wholly
    rewrite_route: list[tuple[int, str]]  # (header index, new value) for partly consumed lines
    new_ruri: str | None = None
    dst_uri: str | None = None
    append_route: str | None = None  # strict-router next hop: old R-URI appended as last Route
    consumed_params: str | None = None


def loose_route(req: SipRequest, is_myself: IsMyself) -> LooseRouteResult:
    """§16.4 and §16.12 as Kamailio's rr module does them.

    1. If the Request-URI names us, the previous hop was a strict router: the last
       Route entry is the real Request-URI (§16.4); it is taken out of Route.
    2. If the top Route names us, it is removed (and a second one naming us too,
       for the double Record-Route of a transport change).
    3. The next Route (if any) is where the request goes: a loose router (``lr``)
       is put in the destination URI; a strict router becomes the Request-URI and
       the current Request-URI is appended as the last Route (§16.12).
    Returns code -1 when there is no Route header at all.
    """
    # the shared parses: only read here (str(), .uri); each copy cost ~1 us per entry
    routes = req.routes_view("route")
    result = LooseRouteResult(-1, [], [])
    ruri = req.ruri_view
    if ruri.is_sip and is_myself(ruri.host_bare, ruri.port, ruri.transport) and routes:
        # A strict router upstream put our Record-Route URI in the R-URI.
        last = routes[-1]
        result.new_ruri = str(last[1].uri)
        result.code = 1
        routes = routes[:-1]
        _consume(result, [last], keep=routes)
    if not routes:
        return result
    consumed: list[tuple[int, NameAddr]] = []
    i = 0
    while i < len(routes) and i < 2:
        idx, na = routes[i]
        u = na.uri
        if u is not None and u.is_sip and is_myself(u.host_bare, u.port, u.transport):
            consumed.append((idx, na))
            if result.consumed_params is None:
                result.consumed_params = "".join(
                    [f";{k}" if v is None else f";{k}={v}" for k, v in u.params]
                )
            i += 1
        else:
            break
    rest = routes[i:]
    if consumed:
        _consume(result, consumed, keep=rest)
    result.code = 1
    if rest:
        _, nxt = rest[0]
        if nxt.uri is not None and nxt.uri.has_param("lr"):
            result.dst_uri = str(nxt.uri)
        elif nxt.uri is not None:
            # strict router next: it becomes the R-URI, the R-URI goes to the end of Route
            result.append_route = f"<{result.new_ruri or req.current_uri}>"
            result.new_ruri = str(nxt.uri)
            _consume(result, [rest[0]], keep=rest[1:])
    return result


def _consume(
    result: LooseRouteResult, gone: list[tuple[int, NameAddr]], keep: list[tuple[int, NameAddr]]
) -> None:
    """Record the removal of ``gone`` Route entries: whole header lines where every entry
    of the line goes, a rewritten value where some entries of the line stay."""
    if not keep:  # the usual case (our one Route consumed): whole lines only
        remove = result.remove_headers
        for idx, _ in gone:
            if idx not in remove:
                remove.append(idx)
        return
    gone_by_line: dict[int, int] = {}
    for idx, _ in gone:
        gone_by_line[idx] = gone_by_line.get(idx, 0) + 1
    kept_by_line: dict[int, list[str]] = {}
    for idx, na in keep:
        kept_by_line.setdefault(idx, []).append(str(na))
    for idx in gone_by_line:
        if idx in result.remove_headers:
            continue
        if idx in kept_by_line:
            result.rewrite_route = [(i, v) for i, v in result.rewrite_route if i != idx]
            result.rewrite_route.append((idx, ", ".join(kept_by_line[idx])))
        else:
            result.remove_headers.append(idx)


def parse_route_uri(value: str) -> URI:
    """The URI inside ``<...>`` of a Route value, or the bare URI."""
    v = value.strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1]
    return parse_uri_untrusted(v)
