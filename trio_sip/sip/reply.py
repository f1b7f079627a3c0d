"""Build a response to a request we received (RFC 3261 §8.2.6).

The response copies the request's Via header lines (the top one with the
``received``/``rport`` edit the server recorded), From, To, Call-ID and CSeq
*as text*: it needs none of them parsed, so a malformed request can still be
answered with a 400 when those lines exist (``build_reply_from_lines``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Final

from .message import Header, SipRequest

#: per-process secret mixed into generated To-tags, so tags are not predictable
_TAG_SECRET: Final = os.urandom(8)

REASONS: Final[dict[int, str]] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 430: "Flow Failed", 439: "First Hop Lacks Outbound Support",
    477: "Send Failed", 478: "Unresolvable Destination", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

_COPIED: Final = ("via", "from", "to", "call-id", "cseq")


def reason_phrase(code: int) -> str:
    return REASONS.get(code) or REASONS.get(code // 100 * 100, "Unknown")


def generated_to_tag(call_id: str, from_tag: str, branch: str, cseq: str) -> str:
    """A To-tag that is the same for every retransmission of one request."""
    h = hashlib.blake2b(digest_size=8, key=_TAG_SECRET)
    h.update(f"{call_id}\0{from_tag}\0{branch}\0{cseq}".encode("latin-1"))
    return h.hexdigest()


def build_reply(
    req: SipRequest,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    via_edit: tuple[int, int, str] | None = None,
    headers: Iterable[str] = (),
    body: bytes = b"",
    server: str = "",
) -> bytes:
    """A response to ``req``. ``to_tag`` is added to To unless it already has one (or
    code is 100). ``via_edit`` is (start, end, text) in message offsets for the top Via."""
    if to_tag is None and code > 100 and not req.to_tag:
        to_tag = generated_to_tag(req.call_id, req.from_tag, (req.via1.branch if req.via1 else "")
                                  or "", str(req.cseq_num))
    elif req.to_tag:
        to_tag = None
    return build_reply_from_lines(
        req.text, req.headers, code, reason, to_tag=to_tag, via_edit=via_edit,
        headers=headers, body=body, server=server,
    )


def build_reply_from_lines(
    text: str,
    header_lines: list[Header],
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    via_edit: tuple[int, int, str] | None = None,
    headers: Iterable[str] = (),
    body: bytes = b"",
    server: str = "",
) -> bytes:
    """Build a response from raw header lines (also for requests that failed to parse)."""
    if reason is None:
        reason = reason_phrase(code)
    out = [f"SIP/2.0 {code} {reason}\r\n"]
    for h in header_lines:
        if h.key not in _COPIED:
            continue
        line = text[h.start : h.end]
        if via_edit is not None and h.start <= via_edit[0] <= h.end:
            s, e, t = via_edit
            line = text[h.start : s] + t + text[e : h.end]
            via_edit = None
        if h.key == "to" and to_tag:
            line = line.rstrip("\r\n").rstrip() + f";tag={to_tag}\r\n"
        if not line.endswith("\r\n"):
            line += "\r\n"
        out.append(line)
    if server:
        out.append(f"Server: {server}\r\n")
    for extra in headers:
        extra = extra.rstrip("\r\n")
        if extra:
            out.append(extra + "\r\n")
    out.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(out).encode("latin-1") + body
