"""SIP over UDP (RFC 3261 §18): one socket, one receive loop, one consumer.

Theory of operation
-------------------
::

    kernel --recvfrom--> receive loop --send_nowait--> [bounded queue] --> consumer --> handler
                           |  too large: drop, count       full: drop, count      raises: log, count
                           |  CRLF keep-alive: count

The receive loop never awaits anything but the socket, so it drains the
kernel buffer as fast as Python can; when the handler falls behind, the
bounded queue fills and datagrams are dropped *here*, counted, instead of
piling up invisibly in the kernel or in memory. Dropping is right for UDP:
the sender's transaction layer retransmits (Timer A/E), and a server under
overload should shed load, not queue it (trio ``_dtls.py`` does the same).

There is one consumer, so the handler sees datagrams one at a time in arrival
order; it is expected to be quick (match the transaction, hand the message
over), not to run a route to completion. An exception from it is logged with
its traceback and counted, and the next datagram is handled: a bug triggered
by one peer's message must not take the listening socket down.

Sending is a plain ``sendto`` from the caller's task: a datagram is written
whole or not at all, so concurrent senders need no coordination.
"""

from __future__ import annotations

import errno
import logging
import socket as _stdlib_socket

import trio

from trio_sip.transport.base import (
    Address,
    MessageHandler,
    TransportCounters,
    TransportStats,
    address_from_sockaddr,
    family_of,
    is_ip_literal,
)
from trio_sip.transport.guard import LoopbackGuard

__all__ = ["UdpTransport"]

logger = logging.getLogger("trio_sip.transport")

# The largest UDP payload is 65507 (IPv4) / 65527 (IPv6 without jumbograms);
# a buffer of 64 KiB therefore never truncates, and one byte more than the
# limit is enough to tell "too large" from "exactly the limit".
_RECV_BUFFER = 65536


class UdpTransport:
    """A UDP listening point, started with ``await nursery.start(t.serve)``.

    ``local.port == 0`` asks for an ephemeral port; ``local`` holds the real
    one once ``serve`` has reported started. ``recv_buffer_size`` is asked of
    the kernel as SO_RCVBUF (Linux caps it at net.core.rmem_max) so a burst
    survives while the loop is busy.

    ``sock`` is a socket bound already (``trio-sip run --workers N``: the
    supervisor binds the SO_REUSEPORT group and each worker's own port once and
    hands them down, runtime/workers.py); ``serve`` then uses it instead of
    binding, and closes it on exit. ``listener`` marks a worker's own socket:
    the shared listening transport it sends for (its port goes into Via, the
    listener's into Record-Route; see ``ProxyCore.record_route_address``).
    """

    proto = "udp"
    reliable = False

    def __init__(
        self,
        local: Address,
        handler: MessageHandler,
        guard: LoopbackGuard,
        *,
        queue_size: int = 1024,
        max_message_size: int = 65535,
        recv_buffer_size: int = 4 * 1024 * 1024,
        sock: _stdlib_socket.socket | None = None,
        listener: object | None = None,
    ) -> None:
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.local = local
        self._family = family_of(local.host)  # ValueError early, not inside serve()
        self._handler = handler
        self._guard = guard
        self._queue_size = queue_size
        self._max_message_size = max_message_size
        self._recv_buffer_size = recv_buffer_size
        self._sock: trio.socket.SocketType | None = None
        self._prebound = sock
        self.listener = listener
        self._counters = TransportCounters()

    def statistics(self) -> TransportStats:
        return self._counters.snapshot()

    async def serve(
        self, *, task_status: trio.TaskStatus[UdpTransport] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started, and receive until cancelled; closes the socket on exit."""
        prebound = self._prebound
        sock = (trio.socket.from_stdlib_socket(prebound) if prebound is not None
                else trio.socket.socket(self._family, _stdlib_socket.SOCK_DGRAM))
        with sock:
            try:
                sock.setsockopt(
                    _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, self._recv_buffer_size
                )
            except OSError:  # pragma: no cover - only on exotic platforms
                logger.debug("UDP %s: could not set SO_RCVBUF", self.local)
            if prebound is None:
                await sock.bind((self.local.host, self.local.port))
            self.local = Address(self.local.host, sock.getsockname()[1])
            send_ch, recv_ch = trio.open_memory_channel[tuple[bytes, Address]](self._queue_size)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._consume, recv_ch)
                    self._sock = sock
                    task_status.started(self)
                    await self._receive_loop(sock, send_ch)
            finally:
                self._sock = None
                send_ch.close()
                recv_ch.close()

    async def _receive_loop(
        self, sock: trio.socket.SocketType, queue: trio.MemorySendChannel[tuple[bytes, Address]]
    ) -> None:
        counters = self._counters
        limit = self._max_message_size
        buf = bytearray(max(_RECV_BUFFER, limit + 1))
        view = memoryview(buf)
        while True:
            try:
                nbytes, sockaddr = await sock.recvfrom_into(buf)
            except (ConnectionResetError, ConnectionRefusedError):
                # Windows reports an earlier sendto's ICMP port-unreachable here;
                # it says nothing about this socket, so keep reading.
                continue
            if nbytes > limit:
                counters.dropped_too_large += 1
                logger.debug(
                    "UDP %s: dropped %d-byte datagram (limit %d)", self.local, nbytes, limit
                )
                continue
            data = bytes(view[:nbytes])
            if not data or data.isspace():
                # CRLF (or empty) datagrams are NAT keep-alives sent by many UAs;
                # they are not SIP messages and deserve no parse error.
                counters.keepalives += 1
                continue
            counters.received += 1
            try:
                queue.send_nowait((data, address_from_sockaddr(sockaddr)))
            except trio.WouldBlock:
                counters.dropped_queue_full += 1

    async def _consume(self, queue: trio.MemoryReceiveChannel[tuple[bytes, Address]]) -> None:
        async for data, source in queue:
            try:
                await self._handler(data, source, self, None)
            except Exception:
                self._counters.handler_errors += 1
                logger.exception("UDP %s: handler failed on a datagram from %s", self.local, source)

    async def send(self, data: bytes, dest: Address, *, conn_id: int | None = None) -> bool:
        """Send one datagram; False when refused by the guard or the OS.

        ``conn_id`` is accepted for the Transport protocol and ignored.
        """
        if not self._guard.allows(dest):
            self._counters.refused_by_guard += 1
            await trio.lowlevel.checkpoint()
            return False
        sock = self._sock
        if sock is None or not is_ip_literal(dest.host):
            # Not serving; or a name, which trio's sendto would resolve (DNS is
            # the resolver's job, never a side effect of sending).
            self._counters.send_errors += 1
            logger.debug("UDP %s: cannot send to %s (not serving or not an IP)", self.local, dest)
            await trio.lowlevel.checkpoint()
            return False
        try:
            await sock.sendto(data, (dest.host, dest.port))
        except OSError as exc:
            self._counters.send_errors += 1
            logger.debug(
                "UDP %s: sendto %s failed: %s",
                self.local,
                dest,
                errno.errorcode.get(exc.errno or 0, exc),
            )
            return False
        self._counters.sent += 1
        return True
