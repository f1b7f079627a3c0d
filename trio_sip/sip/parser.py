"""Parse one SIP message from bytes (RFC 3261 §7, §25).

``parse_message_untrusted`` takes the bytes of one datagram (or one message
cut out of a stream by :class:`~trio_sip.sip.framing.StreamFramer`) and returns
a :class:`SipRequest` or :class:`SipResponse`, or raises :class:`BadMessage`.

What is parsed eagerly is what every message needs for matching and for
answering (CONVENTIONS §11): the start line, the header index, the top Via
header, CSeq, Call-ID, From and To (tags), Content-Length and Max-Forwards.
Everything else (other Vias, Contact, Route, bodies) is parsed on demand.

Speed (issue 10): the texts that recur from message to message are parsed once and
cached, bounded in size: header-name spellings (here), URIs (uri.py), name-addrs, the
sent-protocol/sent-by of a Via and CSeq values (headers.py). A hit gives exactly what the
parse would give (only successful parses are kept, keyed by the whole text the parse
looked at); mutable results are handed out as private copies. From, To and the
Request-URI stay on the message as the shared parse until someone asks for the object
(``from_``, ``to``, ``ruri`` then copy it). tests/sip/test_parse_caches.py checks that
the parse with and without caches agree on the torture corpus and its mutations.

A ``BadMessage`` raised after the header section was split carries
``exc.is_request`` and the raw header lines in ``exc.headers`` so the caller can still answer a
request with a 400 built from the raw header lines (RFC 4475 expects a 400 for
most malformed requests, and a reply needs Via, From, To, Call-ID and CSeq
only as text).
"""

from __future__ import annotations

import re
from typing import Final

from .errors import BadMessage, MessageTooLarge
from .headers import (
    SINGLE_HEADERS,
    header_key,
    is_token,
    parse_cseq_untrusted,
    parse_uint_untrusted,
    parse_via_list_untrusted,
    shared_name_addr_untrusted,
)
from .message import Header, SipMessage, SipRequest, SipResponse
from .uri import shared_uri_untrusted

_WS: Final = " \t"
_FOLD: Final = (" ", "\t")  # a line starting with one of these continues the previous one
# field-name = token, then optional white space and the colon (RFC 3261 §7.3.1)
_HEADER_NAME_RE: Final = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:")
# callid = word [ "@" word ] (RFC 3261 §25.1); word allows <>"[]{}?: and more, but not
# white space, "," or ";" (RFC 4475 "intmeth" uses nearly every legal character).
_CALL_ID_FORBIDDEN: Final = re.compile(r"[ \t,;]")

DEFAULT_MAX_SIZE: Final = 65535

# Date = "Date" HCOLON SIP-date; SIP-date = rfc1123-date = wkday "," SP date1 SP time SP "GMT"
# (RFC 3261 §20.17, §25.1; ABNF literals are case-insensitive). RFC 4475 "baddate" (EST
# instead of GMT) is rejected by this rule: its manifest expects a 4xx.
_DATE_RE: Final = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT\Z",
    re.IGNORECASE | re.ASCII,
)


def parse_message_untrusted(
    data: bytes, *, stream: bool = False, max_size: int = DEFAULT_MAX_SIZE
) -> SipMessage:
    """Parse a whole message. ``stream`` means the bytes were framed by Content-Length
    (so it is exact); for a datagram a shorter Content-Length truncates the body and
    a longer one is an error (RFC 3261 §18.3)."""
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    # RFC 3261 §7.5: implementations SHOULD ignore CRLFs preceding the start line.
    offset = 0
    while data.startswith(b"\r\n", offset):
        offset += 2
    hend = data.find(b"\r\n\r\n", offset)
    if hend < 0:
        if data.endswith(b"\r\n") and len(data) > offset + 2:
            # A header section that the datagram ends without the empty line: accept it as
            # headers with no body (RFC 4475 "baddn" as archived is such a message). The
            # missing empty line is added to the kept bytes, so what we forward is well
            # formed and appended headers or a body land after the last header, not in it.
            data += b"\r\n"
            hend = len(data) - 4
            body_start = len(data)
        else:
            raise BadMessage("no end of header section")
    else:
        body_start = hend + 4
    text = data[:hend].decode("latin-1")
    if offset:
        text = " " * offset + text[offset:]  # keep offsets; the padding is never read
    line_end = text.find("\r\n", offset)
    if line_end < 0:
        line_end = len(text)
    start_line = text[offset:line_end]
    try:
        headers = _split_headers_untrusted(text, line_end + 2 if line_end < len(text) else line_end)
    except BadMessage as exc:
        exc.is_request = not start_line.startswith("SIP/")
        raise

    is_request = not start_line.startswith("SIP/")
    msg: SipMessage
    try:
        if not is_request:
            status, reason, version = _parse_status_line_untrusted(start_line)
            msg = SipResponse(data, text, headers, hend + 2, body_start, b"", status, reason,
                              version)
        else:
            method, ruri_text, version, ruri_off = _parse_request_line_untrusted(start_line)
            msg = SipRequest(data, text, headers, hend + 2, body_start, b"", method, ruri_text,
                             offset + ruri_off, version)
        _fill_and_check(msg, data, body_start, stream)
    except BadMessage as exc:
        exc.is_request = is_request
        exc.headers = headers
        raise
    return msg


def _split_headers_untrusted(text: str, pos: int) -> list[Header]:
    if "\r\n " in text or "\r\n\t" in text:
        return _split_folded_headers_untrusted(text, pos)
    # Fast path: no line starts with SP/HT, so no header is folded (nearly every message).
    # The start line cannot hold a CRLF, so the test above looks at the header lines only.
    headers: list[Header] = []
    append = headers.append
    names_get = _NAMES.get
    cur = pos
    for line in text[pos:].split("\r\n"):
        # The name ends at the first colon (token and LWS hold none), so the text before
        # it is all that _HEADER_NAME_RE looks at: known spellings skip the regex.
        colon = line.find(":")
        nk = names_get(line[:colon]) if colon > 0 else None
        if nk is None:
            nk = _header_name_untrusted(line)
        end = cur + len(line) + 2
        append(Header(nk[0], nk[1], line[colon + 1 :], cur, end, cur + colon + 1))
        cur = end
    return headers


# What comes before the colon of a header line ("Via", "To ", "l") -> (name, key), for
# the spellings already seen and found valid. Bounded like header_key's cache.
_NAMES: Final[dict[str, tuple[str, str]]] = {}


def clear_parse_caches() -> None:
    """Empty every cache of parse results (header names, URIs, name-addrs, Via heads,
    CSeq values). Nothing needs this for correctness; tests use it to compare a parse
    with cold caches against one with warm caches."""
    from . import headers, uri

    _NAMES.clear()
    headers._NA_CACHE.clear()
    headers._VIA_HEADS.clear()
    headers._CSEQS.clear()
    uri._URI_CACHE.clear()


def _bad_header_line(line: str) -> BadMessage:
    """What is wrong with a header line whose name did not match."""
    colon = line.find(":")
    if colon < 0:
        return BadMessage(f"header line without a colon: {line[:60]!r}")
    return BadMessage(f"bad header name: {line[:colon].rstrip(_WS)[:60]!r}")


def _header_name_untrusted(line: str) -> tuple[str, str]:
    m = _HEADER_NAME_RE.match(line)
    if m is None:
        raise _bad_header_line(line)
    name = m.group(1)
    nk = (name, header_key(name))
    if len(_NAMES) < 1024:
        _NAMES[line[: m.end() - 1]] = nk
    return nk


def _split_folded_headers_untrusted(text: str, pos: int) -> list[Header]:
    headers: list[Header] = []
    append = headers.append
    name_match = _HEADER_NAME_RE.match
    lines = text[pos:].split("\r\n")
    n = len(lines)
    i = 0
    cur = pos
    while i < n:
        line = lines[i]
        start = cur
        cur += len(line) + 2
        i += 1
        folded = False
        if i < n and lines[i][:1] in _FOLD:
            # folded continuation lines: CRLF followed by SP/HT
            parts = [line]
            while i < n and lines[i][:1] in _FOLD:
                parts.append(lines[i])
                cur += len(lines[i]) + 2
                i += 1
            line = "\r\n".join(parts)
            folded = True
        m = name_match(line)
        if m is None:
            raise _bad_header_line(line)
        name = m.group(1)
        value_at = m.end()
        raw_value = line[value_at:]
        if folded:
            raw_value = raw_value.replace("\r\n", "  ")  # length-preserving unfold
        # Every line ends with a CRLF in the raw bytes, the last one too (it lies just past
        # ``text``, which stops at the CRLF that ends the last header line).
        append(Header(name, header_key(name), raw_value, start, cur, start + value_at))
    return headers


def _parse_status_line_untrusted(line: str) -> tuple[int, str, str]:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
    parts = line.split(" ", 2)
    if len(parts) < 3:
        raise BadMessage(f"bad status line: {line[:60]!r}")
    version, code, reason = parts
    if version.upper() != "SIP/2.0":
        raise BadMessage(f"unsupported SIP version {version[:20]!r}", status=505)
    if len(code) != 3 or not code.isdigit() or not code.isascii() or not 100 <= int(code) <= 699:
        raise BadMessage(f"bad status code {code[:20]!r}")
    return int(code), reason, version


def _parse_request_line_untrusted(line: str) -> tuple[str, str, str, int]:
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF: exactly single spaces
    # (RFC 4475 "lwsstart", "trws" and "lwsruri" are rejected by this rule).
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        if len(parts) == 2 and parts[0] and parts[1]:
            raise BadMessage("request line without SIP version")
        raise BadMessage(f"bad request line: {line[:80]!r}")
    method, ruri_text, version = parts
    if not is_token(method):
        raise BadMessage(f"bad method: {method[:40]!r}")
    if version.upper() != "SIP/2.0":
        if version.upper().startswith("SIP/"):
            raise BadMessage(f"unsupported SIP version {version[:20]!r}", status=505)
        raise BadMessage(f"bad SIP version {version[:20]!r}")
    return method, ruri_text, version, len(method) + 1


def _fill_and_check(msg: SipMessage, data: bytes, body_start: int, stream: bool) -> None:
    # The first header of every name (kept on the message: get()/has() look there).
    first: dict[str, Header] = {}
    repeated: set[str] | None = None
    for h in msg.headers:
        k = h.key
        if k not in first:
            first[k] = h
        elif k in SINGLE_HEADERS:
            if repeated is None:
                repeated = set()
            repeated.add(k)
    if repeated is not None:
        # report the first one in message order, as a count per name would
        for k in first:
            if k in repeated:
                raise BadMessage(f"more than one {k} header")
    msg._first = first

    # Via: the first Via header line is parsed whole (it holds the top via-parm).
    via_h = first.get("via")
    if via_h is None:
        raise BadMessage("missing Via header")
    vias = parse_via_list_untrusted(via_h.value)
    msg.via1 = vias[0]

    call_id_h = first.get("call-id")
    if call_id_h is None:
        raise BadMessage("missing Call-ID header")
    call_id = call_id_h.value.strip(_WS)
    if not call_id or _CALL_ID_FORBIDDEN.search(call_id) is not None:
        raise BadMessage(f"bad Call-ID: {call_id[:60]!r}")
    msg.call_id = call_id

    cseq_h = first.get("cseq")
    if cseq_h is None:
        raise BadMessage("missing CSeq header")
    msg.cseq_num, msg.cseq_method = parse_cseq_untrusted(cseq_h.value)

    from_h = first.get("from")
    to_h = first.get("to")
    if from_h is None or to_h is None:
        raise BadMessage("missing From or To header")
    msg._from_shared = shared_name_addr_untrusted(from_h.value)
    msg._to_shared = shared_name_addr_untrusted(to_h.value)

    date_h = first.get("date")
    if date_h is not None and not _DATE_RE.match(date_h.text):
        raise BadMessage(f"bad Date: {date_h.text[:40]!r}")

    mf = first.get("max-forwards")
    if mf is not None:
        parse_uint_untrusted(mf.value, "Max-Forwards", 255)

    # Body framing (RFC 3261 §18.3, §20.14).
    available = len(data) - body_start
    cl_h = first.get("content-length")
    if cl_h is not None:
        value = cl_h.value.strip(_WS)
        # the length bound also keeps int() away from its 4300-digit ValueError
        if not value.isdigit() or not value.isascii() or len(value.lstrip("0")) > 10:
            raise BadMessage(f"bad Content-Length: {value[:20]!r}")
        length = int(value)
        if length > available:
            raise BadMessage(f"Content-Length {length} exceeds the {available} body bytes received")
        msg.body = data[body_start : body_start + length]
    else:
        if stream and available:
            raise BadMessage("missing Content-Length on a stream transport")
        msg.body = data[body_start:]

    if isinstance(msg, SipRequest):
        if msg.cseq_method != msg.method:
            raise BadMessage(f"CSeq method {msg.cseq_method!r} does not match {msg.method!r}")
        uri = shared_uri_untrusted(msg.ruri_text)
        if uri.is_sip and uri.headers is not None:
            # RFC 3261 §19.1.5: headers are not allowed in a Request-URI.
            raise BadMessage("Request-URI with headers")
        msg._ruri_shared = uri
