"""The parser's fast paths and caches (issue 10) change nothing a caller can see.

A parse without caches, one with cold caches and one with caches warmed by other
messages give the same message or the same error; objects handed out are private copies (mutating one does
not leak into later parses); the unfolded fast header split agrees with the general one.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_helpers import INVITE, TORTURE_CASES

from trio_sip.sip import headers, parser, uri
from trio_sip.sip.errors import BadMessage
from trio_sip.sip.headers import NameAddr, parse_name_addr_untrusted, parse_via_list_untrusted
from trio_sip.sip.message import SipMessage, SipRequest
from trio_sip.sip.parser import clear_parse_caches, parse_message_untrusted
from trio_sip.sip.uri import parse_uri_untrusted

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl0;rport=5070, "
    b"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;received=127.0.0.1\r\n"
    b"Record-Route: <sip:127.0.0.1:5060;lr;ftag=1>\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1\r\n"
    b"To: service <sip:service@127.0.0.1:5070>;tag=2\r\n"
    b"Call-ID: 1-4242@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:127.0.0.1:5070;transport=UDP>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
SEEDS = [INVITE, RESPONSE] + [c.data for c in TORTURE_CASES]


def _na(na: NameAddr) -> tuple[Any, ...]:
    return (str(na.uri), na.display, na.params, na.angle, na.wildcard,
            None if na.uri is None else (na.uri.scheme, na.uri.user, na.uri.password,
                                         na.uri.host, na.uri.port, na.uri.params,
                                         na.uri.headers, na.uri.opaque))


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except BadMessage as exc:
        return ("error", type(exc).__name__, exc.reason, exc.status)


def snapshot(data: bytes) -> Any:
    """Everything observable about parsing ``data`` (or the error it raises)."""
    try:
        msg = parse_message_untrusted(data)
    except BadMessage as exc:
        return ("error", type(exc).__name__, exc.reason, exc.status, exc.is_request,
                [(h.name, h.key, h.value, h.start, h.end, h.value_start)
                 for h in exc.headers or []])
    return _message(msg)


def _message(msg: SipMessage) -> Any:
    out: list[Any] = [
        [(h.name, h.key, h.value, h.start, h.end, h.value_start) for h in msg.headers],
        msg.via1, msg.call_id, msg.cseq_num, msg.cseq_method, msg.body, msg.to_bytes(),
        msg.from_tag, msg.to_tag, _na(msg.from_), _na(msg.to),
        _outcome(lambda: msg.vias),
        _outcome(lambda: [_na(na) for na in msg.contacts()]),
        _outcome(lambda: [(i, _na(na)) for i, na in msg.routes()]),
        _outcome(lambda: [(i, _na(na)) for i, na in msg.routes("record-route")]),
        [(k, msg.has(k), msg.get(k), msg.get_all(k)) for k in
         ("via", "v", "from", "To", "call-id", "i", "cseq", "max-forwards", "route", "x-nope")],
    ]
    if isinstance(msg, SipRequest):
        u = msg.ruri
        out.append((msg.method, msg.ruri_text, str(u), u.scheme, u.user, u.host, u.port,
                    u.params, u.headers))
    return out


class _NoStore(dict[Any, Any]):
    """A cache that never keeps anything: the parse without caches, as a reference."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


_CACHES = ((parser, "_NAMES"), (headers, "_NA_CACHE"), (headers, "_VIA_HEADS"),
           (headers, "_CSEQS"), (uri, "_URI_CACHE"))


def uncached(data: bytes) -> Any:
    saved = [getattr(mod, name) for mod, name in _CACHES]
    try:
        for mod, name in _CACHES:
            setattr(mod, name, _NoStore())
        return snapshot(data)
    finally:
        for (mod, name), cache in zip(_CACHES, saved, strict=True):
            setattr(mod, name, cache)


def test_cached_parse_equals_uncached_parse_on_the_corpus() -> None:
    reference = [uncached(data) for data in SEEDS]
    cold = []
    for data in SEEDS:
        clear_parse_caches()
        cold.append(snapshot(data))
    assert cold == reference
    # warm: every cache holds what all the other messages put there, twice over
    for _ in range(2):
        assert [snapshot(data) for data in SEEDS] == reference


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(SEEDS), st.data())
def test_cached_parse_equals_uncached_parse_on_mutations(seed: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(seed)))
    cut = data.draw(st.integers(0, 8))
    insert = data.draw(st.sampled_from(
        [b"", b" ", b";", b",", b"<", b">", b":", b"[", b"]", b"=", b"\r\n", b"\r\n ",
         b'"', b"x", b"\t", b"@", b"?"]))
    mutated = seed[:pos] + insert + seed[pos + cut:]
    reference = uncached(mutated)
    clear_parse_caches()
    cold = snapshot(mutated)
    assert cold == reference
    for other in SEEDS[:8]:
        snapshot(other)
    assert snapshot(mutated) == cold
    assert snapshot(mutated) == cold


def test_unfolded_fast_split_matches_general_split() -> None:
    for data in SEEDS:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            continue
        text = data[:end].decode("latin-1")
        if "\r\n " in text or "\r\n\t" in text:
            continue
        pos = text.find("\r\n") + 2
        clear_parse_caches()
        general = _outcome(lambda t=text, p=pos: parser._split_folded_headers_untrusted(t, p))
        for _ in range(2):  # cold, then with the header-name cache filled
            assert _outcome(lambda t=text, p=pos: parser._split_headers_untrusted(t, p)) == \
                general


def test_handed_out_objects_are_private() -> None:
    u = parse_uri_untrusted("sip:bob@example.com;transport=tcp")
    u.set_param("transport", "udp")
    u.user = "eve"
    again = parse_uri_untrusted("sip:bob@example.com;transport=tcp")
    assert (again.user, again.transport, str(again)) == ("bob", "tcp",
                                                         "sip:bob@example.com;transport=tcp")
    na = parse_name_addr_untrusted("Bob <sip:bob@example.com>;tag=1")
    na.params.append(("x", None))
    assert na.uri is not None
    na.uri.host = "evil.example.com"
    again_na = parse_name_addr_untrusted("Bob <sip:bob@example.com>;tag=1")
    assert again_na.params == [("tag", "1")]
    assert again_na.uri is not None and again_na.uri.host == "example.com"

    first = parse_message_untrusted(RESPONSE)
    first.from_.params.append(("changed", None))
    assert first.from_.params[-1] == ("changed", None)  # the change sticks to this message
    assert first.from_tag == "1"
    second = parse_message_untrusted(RESPONSE)
    assert second.from_.params == [("tag", "1")]
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, SipRequest)
    req.ruri.set_param("lr", None)
    assert req.ruri.has_param("lr")
    req2 = parse_message_untrusted(INVITE)
    assert isinstance(req2, SipRequest)
    assert not req2.ruri.has_param("lr")


def test_read_only_views_follow_the_message() -> None:
    """from_view/to_view/ruri_view/routes_view read what from_/to/ruri/routes give,
    and follow the message's own copy once it was changed."""
    resp = parse_message_untrusted(RESPONSE)
    assert _na(resp.from_view) == _na(resp.from_) and _na(resp.to_view) == _na(resp.to)
    resp.from_.params.append(("changed", None))  # the own copy: the view follows it
    assert resp.from_view is resp.from_
    req = parse_message_untrusted(INVITE)
    assert isinstance(req, SipRequest)
    assert str(req.ruri_view) == str(req.ruri)
    req.new_uri = "sip:carol@example.com;lr"
    assert str(req.ruri_view) == str(req.ruri) == "sip:carol@example.com;lr"
    routed = parse_message_untrusted(
        INVITE.replace(b"\r\nVia:", b"\r\nRoute: <sip:a.example.com;lr>,\r\n "
                       b"<sip:b.example.com>;x=1\r\nRoute: <sip:c.example.com>\r\nVia:", 1))
    assert [(i, _na(na)) for i, na in routed.routes_view()] == [
        (i, _na(na)) for i, na in routed.routes()]
    assert len(routed.routes_view()) == len(parse_message_untrusted(INVITE).routes()) + 3
    assert resp.routes_view() == [] and resp.routes_view("record-route") != []


def test_bad_input_still_rejected_after_good_input_of_the_same_shape() -> None:
    parse_via_list_untrusted("SIP/2.0/UDP host.example.com:5060;branch=z9hG4bK1")
    # same head, bad parameters; and a head that only differs after the cached prefix
    for bad in ("SIP/2.0/UDP host.example.com:5060;branch=", "SIP/2.0/UDP host.example.com:5060;;",
                "SIP/2.0/UDP host.example.com:5060x;branch=z9hG4bK1"):
        try:
            parse_via_list_untrusted(bad)
        except BadMessage:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_duplicate_single_header_named_in_message_order() -> None:
    data = (b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"To: <sip:a@example.com>\r\nFrom: <sip:b@example.com>;tag=1\r\n"
            b"From: <sip:c@example.com>;tag=2\r\nTo: <sip:d@example.com>\r\n"
            b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n")
    try:
        parse_message_untrusted(data)
    except BadMessage as exc:
        assert exc.reason == "more than one to header"
    else:
        raise AssertionError("accepted duplicate From/To")
