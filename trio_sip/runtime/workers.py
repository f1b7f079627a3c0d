"""``trio-sip run --workers N``: N server processes on one machine.

Theory of operation
-------------------
::

                 supervisor (the ``trio-sip run`` process: no SIP, no Lua)
                   binds every socket once, keeps them open, starts the workers,
                   forwards SIGINT/SIGTERM, restarts a worker that dies
                  /                 |                  \\
            worker 0            worker 1     ...    worker N-1
     (python -c worker_main: one Trio loop, one Lua state, its own transactions)

    udp:127.0.0.1:5060  = N sockets, one per worker, in one SO_REUSEPORT group
    tcp:127.0.0.1:5060  = N listening sockets, one per worker, SO_REUSEPORT
    worker i's own UDP port (core.worker_port_base + i, or one the OS picked)

*  **Sharing the listen port.** Every worker has a socket of its own in the
   SO_REUSEPORT group of each listen address; the kernel spreads incoming
   datagrams and connections over the group by a hash of the 4-tuple (source
   and destination address and port). The group's members are bound by the
   supervisor before any worker starts and stay open in the supervisor for its
   whole life: a worker that dies and is restarted gets *the same socket* back,
   so the group never changes size and the hash never moves a client to another
   worker (datagrams that arrive while a worker restarts wait in its socket's
   buffer).
*  **Replies reach the owner.** A worker sends what it originates or relays
   (requests, ACK and CANCEL it generates, retransmissions) from its own UDP
   socket and puts that socket's port in the Via it adds, so responses come back
   to the worker that holds the client transaction. The Record-Route it adds
   names the shared listen address instead: in-dialog requests are new
   transactions, which any worker can serve (loose routing, docs/workers.md).
   Responses this proxy sends upstream leave from the socket the request came
   in on (the shared port), as RFC 3581 symmetric responses want.
*  **Requests of an existing server transaction** (retransmissions, CANCEL, the
   ACK of a negative final) arrive on the shared port. For UDP the kernel's
   hash is over the source address and port, so a client that sends them from
   the socket it sent the INVITE from (what RFC 3261 §18.1.1 and every common UA
   do) reaches the worker that has the transaction. A client that changes its
   source port between the INVITE and its CANCEL lands on a worker that does not
   know the transaction; that worker runs the request route for it as Kamailio
   does for a CANCEL it cannot match (routes/stateful.lua, like Kamailio's basic
   KEMI script, drops it when ``t_check_trans()`` finds no INVITE). Over TCP the connection is owned by one worker, so everything on
   it reaches the same worker.
*  **Per process**: transactions, usrloc's in-memory cache, htable, mqueue,
   $shv, the DNS cache, statistics, Lua globals. The management interface of
   worker i listens on ``mi.listen``'s port + i (worker 0 on the configured
   one); rtimer's timers run in worker 0 only. docs/workers.md says what that
   means for a registrar.
*  **Supervision.** A worker that exits while the supervisor is not stopping is
   logged and restarted after ``RESTART_DELAY``; more than ``MAX_RESTARTS``
   within ``RESTART_WINDOW`` seconds stops the whole server (exit 1), so a
   crash loop does not spin. A worker that cannot start at first (a port taken,
   a broken route) stops the start: every worker is stopped and the supervisor
   exits 1 with the worker's error. SIGINT/SIGTERM is sent on to every worker as
   SIGTERM (they run in their own session, so a terminal's Ctrl-C reaches them
   once, through us); a worker still running after ``STOP_TIMEOUT`` is killed, as
   is every worker on a second signal. The supervisor keeps each worker's stdin
   open (a pipe; its spec is the first line): when the supervisor dies, however it
   dies, the worker reads EOF there and shuts down, so none is left behind.
   (Not PR_SET_PDEATHSIG: it fires when the *thread* that forked the child ends,
   and Trio starts processes from a worker thread that ends when idle.)

Not implemented: shared-memory state between workers (Kamailio's shm), an
aggregated management interface, and worker counts that change at run time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from ..config import Config, ListenSpec, split_mi_listen
from ..transport.base import Address, MessageHandler, family_of
from ..transport.guard import LoopbackGuard
from ..transport.tcp import TcpTransport
from ..transport.udp import UdpTransport

__all__ = [
    "MAX_RESTARTS",
    "RESTART_WINDOW",
    "STOP_TIMEOUT",
    "ListenerSockets",
    "StartError",
    "Supervisor",
    "WorkerSockets",
    "bind_sockets",
    "mi_listen_for",
    "run_workers",
    "worker_main",
]

log = logging.getLogger("trio_sip.workers")

#: a worker that dies is restarted after this many seconds
RESTART_DELAY: Final = 0.5
#: more restarts than this within RESTART_WINDOW seconds stop the server
MAX_RESTARTS: Final = 5
RESTART_WINDOW: Final = 60.0
#: seconds a worker has to report started
START_TIMEOUT: Final = 60.0
#: seconds the workers have to stop after SIGTERM before they are killed
STOP_TIMEOUT: Final = 20.0
_TCP_BACKLOG: Final = 128


class StartError(Exception):
    """The server cannot start: a port is taken, a worker failed to start. ``status``
    is the exit status: 2 for a config error (as the single process), else 1."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- sockets --------------------------------------------------------------------


@dataclass
class ListenerSockets:
    """One listen address's sockets: one per worker in the SO_REUSEPORT group
    (``shared``) and, for UDP, each worker's own socket (``own``)."""

    spec: ListenSpec
    shared: list[socket.socket]
    own: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for s in (*self.shared, *self.own):
            s.close()


def _where(proto: str, host: str, port: int) -> str:
    return f"{proto}:{Address(host, port)}"


def _new_socket(spec: ListenSpec) -> socket.socket:
    family = family_of(spec.host)
    s = socket.socket(family, socket.SOCK_DGRAM if spec.proto == "udp" else socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if spec.proto == "tcp":  # restart without TIME_WAIT trouble
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def _bind(s: socket.socket, spec: ListenSpec, port: int, what: str) -> None:
    try:
        s.bind((spec.host, port))
    except OSError as exc:
        s.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartError(f"cannot listen on {_where(spec.proto, spec.host, port)}"
                         f" ({what}): {reason}") from exc


def bind_sockets(config: Config, count: int) -> list[ListenerSockets]:
    """Bind every socket ``count`` workers need, for each of ``core.listen``: the
    SO_REUSEPORT group (after checking, with a plain bind, that nobody holds the
    address: a group of another process of the same user would otherwise be joined
    silently and share our traffic) and each worker's own UDP socket. StartError
    names the address and the reason when one cannot be bound."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartError("--workers needs SO_REUSEPORT, which this platform lacks")
    out: list[ListenerSockets] = []
    base = config.core.worker_port_base
    udp_index = 0
    try:
        for spec in config.core.listen:
            if spec.port:
                probe = _new_socket(spec)
                _bind(probe, spec, spec.port, "in use by another process")
                probe.close()
            group = ListenerSockets(spec, [])
            out.append(group)
            port = spec.port
            for _ in range(count):
                s = _new_socket(spec)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                _bind(s, spec, port, "SO_REUSEPORT group")
                port = s.getsockname()[1]
                if spec.proto == "tcp":
                    s.listen(_TCP_BACKLOG)
                group.shared.append(s)
            if spec.proto == "udp":
                for i in range(count):
                    own_port = base + udp_index * count + i if base else 0
                    s = _new_socket(spec)
                    _bind(s, spec, own_port, f"worker {i}'s own port, core.worker_port_base")
                    group.own.append(s)
                udp_index += 1
    except BaseException:
        for g in out:
            g.close()
        raise
    return out


def mi_listen_for(listen: str, index: int) -> str:
    """Worker ``index``'s ``mi.listen``: the configured port + index (0 stays 0);
    "" (no management interface) stays ""."""
    if not listen:
        return ""
    host, port = split_mi_listen(listen)
    return str(Address(host, port + index if port else 0))


@dataclass
class WorkerSockets:
    """What one worker serves on (``serve(config, worker=...)``, runtime/server.py):
    ``listeners`` holds, per ``core.listen`` entry in order, its socket of the shared
    group and, for UDP, its own socket."""

    index: int
    count: int
    listeners: list[tuple[ListenSpec, socket.socket, socket.socket | None]]
    mi_listen: str

    def transports(self, config: Config, handler: MessageHandler, guard: LoopbackGuard
                   ) -> list[UdpTransport | TcpTransport]:
        """The transports, not started yet: the worker's own UDP sockets first (the
        first transport of a protocol is the one the core sends with), then the
        shared listeners."""
        own: list[UdpTransport | TcpTransport] = []
        shared: list[UdpTransport | TcpTransport] = []
        core = config.core
        for spec, shared_sock, own_sock in self.listeners:
            if spec.proto == "udp":
                listener = UdpTransport(Address(spec.host, spec.port), handler, guard,
                                        queue_size=core.udp_queue_size,
                                        max_message_size=core.max_message_size,
                                        sock=shared_sock)
                shared.append(listener)
                if own_sock is not None:
                    own.append(UdpTransport(Address(spec.host, 0), handler, guard,
                                            queue_size=core.udp_queue_size,
                                            max_message_size=core.max_message_size,
                                            sock=own_sock, listener=listener))
            else:
                shared.append(TcpTransport(Address(spec.host, spec.port), handler, guard,
                                           max_message_size=core.max_message_size,
                                           max_connections=core.tcp_max_connections,
                                           idle_timeout=core.tcp_idle_timeout,
                                           connect_timeout=core.tcp_connect_timeout,
                                           sock=shared_sock))
        return own + shared


# -- the supervisor -------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    proc: trio.Process | None = None
    #: the worker's stdin, kept open: its EOF tells the worker the supervisor is gone
    stdin: trio.abc.SendStream | None = None
    #: "config" when its last start failed on a config error
    error_kind: str | None = None
    starts: int = 0
    restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    """Starts ``config.core.workers`` workers on sockets bound here and keeps them
    running until stopped (see the module docstring). ``config_path`` and
    ``overrides`` are what each worker loads its config from (the same as ours)."""

    def __init__(self, config: Config, config_path: str | None, overrides: Sequence[str],
                 *, python: str = sys.executable) -> None:
        self.config = config
        self.count = config.core.workers
        self.config_path = config_path
        self.overrides = list(overrides)
        self.python = python
        self.groups: list[ListenerSockets] = []
        self.slots = [_Slot(i) for i in range(self.count)]
        self.stopping = False
        #: why the server stopped on its own (a crash loop), None after a signal
        self.failure: str | None = None
        self._nursery: trio.Nursery | None = None

    # running

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Bind, start every worker, report started, supervise until SIGINT/SIGTERM.
        StartError when a socket or a worker cannot start."""
        self.groups = bind_sockets(self.config, self.count)
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch_signals, signals)
                    try:
                        async with trio.open_nursery() as starting:
                            for slot in self.slots:
                                starting.start_soon(nursery.start, self._supervise, slot)
                    except BaseException:
                        await self._stop_all("a worker failed to start")
                        raise
                    if not self.stopping:
                        log.info("%d workers running on %s", self.count, ", ".join(
                            f"{g.spec.proto}:{Address(g.spec.host, g.shared[0].getsockname()[1])}"
                            for g in self.groups))
                        log.warning(
                            "workers: transactions, usrloc's memory cache, htable, mqueue, "
                            "$shv, statistics and Lua globals are per worker process; rtimer "
                            "runs in worker 0 only (docs/workers.md)")
                    task_status.started(self)
        finally:
            for g in self.groups:
                g.close()

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping:
                log.warning("received %s again: killing the workers", name)
                self._signal_all(signal.SIGKILL)
                continue
            log.info("received %s: stopping %d workers", name, self.count)
            assert self._nursery is not None
            self._nursery.start_soon(self._stop_all, f"{name}")

    async def _stop_all(self, why: str) -> None:
        """SIGTERM every worker, wait up to STOP_TIMEOUT, kill the rest, end supervision."""
        if self.stopping:
            return
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_TIMEOUT):
                for slot in self.slots:
                    if slot.proc is not None:
                        await slot.proc.wait()
            late = [s.index for s in self.slots if s.proc is not None and s.proc.returncode is None]
            if late:
                log.error("workers %s still running %.0fs after SIGTERM: killed", late,
                          STOP_TIMEOUT)
                self._signal_all(signal.SIGKILL)
                for slot in self.slots:
                    if slot.proc is not None:
                        await slot.proc.wait()
        log.info("all workers stopped (%s)", why)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _is_stopping(self) -> bool:  # a call: mypy must not narrow it across awaits
        return self.stopping

    async def _supervise(self, slot: _Slot, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run worker ``slot.index``: report started once it is up, restart it when it
        dies (bounded, see the module docstring)."""
        first = True
        while not self.stopping:
            error = await self._start(slot)
            proc = slot.proc
            assert proc is not None
            if error is None and first:
                task_status.started()
                first = False
            elif error is not None and first:
                if self._is_stopping():  # stopped by a signal while starting
                    task_status.started()
                    return
                raise StartError(f"worker {slot.index}: {error}",
                                 2 if slot.error_kind == "config" else 1)
            elif error is not None:
                log.error("worker %d failed to restart: %s", slot.index, error)
            code = await proc.wait()
            await self._close_stdin(slot)
            if self._is_stopping():
                return
            now = trio.current_time()
            slot.restarts.append(now)
            while slot.restarts and now - slot.restarts[0] > RESTART_WINDOW:
                slot.restarts.popleft()
            log.error("worker %d (pid %d) exited with %s", slot.index, proc.pid,
                      _describe_exit(code))
            if len(slot.restarts) > MAX_RESTARTS:
                self.failure = (f"worker {slot.index} exited {len(slot.restarts)} times "
                                f"within {RESTART_WINDOW:.0f}s: giving up")
                log.error("%s; stopping the server", self.failure)
                assert self._nursery is not None
                self._nursery.start_soon(self._stop_all, "a worker keeps dying")
                return
            await trio.sleep(RESTART_DELAY)
            if not self.stopping:
                log.info("restarting worker %d", slot.index)

    @staticmethod
    async def _close_stdin(slot: _Slot) -> None:
        if slot.stdin is not None:
            with trio.CancelScope(shield=True):
                await slot.stdin.aclose()
            slot.stdin = None

    async def _start(self, slot: _Slot) -> str | None:
        """Start worker ``slot.index`` and wait for its report: None once it serves,
        else its error (the process is then waited for and gone)."""
        i = slot.index
        read_fd, write_fd = os.pipe()
        listeners = []
        fds = [write_fd]
        for g in self.groups:
            own = g.own[i].fileno() if g.own else None
            listeners.append([g.shared[i].fileno(), own])
            fds.append(g.shared[i].fileno())
            if own is not None:
                fds.append(own)
        spec = {
            "index": i, "count": self.count, "config": self.config_path,
            "overrides": self.overrides, "listeners": listeners, "status_fd": write_fd,
        }
        try:
            proc = await trio.lowlevel.open_process(
                [self.python, "-c",
                 "import sys; from trio_sip.runtime.workers import worker_main; "
                 "sys.exit(worker_main())"],
                stdin=subprocess.PIPE, pass_fds=fds, start_new_session=True)
        finally:
            os.close(write_fd)
        slot.proc = proc
        slot.starts += 1
        status = trio.lowlevel.FdStream(read_fd)
        try:
            assert proc.stdin is not None
            slot.stdin = proc.stdin
            try:
                await proc.stdin.send_all(json.dumps(spec).encode() + b"\n")
            except trio.BrokenResourceError:
                pass  # it died at once; its exit tells why
            report = None
            with trio.move_on_after(START_TIMEOUT):
                report = await _read_report(status)
        finally:
            await status.aclose()
        if report is not None and "ready" in report:
            r = report["ready"]
            log.info("worker %d (pid %d) serving: %s; own %s; mi %s", i, proc.pid,
                     ", ".join(r.get("listen", [])), ", ".join(r.get("own", [])) or "-",
                     r.get("mi") or "-")
            return None
        if report is None:
            proc.kill()
        code = await proc.wait()
        await self._close_stdin(slot)
        if report is not None and "error" in report:
            slot.error_kind = report.get("kind")
            return str(report["error"])
        return f"exited with {_describe_exit(code)} before it reported started"


async def _read_report(stream: trio.lowlevel.FdStream) -> dict[str, Any] | None:
    """The first JSON line a worker writes on its status pipe; None at EOF."""
    buf = b""
    while b"\n" not in buf and len(buf) < 65536:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        buf += chunk
    try:
        value = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return {"error": f"unreadable report {buf[:200]!r}"}
    return value if isinstance(value, dict) else None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def run_workers(config: Config, config_path: str | None, overrides: Sequence[str]) -> int:
    """``trio-sip run --workers N``: supervise N workers until SIGINT/SIGTERM.
    Returns the exit status: 0 after a signal, 1 when it cannot start or a worker
    keeps dying."""
    supervisor = Supervisor(config, config_path, overrides)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)

    try:
        trio.run(main)
    except StartError as exc:
        log.error("cannot start: %s", exc)
        return exc.status
    except BaseExceptionGroup as group:
        starts = [e for e in _leaves(group) if isinstance(e, StartError)]
        if not starts or len(starts) != len(_leaves(group)):
            raise
        for e in starts:
            log.error("cannot start: %s", e)
        return max(e.status for e in starts)
    return 1 if supervisor.failure else 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


# -- a worker ---------------------------------------------------------------------


class _WorkerTag(logging.Filter):
    """Puts ``w<i>`` before the logger name, so the lines of N workers can be told apart."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.tag = f"w{index}"

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_worker_tagged", False):
            record.name = f"{self.tag} {record.name}"
            record._worker_tagged = True
        return True


def _read_spec() -> dict[str, Any]:
    """The spec line the supervisor wrote on stdin (read unbuffered: nothing past it)."""
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < 1 << 20:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buf += chunk
    spec = json.loads(buf)
    if not isinstance(spec, dict):
        raise ValueError("the worker spec is not a JSON object")
    return spec


def worker_main() -> int:
    """A worker process: read its spec (JSON) from stdin, load the config as the
    supervisor did, serve on the sockets it inherited until SIGTERM/SIGINT. Reports
    ``{"ready": ...}`` or ``{"error": ...}`` as one JSON line on its status pipe."""
    from ..config import ConfigError, load_config
    from ..log import setup_logging
    from ..script.engine import ScriptError

    spec = _read_spec()
    index, count = int(spec["index"]), int(spec["count"])
    status = os.fdopen(int(spec["status_fd"]), "w", buffering=1)

    def report(**value: Any) -> None:
        try:
            status.write(json.dumps(value) + "\n")
            status.close()
        except OSError:
            pass

    try:
        config = load_config(spec["config"], spec["overrides"])
    except ConfigError as exc:
        report(error=str(exc), kind="config")
        return 2
    handler = setup_logging(config.core.log_level)
    handler.addFilter(_WorkerTag(index))
    listeners: list[tuple[ListenSpec, socket.socket, socket.socket | None]] = []
    for lspec, (shared_fd, own_fd) in zip(config.core.listen, spec["listeners"], strict=True):
        listeners.append((lspec, socket.socket(fileno=shared_fd),
                          socket.socket(fileno=own_fd) if own_fd is not None else None))
    sockets = WorkerSockets(index, count, listeners, mi_listen_for(config.mi.listen, index))
    try:
        trio.run(_serve_worker, config, sockets, report)
    except ConfigError as exc:  # modparams, checked when the server builds its modules
        log.error("%s", exc)
        report(error=str(exc), kind="config")
        return 2
    except (ScriptError, OSError) as exc:
        log.error("cannot start: %s", exc)
        report(error=str(exc))
        return 1
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if leaves and all(isinstance(e, ConfigError) for e in leaves):
            msg = "; ".join(str(e) for e in leaves)
            log.error("%s", msg)
            report(error=msg, kind="config")
            return 2
        if not leaves or not all(isinstance(e, (OSError, ScriptError)) for e in leaves):
            report(error=f"{type(group).__name__}: {group}")
            raise
        msg = "; ".join(str(e) for e in leaves)
        log.error("cannot start: %s", msg)
        report(error=msg)
        return 1
    return 0


async def _serve_worker(config: Config, sockets: WorkerSockets, report: Any) -> None:
    from .server import serve, tune_gc

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, config, worker=sockets))
            tune_gc(config.core.gc_threshold)
            nursery.start_soon(_watch_supervisor, nursery.cancel_scope)
            listen = [f"{t.proto}:{t.local}" for t in server.transports
                      if getattr(t, "listener", None) is None]
            own = [f"{t.proto}:{t.local}" for t in server.transports
                   if getattr(t, "listener", None) is not None]
            report(ready={"listen": listen, "own": own, "pid": os.getpid(),
                          "mi": str(server.mi_address) if server.mi_address else None})
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _watch_supervisor(scope: trio.CancelScope) -> None:
    """Stop the worker when its stdin (the supervisor's pipe) reaches EOF: the
    supervisor is gone."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while True:
            try:
                if not await stream.receive_some(4096):
                    break
            except (trio.BrokenResourceError, OSError):
                break
    log.error("the supervisor is gone: shutting down")
    scope.cancel()
