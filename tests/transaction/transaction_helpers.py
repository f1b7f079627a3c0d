"""Messages and drivers shared by the transaction tests (sans-IO: explicit ``now``)."""

from __future__ import annotations

import math

from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.transaction import (
    Action,
    PassUp,
    Terminated,
    TimedOut,
    TransactionMachine,
    Transmit,
)

CALL_ID = "a84b4c76e66710@pc33.atlanta.example.com"

# The INVITE as a proxy sends it: our Via on top, the Route set the script chose.
INVITE_SENT = (
    "INVITE sip:bob@192.0.2.20:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKproxy1;rport, "
    "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    "Via: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKnashds8\r\n"
    "Max-Forwards: 69\r\n"
    "Route: <sip:p2.example.com;lr>\r\n"
    "Route: <sip:p3.example.com;lr>, <sip:p4.example.com;lr>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    f"Call-ID: {CALL_ID}\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n"
    "\r\n"
    "v=0\n"
).encode("latin-1")

OPTIONS_SENT = (
    "OPTIONS sip:bob@192.0.2.20 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKopt1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@atlanta.example.com>;tag=77\r\n"
    "To: <sip:bob@biloxi.example.com>\r\n"
    "Call-ID: opt-1\r\n"
    "CSeq: 5 OPTIONS\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
).encode("latin-1")


def request(data: bytes) -> SipRequest:
    msg = parse_message_untrusted(data)
    assert isinstance(msg, SipRequest)
    return msg


def response_to(req_data: bytes, status: int, *, to_tag: str | None = "8321234356",
                reason: str = "Reason") -> SipResponse:
    """A response to the request in ``req_data`` with its Via, From, Call-ID, CSeq."""
    req = request(req_data)
    lines = [f"SIP/2.0 {status} {reason}"]
    for h in req.headers:
        if h.key in ("via", "from", "call-id", "cseq"):
            lines.append(f"{h.name}:{h.value}")
        elif h.key == "to":
            lines.append(f"To: {h.text}" + (f";tag={to_tag}" if to_tag and status > 100 else ""))
    lines.append("Content-Length: 0")
    msg = parse_message_untrusted(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    assert isinstance(msg, SipResponse)
    return msg


def ack_for(invite_data: bytes, to_tag: str = "8321234356") -> SipRequest:
    """The ACK a UAC sends for a non-2xx response to the INVITE in ``invite_data``."""
    inv = request(invite_data)
    first_via = next(h for h in inv.headers if h.key == "via").text.split(",")[0]
    text = (
        f"ACK {inv.ruri_text} SIP/2.0\r\n"
        f"Via: {first_via}\r\n"
        f"From: {inv.get('from')}\r\n"
        f"To: {inv.get('to')};tag={to_tag}\r\n"
        f"Call-ID: {inv.call_id}\r\n"
        f"CSeq: {inv.cseq_num} ACK\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return request(text.encode("latin-1"))


def transmits(actions: list[Action]) -> list[Transmit]:
    return [a for a in actions if isinstance(a, Transmit)]


def run_timers(machine: TransactionMachine, until: float = math.inf) -> list[tuple[float, Action]]:  # type: ignore[type-arg]
    """Wake the machine at each of its deadlines (as the runtime does) up to ``until``;
    returns every action with the time it happened."""
    out: list[tuple[float, Action]] = []
    while True:
        deadline = machine.next_deadline()
        if deadline == math.inf or deadline > until:
            return out
        actions = machine.handle_timer(deadline)
        assert actions, f"woken at its deadline {deadline} and did nothing"
        out += [(deadline, a) for a in actions]
        assert machine.next_deadline() > deadline


def times_of(events: list[tuple[float, Action]], kind: type) -> list[float]:
    return [t for t, a in events if isinstance(a, kind)]


__all__ = [
    "CALL_ID",
    "INVITE_SENT",
    "OPTIONS_SENT",
    "PassUp",
    "Terminated",
    "TimedOut",
    "Transmit",
    "ack_for",
    "request",
    "response_to",
    "run_timers",
    "times_of",
    "transmits",
]
