"""Requests a client transaction generates itself: the ACK for a non-2xx (§17.1.1.3)
and the CANCEL of an INVITE (§9.1, used by a proxy in §16.10).

Both are built from the INVITE *as it was sent*: parse the bytes the client
transaction transmitted (with our Via, the Request-URI and Route set the script
chose), not the request the server received. Header values are copied as text;
nothing here re-serialises a URI.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..sip.errors import BadMessage
from ..sip.headers import parse_via_list_untrusted
from ..sip.message import SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted


def _top_via_parm(invite: SipRequest) -> str:
    """The first via-parm of the first Via header line, as written."""
    for h in invite.headers:
        if h.key == "via":
            via = parse_via_list_untrusted(h.value)[0]
            return h.value[via.start : via.end].strip(" \t")
    raise ValueError("the INVITE has no Via header")


def _first(msg: SipRequest | SipResponse, key: str) -> str:
    for h in msg.headers:
        if h.key == key:
            return h.text
    raise ValueError(f"the message has no {key} header")


def _build(
    invite: SipRequest, method: str, to_value: str, extra_headers: Iterable[str]
) -> bytes:
    lines = [
        f"{method} {invite.ruri_text} SIP/2.0",
        f"Via: {_top_via_parm(invite)}",
        f"From: {_first(invite, 'from')}",
        f"To: {to_value}",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.cseq_num} {method}",
    ]
    lines += [f"Route: {h.text}" for h in invite.headers if h.key == "route"]
    lines.append("Max-Forwards: 70")
    lines += [e.rstrip("\r\n") for e in extra_headers if e.strip()]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_ack(invite: SipRequest, response: SipResponse) -> bytes:
    """The ACK for a 300-699 ``response`` to ``invite`` (the INVITE as sent).

    RFC 3261 §17.1.1.3: "The ACK request constructed by the client transaction MUST
    contain values for the Call-ID, From, and Request-URI that are equal to the
    values of those header fields in the request passed to the transport by the
    client transaction (call this the "original request"). The To header field in
    the ACK MUST equal the To header field in the response being acknowledged [...]
    The ACK MUST contain a single Via header field, and this MUST be equal to the top
    Via header field of the original request. The CSeq header field in the ACK MUST
    contain the same value for the sequence number as was present in the original
    request, but the method parameter MUST be equal to "ACK". If the INVITE request
    whose response is being acknowledged had Route header fields, those header
    fields MUST appear in the ACK."

    Max-Forwards is 70 (§8.1.1.6) and the ACK has no body.
    """
    if invite.method != "INVITE":
        raise ValueError(f"an ACK acknowledges an INVITE, not {invite.method}")
    return _build(invite, "ACK", _first(response, "to"), ())


def build_cancel(invite: SipRequest, extra_headers: Iterable[str] = ()) -> bytes:
    """The CANCEL for ``invite`` (the INVITE as sent); ``extra_headers`` are whole
    header lines such as an RFC 3326 ``Reason``.

    RFC 3261 §9.1: "The Request-URI, Call-ID, To, the numeric part of CSeq, and From
    header fields in the CANCEL request MUST be identical to those in the request
    being cancelled, including tags. A CANCEL constructed by a client MUST have only
    a single Via header field value matching the top Via value in the request being
    cancelled. [...] the method part of the CSeq header field MUST have a value of
    CANCEL. [...] If the request being cancelled contains a Route header field, the
    CANCEL request MUST include that Route header field's values."
    """
    if invite.method != "INVITE":
        raise ValueError(f"only an INVITE is cancelled, not {invite.method}")
    return _build(invite, "CANCEL", _first(invite, "to"), extra_headers)


def parse_sent_invite(data: bytes) -> SipRequest:
    """The INVITE a client transaction sent (its bytes), parsed again to build its ACK or
    CANCEL from it. ValueError if the bytes are not a request (they always are: we
    made them)."""
    try:
        msg = parse_message_untrusted(data)
    except BadMessage as exc:
        raise ValueError(f"the INVITE bytes sent do not parse: {exc}") from exc
    if not isinstance(msg, SipRequest):
        raise ValueError("the bytes sent are not a request")
    return msg
