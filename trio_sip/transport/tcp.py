"""SIP over TCP (RFC 3261 §18): connections, framing, reuse, keep-alives.

Theory of operation
-------------------
Task tree (everything lives in the nursery of :meth:`TcpTransport.serve`)::

    serve ── accept loop
          ├─ connection #1 ──┬─ reader: receive_some -> StreamFramer -> handler (inline)
          │    idle scope    └─ writer: bounded outbox -> send_all (one writer per stream)
          ├─ connection #2 (outgoing, opened by send())
          └─ ...

*  Every connection, accepted or opened, gets an integer ``conn_id`` and is
   registered by id and by remote address. RFC 3261 §18.2.2 sends a response
   back over the connection its request came on (``conn_id``); §18.1.1 and
   RFC 5923's spirit reuse any open connection to the destination, whichever
   side opened it. Only when none exists is a new one opened, and the
   connection task for it runs in the transport's nursery, so whatever the
   peer sends back on it (responses, in-dialog requests) is read as well.
*  The reader calls the handler inline, one message at a time: a slow handler
   slows only its own connection, and TCP flow control pushes back on the
   peer instead of us buffering. The handler runs inside the connection's
   cancel scope: when the connection dies (idle, peer reset, shutdown) a
   handler still running on it is cancelled. It should hand work off quickly.
*  Writes go through a bounded memory channel to one writer task per
   connection. A stream must have one writer at a time (interleaved
   ``send_all`` would splice two messages together), and the owner-task
   shape keeps a sender from ever blocking on a slow peer: ``send()`` only
   enqueues. A full outbox drops the message (counted; SIP over TCP has no
   retransmissions, so the transaction times out as it would on a dead
   link). A write stuck longer than ``write_timeout`` closes the connection.
*  Idle timeout is a deadline, not a timer: the connection runs in a cancel
   scope whose deadline is pushed forward on every read and every write.
*  RFC 5626 keep-alive: a CRLFCRLF ping is answered with a CRLF pong, sent
   through the outbox like any write, so it cannot split a message.
*  A framing error (no Content-Length, bad or oversize message) desynchronises
   the stream: the connection is counted, logged and closed. Nothing is
   answered: the bytes after the error cannot be trusted to be a request.

Race (why send() waits for an in-progress connect instead of dialling)::

    task A: send(x, D) -> no conn -> connecting[D] set -> open_tcp_stream ........ registered
    task B:   send(y, D) -> no conn -> connecting[D] exists -> wait ............... reuse it
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket as _stdlib_socket
from dataclasses import dataclass, field

import trio

from trio_sip.sip.errors import BadMessage, MessageTooLarge
from trio_sip.sip.framing import StreamFramer
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

__all__ = ["TcpTransport"]

logger = logging.getLogger("trio_sip.transport")

_READ_SIZE = 65536
_PONG = b"\r\n"

# accept() errors that mean "out of resources for now", not "listener broken";
# trio.serve_listeners sleeps and retries on the same set.
_ACCEPT_CAPACITY_ERRNOS = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.ENOBUFS,
}
_ACCEPT_RETRY_SLEEP = 0.1

# (bytes to write, whether it is a SIP message: pongs are not counted as sent)
_Outgoing = tuple[bytes, bool]


def canonical(addr: Address) -> Address:
    """One spelling per address ("0:0::1" and "::1" are the same peer)."""
    try:
        host = ipaddress.ip_address(addr.host).compressed
    except ValueError:
        return addr
    return addr if host == addr.host else Address(host, addr.port)


@dataclass(eq=False)
class _Connection:
    conn_id: int
    remote: Address
    stream: trio.SocketStream
    outgoing: bool
    outbox: trio.MemorySendChannel[_Outgoing]
    idle_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closing: bool = False


class TcpTransport:
    """A TCP listening point, started with ``await nursery.start(t.serve)``.

    ``send()`` returns True once the message is queued on an open connection
    (a later write failure closes the connection and counts a send error);
    it returns False at once when refused, and waits up to
    ``connect_timeout`` when a connection must be opened first.

    ``sock`` is a listening socket bound (and listening) already: with
    ``trio-sip run --workers N`` the supervisor binds one SO_REUSEPORT socket
    per worker and hands it down (runtime/workers.py); ``serve`` accepts on it
    and closes it on exit.
    """

    proto = "tcp"
    reliable = True

    def __init__(
        self,
        local: Address,
        handler: MessageHandler,
        guard: LoopbackGuard,
        *,
        max_message_size: int = 65535,
        max_connections: int = 1024,
        idle_timeout: float = 120.0,
        connect_timeout: float = 5.0,
        write_timeout: float = 10.0,
        max_pending_sends: int = 64,
        backlog: int = 128,
        sock: _stdlib_socket.socket | None = None,
    ) -> None:
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_connections", max_connections),
            ("idle_timeout", idle_timeout),
            ("connect_timeout", connect_timeout),
            ("write_timeout", write_timeout),
            ("max_pending_sends", max_pending_sends),
            ("backlog", backlog),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.local = local
        self._family = family_of(local.host)
        self._handler = handler
        self._guard = guard
        self._max_message_size = max_message_size
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._max_pending_sends = max_pending_sends
        self._backlog = backlog
        self._prebound = sock
        self._counters = TransportCounters()
        self._nursery: trio.Nursery | None = None
        self._next_id = 1
        self._by_id: dict[int, _Connection] = {}
        self._by_addr: dict[Address, _Connection] = {}
        self._connecting: dict[Address, trio.Event] = {}

    def statistics(self) -> TransportStats:
        return self._counters.snapshot(open_connections=len(self._by_id))

    def connection_to(self, dest: Address) -> int | None:
        """The conn_id of an open connection to ``dest``, if there is one."""
        conn = self._by_addr.get(canonical(dest))
        return None if conn is None else conn.conn_id

    # -- serving ------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[TcpTransport] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report started, accept until cancelled; then close every connection."""
        prebound = self._prebound
        sock = (trio.socket.from_stdlib_socket(prebound) if prebound is not None
                else trio.socket.socket(self._family, _stdlib_socket.SOCK_STREAM))
        with sock:
            if prebound is None:
                if hasattr(_stdlib_socket, "SO_REUSEADDR"):  # restart without TIME_WAIT
                    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
                if self._family == _stdlib_socket.AF_INET6:
                    sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
                await sock.bind((self.local.host, self.local.port))
                sock.listen(self._backlog)
            self.local = Address(self.local.host, sock.getsockname()[1])
            listener = trio.SocketListener(sock)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started(self)
                    await self._accept_loop(listener, nursery)
            finally:
                self._nursery = None

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error("TCP %s: accept failed (%s); retrying shortly", self.local, exc)
                await trio.sleep(_ACCEPT_RETRY_SLEEP)
                continue
            if len(self._by_id) >= self._max_connections:
                self._counters.refused_connections += 1
                logger.warning(
                    "TCP %s: max_connections (%d) reached; closing a new connection",
                    self.local,
                    self._max_connections,
                )
                await trio.aclose_forcefully(stream)
                continue
            try:
                remote = address_from_sockaddr(stream.socket.getpeername())
            except OSError:  # reset before we looked: nothing to serve
                await trio.aclose_forcefully(stream)
                continue
            self._counters.accepted += 1
            await nursery.start(self._run_connection, stream, canonical(remote), False)

    async def _connect(
        self, dest: Address, *, task_status: trio.TaskStatus[_Connection | None]
    ) -> None:
        """Open a connection to ``dest`` and run it; started(None) on failure."""
        if len(self._by_id) >= self._max_connections:
            self._counters.refused_connections += 1
            logger.warning(
                "TCP %s: max_connections reached; not connecting to %s", self.local, dest
            )
            task_status.started(None)
            return
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(dest.host, dest.port)
        except (OSError, trio.TooSlowError) as exc:
            self._counters.connect_errors += 1
            logger.debug("TCP %s: connect to %s failed: %r", self.local, dest, exc)
            task_status.started(None)
            return
        self._counters.connected_out += 1
        await self._run_connection(stream, dest, True, task_status=task_status)

    async def _run_connection(
        self,
        stream: trio.SocketStream,
        remote: Address,
        outgoing: bool,
        *,
        task_status: trio.TaskStatus[_Connection | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        outbox, pending = trio.open_memory_channel[_Outgoing](self._max_pending_sends)
        conn = _Connection(self._next_id, remote, stream, outgoing, outbox)
        self._next_id += 1
        self._register(conn)
        try:
            self._touch(conn)
            task_status.started(conn)
            with conn.idle_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, conn, pending, nursery.cancel_scope)
                    await self._read_loop(conn)
                    nursery.cancel_scope.cancel()
            if conn.idle_scope.cancelled_caught:
                self._counters.idle_closed += 1
                logger.debug(
                    "TCP %s: connection #%d to %s idle, closed", self.local, conn.conn_id, remote
                )
        finally:
            conn.closing = True
            self._unregister(conn)
            outbox.close()
            # Whatever was still queued will never be written.
            while True:
                try:
                    _, is_message = pending.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._counters.send_errors += is_message
            pending.close()
            await trio.aclose_forcefully(stream)

    def _touch(self, conn: _Connection) -> None:
        conn.idle_scope.deadline = trio.current_time() + self._idle_timeout

    def _register(self, conn: _Connection) -> None:
        self._by_id[conn.conn_id] = conn
        self._by_addr[conn.remote] = conn  # the newest connection to an address wins

    def _unregister(self, conn: _Connection) -> None:
        self._by_id.pop(conn.conn_id, None)
        if self._by_addr.get(conn.remote) is conn:
            del self._by_addr[conn.remote]
            # Another open connection to the same address (both sides dialled)
            # takes over; linear, but only on close and bounded by max_connections.
            for other in self._by_id.values():
                if other.remote == conn.remote:
                    self._by_addr[other.remote] = other
                    break

    # -- reading ------------------------------------------------------------

    async def _read_loop(self, conn: _Connection) -> None:
        framer = StreamFramer(self._max_message_size)
        counters = self._counters
        while True:
            try:
                data = await conn.stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.debug("TCP %s: connection #%d read error: %r", self.local, conn.conn_id, exc)
                return
            if not data:
                return  # the peer closed its side
            self._touch(conn)
            framer.feed(data)
            while True:
                try:
                    message = framer.next_message_untrusted()
                except BadMessage as exc:
                    counters.framing_errors += 1
                    if isinstance(exc, MessageTooLarge):
                        counters.dropped_too_large += 1
                    logger.info(
                        "TCP %s: closing connection #%d from %s: %s (%d)",
                        self.local,
                        conn.conn_id,
                        conn.remote,
                        exc.reason,
                        exc.status,
                    )
                    return
                if message is None:
                    break
                counters.received += 1
                await self._call_handler(message, conn)
            pings = framer.pop_keepalive_pings()
            if pings:
                counters.keepalives += pings
                self._enqueue(conn, _PONG * pings, is_message=False)

    async def _call_handler(self, message: bytes, conn: _Connection) -> None:
        try:
            await self._handler(message, conn.remote, self, conn.conn_id)
        except Exception:
            self._counters.handler_errors += 1
            logger.exception(
                "TCP %s: handler failed on a message from %s (connection #%d)",
                self.local,
                conn.remote,
                conn.conn_id,
            )

    # -- writing ------------------------------------------------------------

    async def _write_loop(
        self,
        conn: _Connection,
        pending: trio.MemoryReceiveChannel[_Outgoing],
        connection_scope: trio.CancelScope,
    ) -> None:
        counters = self._counters
        async for data, is_message in pending:
            try:
                with trio.fail_after(self._write_timeout):
                    await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                conn.closing = True
                counters.send_errors += is_message
                logger.debug(
                    "TCP %s: connection #%d write failed: %r", self.local, conn.conn_id, exc
                )
                connection_scope.cancel()
                return
            counters.sent += is_message
            self._touch(conn)

    def _enqueue(self, conn: _Connection, data: bytes, *, is_message: bool = True) -> bool:
        if conn.closing:
            self._counters.send_errors += is_message
            return False
        try:
            conn.outbox.send_nowait((data, is_message))
        except trio.WouldBlock:
            self._counters.dropped_queue_full += is_message
            logger.debug(
                "TCP %s: connection #%d send queue full, dropped", self.local, conn.conn_id
            )
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._counters.send_errors += is_message
            return False
        return True

    async def send(self, data: bytes, dest: Address, *, conn_id: int | None = None) -> bool:
        """Queue one message on ``conn_id``, else on a connection to ``dest``, else a new one."""
        if not self._guard.allows(dest):
            self._counters.refused_by_guard += 1
            await trio.lowlevel.checkpoint()
            return False
        conn = self._by_id.get(conn_id) if conn_id is not None else None
        if conn is None or conn.closing:
            conn = await self._connection_for(canonical(dest))
            if conn is None:
                return False
        ok = self._enqueue(conn, data)
        await trio.lowlevel.checkpoint()
        return ok

    async def _connection_for(self, dest: Address) -> _Connection | None:
        conn = self._by_addr.get(dest)
        if conn is not None and not conn.closing:
            return conn
        nursery = self._nursery
        if nursery is None or not is_ip_literal(dest.host):
            # Not serving; or a name, which open_tcp_stream would resolve (DNS is
            # the resolver's job, never a side effect of sending).
            self._counters.send_errors += 1
            logger.debug("TCP %s: cannot send to %s (not serving or not an IP)", self.local, dest)
            await trio.lowlevel.checkpoint()
            return None
        in_progress = self._connecting.get(dest)
        if in_progress is not None:
            await in_progress.wait()
            conn = self._by_addr.get(dest)
            return conn if conn is not None and not conn.closing else None
        done = trio.Event()
        self._connecting[dest] = done
        try:
            started: _Connection | None = await nursery.start(self._connect, dest)
            return started
        finally:
            del self._connecting[dest]
            done.set()
