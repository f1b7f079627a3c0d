"""Hypothesis: whatever the bytes, ``parse_message_untrusted`` raises only ``BadMessage``.

When a message parses, its unedited serialisation is the received prefix, every lazy
getter either works or raises ``BadMessage``, and an appended header keeps it parseable.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_helpers import INVITE, TORTURE_CASES

from trio_sip.sip.errors import BadMessage
from trio_sip.sip.headers import NameAddr, parse_name_addr_untrusted
from trio_sip.sip.message import SipMessage, SipRequest
from trio_sip.sip.parser import parse_message_untrusted

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;received=192.0.2.1;rport=5070\r\n"
    b'From: "A" <sip:a@example.com>;tag=1\r\n'
    b"To: sip:b@example.com;tag=2\r\n"
    b"Call-ID: fuzz@example.com\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:b@192.0.2.4:5062;transport=tcp>;expires=60, *\r\n"
    b"Record-Route: <sip:rr1.example.com;lr>,<sip:rr2.example.com;lr>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

SEEDS = [INVITE, RESPONSE] + [c.data for c in TORTURE_CASES]

SPECIALS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b";",
    b",",
    b'"',
    b"<",
    b">",
    b":",
    b"[",
    b"]",
    b"=",
    b"@",
    b"?",
    b"%",
    b"\\",
    b"/",
    b"\x00",
    b"\xff",
    b"*",
    b"99999999999999999999",
    b"-1",
    b"SIP/2.0",
    b";branch=",
    b"sip:",
]


def check(data: bytes, *, stream: bool = False) -> None:
    try:
        msg = parse_message_untrusted(data, stream=stream)
    except BadMessage as exc:
        assert 400 <= exc.status <= 599
        return
    out = msg.to_bytes()
    if msg.raw is data:
        assert out == data[: msg.body_start + len(msg.body)]
    else:  # a datagram ending without the empty line gets one
        assert msg.raw == data + b"\r\n" and out == msg.raw and msg.body == b""
    exercise(msg)
    mark = msg.edit_mark()
    add_received(msg)
    msg.rollback(mark)
    msg.append_header("X-Fuzz: 1")
    again = parse_message_untrusted(msg.to_bytes(), stream=stream)
    assert again.get("x-fuzz") == "1"
    assert again.body == msg.body
    assert len(again.headers) == len(msg.headers) + 1


def exercise(msg: SipMessage) -> None:
    getters: list[Callable[[], object]] = [
        lambda: msg.vias,
        msg.contacts,
        msg.routes,
        lambda: msg.routes("record-route"),
        lambda: msg.from_,
        lambda: msg.to,
        lambda: msg.from_.display_unquoted,
        lambda: [h.text for h in msg.headers],
    ]
    if isinstance(msg, SipRequest):
        getters.append(lambda: msg.ruri)
    for getter in getters:
        try:
            getter()
        except BadMessage as exc:
            assert 400 <= exc.status <= 599
    addresses = [msg.from_, msg.to, *(_safe(msg.contacts) or [])]
    for na in addresses:
        # what we would write back (Route rewriting uses str()) parses to the same thing
        if na.wildcard:
            continue
        again = parse_name_addr_untrusted(str(na))
        assert str(again.uri) == str(na.uri)
        assert again.params == na.params
        assert again.uri == na.uri
        assert hash(again.uri) == hash(na.uri)


def add_received(msg: SipMessage) -> None:
    """What a proxy does to the top Via: the parameter lands in the first via-parm."""
    assert msg.via1 is not None
    h = next(h for h in msg.headers if h.key == "via")
    msg.insert_at(h.value_start + msg.via1.params_end, ";received=192.0.2.77")
    again = parse_message_untrusted(msg.to_bytes())
    assert again.via1 is not None
    assert again.via1.params[-1] == ("received", "192.0.2.77")
    assert again.via1.params[:-1] == msg.via1.params
    assert again.via1.host == msg.via1.host


def _safe(fn: Callable[[], list[NameAddr]]) -> list[NameAddr] | None:
    try:
        return fn()
    except BadMessage:
        return None


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(SPECIALS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
    return bytes(data)


_value_chars = st.sampled_from(
    [*list('abcsip:;,<>"\\[]@=?%*/ \t.0123456789'), "\r\n ", "SIP/2.0/UDP ", "sip:", "tag="]
)
_values = st.lists(_value_chars, max_size=30).map("".join)
_names = st.sampled_from(
    [
        "Via",
        "v",
        "From",
        "f",
        "To",
        "t",
        "Contact",
        "m",
        "Route",
        "Record-Route",
        "CSeq",
        "Call-ID",
        "i",
        "Content-Length",
        "l",
        "Max-Forwards",
        "Date",
        "X-Any",
    ]
)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A plausible message whose header values are drawn from SIP's special characters."""
    start = draw(
        st.sampled_from(
            ["INVITE sip:bob@example.com SIP/2.0", "SIP/2.0 200 OK", "ACK sip:[::1]:5060 SIP/2.0"]
        )
    )
    base = {
        "Via": "SIP/2.0/UDP h;branch=z9hG4bK1",
        "From": "<sip:a@h>;tag=1",
        "To": "<sip:b@h>",
        "Call-ID": "c1",
        "CSeq": "1 INVITE" if start.startswith(("INVITE", "SIP")) else "1 ACK",
    }
    lines = [f"{k}: {v}" for k, v in base.items()]
    for name, value in draw(st.lists(st.tuples(_names, _values), max_size=6)):
        lines.insert(draw(st.integers(0, len(lines))), f"{name}:{value}")
    body = draw(st.binary(max_size=40))
    text = start + "\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return text.encode("latin-1") + body


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)
    check(data, stream=True)


@FUZZ
@given(st.lists(st.sampled_from([*SPECIALS, b"INVITE ", b"Via: ", b"a", b"0"]), max_size=80))
def test_arbitrary_special_sequences(pieces: list[bytes]) -> None:
    check(b"".join(pieces))


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated())
def test_mutated_messages_stream(data: bytes) -> None:
    check(data, stream=True)


@FUZZ
@given(structured())
def test_structured_header_values(data: bytes) -> None:
    check(data)
