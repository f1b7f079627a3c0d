"""SIP over UDP (RFC 3261 §18): one socket, a bounded receive queue, one handler at a time.

Theory of operation
-------------------
::

    kernel --recvfrom (drain)--> [bounded queue] --> handler, one datagram at a time
              |  too large: drop, count    full: drop, count      raises: log, count
              |  CRLF keep-alive: count

Whoever owns the socket drains the kernel buffer with non-blocking
``recvfrom_into`` calls until it is empty, then waits for it to become
readable again. Datagrams go into a bounded queue; when the handler falls
behind, the queue fills and datagrams are dropped *here*, counted, instead of
piling up invisibly in the kernel or in memory. Dropping is right for UDP:
the sender's transaction layer retransmits (Timer A/E), and a server under
overload should shed load, not queue it (trio ``_dtls.py`` does the same).

The handler sees datagrams one at a time in arrival order; it is expected to
be quick (match the transaction, hand the message over), not to run a route
to completion. An exception from it is logged with its traceback and counted,
and the next datagram is handled: a bug triggered by one peer's message must
not take the listening socket down.

Why two tasks, and no channel between them (the hot path of every SIP
message): a hand-off through a memory channel to a consumer task costs a task
switch per datagram, and the handler almost never blocks (the proxy core posts
the message to a transaction and returns). So the socket owner calls the
handler *in place*. It watches whether the handler yields to Trio
(``_call_noting_block``): if it does, the handler is really waiting, and the
other task, parked as a standby, is woken to own the socket, so reading (and
dropping, counted) goes on while the handler waits. The task stuck in the
handler finishes the queued datagrams and then parks as the new standby. One
handler call at a time either way (``_busy``).

Sending is a plain non-blocking ``sendto`` on the raw socket from the caller's
task: a datagram is written whole or not at all, so concurrent senders need no
coordination; only a full socket buffer makes it wait (``wait_writable``).
"""

from __future__ import annotations

import errno
import logging
import socket as _stdlib_socket
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

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

# A sender finding the socket buffer full while another sender waits for it
# retries after this long (seconds).
_BUSY_RETRY = 0.001

# How many peer addresses the receive path remembers; a hostile peer spraying
# source ports only makes the memo start over.
_MAX_SOURCES = 4096


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
        #: the raw, non-blocking socket while serving (sends use it directly)
        self._sock: _stdlib_socket.socket | None = None
        self._prebound = sock
        #: datagrams read but not handled yet (bounded by queue_size)
        self._queue: deque[tuple[bytes, Address]] = deque()
        #: a handler call is in progress (in one of the two receive tasks)
        self._busy = False
        #: set by _call_noting_block when the running handler yielded to Trio
        self._blocked = False
        #: the receive task parked until it must own the socket, if any
        self._standby: trio.lowlevel.Task | None = None
        #: sockaddr -> Address of recent peers (bounded: cleared when full)
        self._sources: dict[object, Address] = {}
        self.listener = listener
        self._counters = TransportCounters()

    def statistics(self) -> TransportStats:
        return self._counters.snapshot()

    async def serve(
        self, *, task_status: trio.TaskStatus[UdpTransport] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started, and receive until cancelled; closes the socket on exit."""
        prebound = self._prebound
        sock = (prebound if prebound is not None
                else _stdlib_socket.socket(self._family, _stdlib_socket.SOCK_DGRAM))
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(
                    _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, self._recv_buffer_size
                )
            except OSError:  # pragma: no cover - only on exotic platforms
                logger.debug("UDP %s: could not set SO_RCVBUF", self.local)
            if prebound is None:
                # an IP literal (family_of checked it): nothing to resolve, so a
                # plain bind; it cannot block
                sock.bind((self.local.host, self.local.port))
            await trio.lowlevel.checkpoint()
            self.local = Address(self.local.host, sock.getsockname()[1])
            self._queue.clear()
            self._busy = False
            async with trio.open_nursery() as nursery:
                await nursery.start(self._receive, sock, False)
                self._sock = sock
                task_status.started(self)
                await self._receive(sock, True)
        finally:
            self._sock = None
            self._queue.clear()
            trio.lowlevel.notify_closing(sock)  # wakes a sender waiting for writability
            sock.close()

    # -- receiving ------------------------------------------------------------------

    async def _receive(
        self,
        sock: _stdlib_socket.socket,
        owner: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One of the two receive tasks; ``owner`` says which starts as the socket owner."""
        buf = bytearray(max(_RECV_BUFFER, self._max_message_size + 1))
        view = memoryview(buf)
        if not owner:
            await self._stand_by(task_status)
        queue = self._queue
        while True:
            # This task owns the socket: it alone waits for readability.
            await trio.lowlevel.wait_readable(sock)
            self._drain(sock, buf, view)
            while queue and not self._busy:
                # The handler is idle: call it here, without a task switch.
                data, source = queue.popleft()
                self._busy = True
                await self._call_noting_block(data, source)
                if self._blocked:
                    # It waited, and the standby owns the socket now: finish the
                    # queued datagrams here, then become the standby.
                    await self._handle_queued()
                    await self._stand_by()
                    break
                self._busy = False
                if not queue:
                    break
                # More work queued (a burst): let other tasks run between two
                # datagrams, as the channel hand-off did, then read what came.
                await trio.lowlevel.checkpoint()
                self._drain(sock, buf, view)

    def _drain(self, sock: _stdlib_socket.socket, buf: bytearray, view: memoryview) -> None:
        """Read every datagram the kernel holds into the queue (counting drops)."""
        counters = self._counters
        limit = self._max_message_size
        queue = self._queue
        sources = self._sources
        recvfrom_into = sock.recvfrom_into
        while True:
            try:
                nbytes, sockaddr = recvfrom_into(buf)
            except BlockingIOError:
                return
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
            # Capacity: queue_size waiting datagrams, plus the one an idle handler
            # takes at once (what a memory channel of queue_size would accept).
            if len(queue) >= self._queue_size + (not self._busy):
                counters.dropped_queue_full += 1
                continue
            # Peers are few and send many datagrams: reuse their (immutable) Address.
            source = sources.get(sockaddr)
            if source is None:
                if len(sources) >= _MAX_SOURCES:
                    sources.clear()
                source = sources[sockaddr] = address_from_sockaddr(sockaddr)
            queue.append((data, source))

    async def _call_noting_block(self, data: bytes, source: Address) -> None:
        """Call the handler; ``_blocked`` tells whether it yielded to Trio (then the
        standby has been woken to own the socket)."""
        self._blocked = False
        try:
            awaitable = self._handler(data, source, self, None)
            if type(awaitable) is types.CoroutineType:
                await _noting_first_yield(awaitable, self._on_block)
            else:  # some other awaitable: it may wait, so let the standby read meanwhile
                self._on_block()
                await awaitable
        except Exception:
            self._handler_failed(source)

    def _on_block(self) -> None:
        self._blocked = True
        standby, self._standby = self._standby, None
        if standby is not None:  # None only while shutting down (the standby was cancelled)
            trio.lowlevel.reschedule(standby)

    async def _handle_queued(self) -> None:
        """After a handler waited: handle the queue, one datagram at a time, until it is
        empty (the socket owner keeps filling it meanwhile)."""
        queue = self._queue
        while queue:
            await trio.lowlevel.checkpoint()  # the owner reads between two datagrams
            if not queue:
                break
            data, source = queue.popleft()
            try:
                await self._handler(data, source, self, None)
            except Exception:
                self._handler_failed(source)
        self._busy = False

    async def _stand_by(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Park until a handler running in the socket owner waits (``_on_block``)."""
        self._standby = trio.lowlevel.current_task()
        task_status.started()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._standby = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _handler_failed(self, source: Address) -> None:
        self._counters.handler_errors += 1
        logger.exception("UDP %s: handler failed on a datagram from %s", self.local, source)

    # -- sending --------------------------------------------------------------------

    def send_nowait(self, data: bytes, dest: Address) -> bool:
        """Send one datagram now, from synchronous code; False when refused by the
        guard or the OS (counted, like ``send``).

        Raises ``trio.WouldBlock`` when the socket buffer is full (nothing was sent
        or counted): the caller awaits ``send`` instead, which waits for room.
        """
        if not self._guard.allows(dest):
            self._counters.refused_by_guard += 1
            return False
        sock = self._sock
        if sock is None or not is_ip_literal(dest.host):
            # Not serving; or a name, which sendto would resolve (DNS is the
            # resolver's job, never a side effect of sending).
            self._counters.send_errors += 1
            logger.debug("UDP %s: cannot send to %s (not serving or not an IP)", self.local, dest)
            return False
        try:
            sock.sendto(data, (dest.host, dest.port))
        except BlockingIOError:
            raise trio.WouldBlock from None
        except OSError as exc:
            self._send_failed(dest, exc)
            return False
        self._counters.sent += 1
        return True

    async def send(self, data: bytes, dest: Address, *, conn_id: int | None = None) -> bool:
        """Send one datagram; False when refused by the guard or the OS.

        A cancellation point (a send in a cancelled scope raises ``Cancelled``
        and sends nothing) but, when the kernel takes the datagram at once, not
        a schedule point: the caller's task goes on without a task switch (a
        trio socket's ``sendto`` would yield to the scheduler every time).
        ``conn_id`` is accepted for the Transport protocol and ignored.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return self.send_nowait(data, dest)
            except trio.WouldBlock:
                pass
            # the socket buffer is full: wait for room, as trio's sendto would
            sock = self._sock
            if sock is None:
                return self.send_nowait(data, dest)  # closed meanwhile: counted there
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.BusyResourceError:
                # Trio lets one task wait per socket; another sender is waiting
                # already, so retry shortly instead
                await trio.sleep(_BUSY_RETRY)
            except trio.ClosedResourceError as exc:  # serve() ended while we waited
                self._send_failed(dest, exc)
                return False

    def _send_failed(self, dest: Address, exc: Exception) -> None:
        self._counters.send_errors += 1
        logger.debug(
            "UDP %s: sendto %s failed: %s",
            self.local,
            dest,
            errno.errorcode.get(getattr(exc, "errno", 0) or 0, exc),
        )


@types.coroutine
def _noting_first_yield(
    coro: Coroutine[Any, Any, None], on_block: Callable[[], None]
) -> Generator[Any, Any, None]:
    """``await coro``, calling ``on_block()`` before coro first yields to Trio.

    The same delegation ``yield from`` does (values sent in, exceptions thrown
    in, close), written out because the first step must be looked at.
    """
    try:
        trap = coro.send(None)
    except StopIteration:
        return  # finished without waiting: the common case
    on_block()
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # Cancelled, KeyboardInterrupt: the handler decides
            try:
                trap = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                trap = coro.send(value)
            except StopIteration:
                return
