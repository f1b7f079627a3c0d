"""Transport-level types shared by every transport and by the runtime.

A transport moves whole SIP messages (bytes) between this server and peers.
It knows nothing about SIP beyond framing on stream transports. Received
messages are handed to a :data:`MessageHandler`; sends go through
:meth:`Transport.send`, which applies the loopback-only guard.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from ..sip.iplit import parse_ip


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


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of one transport's counters, as returned by ``statistics()``.

    One type for every transport so the runtime and the management interface
    can add them up and show them without knowing the kind; counters that do
    not apply to a transport stay 0 (UDP has no connections).
    """

    #: complete messages read from the network (datagrams, or framed stream messages),
    #: including those dropped afterwards; keep-alives are not messages
    received: int = 0
    #: messages handed to the kernel (stream transports: fully written)
    sent: int = 0
    #: messages dropped because a bounded queue was full: the receive queue for
    #: datagram transports, a connection's send queue for stream transports
    dropped_queue_full: int = 0
    #: messages over max_message_size (datagrams dropped; stream connections closed)
    dropped_too_large: int = 0
    #: sends that failed in the OS or on a broken connection
    send_errors: int = 0
    #: sends refused by the loopback guard (nothing was sent)
    refused_by_guard: int = 0
    #: exceptions raised by the message handler (logged with traceback)
    handler_errors: int = 0
    #: keep-alives received (CRLF datagrams; RFC 5626 CRLFCRLF pings on streams)
    keepalives: int = 0
    #: stream transports: connections open now
    open_connections: int = 0
    #: stream transports: incoming connections accepted
    accepted: int = 0
    #: stream transports: outgoing connections established
    connected_out: int = 0
    #: stream transports: outgoing connections that failed or timed out
    connect_errors: int = 0
    #: stream transports: connections refused or closed because of max_connections
    refused_connections: int = 0
    #: stream transports: connections closed after idle_timeout without traffic
    idle_closed: int = 0
    #: stream transports: connections closed for a framing error (400/413)
    framing_errors: int = 0


@dataclass(slots=True)
class TransportCounters:
    """The mutable twin of :class:`TransportStats`, owned by one transport.

    Counting is one attribute increment on the hot path; ``statistics()``
    copies it into the frozen snapshot. The fields are the same (a test checks).
    """

    received: int = 0
    sent: int = 0
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    send_errors: int = 0
    refused_by_guard: int = 0
    handler_errors: int = 0
    keepalives: int = 0
    open_connections: int = 0
    accepted: int = 0
    connected_out: int = 0
    connect_errors: int = 0
    refused_connections: int = 0
    idle_closed: int = 0
    framing_errors: int = 0

    def snapshot(self, **now: int) -> TransportStats:
        """A frozen copy; ``now`` overrides gauges computed at call time."""
        return replace(TransportStats(**asdict(self)), **now)


def family_of(host: str) -> int:
    """AF_INET or AF_INET6 for an IP literal; ValueError for anything else."""
    ip = ipaddress.ip_address(host)
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def address_from_sockaddr(sockaddr: object) -> Address:
    """An :class:`Address` from an AF_INET/AF_INET6 sockaddr tuple."""
    assert isinstance(sockaddr, tuple)
    host, port = sockaddr[0], sockaddr[1]
    assert isinstance(host, str)
    assert isinstance(port, int)
    return Address(host, port)


def is_ip_literal(host: str) -> bool:
    """True for an IPv4/IPv6 literal: the only hosts a transport sends to (no DNS here)."""
    return parse_ip(host) is not None
