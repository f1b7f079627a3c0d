"""The SIP message model: original bytes, a header index, and recorded edits.

Theory of operation
-------------------
A proxy must not reformat what it does not touch (CONVENTIONS §11). So a
message is its original bytes plus an index of where each header line is, and
every change is an *edit*: "replace bytes [start, end) with these bytes",
recorded, not applied. :meth:`SipMessage.to_bytes` splices the edits into the
original at send time. This is Kamailio's "lump" idea.

Consequences, the same as in Kamailio: header getters read the *received*
message; a header added with :meth:`append_header` is not seen by
:meth:`get` (``KSR.hdr.is_present`` behaves the same way there). What must be
visible at once (the Request-URI after ``$ru`` is set, the destination URI)
is kept as an attribute beside the bytes and written into the start line when
the message is serialised.

Edits are kept sorted at serialisation time by (offset, inserts first, order
of recording). An edit that overlaps one already applied is dropped: e.g. a
parameter inserted into a Via that a later edit removes disappears with it.
One exception: a later replacement of *exactly* the same span supersedes the
earlier one (``set_body`` twice sends the second body and its Content-Length,
as Kamailio's ``set_body`` drops the body lumps it made before).

The header section is decoded as latin-1 once, so string offsets equal byte
offsets and any octet survives the round trip unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .headers import (
    NameAddr,
    Via,
    canonical_name,
    header_key,
    parse_name_addr_list_untrusted,
    parse_name_addr_untrusted,
    parse_via_list_untrusted,
    shared_name_addr_list_untrusted,
)
from .uri import URI, parse_uri_untrusted, shared_uri_untrusted

if TYPE_CHECKING:
    from collections.abc import Iterator

# Only SP and HT are white space here: str.strip()/split() would also eat \x85 and \xa0,
# which in a latin-1 decoded header are bytes of UTF-8 sequences ("à" is C3 A0).
_LWS_RUN: Final = re.compile(r"[ \t]+")


@dataclass(slots=True)
class Header:
    """One header line as received (possibly folded over several physical lines).

    ``value`` is unfolded length-preservingly (CRLF -> two spaces) and not
    stripped; ``value_start`` is its offset in the raw message; ``start``/``end``
    span the whole line including its CRLF.
    """

    name: str
    key: str
    value: str
    start: int
    end: int
    value_start: int

    @property
    def text(self) -> str:
        """The value with surrounding white space removed and runs of LWS from folding
        collapsed (what a script sees as ``$hdr(Name)``)."""
        v = self.value.strip(" \t")
        # a fold is CRLF (unfolded to two spaces) plus at least one SP/HT: 3+ blanks
        if "   " in v or "\t" in v:
            v = _LWS_RUN.sub(" ", v)
        return v


class SipMessage:
    """Common part of requests and responses."""

    __slots__ = (
        "_cseq",
        "_edits",
        "_first",
        "_from",
        "_from_shared",
        "_to",
        "_to_shared",
        "_vias",
        "body",
        "body_start",
        "call_id",
        "cseq_method",
        "cseq_num",
        "headers",
        "headers_end",
        "raw",
        "text",
        "via1",
    )

    is_request: bool = False

    def __init__(
        self,
        raw: bytes,
        text: str,
        headers: list[Header],
        headers_end: int,
        body_start: int,
        body: bytes,
    ) -> None:
        self.raw = raw
        #: the start line and header section decoded as latin-1 (offsets == byte offsets)
        self.text = text
        self.headers = headers
        #: offset of the empty line (CRLF) that ends the header section: just past the
        #: last header line's CRLF, where an appended header goes
        self.headers_end = headers_end
        self.body_start = body_start
        self.body = body
        self._edits: list[tuple[int, int, bytes, int]] = []
        #: the first header of each key (filled by the parser; headers never change)
        self._first: dict[str, Header] = {}
        self._vias: list[Via] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        # From/To as parsed by the parser: the shared cached parse (read-only), copied into
        # _from/_to only when someone asks for the object itself (most only want the tag)
        self._from_shared: NameAddr | None = None
        self._to_shared: NameAddr | None = None
        # Filled by the parser (the fields every message needs for matching).
        self.via1: Via | None = None
        self.call_id = ""
        self.cseq_num = 0
        self.cseq_method = ""

    # -- header access --------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first header of that name (compact forms match), value trimmed; or None."""
        h = self._first.get(header_key(name))
        return None if h is None else h.text

    def first_header(self, key: str) -> Header | None:
        """The first Header whose key (``header_key``: lower-case full name) is ``key``;
        one dict lookup, for hot paths that know the key already."""
        return self._first.get(key)

    def replace_value_of(self, h: Header, value: str) -> None:
        """As :meth:`replace_header_value`, for a Header of this message in hand."""
        self._edit(h.value_start, h.end, b" " + value.encode("latin-1") + b"\r\n")

    def get_all(self, name: str) -> list[str]:
        key = header_key(name)
        return [h.text for h in self.headers if h.key == key]

    def find(self, name: str) -> Iterator[tuple[int, Header]]:
        key = header_key(name)
        if key not in self._first:
            return
        for i, h in enumerate(self.headers):
            if h.key == key:
                yield i, h

    def has(self, name: str) -> bool:
        return header_key(name) in self._first

    @property
    def vias(self) -> list[Via]:
        """Every via-parm in order (the top one first); parsed on first use."""
        if self._vias is None:
            vias: list[Via] = []
            for h in self.headers:
                if h.key == "via":
                    vias.extend(parse_via_list_untrusted(h.value))
            self._vias = vias
        return self._vias

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            shared = self._from_shared
            self._from = (shared.copy() if shared is not None
                          else parse_name_addr_untrusted(self._single("from")))
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            shared = self._to_shared
            self._to = (shared.copy() if shared is not None
                        else parse_name_addr_untrusted(self._single("to")))
        return self._to

    @property
    def from_view(self) -> NameAddr:
        """From for reading only: the shared cached parse (or the private copy when one
        was made). Never change it: ``from_`` gives the message's own copy. Saves the
        copy for the callers that only read (the PVs, tags)."""
        return self._from or self._from_shared or self.from_

    @property
    def to_view(self) -> NameAddr:
        """To for reading only (see :attr:`from_view`); ``to`` gives the own copy."""
        return self._to or self._to_shared or self.to

    @property
    def from_tag(self) -> str:
        na = self._from or self._from_shared or self.from_
        return na.tag or ""

    @property
    def to_tag(self) -> str:
        na = self._to or self._to_shared or self.to
        return na.tag or ""

    def _single(self, key: str) -> str:
        h = self._first.get(key)
        return "" if h is None else h.value

    def contacts(self) -> list[NameAddr]:
        out: list[NameAddr] = []
        for h in self.headers:
            if h.key == "contact":
                out.extend(parse_name_addr_list_untrusted(h.value, allow_wildcard=True))
        return out

    def routes(self, key: str = "route") -> list[tuple[int, NameAddr]]:
        """(header index, address) for every Route (or Record-Route) element, in order;
        the addresses are the caller's own (:meth:`routes_view` for reading only)."""
        return [(i, na.copy()) for i, na in self.routes_view(key)]

    def routes_view(self, key: str = "route") -> list[tuple[int, NameAddr]]:
        """As :meth:`routes`, but the addresses are the shared cached parses: read them,
        never change them (loose routing only reads, and skips a copy per entry)."""
        if key not in self._first:
            return []
        out: list[tuple[int, NameAddr]] = []
        for i, h in enumerate(self.headers):
            if h.key == key:
                out.extend((i, na) for na in shared_name_addr_list_untrusted(h.value))
        return out

    # -- edits ----------------------------------------------------------------

    def _edit(self, start: int, end: int, data: bytes) -> None:
        self._edits.append((start, end, data, len(self._edits)))

    def insert_header_first(self, line: str) -> None:
        """Insert a header line (without CRLF) before all others (e.g. our Via)."""
        pos = self.headers[0].start if self.headers else self.headers_end
        self._edit(pos, pos, line.encode("latin-1") + b"\r\n")

    def insert_header_before(self, index: int, line: str) -> None:
        pos = self.headers[index].start
        self._edit(pos, pos, line.encode("latin-1") + b"\r\n")

    def append_header(self, line: str) -> None:
        """Append a header line (without CRLF) at the end of the header section."""
        self._edit(self.headers_end, self.headers_end, line.encode("latin-1") + b"\r\n")

    def add_header(self, name: str, value: str) -> None:
        self.append_header(f"{canonical_name(header_key(name))}: {value}")

    def remove_header_at(self, index: int) -> None:
        h = self.headers[index]
        self._edit(h.start, h.end, b"")

    def remove_headers(self, name: str) -> int:
        """Remove every header of that name; returns how many."""
        n = 0
        for i, _ in list(self.find(name)):
            self.remove_header_at(i)
            n += 1
        return n

    def replace_header_value(self, index: int, value: str) -> None:
        h = self.headers[index]
        # keep the name and the colon as written, replace the rest of the line
        self._edit(h.value_start, h.end, b" " + value.encode("latin-1") + b"\r\n")

    def insert_at(self, offset: int, data: str) -> None:
        """Insert text at an absolute offset in the header section (e.g. a Via parameter)."""
        self._edit(offset, offset, data.encode("latin-1"))

    def replace_span(self, start: int, end: int, data: str) -> None:
        self._edit(start, end, data.encode("latin-1"))

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body and fix Content-Length (and Content-Type if given)."""
        self._edit(self.body_start, self.body_start + len(self.body), body)
        for i, _h in self.find("content-length"):
            self.replace_header_value(i, str(len(body)))
            break
        else:
            self.append_header(f"Content-Length: {len(body)}")
        if content_type is not None:
            for i, _h in self.find("content-type"):
                self.replace_header_value(i, content_type)
                break
            else:
                self.append_header(f"Content-Type: {content_type}")

    @property
    def edited(self) -> bool:
        return bool(self._edits)

    def edit_mark(self) -> int:
        """A mark to roll back to (the stateful core gives each branch its own edits)."""
        return len(self._edits)

    def rollback(self, mark: int) -> None:
        del self._edits[mark:]

    def start_line_edits(self) -> list[tuple[int, int, bytes, int]]:
        """Subclasses add edits that only exist at serialisation time (new R-URI)."""
        return []

    def to_bytes(self, extra: list[tuple[int, int, bytes, int]] | None = None) -> bytes:
        """The message as it should go on the wire, with every edit spliced in.

        ``extra`` edits (start, end, data, order) apply to this serialisation only
        (a branch's Via and Record-Route); ``order`` ranks inserts at the same
        offset (recorded edits count 0, 1, 2, ...; a negative order goes first).
        """
        edits = self._edits + self.start_line_edits()
        if extra:
            edits = edits + extra
        raw = self.raw
        if not edits:
            if len(raw) == self.body_start + len(self.body):
                return raw
            return raw[: self.body_start + len(self.body)]
        if len(edits) > 1:
            # a later replacement of exactly the same span supersedes the earlier one
            replaced = [ed[:2] for ed in edits if ed[0] != ed[1]]
            if len(replaced) > 1 and len(set(replaced)) != len(replaced):
                last: dict[tuple[int, int], int] = {}
                for k, (s, e, _, _) in enumerate(edits):
                    if e != s:
                        last[(s, e)] = k
                edits = [ed for k, ed in enumerate(edits) if ed[0] == ed[1] or last[ed[:2]] == k]
            edits.sort(key=_edit_order)
        out: list[bytes] = []
        pos = 0
        for start, end, data, _ in edits:
            if start < pos:
                continue  # overlaps an edit already applied (e.g. inside a removed header)
            out.append(raw[pos:start])
            out.append(data)
            pos = end
        out.append(raw[pos : self.body_start + len(self.body)])
        return b"".join(out)


def _edit_order(ed: tuple[int, int, bytes, int]) -> tuple[int, bool, int]:
    """Splice order: by offset, inserts before a replacement there, then by ``order``."""
    return (ed[0], ed[1] != ed[0], ed[3])


class SipRequest(SipMessage):
    __slots__ = ("_ruri", "_ruri_shared", "dst_uri", "method", "new_uri", "ruri_end",
                 "ruri_start", "ruri_text", "server_key_memo", "top_via_edit", "version")

    is_request = True

    def __init__(self, raw: bytes, text: str, headers: list[Header], headers_end: int,
                 body_start: int, body: bytes, method: str, ruri_text: str, ruri_start: int,
                 version: str) -> None:
        super().__init__(raw, text, headers, headers_end, body_start, body)
        self.method = method
        self.ruri_text = ruri_text
        self.ruri_start = ruri_start
        self.ruri_end = ruri_start + len(ruri_text)
        self.version = version
        self._ruri: URI | None = None
        #: the Request-URI as the parser checked it: the shared cached parse (read-only)
        self._ruri_shared: URI | None = None
        #: the Request-URI as changed by the script ($ru), or None if unchanged
        self.new_uri: str | None = None
        #: the destination URI ($du): where to send, if not to the R-URI
        self.dst_uri: str | None = None
        #: the received/rport change of the top Via (start, end, text), kept apart from the
        #: other edits so force_rport() can recompute it; replies built from this request
        #: copy the same change
        self.top_via_edit: tuple[int, int, str] | None = None
        #: transaction.matching.server_key of this request, made once: it depends only
        #: on what was received, and dispatch, t_precheck_trans and t_newtran all ask
        self.server_key_memo: object = None

    @property
    def ruri(self) -> URI:
        """The current Request-URI (as changed by the script), parsed."""
        if self.new_uri is not None:
            return parse_uri_untrusted(self.new_uri)
        if self._ruri is None:
            shared = self._ruri_shared
            self._ruri = (shared.copy() if shared is not None
                          else parse_uri_untrusted(self.ruri_text))
        return self._ruri

    @property
    def ruri_view(self) -> URI:
        """The current Request-URI for reading only: a shared cached parse (or the
        message's own copy when one was made). Never change it; ``ruri`` gives a URI of
        one's own. For readers such as loose routing, which would copy it else."""
        if self.new_uri is not None:
            return shared_uri_untrusted(self.new_uri)
        return self._ruri or self._ruri_shared or self.ruri

    @property
    def current_uri(self) -> str:
        return self.new_uri if self.new_uri is not None else self.ruri_text

    def start_line_edits(self) -> list[tuple[int, int, bytes, int]]:
        out: list[tuple[int, int, bytes, int]] = []
        if self.new_uri is not None and self.new_uri != self.ruri_text:
            out.append((self.ruri_start, self.ruri_end, self.new_uri.encode("latin-1"), -1))
        if self.top_via_edit is not None:
            s, e, t = self.top_via_edit
            out.append((s, e, t.encode("latin-1"), -2))
        return out

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.current_uri} call-id={self.call_id!r}>"


class SipResponse(SipMessage):
    __slots__ = ("reason", "status", "version")

    def __init__(self, raw: bytes, text: str, headers: list[Header], headers_end: int,
                 body_start: int, body: bytes, status: int, reason: str, version: str) -> None:
        super().__init__(raw, text, headers, headers_end, body_start, body)
        self.status = status
        self.reason = reason
        self.version = version

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason!r} call-id={self.call_id!r}>"
