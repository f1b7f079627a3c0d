"""Where the ng client's datagrams go: a real UDP socket, or a SimNetwork transport.

The client (client.py) owns one endpoint per address family and one receive task
per endpoint; requests only send. Tests inject :func:`sim_endpoints` to talk to a
scripted peer on a :class:`~trio_sip.transport.sim.SimNetwork` in virtual time.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ..transport.base import Address, Transport
from ..transport.sim import SimNetwork
from .protocol import RECEIVE_BUFFER

__all__ = [
    "DEFAULT_RCVBUF",
    "EndpointFactory",
    "NgEndpoint",
    "SimEndpoint",
    "UdpEndpoint",
    "sim_endpoints",
    "udp_endpoints",
]

log = logging.getLogger("trio_sip.rtpengine")

#: SO_RCVBUF asked for: delete/query replies are ~1.9 KB each, and with the kernel's
#: default (212992) 50 requests in flight lost replies here (rtpengine.md §7). Linux
#: caps it at net.core.rmem_max.
DEFAULT_RCVBUF = 4 * 1024 * 1024


class NgEndpoint(Protocol):
    """A datagram endpoint: ``send`` raises OSError on failure; ``receive`` waits for
    the next datagram and its source."""

    local: Address

    async def send(self, data: bytes, dest: Address) -> None: ...

    async def receive(self) -> tuple[bytes, Address]: ...

    def close(self) -> None: ...


#: Opens the endpoint for IP version 4 or 6; ``bind_host`` is the address to bind.
EndpointFactory = Callable[[int, str], Awaitable[NgEndpoint]]


class UdpEndpoint:
    """One real UDP socket. Sends are serialised (two tasks may not wait for
    writability of one Trio socket at once)."""

    def __init__(self, sock: trio.socket.SocketType, local: Address) -> None:
        self._sock = sock
        self.local = local
        self._send_lock = trio.Lock()

    @classmethod
    async def open(cls, family: int, bind_host: str, *,
                   rcvbuf: int = DEFAULT_RCVBUF) -> UdpEndpoint:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        sock = trio.socket.socket(af, socket.SOCK_DGRAM)
        try:
            if rcvbuf > 0:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                except OSError as exc:  # pragma: no cover - platform dependent
                    log.warning("rtpengine client: SO_RCVBUF %d refused: %s", rcvbuf, exc)
            await sock.bind((bind_host, 0))
        except BaseException:
            sock.close()
            raise
        name = sock.getsockname()
        return cls(sock, Address(name[0], name[1]))

    async def send(self, data: bytes, dest: Address) -> None:
        async with self._send_lock:
            await self._sock.sendto(data, (dest.host, dest.port))

    async def receive(self) -> tuple[bytes, Address]:
        while True:
            try:
                data, addr = await self._sock.recvfrom(RECEIVE_BUFFER)
            except ConnectionRefusedError:
                # an ICMP port unreachable for an earlier send (Linux reports it on
                # some sockets): the request it belonged to simply times out
                continue
            return data, Address(addr[0], addr[1])

    def close(self) -> None:
        self._sock.close()


async def udp_endpoints(family: int, bind_host: str) -> NgEndpoint:
    """The default EndpointFactory: real UDP sockets."""
    return await UdpEndpoint.open(family, bind_host)


class SimEndpoint:
    """A client endpoint on a SimNetwork (tests in virtual time)."""

    def __init__(self, net: SimNetwork, local: Address, *, queue_size: int = 4096) -> None:
        self.local = local
        self.dropped = 0
        self._in, self._out = trio.open_memory_channel[tuple[bytes, Address]](queue_size)
        self._transport = net.transport(local, self._arrived, queue_size=queue_size)

    async def _arrived(self, data: bytes, source: Address, transport: Transport,
                       conn_id: int | None) -> None:
        try:
            self._in.send_nowait((data, source))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1

    async def send(self, data: bytes, dest: Address) -> None:
        if not await self._transport.send(data, dest):
            raise OSError(f"sim send to {dest} failed")

    async def receive(self) -> tuple[bytes, Address]:
        try:
            return await self._out.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the endpoint is closed") from None

    def close(self) -> None:
        self._transport.close()
        self._in.close()


def sim_endpoints(net: SimNetwork, host: str = "127.0.0.1", port: int = 40000,
                  opened: list[SimEndpoint] | None = None) -> EndpointFactory:
    """An EndpointFactory on ``net`` at ``host:port`` (then port+1...); each endpoint made
    is appended to ``opened`` if given."""
    ports = iter(range(port, 65536))

    async def open_endpoint(family: int, bind_host: str) -> NgEndpoint:
        await trio.lowlevel.checkpoint()
        ep = SimEndpoint(net, Address(host, next(ports)))
        if opened is not None:
            opened.append(ep)
        return ep

    return open_endpoint
