"""The one error type that untrusted bytes may raise.

Every function whose name ends in ``_untrusted`` parses data that came off the
network. It raises :class:`BadMessage` and nothing else: any other exception that
escapes one of them is a bug (the tests feed them fuzzed input to make sure).
A ``BadMessage`` says whose fault it is (the peer's) and what to answer.
"""

from __future__ import annotations

from typing import Any


class BadMessage(Exception):
    """A message we cannot accept, with the status a server should answer.

    ``status`` is the SIP status code to reply with when the message was a
    request and enough of it was parsed to build a reply (400, 413, 416, 420,
    505, ...). ``reason`` is a short human-readable reason used both as the log
    text and (sanitised) as a ``Warning``-free reason phrase.
    """

    status: int = 400
    #: set by the parser once the header section was split: whether the message was a
    #: request, and its header lines, so a 4xx can still be built from the raw lines.
    is_request: bool | None = None
    headers: list[Any] | None = None

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"BadMessage({self.reason!r}, status={self.status})"


class MessageTooLarge(BadMessage):
    status = 413


class UnsupportedVersion(BadMessage):
    status = 505


class UnsupportedScheme(BadMessage):
    status = 416
