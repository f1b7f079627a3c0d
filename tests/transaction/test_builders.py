"""The ACK for a non-2xx (RFC 3261 §17.1.1.3) and the CANCEL (§9.1), byte for byte."""

from __future__ import annotations

import pytest
from transaction_helpers import CALL_ID, INVITE_SENT, OPTIONS_SENT, request, response_to

from trio_sip.sip.message import SipRequest
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.transaction import (
    ClientInviteTransaction,
    TimerConfig,
    Transmit,
    build_ack,
    build_cancel,
)

EXPECTED_ACK = (
    "ACK sip:bob@192.0.2.20:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKproxy1;rport\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "To: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n"
    f"Call-ID: {CALL_ID}\r\n"
    "CSeq: 314159 ACK\r\n"
    "Route: <sip:p2.example.com;lr>\r\n"
    "Route: <sip:p3.example.com;lr>, <sip:p4.example.com;lr>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
).encode("latin-1")


def test_ack_for_487_exact_bytes() -> None:
    resp = response_to(INVITE_SENT, 487, reason="Request Terminated")
    assert build_ack(request(INVITE_SENT), resp) == EXPECTED_ACK


def test_ack_fields() -> None:
    resp = response_to(INVITE_SENT, 487, to_tag="resp-tag")
    ack = parse_message_untrusted(build_ack(request(INVITE_SENT), resp))
    assert isinstance(ack, SipRequest)
    inv = request(INVITE_SENT)
    assert ack.method == "ACK"
    assert ack.ruri_text == inv.ruri_text
    assert len(ack.vias) == 1  # a single Via: the INVITE's top one, same branch
    assert ack.vias[0].branch == inv.vias[0].branch == "z9hG4bKproxy1"
    assert ack.vias[0].sent_by == "192.0.2.10:5060"
    assert ack.from_tag == inv.from_tag
    assert ack.to_tag == "resp-tag"  # the response's To, not the request's
    assert ack.call_id == inv.call_id
    assert (ack.cseq_num, ack.cseq_method) == (314159, "ACK")
    assert [str(na.uri) for _, na in ack.routes()] == [
        "sip:p2.example.com;lr", "sip:p3.example.com;lr", "sip:p4.example.com;lr"]
    assert ack.get("max-forwards") == "70"
    assert ack.body == b""


def test_ict_transmits_the_built_ack() -> None:
    t = ClientInviteTransaction(request(INVITE_SENT), INVITE_SENT, False, TimerConfig(), 0.0)
    t.start(0.0)
    resp = response_to(INVITE_SENT, 487, reason="Request Terminated")
    assert t.receive_response(resp, 1.0)[0] == Transmit(EXPECTED_ACK, False)
    assert t.ack == EXPECTED_ACK


def test_ack_without_route() -> None:
    data = INVITE_SENT.replace(b"Route: <sip:p2.example.com;lr>\r\n", b"").replace(
        b"Route: <sip:p3.example.com;lr>, <sip:p4.example.com;lr>\r\n", b"")
    ack = parse_message_untrusted(build_ack(request(data), response_to(data, 404)))
    assert ack.routes() == []


def test_cancel() -> None:
    cancel = build_cancel(request(INVITE_SENT), ["Reason: SIP;cause=200;text=\"Call completed elsewhere\""])
    msg = parse_message_untrusted(cancel)
    assert isinstance(msg, SipRequest)
    assert cancel.startswith(b"CANCEL sip:bob@192.0.2.20:5060 SIP/2.0\r\n")
    assert [v.branch for v in msg.vias] == ["z9hG4bKproxy1"]
    assert msg.get("to") == "Bob <sip:bob@biloxi.example.com>"  # the INVITE's To
    assert (msg.cseq_num, msg.cseq_method) == (314159, "CANCEL")
    assert msg.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert len(msg.routes()) == 3


def test_ict_build_cancel() -> None:
    t = ClientInviteTransaction(request(INVITE_SENT), INVITE_SENT, False, TimerConfig(), 0.0)
    assert t.build_cancel() == build_cancel(request(INVITE_SENT))


def test_builders_refuse_non_invite() -> None:
    with pytest.raises(ValueError):
        build_ack(request(OPTIONS_SENT), response_to(OPTIONS_SENT, 404))
    with pytest.raises(ValueError):
        build_cancel(request(OPTIONS_SENT))
