"""StreamFramer: Content-Length framing of SIP over streams (RFC 3261 §18.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sip.sip.errors import BadMessage, MessageTooLarge
from trio_sip.sip.framing import StreamFramer, find_content_length_untrusted

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)
OPTIONS = b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\nl:0\r\n\r\n"


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message_untrusted()) is not None:
        out.append(message)
    return out


def frame_all(chunks: list[bytes], max_message_size: int = 65535) -> list[bytes]:
    framer = StreamFramer(max_message_size)
    out: list[bytes] = []
    for chunk in chunks:
        framer.feed(chunk)
        out += drain(framer)
    return out


# -- whole messages ------------------------------------------------------------


def test_whole_message() -> None:
    assert frame_all([INVITE]) == [INVITE]


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(INVITE)):
        framer.feed(INVITE[i : i + 1])
        got = drain(framer)
        if i < len(INVITE) - 1:
            assert got == [], f"message returned early at byte {i}"
        out += got
    assert out == [INVITE]
    assert framer.buffered == 0


def test_several_messages_in_one_chunk_and_a_partial_one() -> None:
    framer = StreamFramer()
    framer.feed(INVITE + OPTIONS + INVITE[:10])
    assert drain(framer) == [INVITE, OPTIONS]
    assert framer.buffered == 10
    framer.feed(INVITE[10:])
    assert drain(framer) == [INVITE]


def test_body_containing_blank_lines_and_content_length_is_opaque() -> None:
    body = b"\r\n\r\nContent-Length: 999\r\n\r\n"
    message = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert frame_all([message + OPTIONS]) == [message, OPTIONS]


def test_zero_length_body() -> None:
    assert frame_all([OPTIONS, OPTIONS]) == [OPTIONS, OPTIONS]


# -- Content-Length forms ------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"Content-Length: 5",
        b"content-length:5",
        b"CONTENT-LENGTH   :   5  ",
        b"l: 5",
        b"L:5",
        b"l\t:\t5",
        b"Content-Length:\r\n 5",  # folded (RFC 3261 §7.3.1)
        b"Content-Length:\r\n\t  \r\n 5",  # folded twice
        b"Content-Length: 0005",
    ],
)
def test_content_length_forms(line: bytes) -> None:
    message = b"MESSAGE sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n" + line + b"\r\nX: y\r\n\r\nhello"
    assert frame_all([message + OPTIONS]) == [message, OPTIONS]


def test_content_length_on_start_line_is_not_a_header() -> None:
    assert find_content_length_untrusted(b"l: 5\r\nTo: x\r\n") is None


def test_header_name_prefix_is_not_content_length() -> None:
    assert find_content_length_untrusted(b"M x SIP/2.0\r\nContent-Lengthy: 5\r\nll: 3\r\n") is None


def test_duplicate_equal_content_length_is_tolerated() -> None:
    header = b"M x SIP/2.0\r\nContent-Length: 5\r\nl: 5\r\n"
    assert find_content_length_untrusted(header) == 5


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"Content-Length: -5", 400),
        (b"Content-Length: five", 400),
        (b"Content-Length: 5 5", 400),
        (b"Content-Length: 5, 5", 400),
        (b"Content-Length: 0x10", 400),
        (b"Content-Length:", 400),
        (b"Content-Length: +5", 400),
        (b"Content-Length: \xd9\xa3", 400),  # ARABIC-INDIC DIGIT THREE in UTF-8
        (b"Content-Length: 5\r\nl: 6", 400),  # conflicting
        (b"Content-Length: " + b"9" * 5000, 413),  # beyond int()'s digit limit: still BadMessage
    ],
)
def test_bad_content_length(line: bytes, status: int) -> None:
    framer = StreamFramer()
    framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\n" + line + b"\r\n\r\nhello")
    with pytest.raises(BadMessage) as info:
        framer.next_message_untrusted()
    assert info.value.status == status


def test_missing_content_length_is_400() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(BadMessage) as info:
        framer.next_message_untrusted()
    assert info.value.status == 400
    assert not isinstance(info.value, MessageTooLarge)


def test_after_an_error_the_framer_stays_failed() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")
    with pytest.raises(BadMessage) as first:
        framer.next_message_untrusted()
    assert framer.failed
    with pytest.raises(BadMessage) as again:
        framer.next_message_untrusted()
    assert again.value is first.value
    with pytest.raises(BadMessage):
        framer.feed(OPTIONS)


# -- size limits ---------------------------------------------------------------


def test_message_of_exactly_the_limit_is_accepted() -> None:
    assert frame_all([INVITE], max_message_size=len(INVITE)) == [INVITE]


def test_body_over_the_limit_is_413_before_the_body_arrives() -> None:
    framer = StreamFramer(max_message_size=len(INVITE) - 1)
    framer.feed(INVITE[: INVITE.index(b"hello")])  # headers only
    with pytest.raises(MessageTooLarge) as info:
        framer.next_message_untrusted()
    assert info.value.status == 413


def test_endless_header_section_is_413_without_buffering_past_the_limit() -> None:
    framer = StreamFramer(max_message_size=1000)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(MessageTooLarge):
        for _ in range(100):
            framer.feed(b"X-Junk: " + b"a" * 40 + b"\r\n")
            assert framer.next_message_untrusted() is None
    assert framer.buffered <= 1000 + 50


def test_huge_content_length_is_413() -> None:
    framer = StreamFramer()
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 4294967296\r\n\r\n")
    with pytest.raises(MessageTooLarge):
        framer.next_message_untrusted()


# -- CRLF and keep-alives (RFC 3261 §7.5, RFC 5626 §3.5.1) -----------------------


def test_leading_crlfs_are_skipped() -> None:
    assert frame_all([b"\r\n" + INVITE + b"\r\n" + OPTIONS]) == [INVITE, OPTIONS]


def test_keepalive_pings_are_skipped_and_counted() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + INVITE + b"\r\n\r\n\r\n\r\n")
    assert drain(framer) == [INVITE]
    assert framer.pop_keepalive_pings() == 3
    assert framer.pop_keepalive_pings() == 0
    assert framer.buffered == 0


def test_ping_split_across_reads_is_one_ping() -> None:
    framer = StreamFramer()
    for byte in b"\r\n\r\n":
        framer.feed(bytes([byte]))
        assert framer.next_message_untrusted() is None
    assert framer.pop_keepalive_pings() == 1


def test_half_ping_waits_and_lone_crlf_is_not_a_ping() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_message_untrusted() is None
    assert framer.pop_keepalive_pings() == 0
    framer.feed(OPTIONS)  # the CRLF was a pong or padding
    assert drain(framer) == [OPTIONS]
    assert framer.pop_keepalive_pings() == 0


def test_blank_line_search_resumes_where_it_stopped() -> None:
    # The terminator split across reads in every possible place.
    for cut in range(len(OPTIONS) - 6, len(OPTIONS)):
        assert frame_all([OPTIONS[:cut], OPTIONS[cut:]]) == [OPTIONS]


# -- hypothesis ------------------------------------------------------------------

_header_names = st.sampled_from([b"Via", b"To", b"From", b"Call-ID", b"CSeq", b"X-Lengthy", b"i"])
_header_values = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\r\n") or b"x"
)
_cl_names = st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-length", b"l", b"L"])
_cl_separators = st.sampled_from([b": ", b":", b" : ", b"\t:\t", b":\r\n ", b":\r\n\t "])


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    start = draw(
        st.sampled_from(
            [b"INVITE sip:bob@example.com SIP/2.0", b"SIP/2.0 200 OK", b"BYE sip:x SIP/2.0"]
        )
    )
    headers = [
        n + b": " + v
        for n, v in draw(st.lists(st.tuples(_header_names, _header_values), max_size=5))
    ]
    body = draw(st.binary(max_size=120))
    cl = draw(_cl_names) + draw(_cl_separators) + str(len(body)).encode()
    headers.insert(draw(st.integers(0, len(headers))), cl)
    return start + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]), sip_messages()), min_size=1),
    st.data(),
)
def test_any_split_of_a_stream_gives_the_same_messages(
    items: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    messages = [m for _, m in items]
    stream = b"".join(prefix + m for prefix, m in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert frame_all(chunks) == messages


_fragments = st.sampled_from(
    [
        b"\r\n",
        b"\r\n\r\n",
        b"\r",
        b"\n",
        b"INVITE sip:a SIP/2.0\r\n",
        b"Content-Length",
        b"l",
        b":",
        b" ",
        b"\t",
        b"-",
        b"0",
        b"7",
        b"99999999999999999999",
        b"x",
        b"\xff",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(_fragments, st.binary(max_size=30)), max_size=60),
    st.integers(1, 300),
    st.data(),
)
def test_arbitrary_bytes_raise_nothing_but_bad_message(
    pieces: list[bytes], limit: int, data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = StreamFramer(max_message_size=limit)
    try:
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            framer.feed(stream[a:b])
            for message in drain(framer):
                assert len(message) <= limit
    except BadMessage:
        assert framer.failed
    assert framer.buffered <= limit + len(stream)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_find_content_length_raises_only_bad_message(block: bytes) -> None:
    try:
        result = find_content_length_untrusted(block)
    except BadMessage:
        return
    assert result is None or result >= 0
