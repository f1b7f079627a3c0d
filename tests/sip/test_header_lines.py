"""``parse_header_lines_untrusted``: header lines given by route authors and MI callers.

The one parser behind MI ``tm.t_reply``/``tm.reply`` HEADERS, the local UAC's extra
headers (``KSR.uac.uac_req_send``, ``KSR.tm.t_uac_send``, MI ``tm.t_uac_start``) and,
with ``http=True``, the HTTP request headers of ``KSR.http_client``. The entry points
have their own tests of the answer a caller gets (tests/mi/test_mi_tm_reply.py,
tests/runtime/test_local_uac.py, tests/modules/test_uac.py,
tests/modules/test_http_client.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sip.sip.errors import BadMessage
from trio_sip.sip.headers import parse_header_lines_untrusted
from trio_sip.sip.parser import parse_message_untrusted


def _why(text: str | list[str], *, http: bool = False) -> str:
    with pytest.raises(BadMessage) as info:
        parse_header_lines_untrusted(text, http=http)
    assert info.value.status == 400
    return info.value.reason


@pytest.mark.parametrize("http", [False, True])
def test_good_lines(http: bool) -> None:
    parse = parse_header_lines_untrusted
    assert parse("", http=http) == []
    assert parse("X-A: 1\r\nX-B:2\nX-C:\t three  \r\n", http=http) == [
        ("X-A", "1"), ("X-B", "2"), ("X-C", "three")]
    # a trailing CRLF (as Kamailio scripts end their hdrs) and blank lines are skipped
    assert parse("X-A: 1\r\n\r\n\r\nX-B: 2\r\n", http=http) == [("X-A", "1"), ("X-B", "2")]
    assert parse("X-A: 1\r\n \t \r\nX-B: 2", http=http) == [("X-A", "1"), ("X-B", "2")]
    # an empty value; a colon inside the value; the name kept as written
    assert parse("Subject:\nx-Url: http://h:8/p", http=http) == [
        ("Subject", ""), ("x-Url", "http://h:8/p")]
    # ISO-8859-1 characters (a Lua string's UTF-8 bytes arrive as such) and HTAB
    assert parse("X: caf\xc3\xa9\tok", http=http) == [("X", "caf\xc3\xa9\tok")]
    # a list: one line an item
    assert parse(["X-A: 1", "", "X-B: 2"], http=http) == [("X-A", "1"), ("X-B", "2")]


def test_sip_folding_white_space_before_the_colon_and_compact_forms() -> None:
    parse = parse_header_lines_untrusted
    assert parse("Subject: a\r\n  b\r\n\tc\r\nX: 1") == [("Subject", "a b c"), ("X", "1")]
    assert parse("X:\r\n value") == [("X", "value")]
    assert parse("X-A : 1\r\nX-B\t: 2") == [("X-A", "1"), ("X-B", "2")]  # RFC 3261 HCOLON
    assert parse("c: text/plain\r\nm: <sip:a@h>") == [("c", "text/plain"), ("m", "<sip:a@h>")]


@pytest.mark.parametrize(("text", "http", "words"), [
    # injection: CR, LF, NUL inside a line (a list item is never split)
    ("X-A: 1\rX-Evil: 2", False, r"'\r' in the line (CR, LF and NUL are refused: header "
     "injection)"),
    (["X-A: 1\r\nX-Evil: 2"], False, "header injection"),
    (["X-A: 1\n"], True, "header injection"),
    ("X-A: 1\x00", True, r"'\x00' in the line"),
    ("X-A: ok\r\nX-B: 2\r\r\n", False, "header line 2 'X-B: 2\\r'"),
    # other control characters, DEL, and what is not one byte
    ("X-A: \x1b[31m", False, r"control character '\x1b'"),
    ("X-A: a\x7f", True, r"control character '\x7f'"),
    ("X-A: \u20ac", False, "is not ISO-8859-1"),
    # names
    ("X Foo: bar", False, "header name 'X Foo' is not a token (RFC 3261 §25.1)"),
    ("X Foo: bar", True, "header name 'X Foo' is not a token (RFC 9110 §5.6.2)"),
    ("X#1: bar", False, "is not a token"),  # a tchar of HTTP, not a SIP token character
    ("X\u00e9: bar", True, "is not a token"),
    (": bar", False, "empty header name"),
    (" \t: bar", False, "no header line before it"),
    ("no colon here", False, "header line 1 'no colon here': no colon: it is not a "
     "'Name: value' header line"),
    ("X-A: 1\r\n\r\nbody text", True, "header line 3 'body text': no colon"),
    # folding and white space before the colon: SIP's, not HTTP's
    (" X-A: 1", False, "a continuation line (starting with white space) with no header "
     "line before it"),
    ("X-A: 1\r\n b", True, "header line 2 ' b': a continuation (folded) line"),
    ("X-A : 1", True, "white space between the name and the colon (RFC 9112 §5.1)"),
])
def test_bad_lines_are_refused_naming_the_line_and_why(text: str | list[str], http: bool,
                                                       words: str) -> None:
    assert words in _why(text, http=http)


def test_long_lines_are_shortened_in_the_reason() -> None:
    reason = _why("X" * 500 + " y")
    assert len(reason) < 200 and "..." in reason


def test_http_names_are_rfc_9110_tokens() -> None:
    assert parse_header_lines_untrusted("X#$&^|: 1", http=True) == [("X#$&^|", "1")]


_CHARS = st.sampled_from(["a", "X", "-", ":", " ", "\t", "\r", "\n", "\r\n", "\x00",
                          "\x7f", "\xe9", "\u20ac", "#", "{", ";", "="])


@settings(max_examples=400, deadline=None)
@given(st.lists(_CHARS, max_size=40).map("".join), st.booleans())
def test_whatever_the_text_it_is_refused_or_safe_to_send(text: str, http: bool) -> None:
    """Only BadMessage; what is accepted is one line a header, with nothing that could
    end the line or the header section, and parses back as the same headers."""
    try:
        got = parse_header_lines_untrusted(text, http=http)
    except BadMessage:
        return
    for name, value in got:
        assert name and ":" not in name and not any(c in name for c in " \t\r\n")
        assert not any(c in value for c in "\r\n\x00")
        assert value == value.strip(" \t")
    if not http:  # the SIP parser reads them back as they were given
        head = "".join(f"{n}: {v}\r\n" for n, v in got)
        msg = parse_message_untrusted(
            ("OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
             "From: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
             f"{head}Content-Length: 0\r\n\r\n").encode("latin-1"))
        assert [(h.name, h.text.strip(" \t")) for h in msg.headers][5:-1] == got
