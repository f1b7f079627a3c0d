"""Where the SDP of a message is, and how to put a new one there (sans-IO).

The SDP is the body when its Content-Type is ``application/sdp`` (or when there is
no Content-Type and the body starts with ``v=``), or the ``application/sdp`` part
of a ``multipart/*`` body (RFC 2046 §5.1; e.g. SDP plus ISUP or a location object).
:func:`replace_sdp` swaps only that part and fixes Content-Length through
``SipMessage.set_body`` (an edit, spliced in at send time).
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import SipMessage

__all__ = ["SdpLocation", "find_sdp", "has_sdp", "media_type", "replace_sdp"]


@dataclass(frozen=True, slots=True)
class SdpLocation:
    """The SDP is ``msg.body[start:end]``; ``whole`` when it is the entire body."""

    start: int
    end: int
    whole: bool

    def of(self, body: bytes) -> bytes:
        return body[self.start:self.end]


def _params(value: str) -> tuple[str, dict[str, str]]:
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        name, eq, v = item.partition("=")
        if eq:
            v = v.strip(" \t")
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[name.strip(" \t").lower()] = v
    return media.strip(" \t").lower(), params


def media_type(content_type: str | None) -> str:
    """``type/subtype`` in lower case ("" when absent)."""
    if not content_type:
        return ""
    return _params(content_type)[0]


def find_sdp(msg: SipMessage) -> SdpLocation | None:
    """The SDP of ``msg`` as received, or None when it has none."""
    body = msg.body
    if not body:
        return None
    ctype = msg.get("content-type")
    if ctype is None:
        return SdpLocation(0, len(body), True) if body.lstrip()[:2] == b"v=" else None
    media, params = _params(ctype)
    if media == "application/sdp":
        return SdpLocation(0, len(body), True)
    if media.startswith("multipart/") and params.get("boundary"):
        return _find_part(body, params["boundary"].encode("latin-1", "replace"))
    return None


def _find_part(body: bytes, boundary: bytes) -> SdpLocation | None:
    delim = b"--" + boundary
    pos = body.find(delim)
    while pos >= 0:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos + len(delim):pos + len(delim) + 2] == b"--":
            return None  # the close delimiter, or a truncated body
        nxt = body.find(b"\r\n" + delim, line_end)
        if nxt < 0:
            return None
        part_start = line_end + 2
        head_end = body.find(b"\r\n\r\n", part_start - 2)
        if head_end < 0 or head_end > nxt:
            pos = nxt + 2
            continue
        head = body[part_start:head_end].decode("latin-1")
        for line in head.split("\r\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() in ("content-type", "c"):
                if media_type(value) == "application/sdp":
                    return SdpLocation(head_end + 4, nxt, False)
        pos = nxt + 2
    return None


def has_sdp(msg: SipMessage) -> bool:
    loc = find_sdp(msg)
    return loc is not None and loc.end > loc.start


def replace_sdp(msg: SipMessage, loc: SdpLocation, sdp: bytes) -> None:
    """Put ``sdp`` where ``loc`` (from :func:`find_sdp` on this message) was."""
    if loc.whole:
        msg.set_body(sdp, "application/sdp")
    else:
        body = msg.body
        msg.set_body(body[:loc.start] + sdp + body[loc.end:])
