"""Parser throughput: messages/s for a typical INVITE and a 200 OK (with SDP).

    python bench/parser_bench.py [--seconds 2] [--repeat 5]

Prints the median of the repeats (the machines are shared and noisy) and the
Python version. "parse" is parse_message_untrusted alone (start line, header
index, top Via, CSeq, Call-ID, From/To, Content-Length); "parse+all" also parses
every Via, Contact and Route as a proxy handling the message would; "forward"
adds a Via and serialises with the edits spliced in. "call" runs the six messages of one
SIPp call (uac.xml/uas.xml through routes/stateful.lua): "parse" parses them, "proxy" also
does roughly what the stateful proxy does with each (sanity, Max-Forwards, tags, loose
routing, serialising with the edits).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_sip.sip.message import SipRequest
from trio_sip.sip.parser import parse_message_untrusted

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"User-Agent: bench/1.0\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl0123456789abcdef0123\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;"
    b"received=192.0.2.1;rport=5060\r\n"
    b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


# One SIPp call as the proxy of routes/stateful.lua receives it (tests/sipp/uac.xml and
# uas.xml): INVITE, 180, 200, ACK, BYE, 200; the responses carry our Via and the UAC's on
# one line ([last_Via:]), the in-dialog requests a Route.
_UACV = b"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0"
_PXV = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl3f2a9c1d0e4b5a6f70-0;rport=5070"
_FROM = b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n"
_TO = b"To: service <sip:service@127.0.0.1:5070>"
_CID_CSEQ = b"Call-ID: 1-4242@127.0.0.1\r\nCSeq: "
_CL_SDP = b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode()
_RR = b"Record-Route: <sip:127.0.0.1:5060;lr;ftag=4242SIPpTag001>\r\n"
_UAC_CONTACT = b"Contact: <sip:sipp@127.0.0.1:5061;transport=UDP>\r\nMax-Forwards: 70\r\n"


def _response(first: bytes, rr: bytes, cseq: bytes, tail: bytes) -> bytes:
    return (first + b"\r\nVia: " + _PXV + b", " + _UACV + b";received=127.0.0.1\r\n" + rr
            + _FROM + _TO + b";tag=4243SIPpTag011\r\n" + _CID_CSEQ + cseq + b"\r\n"
            + b"Contact: <sip:127.0.0.1:5070;transport=UDP>\r\n" + tail)


def _in_dialog(method: bytes, cseq: bytes) -> bytes:
    return (method + b" sip:127.0.0.1:5070;transport=UDP SIP/2.0\r\nVia: " + _UACV + b"\r\n"
            + b"Route: <sip:127.0.0.1:5060;lr;ftag=4242SIPpTag001>\r\n" + _FROM + _TO
            + b";tag=4243SIPpTag011\r\n" + _CID_CSEQ + cseq + b" " + method + b"\r\n"
            + _UAC_CONTACT + b"Subject: trio-sip harness\r\nContent-Length: 0\r\n\r\n")


CALL = [
    b"INVITE sip:service@127.0.0.1:5070;transport=UDP SIP/2.0\r\nVia: " + _UACV + b"\r\n"
    + _FROM + _TO + b"\r\n" + _CID_CSEQ + b"1 INVITE\r\n" + _UAC_CONTACT
    + b"Subject: trio-sip harness\r\n" + _CL_SDP + b"\r\n\r\n" + SDP,
    _response(b"SIP/2.0 180 Ringing", _RR, b"1 INVITE", b"Content-Length: 0\r\n\r\n"),
    _response(b"SIP/2.0 200 OK", _RR, b"1 INVITE", _CL_SDP + b"\r\n\r\n" + SDP),
    _in_dialog(b"ACK", b"1"),
    _in_dialog(b"BYE", b"2"),
    _response(b"SIP/2.0 200 OK", b"", b"2 BYE", b"Content-Length: 0\r\n\r\n"),
]


def call_parse(_: bytes) -> None:
    for data in CALL:
        parse_message_untrusted(data)


def call_proxy(_: bytes) -> None:
    """Parse each message of the call and use it roughly as the stateful proxy does:
    sanity checks, Max-Forwards, tags and branch for matching, loose routing, forwarding."""
    via = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl0000;rport\r\n"
    for data in CALL:
        m = parse_message_untrusted(data)
        assert m.via1 is not None
        if isinstance(m, SipRequest):
            for h in ("via", "from", "to", "call-id", "cseq"):
                m.has(h)
            m.get("expires")
            _ = (m.ruri.scheme, m.from_.params, m.to.params)
            for i, h in m.find("max-forwards"):
                m.replace_header_value(i, str(int(h.text) - 1))
            _ = (m.via1.branch, m.via1.rport, m.from_tag, m.to_tag)
            if m.to_tag:
                for i, na in m.routes():
                    assert na.uri is not None
                    _ = (na.uri.host_bare, na.uri.port, na.uri.transport)
                    m.remove_header_at(i)
            pos = m.headers[0].start
            m.to_bytes([(pos, pos, via, -1)])
        else:
            _ = (m.via1.branch, m.to_tag, m.from_tag)
            h = m.headers[0]
            m.replace_span(h.value_start + m.via1.start, h.value_start + m.via1.end + 1, "")
            m.to_bytes()


def parse_only(data: bytes) -> None:
    parse_message_untrusted(data)


def parse_all(data: bytes) -> None:
    m = parse_message_untrusted(data)
    _ = m.vias
    m.contacts()
    m.routes("record-route")


def forward(data: bytes) -> None:
    m = parse_message_untrusted(data)
    pos = m.headers[0].start
    via = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl0000;rport\r\n"
    m.to_bytes([(pos, pos, via, -1)])


def rate(fn: Callable[[bytes], None], data: bytes, seconds: float) -> float:
    n = 0
    batch = 200
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn(data)
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"Python {platform.python_version()} ({platform.python_implementation()}) "
          f"on {platform.machine()}; median of {args.repeat} x {args.seconds:g} s")
    print(f"{'message':<10} {'case':<10} {'msg/s':>10} {'us/msg':>8}")
    for name, data in (("INVITE", INVITE), ("200 OK", OK)):
        for case, fn in (("parse", parse_only), ("parse+all", parse_all), ("forward", forward)):
            rates = [rate(fn, data, args.seconds) for _ in range(args.repeat)]
            med = statistics.median(rates)
            print(f"{name:<10} {case:<10} {med:>10,.0f} {1e6 / med:>8.1f}")
    print(f"{'call':<10} {'case':<10} {'calls/s':>10} {'us/call':>8}   (6 messages per call)")
    for case, fn in (("parse", call_parse), ("proxy", call_proxy)):
        rates = [rate(fn, b"", args.seconds) for _ in range(args.repeat)]
        med = statistics.median(rates)
        print(f"{'call':<10} {case:<10} {med:>10,.0f} {1e6 / med:>8.1f}")


if __name__ == "__main__":
    main()
