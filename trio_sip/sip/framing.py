"""Content-Length framing of SIP over stream transports (RFC 3261 §18.3).

Theory of operation
-------------------
On TCP (and TLS) a SIP message has no natural end: the receiver finds the
blank line that closes the header section, reads ``Content-Length`` from the
headers, and takes exactly that many body bytes. Everything after belongs to
the next message. §18.3 makes Content-Length mandatory on streams, so a
message without it cannot be framed at all: that is a 400, and because we no
longer know where the next message starts, the connection is finished too.

The framer is sans-IO (no trio, no sockets): the transport ``feed()``s what it
read and calls :meth:`StreamFramer.next_message_untrusted` until it returns
``None``. It moves through three states per message::

      feed()                   blank line found,            body complete
    ----------> SKIPPING ---> HEADERS -----------------> BODY -------------+
                  ^  |  CRLF CRLF (RFC 5626 ping)                         |
                  |  +--> counted, skipped                                |
                  +-----------------------------------------------------+
                                message returned

*  SKIPPING: RFC 3261 §7.5 says CRLFs before a start-line are ignored, and
   RFC 5626 §3.5.1 uses a double CRLF as a keep-alive "ping" that a server
   answers with one CRLF ("pong"). A double CRLF here counts as one ping;
   a lone CRLF (a pong, or padding) is skipped silently.
*  HEADERS: search for ``CRLF CRLF``. The search resumes where the last one
   stopped (minus three bytes, in case the terminator straddles two reads),
   so feeding a big header byte by byte costs O(n), not O(n²).
*  BODY: wait until the buffer holds ``Content-Length`` bytes past the blank
   line.

Bounds: a message (header section + body) larger than ``max_message_size``
raises :class:`MessageTooLarge` (413) as soon as that is known, without
buffering the rest, so memory per connection is bounded by
``max_message_size`` plus one read. Any :class:`BadMessage` leaves the framer
failed: the byte stream is out of sync, and every later call raises the same
error, so the only sane move for the transport is to close the connection.

Bare LF line ends are not accepted as the end of the header section (RFC 3261
requires CRLF); such a stream will run into the size limit and get a 413.
"""

from __future__ import annotations

import re

from trio_sip.sip.errors import BadMessage, MessageTooLarge

__all__ = ["StreamFramer", "find_content_length_untrusted"]

_BLANK_LINE = b"\r\n\r\n"
_PING = b"\r\n\r\n"
_CRLF = b"\r\n"

# RFC 3261 §7.3.1: a header line may be continued on the next line if that
# line starts with whitespace (LWS = [*WSP CRLF] 1*WSP); the fold means one SP.
_FOLD = re.compile(rb"\r\n[ \t]+")
_WSP = b" \t"
# Content-Length = ( "Content-Length" / "l" ) HCOLON 1*DIGIT   (RFC 3261 §20.14, §25.1)
_CONTENT_LENGTH_NAMES = (b"content-length", b"l")
# Beyond this many significant digits the value is absurd for any sane limit;
# checking the length first also keeps int() away from CPython's 4300-digit
# conversion limit, which would raise ValueError instead of BadMessage.
_MAX_CL_DIGITS = 15


def find_content_length_untrusted(header_block: bytes) -> int | None:
    """Return the Content-Length of a header section, or None when it has none.

    ``header_block`` is the start-line and headers, with or without the
    terminating blank line. Header names are matched case-insensitively,
    including the compact form ``l``; whitespace around the colon and line
    folding are allowed. Several Content-Length headers with the same value
    are tolerated (some stacks repeat it); different values are a 400 because
    the framing would be ambiguous, which is precisely how request smuggling
    works. Negative or non-numeric values are a 400 too; a value too large for
    any limit is a 413.

    Only Content-Length is looked at: the full header grammar is the parser's
    job, and a line without a colon is left for it to reject.
    """
    unfolded = _FOLD.sub(b" ", header_block)
    found: int | None = None
    lines = unfolded.split(_CRLF)
    # lines[0] is the start-line: "l: 5" there is a (bad) request-line, not a header.
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        if name.rstrip(_WSP).lower() not in _CONTENT_LENGTH_NAMES:
            continue
        digits = value.strip(_WSP)
        if not digits.isdigit():  # bytes.isdigit() is ASCII-only: no "٣" surprises
            if digits.startswith(b"-") and digits[1:].isdigit():
                raise BadMessage("negative Content-Length")
            raise BadMessage("non-numeric Content-Length")
        if len(digits.lstrip(b"0")) > _MAX_CL_DIGITS:
            raise MessageTooLarge("Content-Length too large")
        length = int(digits)
        if found is not None and found != length:
            raise BadMessage("conflicting Content-Length headers")
        found = length
    return found


class StreamFramer:
    """Cut a SIP byte stream into whole messages by Content-Length.

    One framer per connection, owned by the connection's reader task. Feed it
    what the socket returned, then drain :meth:`next_message_untrusted` until
    it returns None before reading again; that is what keeps the buffer
    bounded (a caller that only feeds lets it grow without limit).
    """

    def __init__(self, max_message_size: int = 65535) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.max_message_size = max_message_size
        self._buf = bytearray()
        # Where the current message starts in _buf; consumed bytes before it are
        # dropped lazily by feed(), so draining k messages from one read is O(bytes),
        # not O(k * bytes) as deleting the prefix after every message would be.
        self._start = 0
        # HEADERS state: where the next search for the blank line begins.
        # None means SKIPPING (no start-line byte seen yet for this message).
        self._scan: int | None = None
        # BODY state: end offset (in _buf) of the current message.
        self._end: int | None = None
        self._pings = 0
        self._error: BadMessage | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        if self._error is not None:
            raise self._error
        if self._start:
            del self._buf[: self._start]
            if self._scan is not None:
                self._scan -= self._start
            if self._end is not None:
                self._end -= self._start
            self._start = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as (part of) a message."""
        return len(self._buf) - self._start

    @property
    def failed(self) -> bool:
        """True once a framing error was raised; the connection must be closed."""
        return self._error is not None

    def pop_keepalive_pings(self) -> int:
        """Return and reset the number of RFC 5626 pings (CRLF CRLF) seen.

        Each one deserves a pong (a single CRLF) from a server (RFC 5626 §3.5.1).
        Pings are only recognised between messages, so call this after
        draining :meth:`next_message_untrusted`.
        """
        pings, self._pings = self._pings, 0
        return pings

    def next_message_untrusted(self) -> bytes | None:
        """Return the next complete message, or None if more bytes are needed.

        Raises :class:`BadMessage` (400) or :class:`MessageTooLarge` (413);
        after that the framer is failed and raises the same error forever.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except BadMessage as exc:
            self._error = exc
            raise

    # -- states -----------------------------------------------------------

    def _next(self) -> bytes | None:
        if self._end is None:
            if self._scan is None and not self._skip_crlfs():
                return None
            if not self._find_header_end():
                return None
        assert self._end is not None  # set by _find_header_end
        if len(self._buf) < self._end:
            return None
        message = bytes(self._buf[self._start : self._end])
        self._start = self._end
        self._scan = None
        self._end = None
        return message

    def _skip_crlfs(self) -> bool:
        """SKIPPING: eat CRLFs; True once a start-line byte is at _start."""
        buf = self._buf
        while True:
            head = bytes(buf[self._start : self._start + 4])
            if head == _PING:
                self._pings += 1
                self._start += 4
            elif len(head) < 4 and _PING.startswith(head):
                # Empty, or "\r", "\r\n", "\r\n\r": maybe the start of a ping.
                return False
            elif head.startswith(_CRLF):
                self._start += 2  # lone CRLF: a pong or padding
            else:
                self._scan = self._start
                return True

    def _find_header_end(self) -> bool:
        """HEADERS: find the blank line and the Content-Length; True in BODY."""
        assert self._scan is not None
        buf = self._buf
        idx = buf.find(_BLANK_LINE, self._scan)
        if idx < 0:
            # n bytes with no terminator yet: the shortest possible message is n + 1.
            if len(buf) - self._start >= self.max_message_size:
                raise MessageTooLarge("header section too large")
            self._scan = max(self._start, len(buf) - (len(_BLANK_LINE) - 1))
            return False
        header_end = idx + len(_BLANK_LINE)
        header_size = header_end - self._start
        if header_size > self.max_message_size:
            raise MessageTooLarge("header section too large")
        # Keep the CRLF of the last header line so it is a line like the others.
        length = find_content_length_untrusted(bytes(buf[self._start : idx + 2]))
        if length is None:
            raise BadMessage("missing Content-Length on a stream transport")
        if header_size + length > self.max_message_size:
            raise MessageTooLarge("message too large")
        self._end = header_end + length
        return True
