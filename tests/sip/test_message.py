"""The message model: byte-exact round trip, recorded edits, received-message getters."""

from __future__ import annotations

import pytest
from sip_helpers import INVITE, INVITE_BODY, TortureCase, torture_params

from trio_sip.sip.errors import BadMessage, MessageTooLarge
from trio_sip.sip.message import SipMessage, SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1, SIP/2.0/UDP pc33.example.com"
    b";branch=z9hG4bKu1\r\n"
    b"Via: SIP/2.0/TCP first.example.com;branch=z9hG4bKf1\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.com>;tag=b2\r\n"
    b"Call-ID: resp-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def parse(data: bytes) -> SipMessage:
    return parse_message_untrusted(data)


def req(data: bytes = INVITE) -> SipRequest:
    msg = parse_message_untrusted(data)
    assert isinstance(msg, SipRequest)
    return msg


def index_of(msg: SipMessage, name: str) -> int:
    return next(i for i, _ in msg.find(name))


# --- round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("case", torture_params())
def test_unedited_torture_round_trip(case: TortureCase) -> None:
    try:
        msg = parse(case.data)
    except BadMessage:
        return
    end = msg.body_start + len(msg.body)
    assert msg.to_bytes() == case.data[:end]
    assert not msg.edited
    # the index: every header line, the last one too, spans its CRLF; then the empty line
    for h in msg.headers:
        line = case.data[h.start : h.end]
        assert line.endswith(b"\r\n")
        assert line.decode("latin-1").startswith(h.name)
    assert msg.raw is case.data
    assert case.data[msg.headers_end : msg.headers_end + 2] == b"\r\n"
    assert msg.body_start == msg.headers_end + 2
    if msg.headers:
        assert msg.headers[-1].end == msg.headers_end


@pytest.mark.parametrize("case", torture_params())
def test_torture_append_header_reparses(case: TortureCase) -> None:
    try:
        msg = parse(case.data)
    except BadMessage:
        return
    msg.append_header("X-Test: appended")
    again = parse(msg.to_bytes())
    assert again.get("x-test") == "appended"
    assert again.body == msg.body
    assert [h.name for h in again.headers] == [h.name for h in msg.headers] + ["X-Test"]


def test_typical_invite() -> None:
    msg = req()
    assert msg.to_bytes() is INVITE  # untouched: the very bytes received
    assert msg.method == "INVITE" and msg.version == "SIP/2.0"
    assert msg.ruri_text == "sip:bob@biloxi.example.com"
    assert INVITE[msg.ruri_start : msg.ruri_end] == b"sip:bob@biloxi.example.com"
    assert msg.body == INVITE_BODY
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (msg.cseq_num, msg.cseq_method) == (314159, "INVITE")
    assert msg.from_tag == "1928301774" and msg.to_tag == ""
    assert msg.from_.display == "Alice" and msg.to.display_unquoted == "Bob"
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com", "[2001:db8::1]"]
    assert [str(na.uri) for _, na in msg.routes()] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert [str(na.uri) for _, na in msg.routes("record-route")] == ["sip:rr.example.com;lr"]
    assert [str(c.uri) for c in msg.contacts()] == ["sip:alice@pc33.atlanta.example.com"]
    assert "INVITE" in repr(msg)


def test_datagram_without_empty_line() -> None:
    # accepted as headers without a body; the missing empty line is supplied
    head = INVITE[: INVITE.index(b"\r\n\r\n")].replace(b"Content-Length: 13", b"Content-Length: 0")
    msg = req(head + b"\r\n")
    assert msg.body == b""
    assert msg.to_bytes() == head + b"\r\n\r\n"
    msg.set_body(b"abc")
    msg.append_header("X-A: 1")
    assert msg.to_bytes() == head.replace(b"Content-Length: 0", b"Content-Length: 3") + (
        b"\r\nX-A: 1\r\n\r\nabc"
    )
    with pytest.raises(BadMessage):
        parse(head)  # no CRLF at all after the last header
    with pytest.raises(BadMessage):
        parse(head.replace(b"Content-Length: 0", b"Content-Length: 1") + b"\r\n")


def test_trailing_datagram_octets_dropped() -> None:
    msg = req(INVITE + b"garbage after the body")
    assert msg.body == INVITE_BODY
    assert msg.to_bytes() == INVITE


def test_leading_crlfs_ignored() -> None:
    data = b"\r\n\r\n" + INVITE
    msg = req(data)
    assert msg.method == "INVITE"
    assert msg.to_bytes() == data
    msg.new_uri = "sip:x@y"
    assert msg.to_bytes() == data.replace(b"sip:bob@biloxi.example.com SIP", b"sip:x@y SIP")


def test_stream_framing_rules() -> None:
    msg = parse_message_untrusted(INVITE, stream=True)
    assert msg.body == INVITE_BODY
    no_cl = INVITE.replace(b"Content-Length: 13\r\n", b"")
    with pytest.raises(BadMessage):
        parse_message_untrusted(no_cl, stream=True)
    assert parse_message_untrusted(no_cl).body == INVITE_BODY  # a datagram: rest is body


def test_content_length_too_large_or_huge() -> None:
    with pytest.raises(BadMessage) as info:
        parse(INVITE.replace(b"Content-Length: 13", b"Content-Length: 14"))
    assert info.value.status == 400
    with pytest.raises(BadMessage):
        parse(INVITE.replace(b"Content-Length: 13", b"Content-Length: " + b"9" * 5000))
    msg = parse(INVITE.replace(b"Content-Length: 13", b"Content-Length: 0000000000000013"))
    assert msg.body == INVITE_BODY


def test_max_size() -> None:
    with pytest.raises(MessageTooLarge) as info:
        parse_message_untrusted(INVITE, max_size=len(INVITE) - 1)
    assert info.value.status == 413
    assert parse_message_untrusted(INVITE, max_size=len(INVITE)).body == INVITE_BODY


def test_bad_message_carries_header_lines() -> None:
    with pytest.raises(BadMessage) as info:
        parse(INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"))
    exc = info.value
    assert exc.is_request is True
    assert exc.headers is not None
    assert [h.key for h in exc.headers][:3] == ["via", "via", "max-forwards"]


def test_response_bad_version_is_505() -> None:
    with pytest.raises(BadMessage) as info:
        parse(RESPONSE.replace(b"SIP/2.0 200", b"SIP/3.0 200"))
    assert info.value.status == 505
    assert info.value.is_request is False


@pytest.mark.parametrize(
    "date",
    [
        b"Sat, 13 Nov 2010 23:29:00 GMT",
        b"sat, 13 nov 2010 23:29:00 gmt",
        b"Sat,  13 Nov 2010\r\n 23:29:00 GMT",
    ],
)
def test_good_date(date: bytes) -> None:
    parse(INVITE.replace(b"Subject: lunch", b"Date: " + date))


@pytest.mark.parametrize(
    "date",
    [b"Fri, 01 Jan 2010 16:00:00 EST", b"Sat, 13 Nov 2010", b"13 Nov 2010 23:29:00 GMT", b""],
)
def test_bad_date(date: bytes) -> None:
    with pytest.raises(BadMessage):
        parse(INVITE.replace(b"Subject: lunch", b"Date: " + date))


# --- header access --------------------------------------------------------------------


def test_getters_and_compact_forms() -> None:
    data = INVITE.replace(b"Subject: lunch", b"s: lunch\r\nSUBJECT:  second \r\nk: path, gruu")
    msg = req(data)
    assert msg.get("Subject") == "lunch"
    assert msg.get("s") == "lunch"
    assert msg.get_all("subject") == ["lunch", "second"]
    assert msg.has("supported") and msg.get("k") == "path, gruu"
    assert msg.get("absent") is None and msg.get_all("absent") == []
    assert [h.name for _, h in msg.find("subject")] == ["s", "SUBJECT"]
    assert msg.get("content-length") == "13"


def test_folded_value_text_and_offsets() -> None:
    data = INVITE.replace(b"Subject: lunch", b"Subject: a\r\n   b\r\n\tc  d")
    msg = req(data)
    (_, h) = next(iter(msg.find("subject")))
    assert h.text == "a b c d"
    assert len(h.value) == len(" a\r\n   b\r\n\tc  d")
    assert data[h.value_start : h.value_start + len(h.value)].replace(b"\r\n", b"  ") == (
        h.value.encode("latin-1")
    )


def test_text_keeps_utf8_octets() -> None:
    # "à" is C3 A0 in UTF-8: A0 must not be taken for white space (NBSP) when the
    # latin-1 decoded value is trimmed or its folds collapsed
    subject = "caf\u00e0 \u00e0".encode()
    msg = req(INVITE.replace(b"Subject: lunch", b"Subject: " + subject + b"\r\n  x"))
    assert (msg.get("subject") or "").encode("latin-1") == subject + b" x"
    msg = req(INVITE.replace(b"Subject: lunch", b"Subject: " + subject))
    assert (msg.get("subject") or "").encode("latin-1") == subject


# --- edits ----------------------------------------------------------------------------


def test_insert_header_first() -> None:
    msg = req()
    msg.insert_header_first("Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKprx")
    out = msg.to_bytes()
    assert out.startswith(
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKprx\r\n"
        b"Via: SIP/2.0/UDP pc33"
    )
    again = parse(out)
    assert [v.host for v in again.vias] == [
        "proxy.example.com",
        "pc33.atlanta.example.com",
        "[2001:db8::1]",
    ]
    assert again.body == INVITE_BODY
    assert msg.edited


def test_insert_header_before() -> None:
    msg = req()
    msg.insert_header_before(index_of(msg, "call-id"), "X-Before: 1")
    out = msg.to_bytes()
    assert b"X-Before: 1\r\nCall-ID: a84b" in out


def test_append_and_add_header() -> None:
    msg = req()
    msg.append_header("X-A: 1")
    msg.add_header("p-asserted-identity", "<sip:alice@atlanta.example.com>")
    msg.add_header("i", "ignored-compact")  # compact names are expanded and canonicalised
    out = msg.to_bytes()
    assert out.endswith(
        b"Content-Length: 13\r\nX-A: 1\r\n"
        b"P-Asserted-Identity: <sip:alice@atlanta.example.com>\r\n"
        b"Call-ID: ignored-compact\r\n\r\n" + INVITE_BODY
    )


def test_remove_header_at() -> None:
    msg = req()
    msg.remove_header_at(index_of(msg, "subject"))
    out = msg.to_bytes()
    assert out == INVITE.replace(b"Subject: lunch\r\n", b"")
    assert parse(out).get("subject") is None


def test_remove_last_header() -> None:
    msg = req()
    last = len(msg.headers) - 1
    assert msg.headers[last].key == "content-length"
    msg.remove_header_at(last)
    out = msg.to_bytes()
    assert out == INVITE.replace(b"Content-Length: 13\r\n", b"")
    again = parse(out)
    assert again.body == INVITE_BODY and not again.has("content-length")


def test_remove_headers_by_name() -> None:
    data = INVITE.replace(b"Subject: lunch", b"Subject: a\r\ns: b")
    msg = req(data)
    assert msg.remove_headers("subject") == 2
    assert msg.remove_headers("x-none") == 0
    assert msg.to_bytes() == INVITE.replace(b"Subject: lunch\r\n", b"")


def test_replace_header_value() -> None:
    msg = req()
    msg.replace_header_value(index_of(msg, "max-forwards"), "69")
    msg.replace_header_value(len(msg.headers) - 1, "13")  # the last header too
    out = msg.to_bytes()
    assert out == INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 69")


def test_replace_folded_header_value() -> None:
    data = INVITE.replace(b"Subject: lunch", b"Subject: a\r\n b")
    msg = req(data)
    msg.replace_header_value(index_of(msg, "subject"), "dinner")
    assert msg.to_bytes() == INVITE.replace(b"Subject: lunch", b"Subject: dinner")


def test_set_body_updates_content_length_and_type() -> None:
    msg = req()
    msg.set_body(b"new body!", "text/plain")
    out = msg.to_bytes()
    again = parse(out)
    assert again.body == b"new body!"
    assert again.get("content-length") == "9"
    assert again.get("content-type") == "text/plain"
    assert len(again.get_all("content-length")) == 1
    assert msg.body == INVITE_BODY  # the received body: edits show only on the wire


def test_set_body_twice_last_wins() -> None:
    msg = req()
    msg.set_body(b"first body", "application/one")
    msg.set_body(b"2nd", "application/two")
    again = parse(msg.to_bytes())
    assert again.body == b"2nd"
    assert again.get("content-length") == "3"
    assert again.get("content-type") == "application/two"


def test_set_body_without_content_length() -> None:
    data = INVITE.replace(b"Content-Length: 13\r\n", b"").replace(
        b"Content-Type: application/sdp\r\n", b""
    )
    msg = req(data)
    msg.set_body(b"abc", "text/plain")
    again = parse(
        msg.to_bytes(),
    )
    assert again.body == b"abc"
    assert again.get("content-length") == "3"
    assert again.get("content-type") == "text/plain"
    parse_message_untrusted(msg.to_bytes(), stream=True)


def test_set_body_empty() -> None:
    msg = req()
    msg.set_body(b"")
    out = msg.to_bytes()
    assert out.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse(out).body == b""


def test_new_uri_in_start_line() -> None:
    msg = req()
    msg.new_uri = "sip:carol@chicago.example.com;transport=tcp"
    assert msg.ruri.host == "chicago.example.com" and msg.ruri.transport == "tcp"
    assert msg.current_uri == msg.new_uri
    assert msg.ruri_text == "sip:bob@biloxi.example.com"  # the received one stays
    out = msg.to_bytes()
    assert out.startswith(b"INVITE sip:carol@chicago.example.com;transport=tcp SIP/2.0\r\n")
    assert out[out.index(b"\r\n") :] == INVITE[INVITE.index(b"\r\n") :]
    msg.new_uri = msg.ruri_text
    assert msg.to_bytes() == INVITE
    msg.new_uri = "not a uri"
    with pytest.raises(BadMessage):
        msg.ruri  # noqa: B018


def test_new_uri_with_header_edits() -> None:
    msg = req()
    msg.new_uri = "sip:c@d"
    msg.insert_header_first("Via: SIP/2.0/UDP p;branch=z9hG4bK1")
    again = parse(msg.to_bytes())
    assert isinstance(again, SipRequest)
    assert again.ruri_text == "sip:c@d"
    assert again.vias[0].host == "p"


def test_insert_at_via_param() -> None:
    msg = req()
    h = msg.headers[0]
    via = msg.vias[0]
    msg.insert_at(h.value_start + via.params_end, ";received=192.0.2.7")
    again = parse(msg.to_bytes())
    assert again.vias[0].received == "192.0.2.7"
    assert again.vias[0].rport == ""


def test_replace_span_rport_value() -> None:
    msg = req()
    h = msg.headers[0]
    via = msg.vias[0]
    k = [name for name, _ in via.params].index("rport")
    s, e = via.param_spans[k]
    msg.replace_span(h.value_start + s, h.value_start + e, ";rport=5062")
    assert parse(msg.to_bytes()).vias[0].rport == "5062"


@pytest.mark.parametrize("remove_first", [False, True])
def test_overlapping_edits_removal_wins(remove_first: bool) -> None:
    msg = req()
    h = msg.headers[0]
    offset = h.value_start + msg.vias[0].params_end
    if remove_first:
        msg.remove_header_at(0)
        msg.insert_at(offset, ";received=192.0.2.7")
    else:
        msg.insert_at(offset, ";received=192.0.2.7")
        msg.remove_header_at(0)
    out = msg.to_bytes()
    assert b"received=192.0.2.7" not in out
    assert out == INVITE.replace(
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n", b""
    )


def test_insert_before_removed_header_survives() -> None:
    msg = req()
    i = index_of(msg, "subject")
    msg.remove_header_at(i)
    msg.insert_header_before(i, "Subject: replaced")
    assert msg.to_bytes() == INVITE.replace(b"Subject: lunch", b"Subject: replaced")


def test_edit_mark_and_rollback() -> None:
    msg = req()
    msg.append_header("X-Kept: 1")
    mark = msg.edit_mark()
    msg.append_header("X-Branch: 1")
    msg.remove_header_at(index_of(msg, "subject"))
    msg.set_body(b"branch body")
    assert b"X-Branch" in msg.to_bytes()
    msg.rollback(mark)
    out = msg.to_bytes()
    assert out == INVITE.replace(b"Content-Length: 13\r\n", b"Content-Length: 13\r\nX-Kept: 1\r\n")
    msg.rollback(0)
    assert msg.to_bytes() == INVITE
    assert not msg.edited


def test_extra_edits_are_not_recorded() -> None:
    msg = req()
    pos = msg.headers[0].start
    msg.insert_header_first("Via: SIP/2.0/UDP recorded;branch=z9hG4bK1")
    extra = [(pos, pos, b"Via: SIP/2.0/UDP x;branch=z9hG4bK2\r\n", -1)]
    out = msg.to_bytes(extra)
    assert [v.host for v in parse(out).vias][:2] == ["x", "recorded"]  # negative order first
    msg.rollback(0)
    assert msg.to_bytes() == INVITE


def test_getters_see_the_received_message() -> None:
    # Kamailio semantics: header edits are lumps applied on send; getters read what came in
    msg = req()
    msg.append_header("X-New: 1")
    msg.remove_header_at(index_of(msg, "subject"))
    msg.insert_header_first("Via: SIP/2.0/UDP proxy;branch=z9hG4bK3")
    msg.replace_header_value(index_of(msg, "max-forwards"), "1")
    msg.set_body(b"xyz")
    assert not msg.has("x-new")
    assert msg.get("subject") == "lunch"
    assert msg.get("max-forwards") == "70"
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com", "[2001:db8::1]"]
    assert msg.body == INVITE_BODY
    assert msg.get("content-length") == "13"


def test_response_remove_top_via() -> None:
    msg = parse(RESPONSE)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason, msg.version) == (200, "OK", "SIP/2.0")
    assert [v.host for v in msg.vias] == [
        "proxy.example.com",
        "pc33.example.com",
        "first.example.com",
    ]
    # the top via-parm shares its line with the next one: cut it out of the value
    h = msg.headers[0]
    v1, v2 = msg.vias[0], msg.vias[1]
    msg.replace_span(h.value_start + v1.start, h.value_start + v2.start, "")
    out = msg.to_bytes()
    again = parse(out)
    assert [v.host for v in again.vias] == ["pc33.example.com", "first.example.com"]
    assert out.startswith(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKu1\r\n"
    )
    assert "200" in repr(msg)
