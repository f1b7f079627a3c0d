"""Transport-level types shared by every transport and by the runtime.

A transport moves whole SIP messages (bytes) between this server and peers.
It knows nothing about SIP beyond framing on stream transports. Received
messages are handed to a :data:`MessageHandler`; sends go through
:meth:`Transport.send`, which applies the loopback-only guard.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Address:
    """A transport address: an IP literal (no brackets for IPv6) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Transport(Protocol):
    """What the runtime needs from a listening transport."""

    #: "udp", "tcp" (later "tls", "ws"); used in Via and $pr.
    proto: str
    #: the address we are bound to (as used in Via sent-by and Record-Route).
    local: Address
    #: True for stream transports (TCP/TLS/WS): Content-Length framing, no retransmissions.
    reliable: bool

    async def send(self, data: bytes, dest: Address, *, conn_id: int | None = None) -> bool:
        """Send one message; returns False (and counts it) when it was refused or failed.

        ``conn_id`` (stream transports) asks for that existing connection first,
        as RFC 3261 §18.2.2 wants for responses; otherwise a connection to
        ``dest`` is reused or opened.
        """
        ...


#: Called by a transport for every complete message it receives:
#: ``handler(data, source, transport, conn_id)``. conn_id is None for datagrams.
MessageHandler = Callable[[bytes, Address, "Transport", "int | None"], Awaitable[None]]
