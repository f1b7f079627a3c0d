"""§16.7 step 3: our Via goes, every other byte of the response stays."""

from __future__ import annotations

from trio_sip.proxy.stateless import remove_top_via
from trio_sip.sip.message import SipResponse
from trio_sip.sip.parser import parse_message_untrusted

TAIL = (b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def strip(vias: bytes) -> bytes:
    resp = parse_message_untrusted(b"SIP/2.0 200 OK\r\n" + vias + TAIL)
    assert isinstance(resp, SipResponse)
    remove_top_via(resp)
    return resp.to_bytes()


def test_a_via_line_of_its_own_is_removed() -> None:
    out = strip(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n"
                b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\n")
    assert out == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\n" + TAIL


def test_the_first_of_several_via_parms_in_one_line_is_removed_with_its_comma() -> None:
    out = strip(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa , "
                b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\n")
    assert out == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\n" + TAIL
    again = parse_message_untrusted(out)
    assert [v.host for v in again.vias] == ["10.0.0.1"]
