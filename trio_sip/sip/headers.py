"""Header values: names, comma lists, parameters, name-addr, Via, CSeq.

Values arrive here *unfolded* by the parser in a length-preserving way (each
CRLF of a folded line is replaced by two spaces), so an offset into a value is
also an offset into the raw message: edits can be spliced into the original
bytes (see ``message.py``). The functions here therefore never strip a value
before recording positions; they skip linear white space (LWS) as they go.

Everything that parses network data ends in ``_untrusted`` and raises only
:class:`~trio_sip.sip.errors.BadMessage`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .errors import BadMessage
from .uri import URI, parse_hostport_untrusted, parse_uri_untrusted

# RFC 3261 §7.3.3 and later RFCs: compact header forms.
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "x": "session-expires", "y": "identity", "n": "identity-info",
}

# Canonical spelling used when we generate a header from a lower-case key.
CANONICAL: Final[dict[str, str]] = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1) that we split.
LIST_HEADERS: Final = frozenset({
    "via", "contact", "route", "record-route", "path", "service-route", "allow", "supported",
    "require", "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "in-reply-to", "p-asserted-identity",
})

# Headers that must appear at most once in a request (a second one is a 400).
SINGLE_HEADERS: Final = frozenset({
    "call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type",
})

TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_WS: Final = " \t"
_QUOTED_PAIR_RE: Final = re.compile(r"\\(.)", re.DOTALL)


_KEYS: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower-case, compact forms expanded (cached:
    the same few spellings arrive in every message)."""
    key = _KEYS.get(name)
    if key is None:
        low = name.lower()
        key = COMPACT_FORMS.get(low, low)
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


def canonical_name(key: str) -> str:
    """``call-id`` -> ``Call-ID``, ``record-route`` -> ``Record-Route``."""
    known = CANONICAL.get(key)
    if known is not None:
        return known
    return "-".join(part[:1].upper() + part[1:] for part in key.split("-"))


_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A token display name: tokens separated by LWS, up to the "<" (RFC 3261 §25.1 display-name).
_TOKEN_WORDS_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*[ \t]*")


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def split_commas(value: str) -> list[tuple[int, int]]:
    """Split a header value at top-level commas; returns ``(start, end)`` spans.

    Commas inside quoted strings and ``<...>`` do not split. Spans include
    surrounding white space (callers skip it), and empty elements are kept so
    the caller can reject them where the grammar forbids them.
    """
    n = len(value)
    if "," not in value:
        return [(0, n)]
    if '"' not in value and "<" not in value:
        spans: list[tuple[int, int]] = []
        start = 0
        comma = value.find(",")
        while comma >= 0:
            spans.append((start, comma))
            start = comma + 1
            comma = value.find(",", start)
        spans.append((start, n))
        return spans
    spans = []
    start = 0
    i = 0
    in_quote = False
    in_angle = False
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            spans.append((start, i))
            start = i + 1
        i += 1
    spans.append((start, n))
    return spans


def _skip_ws(text: str, i: int, end: int) -> int:
    while i < end and text[i] in _WS:
        i += 1
    return i


def parse_params_untrusted(
    text: str, i: int, end: int, spans: list[tuple[int, int]] | None = None
) -> tuple[list[tuple[str, str | None]], int]:
    """Parse ``*( SEMI generic-param )`` starting at ``text[i]`` (a ``;`` or LWS).

    ``generic-param = token [ EQUAL gen-value ]``, ``gen-value = token / host /
    quoted-string``; LWS is allowed around ``;`` and ``=`` (RFC 3261 §25.1,
    SEMI/EQUAL). Returns the list and the offset where parsing stopped. If
    ``spans`` is given, the ``(start, end)`` of each ``;param[=value]`` is appended
    (so a Via's ``rport`` flag can be replaced by ``rport=PORT`` in place).
    """
    params: list[tuple[str, str | None]] = []
    match = _PARAM_RE.match
    while True:
        if i >= end:  # what the failed match below would return, without trying it
            return params, i
        m = match(text, i, end)
        if m is None:
            # not a well-formed ";param": find out why, for the error message
            k = _skip_ws(text, i, end)
            if k < end and text[k] == ";":
                k = _skip_ws(text, k + 1, end)
                if k >= end or text[k] not in TOKEN_CHARS:
                    raise BadMessage("empty header parameter")
                j = k
                while j < end and text[j] in TOKEN_CHARS:
                    j += 1
                j = _skip_ws(text, j, end)
                if j < end and text[j] == "=":
                    j = _skip_ws(text, j + 1, end)
                    if j < end and text[j] == '"':
                        _end_of_quoted(text, j, end)  # raises for an unterminated quote
                    raise BadMessage(f"empty value for header parameter {text[k:j].strip()!r}")
            return params, k
        name, value = m.group(1, 2)
        params.append((name, value))
        i = m.end()
        if spans is not None:
            spans.append((text.index(";", m.start()), i))


# One ";name[=value]" with LWS allowed around ";" and "=" (SEMI, EQUAL); the value is a
# token, a host (IPv6 references with "[]:" included) or a quoted string.
_PARAM_RE: Final = re.compile(
    r"[ \t]*;[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"(?:[ \t]*=[ \t]*(\"(?:[^\"\\]|\\.)*\"|[A-Za-z0-9\-.!%*_+`'~\[\]:]+)|(?![ \t]*=))"
)


def _end_of_quoted(text: str, i: int, end: int) -> int:
    """Offset just past the closing quote of the quoted-string starting at ``text[i]``."""
    j = i + 1
    while j < end:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    raise BadMessage("unterminated quoted string")


def param_get(params: list[tuple[str, str | None]], name: str) -> str | None:
    """Value of a header parameter by case-insensitive name; ``""`` for a flag, None if absent."""
    lname = name.lower()
    for k, v in params:
        # names are nearly always written in lower case: skip lower() for those
        if k == lname or k.lower() == lname:
            return "" if v is None else v
    return None


# ---------------------------------------------------------------------------
# name-addr / addr-spec: From, To, Contact, Route, Record-Route, ...
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)``.

    ``display`` is as written (quotes kept); ``params`` are *header* parameters
    (for an addr-spec without ``<>``, everything after the URI's first ``;`` is a
    header parameter, RFC 3261 §20.10: this is what "cparam01" tests).
    ``wildcard`` is set for ``Contact: *``.
    """

    uri: URI | None
    display: str | None = None
    params: list[tuple[str, str | None]] = field(default_factory=list)
    angle: bool = True
    wildcard: bool = False

    def param(self, name: str) -> str | None:
        return param_get(self.params, name)

    def copy(self) -> NameAddr:
        """A private copy (its own URI and parameter list)."""
        uri = self.uri
        return NameAddr(None if uri is None else uri.copy(), self.display, list(self.params),
                        self.angle, self.wildcard)

    @property
    def tag(self) -> str | None:
        return param_get(self.params, "tag")

    @property
    def display_unquoted(self) -> str:
        d = self.display or ""
        if len(d) >= 2 and d[0] == '"' and d[-1] == '"':
            # quoted-pair = "\" any char (RFC 3261 §25.1): drop each escaping backslash
            d = _QUOTED_PAIR_RE.sub(r"\1", d[1:-1])
        return d

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        parts = []
        if self.display:
            parts.append(self.display + " ")
        if self.angle:
            parts.append(f"<{self.uri}>")
        else:
            parts.append(str(self.uri))
        for k, v in self.params:
            parts.append(f";{k}" if v is None else f";{k}={v}")
        return "".join(parts)


# Parsed name-addrs by their text, as for URIs (uri.py): From and To are the same in
# every message of a dialog and Route/Contact repeat too, so a hit is a dict lookup and
# a copy (NameAddr and its URI are mutable: every caller gets its own). Only successes
# are kept; short texts only; emptied when full.
_NA_CACHE: Final[dict[str, NameAddr]] = {}
_NA_CACHE_MAX: Final = 2048
_NA_CACHE_TEXT_MAX: Final = 512


def parse_name_addr_untrusted(text: str, start: int = 0, end: int | None = None) -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters."""
    return shared_name_addr_untrusted(text, start, end).copy()


def shared_name_addr_untrusted(text: str, start: int = 0, end: int | None = None) -> NameAddr:
    """As :func:`parse_name_addr_untrusted`, but the result is the cached parse itself,
    shared with every later parse of the same text: read it, never change it (``copy()``
    gives a private one). The parser keeps From/To this way until someone asks."""
    key = text if start == 0 and end is None else text[start:end]
    proto = _NA_CACHE.get(key)
    if proto is None:
        proto = _parse_name_addr_uncached(text, start, end)
        if len(key) <= _NA_CACHE_TEXT_MAX:
            if len(_NA_CACHE) >= _NA_CACHE_MAX:
                _NA_CACHE.clear()
            _NA_CACHE[key] = proto
    return proto


def _parse_name_addr_uncached(text: str, start: int, end: int | None) -> NameAddr:
    if end is None:
        end = len(text)
    i = _skip_ws(text, start, end)
    if i >= end:
        raise BadMessage("empty address")
    display: str | None = None
    if text[i] == '"':
        j = _end_of_quoted(text, i, end)
        display = text[i:j]
        i = _skip_ws(text, j, end)
        if i >= end or text[i] != "<":
            raise BadMessage("quoted display name not followed by <URI>")
    elif text[i] != "<":
        # Either an addr-spec or a display name made of tokens followed by <URI>. A token
        # has no ":", so a ":" before the "<" means an addr-spec whose parameters hold a
        # "<" (``sip:a@b;+sip.instance="<urn:...>"``).
        lt = text.find("<", i, end)
        if lt >= 0 and text.find(":", i, lt) >= 0:
            lt = -1
        if lt >= 0:
            if _TOKEN_WORDS_RE.fullmatch(text, i, lt) is None:
                raise BadMessage(f"bad display name: {text[i:lt][:60]!r}")
            display = text[i:lt].rstrip(_WS)
            i = lt
    if i < end and text[i] == "<":
        gt = text.find(">", i, end)
        if gt < 0:
            raise BadMessage("unterminated <URI>")
        inner = text[i + 1 : gt]
        uri = parse_uri_untrusted(inner)
        params, j = parse_params_untrusted(text, gt + 1, end)
        if _skip_ws(text, j, end) != end:
            raise BadMessage(f"junk after address: {text[j:end][:60]!r}")
        return NameAddr(uri, display, params, angle=True)
    # addr-spec: the URI ends at the first ';' (or white space); the rest are header params.
    # RFC 3261 §20: an addr-spec with ',', '?' or ';' in the URI must be in <>.
    j = i
    while j < end and text[j] not in ";" + _WS:
        j += 1
    uri_text = text[i:j]
    if "?" in uri_text or "," in uri_text:
        raise BadMessage(f"URI with '?' or ',' must be enclosed in <>: {uri_text[:60]!r}")
    uri = parse_uri_untrusted(uri_text)
    params, k = parse_params_untrusted(text, j, end)
    if _skip_ws(text, k, end) != end:
        raise BadMessage(f"junk after address: {text[k:end][:60]!r}")
    return NameAddr(uri, None, params, angle=False)


def parse_name_addr_list_untrusted(value: str, *, allow_wildcard: bool = False) -> list[NameAddr]:
    """Parse a comma-separated list of name-addrs (Contact, Route, Record-Route)."""
    out: list[NameAddr] = []
    for s, e in split_commas(value):
        i = _skip_ws(value, s, e)
        if i == e:
            raise BadMessage("empty element in address list")
        if allow_wildcard and value[i:e].strip() == "*":
            out.append(NameAddr(None, wildcard=True))
            continue
        out.append(parse_name_addr_untrusted(value, s, e))
    return out


def shared_name_addr_list_untrusted(value: str) -> list[NameAddr]:
    """As :func:`parse_name_addr_list_untrusted` (without the wildcard), but the entries
    are the shared cached parses (:func:`shared_name_addr_untrusted`): read them, never
    change them. For readers such as loose routing, which would copy every entry else."""
    out: list[NameAddr] = []
    for s, e in split_commas(value):
        if _skip_ws(value, s, e) == e:
            raise BadMessage("empty element in address list")
        out.append(shared_name_addr_untrusted(value, s, e))
    return out


# ---------------------------------------------------------------------------
# Via
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Via:
    """One via-parm. ``start``/``end`` locate it inside its header value
    (``params_end`` is where a new parameter would be inserted)."""

    protocol: str  # "SIP/2.0"
    transport: str  # upper-case: UDP, TCP, TLS, SCTP, WS, WSS, ...
    host: str  # as written (IPv6 with brackets)
    port: int | None
    params: list[tuple[str, str | None]]
    start: int = 0
    end: int = 0
    params_end: int = 0
    #: (start, end) of each ";name[=value]" in the header value, parallel to params
    param_spans: list[tuple[int, int]] = field(default_factory=list)

    def param(self, name: str) -> str | None:
        return param_get(self.params, name)

    @property
    def branch(self) -> str | None:
        return param_get(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param_get(self.params, "received")

    @property
    def rport(self) -> str | None:
        """"" when the rport flag is present without a value, None when absent."""
        return param_get(self.params, "rport")

    @property
    def maddr(self) -> str | None:
        return param_get(self.params, "maddr")

    @property
    def ttl(self) -> str | None:
        return param_get(self.params, "ttl")

    @property
    def host_bare(self) -> str:
        h = self.host
        return h[1:-1] if h.startswith("[") else h

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via_list_untrusted(value: str) -> list[Via]:
    """Parse a Via header value (one or more comma-separated via-parms).

    ``via-parm = sent-protocol LWS sent-by *( SEMI via-params )`` with
    ``sent-protocol = protocol-name SLASH protocol-version SLASH transport``;
    SLASH allows LWS on both sides (RFC 4475 §3.1.1.1 "wsinv" does that).
    """
    vias: list[Via] = []
    for s, e in split_commas(value):
        vias.append(_parse_via_untrusted(value, s, e))
    return vias


# sent-protocol LWS sent-by: "SIP / 2.0 / UDP host:port" (SLASH allows LWS around "/").
_VIA_HEAD_RE: Final = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9\-.!%*_+`'~]++)[ \t]*(\[[^\]]*\][^; \t]*|[^; \t\[]+)"
)


# sent-protocol LWS sent-by as written up to the first ";" -> (transport, host, port), for
# heads already parsed whole up to that ";": one peer sends the same head every time.
# Bounded like the other caches (emptied when full).
_VIA_HEADS: Final[dict[str, tuple[str, str, int | None]]] = {}
_VIA_HEADS_MAX: Final = 1024


def _parse_via_untrusted(text: str, s: int, e: int) -> Via:
    j = text.find(";", s, e)
    head = _VIA_HEADS.get(text[s:j]) if j > s else None
    if head is not None:
        # _VIA_HEAD_RE stops at a ";" and looks no further, so the result is the same
        transport, host, port = head
    else:
        transport, host, port, j = _parse_via_head_untrusted(text, s, e)
    spans: list[tuple[int, int]] = []
    params, k = parse_params_untrusted(text, j, e, spans)
    end = _skip_ws(text, k, e)
    if end != e:
        raise BadMessage(f"junk in Via: {text[k:e][:60]!r}")
    # params_end: the offset just after the last non-blank character of this via-parm
    pe = e
    while pe > s and text[pe - 1] in _WS:
        pe -= 1
    return Via("SIP/2.0", transport, host, port, params, s, e, pe, spans)


def _parse_via_head_untrusted(text: str, s: int, e: int) -> tuple[str, str, int | None, int]:
    """sent-protocol and sent-by: (transport upper-cased, host, port, end offset)."""
    m = _VIA_HEAD_RE.match(text, s, e)
    if m is None:
        if _skip_ws(text, s, e) == e:
            raise BadMessage("empty Via value")
        raise BadMessage(f"bad Via: {text[s:e].strip()[:60]!r}")
    name, version, transport = m.group(1, 2, 3)
    if name.upper() != "SIP":
        raise BadMessage(f"bad Via protocol name {name!r}")
    if version != "2.0":
        raise BadMessage(f"Via names SIP version {version!r}", status=505)
    i, j = m.span(4)
    host, port = parse_hostport_untrusted(text[i:j])
    transport = transport.upper()
    if j < e and text[j] == ";" and j - s <= 256:
        if len(_VIA_HEADS) >= _VIA_HEADS_MAX:
            _VIA_HEADS.clear()
        _VIA_HEADS[text[s:j]] = (transport, host, port)
    return transport, host, port, j


# ---------------------------------------------------------------------------
# CSeq, Max-Forwards, Content-Length, Expires
# ---------------------------------------------------------------------------

# CSeq values seen (" 1 INVITE" recurs in every call) -> the parse; bounded, emptied when full.
_CSEQS: Final[dict[str, tuple[int, str]]] = {}


def parse_cseq_untrusted(value: str) -> tuple[int, str]:
    known = _CSEQS.get(value)
    if known is not None:
        return known
    parsed = _parse_cseq_uncached(value)
    if len(value) <= 64:
        if len(_CSEQS) >= 1024:
            _CSEQS.clear()
        _CSEQS[value] = parsed
    return parsed


def _parse_cseq_uncached(value: str) -> tuple[int, str]:
    # only SP/HT separate (str.split() would also split at \x1c-\x1f, \x85, \xa0)
    parts = [p for p in value.replace("\t", " ").split(" ") if p]
    if len(parts) != 2:
        raise BadMessage(f"bad CSeq: {value.strip()[:60]!r}")
    num_text, method = parts
    if not num_text.isdigit() or not num_text.isascii() or len(num_text) > 10:
        raise BadMessage(f"bad CSeq number: {num_text[:20]!r}")
    num = int(num_text)
    if num > 2**32 - 1:  # RFC 3261 §8.1.1.5: expressible as a 32-bit unsigned integer
        raise BadMessage("CSeq number larger than 2**32-1")
    if not is_token(method):
        raise BadMessage(f"bad CSeq method: {method[:40]!r}")
    return num, method


def parse_uint_untrusted(value: str, what: str, maximum: int) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 12:
        raise BadMessage(f"bad {what}: {text[:20]!r}")
    n = int(text)
    if n > maximum:
        raise BadMessage(f"{what} {n} out of range (max {maximum})")
    return n


# -- header lines given by route authors and management callers ---------------------------

# RFC 9110 §5.6.2 tchar: RFC 3261's token characters plus # $ & ^ |
_HTTP_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# what a line may not hold: C0 controls but HTAB, DEL, and anything beyond one byte
_BAD_VALUE_CHAR_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")


def _line_error(n: int, line: str, why: str) -> BadMessage:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return BadMessage(f"header line {n} {shown!r}: {why}", 400)


def parse_header_lines_untrusted(lines: str | Iterable[str], *,
                                 http: bool = False) -> list[tuple[str, str]]:
    """Extra header lines given by a route author or a management caller, checked:
    ``[(name, value), ...]`` in order, the name as written, the value without the white
    space around it. Raises :class:`BadMessage` (status 400) whose reason names the
    line (its number, counting from 1, and its text) and what is wrong with it.

    ``lines`` is a text (lines separated by CRLF or LF) or an iterable of lines (each
    item is one line: a CR or LF inside it is refused, never split at).

    The rules, SIP (RFC 3261 §7.3, §25.1) unless ``http``:

    * an empty or blank line is skipped: it never ends the header section, so it cannot
      start a body (a trailing CRLF, as Kamailio scripts write, is fine);
    * a line starting with SP or HTAB continues the header before it (folding, RFC
      3261 §7.3.1): it is joined to that value with one space; as the first line it is
      refused. With ``http`` a continuation is refused (RFC 9112 §5.2 obs-fold: a
      sender must not fold);
    * ``Name: value``: a line without a colon is refused; the name must not be empty
      and must be a token (RFC 3261 ``token``; with ``http``, RFC 9110 ``tchar``, which
      also allows ``# $ & ^ |``). SP/HTAB between the name and the colon is allowed in
      SIP (``HCOLON``) and refused with ``http`` (RFC 9112 §5.1). Compact forms
      (``c:``, ``m:``...) are names like the others: callers compare names with
      :func:`header_key`;
    * a line (name and value; the value may be empty) may hold no CR, LF or NUL (header
      injection), no other control character but HTAB (nor DEL), and only characters
      U+0000..U+00FF: header lines are sent as ISO-8859-1 bytes (a Lua string's bytes
      arrive as such characters, so UTF-8 from a route goes through unchanged). The
      same for SIP and HTTP (RFC 9110 §5.5 allows a recipient to keep other controls;
      a sender has no reason to write them).

    What is not checked here: which headers a caller may not be given (its own Via,
    CSeq...), and the grammar of a particular header's value.
    """
    if isinstance(lines, str):
        items = lines.split("\n")
        items = [x[:-1] if x.endswith("\r") else x for x in items]
    else:
        items = list(lines)
    out: list[tuple[str, str]] = []
    for n, line in enumerate(items, 1):
        if not isinstance(line, str):
            raise BadMessage(f"header line {n}: not a string ({type(line).__name__})", 400)
        bad = _BAD_VALUE_CHAR_RE.search(line)
        if bad is not None:
            c = bad.group()
            if c in "\r\n\0":
                why = f"{c!r} in the line (CR, LF and NUL are refused: header injection)"
            elif ord(c) > 0xFF:
                why = f"{c!r} is not ISO-8859-1 (header lines are sent as bytes)"
            else:
                why = f"control character {c!r} in the line"
            raise _line_error(n, line, why)
        if not line.strip(" \t"):
            continue
        if line[0] in _WS:
            if http:
                raise _line_error(n, line, "a continuation (folded) line: HTTP header "
                                  "lines must not be folded (RFC 9112 §5.2)")
            if not out:
                raise _line_error(n, line, "a continuation line (starting with white "
                                  "space) with no header line before it")
            name, value = out[-1]
            rest = line.strip(" \t")
            out[-1] = (name, f"{value} {rest}" if value else rest)
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _line_error(n, line, "no colon: it is not a 'Name: value' header line")
        if name != name.rstrip(" \t"):
            if http:
                raise _line_error(n, line, "white space between the name and the colon "
                                  "(RFC 9112 §5.1)")
            name = name.rstrip(" \t")
        if not name:
            raise _line_error(n, line, "empty header name")
        if not (_HTTP_TOKEN_RE if http else _TOKEN_RE).fullmatch(name):
            raise _line_error(n, line, f"header name {name!r} is not a token "
                              f"({'RFC 9110 §5.6.2' if http else 'RFC 3261 §25.1'})")
        out.append((name, value.strip(" \t")))
    return out
