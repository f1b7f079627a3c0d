"""The rtpengine "ng" control protocol, sans-IO: cookies, encoding, decoding, matching.

Theory of operation
-------------------
One ng message is one datagram::

    <cookie> SP <bencoded dictionary>          e.g.  b"a1b2c3_4711_1 d7:command4:pinge"

and the reply carries the same cookie: ``b"a1b2c3_4711_1 d6:result4:ponge"``.
rtpengine caches replies by cookie only (``daemon/cookie_cache.c``, two generations
swapped every 30 s; rtpengine.md §6): a request re-sent with the *same* cookie gets
the cached reply and is not executed twice, so a retransmission must reuse its
cookie, and cookies must never repeat across processes and restarts of the server
(a counter restarting at 1 against a long-running rtpengine would get another
request's cached reply). Hence ``<6 random hex chars per process>_<pid>_<counter>``.

Nothing here does I/O or reads a clock. :class:`ReplyMatcher` is the table of
requests waiting for a reply that the Trio client (client.py) consults for every
received datagram.

Untrusted input has one exit (CONVENTIONS §4): every ``*_untrusted`` function
raises :class:`BadNgReply` and nothing else. Byte strings of a decoded dictionary
become ``str`` decoded as UTF-8 with ``surrogateescape``, so any octet survives:
:func:`wire_bytes` gives back the exact bytes (an SDP that is not UTF-8 included).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bencodepy

__all__ = [
    "MAX_COMMAND_SIZE",
    "MAX_COOKIE_LENGTH",
    "RECEIVE_BUFFER",
    "BadNgReply",
    "CommandTooLarge",
    "CookieFactory",
    "NgError",
    "ReplyMatcher",
    "decode_command_untrusted",
    "decode_reply_untrusted",
    "encode_command",
    "encode_reply",
    "new_cookie",
    "split_datagram_untrusted",
    "wire_bytes",
]

#: The largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP): a bigger command cannot
#: be sent as one datagram, so it is refused before sending.
MAX_COMMAND_SIZE = 65507
#: Receive buffer for replies. No UDP datagram can be larger (IPv6 non-jumbo: 65527),
#: so a reply that arrives is never truncated; a reply rtpengine cannot send over UDP
#: (> 65507 bytes) never arrives at all and the request times out (see client.py).
RECEIVE_BUFFER = 65535
#: rtpengine echoes any cookie; ours are ~25 bytes. Longer ones in replies are refused.
MAX_COOKIE_LENGTH = 128
#: Nesting bound for decoded dictionaries (rtpengine's query replies nest 6 deep).
MAX_DEPTH = 32


class NgError(Exception):
    """Something went wrong talking to rtpengine (base of the client's errors)."""


class BadNgReply(NgError):
    """A datagram that is not a well-formed ng message: the only exception that
    ``*_untrusted`` functions raise."""


class CommandTooLarge(NgError):
    """The encoded command does not fit in one datagram."""


class CookieFactory:
    """Cookies ``<prefix>_<counter>``; the default prefix is ``<6 random hex>_<pid>``,
    chosen once, so cookies differ between processes and between restarts."""

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is None:
            prefix = f"{secrets.token_hex(3)}_{os.getpid()}"
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"a cookie prefix has no white space and is not empty: {prefix!r}")
        self.prefix = prefix
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return f"{self.prefix}_{next(self._counter)}".encode("ascii")


_process_cookies = CookieFactory()


def new_cookie() -> bytes:
    """A cookie no other request of any process or restart of this server has used."""
    return _process_cookies.next()


def encode_command(cookie: bytes, command: Mapping[str, Any], *,
                   max_size: int = MAX_COMMAND_SIZE) -> bytes:
    """``cookie SP bencode(command)``. Values are str (sent as UTF-8), bytes (sent as
    they are), int, or lists/dicts of those; keys are sorted (bencode's canonical
    order; rtpengine accepts any order). Raises CommandTooLarge past ``max_size``."""
    if not cookie or b" " in cookie:
        raise ValueError(f"a cookie is not empty and has no space: {cookie!r}")
    name = command.get("command")
    if not isinstance(name, (str, bytes)) or not name:
        raise ValueError("an ng command needs a 'command' string")
    data: bytes = cookie + b" " + bencodepy.encode(dict(command))
    if len(data) > max_size:
        raise CommandTooLarge(
            f"{name!r} command is {len(data)} bytes, more than one datagram ({max_size})")
    return data


def encode_reply(cookie: bytes, reply: Mapping[str, Any]) -> bytes:
    """A reply datagram (for test peers that play rtpengine)."""
    data: bytes = cookie + b" " + bencodepy.encode(dict(reply))
    return data


def split_datagram_untrusted(data: bytes) -> tuple[bytes, bytes]:
    """``(cookie, payload)``: the cookie is everything before the first space.
    rtpengine ignores datagrams without a space or with an empty cookie; so do we."""
    sp = data.find(b" ")
    if sp < 0:
        raise BadNgReply("no space after the cookie")
    if sp == 0:
        raise BadNgReply("empty cookie")
    if sp > MAX_COOKIE_LENGTH:
        raise BadNgReply(f"cookie longer than {MAX_COOKIE_LENGTH} bytes")
    return data[:sp], data[sp + 1:]


class _Decoder(bencodepy.BencodeDecoder):  # type: ignore[misc]
    """bencodepy's decoder with strings decoded as UTF-8 + surrogateescape in one pass
    (keys and values: str, any octet kept) and string lengths checked."""

    def decode_string(self, x: bytes, f: int, kind: str = "value",
                      **kwargs: Any) -> tuple[str, int]:
        colon = x.index(b":", f)
        digits = x[f:colon]
        if not digits.isdigit() or (digits[:1] == b"0" and len(digits) > 1):
            raise ValueError("bad string length")
        start = colon + 1
        end = start + int(digits)
        if end > len(x):
            raise ValueError("string runs past the end")
        return x[start:end].decode("utf-8", "surrogateescape"), end


_decoder = _Decoder(max_depth=MAX_DEPTH)


def _decode_dict_untrusted(payload: bytes) -> dict[str, Any]:
    if not payload:
        raise BadNgReply("no payload after the cookie")
    if payload[:1] != b"d":
        raise BadNgReply("the payload is not a bencoded dictionary")
    try:
        value = _decoder.decode(payload)
    except bencodepy.BencodeDecodeError as exc:
        raise BadNgReply(f"bad bencode: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        # bencodepy wraps these itself; this is the belt to its braces
        raise BadNgReply(f"bad bencode: {type(exc).__name__}") from None
    if not isinstance(value, dict):  # pragma: no cover - the lead byte was 'd'
        raise BadNgReply("the payload is not a bencoded dictionary")
    return value


def decode_reply_untrusted(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """``(cookie, reply)`` from a reply datagram; the reply has a string ``result``."""
    cookie, payload = split_datagram_untrusted(data)
    reply = _decode_dict_untrusted(payload)
    if not isinstance(reply.get("result"), str):
        raise BadNgReply("the reply has no 'result' string")
    return cookie, reply


def decode_command_untrusted(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """``(cookie, command)`` from a command datagram (what a peer playing rtpengine
    receives); the command has a string ``command``."""
    cookie, payload = split_datagram_untrusted(data)
    command = _decode_dict_untrusted(payload)
    if not isinstance(command.get("command"), str):
        raise BadNgReply('the dictionary contains no "command" string')
    return cookie, command


def wire_bytes(value: str | bytes) -> bytes:
    """The exact bytes of a string decoded by this module (e.g. the ``sdp`` of a reply)."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Expected(Generic[T]):
    source: Any
    token: T


class ReplyMatcher(Generic[T]):
    """The requests waiting for a reply, by cookie.

    ``expect(cookie, source, token)`` registers one; ``match_untrusted(data, source)``
    returns ``(token, data)`` for a datagram whose cookie is expected from that source,
    or None (counted in :attr:`stats`: ``no_cookie``, ``unknown_cookie`` for late or
    stray replies, ``wrong_source``). The payload is not decoded here: the waiter
    decodes it, so a receive loop stays cheap and one bad reply fails one request.
    """

    def __init__(self) -> None:
        self._pending: dict[bytes, _Expected[T]] = {}
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, cookie: bytes) -> bool:
        return cookie in self._pending

    def expect(self, cookie: bytes, source: Any, token: T) -> None:
        if cookie in self._pending:
            raise ValueError(f"cookie {cookie!r} is already waiting")
        self._pending[cookie] = _Expected(source, token)

    def forget(self, cookie: bytes) -> None:
        self._pending.pop(cookie, None)

    def tokens(self) -> list[T]:
        return [e.token for e in self._pending.values()]

    def match_untrusted(self, data: bytes, source: Any) -> tuple[T, bytes] | None:
        sp = data.find(b" ")
        if sp <= 0 or sp > MAX_COOKIE_LENGTH:
            self.stats["no_cookie"] += 1
            return None
        expected = self._pending.get(data[:sp])
        if expected is None:
            self.stats["unknown_cookie"] += 1
            return None
        if expected.source != source:
            self.stats["wrong_source"] += 1
            return None
        return expected.token, data
