"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), and opaque absolute URIs.

A URI keeps the text it was parsed from: ``str(uri)`` returns exactly those
bytes until a component is changed, so a proxy never reformats a URI it only
looked at. Components are kept *escaped*, as written; :func:`unescape` gives
the decoded form for comparisons (RFC 3261 §19.1.4).

Grammar notes that shape the parser (RFC 3261 §25.1):

    SIP-URI        =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    userinfo       =  ( user / telephone-subscriber ) [ ":" password ] "@"
    user-unreserved =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"

``;`` and ``?`` may appear in the user part, so the user part ends at the
``@`` (RFC 4475 §3.1.2.4 "semiuri"), never at the first ``;``.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import BadMessage

_HEX: Final = "0123456789abcdefABCDEF"
# host = hostname / IPv4address / IPv6reference; hostname chars are alphanum "-" ".";
# we also accept "_" which appears in real deployments (SRV-style labels).
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?\Z")
_IPV6_RE: Final = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
# white space, controls, and the delimiters that can never be inside a URI
_ILLEGAL_RE: Final = re.compile(r'[\x00-\x20<>"]')


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.2); a malformed escape is kept literally."""
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


class URI:
    """A parsed URI. ``scheme`` is lower-case; everything else is as written.

    For ``sip``/``sips``: ``user``, ``password``, ``host``, ``port``, ``params``
    (a list of ``(name, value_or_None)`` in order) and ``headers`` (the text
    after ``?``, or None). For ``tel``: ``user`` is the number and ``params``
    its parameters. Any other scheme is *opaque*: only ``scheme`` and
    ``opaque`` (everything after the colon) are set.
    """

    __slots__ = ("_text", "headers", "host", "opaque", "params", "password", "port", "scheme", "user")

    def __init__(
        self,
        scheme: str,
        *,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: list[tuple[str, str | None]] | None = None,
        headers: str | None = None,
        opaque: str | None = None,
        text: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else []
        self.headers = headers
        self.opaque = opaque
        self._text = text

    # -- construction -------------------------------------------------------

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def copy(self) -> URI:
        # slot by slot rather than through __init__: this runs for every cached parse
        u = object.__new__(URI)
        u.scheme = self.scheme
        u.user = self.user
        u.password = self.password
        u.host = self.host
        u.port = self.port
        u.params = list(self.params)
        u.headers = self.headers
        u.opaque = self.opaque
        u._text = self._text
        return u

    def changed(self) -> None:
        """Forget the original text: call after mutating a component."""
        self._text = None

    # -- parameters -----------------------------------------------------------

    def param(self, name: str, default: str | None = None) -> str | None:
        """Value of a parameter (names compare case-insensitively); ``""`` for a flag."""
        lname = name.lower()
        for k, v in self.params:
            if k == lname or k.lower() == lname:  # lower() only for unusual spellings
                return "" if v is None else v
        return default

    def has_param(self, name: str) -> bool:
        lname = name.lower()
        return any(k.lower() == lname for k, _ in self.params)

    def set_param(self, name: str, value: str | None) -> None:
        lname = name.lower()
        for i, (k, _) in enumerate(self.params):
            if k.lower() == lname:
                self.params[i] = (k, value)
                break
        else:
            self.params.append((name, value))
        self._text = None

    def remove_param(self, name: str) -> None:
        lname = name.lower()
        kept = [(k, v) for k, v in self.params if k.lower() != lname]
        if len(kept) != len(self.params):
            self.params = kept
            self._text = None

    # -- derived --------------------------------------------------------------

    @property
    def transport(self) -> str:
        """The ``transport`` parameter lower-cased, or "" when absent."""
        t = self.param("transport")
        return t.lower() if t else ""

    @property
    def host_bare(self) -> str:
        """The host without IPv6 brackets, lower-cased (for comparisons and sockets)."""
        h = self.host
        if h.startswith("["):
            h = h[1:-1]
        return h.lower()

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self._text is not None:
            return self._text
        if self.opaque is not None:
            text = f"{self.scheme}:{self.opaque}"
        else:
            parts = [self.scheme, ":"]
            if self.user is not None:
                parts.append(self.user)
                if self.password is not None:
                    parts.append(":" + self.password)
                if self.scheme != "tel":
                    parts.append("@")
            if self.scheme != "tel":
                parts.append(self.host)
                if self.port is not None:
                    parts.append(f":{self.port}")
            for k, v in self.params:
                parts.append(f";{k}" if v is None else f";{k}={v}")
            if self.headers is not None:
                parts.append("?" + self.headers)
            text = "".join(parts)
        self._text = text
        return text

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4 comparison (simplified: user/password case-sensitive
        after unescaping, host case-insensitive, parameters that appear in both
        must match, user/ttl/method/maddr/transport must match when present in either,
        headers must be the same set in any order; values compared unescaped)."""
        if not isinstance(other, URI):
            return NotImplemented
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if unescape(self.user or "") != unescape(other.user or ""):
            return False
        if (self.password is None) != (other.password is None) or unescape(
            self.password or ""
        ) != unescape(other.password or ""):
            return False
        if self.host_bare != other.host_bare or self.port != other.port:
            return False
        mine = {unescape(k).lower(): unescape(v or "").lower() for k, v in self.params}
        theirs = {unescape(k).lower(): unescape(v or "").lower() for k, v in other.params}
        for key in ("user", "ttl", "method", "maddr", "transport"):
            if mine.get(key) != theirs.get(key):
                return False
        if not all(theirs[k] == v for k, v in mine.items() if k in theirs):
            return False
        # "URI header components are never ignored": same headers, in any order
        return _header_set(self.headers) == _header_set(other.headers)

    def __hash__(self) -> int:
        return hash((self.scheme, self.host_bare, self.port, unescape(self.user or "")))


def _header_set(headers: str | None) -> list[tuple[str, str]]:
    if not headers:
        return []
    out = []
    for item in headers.split("&"):
        name, _, value = item.partition("=")
        out.append((unescape(name).lower(), unescape(value)))
    return sorted(out)


# Parsed URIs by their text. The same few URIs arrive again and again (the From, To,
# Contact and Route URIs of every message of a dialog, and of call after call), so a
# hit costs a dict lookup and a copy instead of a parse. Only successful parses are
# kept, as private prototypes: every caller gets its own copy, because URIs are mutable
# ($ru, $rU, set_param). Bounded: short texts only, and the cache is emptied when full,
# so input that never repeats costs at most _URI_CACHE_MAX small entries.
_URI_CACHE: Final[dict[str, URI]] = {}
_URI_CACHE_MAX: Final = 2048
_URI_CACHE_TEXT_MAX: Final = 256


def parse_uri_untrusted(text: str) -> URI:
    """Parse a URI as found in a Request-Line or inside ``<...>``.

    Raises :class:`BadMessage` (400) on anything RFC 3261 does not allow for
    sip/sips; tel and other schemes are checked only for a valid scheme.
    """
    return shared_uri_untrusted(text).copy()


def shared_uri_untrusted(text: str) -> URI:
    """As :func:`parse_uri_untrusted`, but the result is the cached parse itself, shared
    with every later parse of the same text: read it, never change it (``copy()`` gives
    a private one)."""
    proto = _URI_CACHE.get(text)
    if proto is None:
        proto = _parse_uri_uncached(text)
        if len(text) <= _URI_CACHE_TEXT_MAX:
            if len(_URI_CACHE) >= _URI_CACHE_MAX:
                _URI_CACHE.clear()
            _URI_CACHE[text] = proto
    return proto


def _parse_uri_uncached(text: str) -> URI:
    colon = text.find(":")
    if colon <= 0:
        raise BadMessage(f"URI without a scheme: {text[:60]!r}")
    scheme_text = text[:colon]
    if not _SCHEME_RE.match(scheme_text):
        raise BadMessage(f"bad URI scheme: {scheme_text[:40]!r}")
    scheme = scheme_text.lower()
    rest = text[colon + 1 :]
    if _ILLEGAL_RE.search(rest) is not None:
        raise BadMessage(f"illegal character in URI: {text[:60]!r}")
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise BadMessage("empty tel URI")
        return URI("tel", user=number, params=_split_params(ptext) if ptext else [], text=text)
    if not rest:
        raise BadMessage(f"empty {scheme} URI")
    return URI(scheme, opaque=rest, text=text)


def _parse_sip(scheme: str, rest: str, text: str) -> URI:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        # password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," ); the user part
        # cannot hold ":" (it is not in user-unreserved), so the first ":" starts the password.
        ucolon = userinfo.find(":")
        if ucolon >= 0:
            user, password = userinfo[:ucolon], userinfo[ucolon + 1 :]
        else:
            user = userinfo
        if not user:
            raise BadMessage(f"empty user part in URI: {text[:60]!r}")
    headers: str | None = None
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    semi = rest.find(";")
    if semi >= 0:
        hostport, ptext = rest[:semi], rest[semi + 1 :]
        params = _split_params(ptext)
    else:
        hostport, params = rest, []
    host, port = _split_hostport(hostport, text)
    return URI(scheme, user=user, password=password, host=host, port=port, params=params,
               headers=headers, text=text)


def _split_params(ptext: str) -> list[tuple[str, str | None]]:
    params: list[tuple[str, str | None]] = []
    for item in ptext.split(";"):
        if not item:
            raise BadMessage("empty URI parameter")
        name, eq, value = item.partition("=")
        if not name:
            raise BadMessage("URI parameter without a name")
        params.append((name, value if eq else None))
    return params


def _split_hostport(hostport: str, text: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise BadMessage(f"unterminated IPv6 reference in URI: {text[:60]!r}")
        host, after = hostport[: end + 1], hostport[end + 1 :]
        if not _IPV6_RE.match(host):
            raise BadMessage(f"bad IPv6 reference in URI: {text[:60]!r}")
        if after and not after.startswith(":"):
            raise BadMessage(f"junk after IPv6 reference in URI: {text[:60]!r}")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_s = hostport.partition(":")
        port_text = port_text_s if colon else None
        if not _HOSTNAME_RE.match(host):
            raise BadMessage(f"bad host in URI: {text[:60]!r}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
            raise BadMessage(f"bad port in URI: {text[:60]!r}")
        port = int(port_text)
        if port > 65535:
            raise BadMessage(f"port out of range in URI: {text[:60]!r}")
    return host, port


def parse_hostport_untrusted(text: str) -> tuple[str, int | None]:
    """Parse ``host[:port]`` as in a Via sent-by (IPv6 in brackets)."""
    return _split_hostport(text, text)
