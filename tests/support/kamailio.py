"""Kamailio 5.6 with app_lua as a reference server in tests and benchmarks: the same Lua
routes file that trio-sip runs, on a loopback port, bounded in time, never left behind.

Theory of operation
-------------------
A :class:`Kamailio` renders ``bench/kamailio/kamailio-lua.cfg`` (a template, see
bench/kamailio/README.md) into a fresh temporary directory with the routes file, the port,
the number of children and optional ``#!define`` lines (tm timers, debug level), then

1. checks it: ``kamailio -c -f CFG`` (bounded; :class:`KamailioError` with Kamailio's own
   output when the config is bad). ``-c`` parses the config and loads the modules; it does
   not run the Lua file, so a Lua syntax error shows at step 3 instead;
2. starts ``kamailio -DD -E -f CFG -w DIR -Y DIR -P DIR/kamailio.pid`` (plus ``-x fm -X fm``
   with ``fast_malloc=True``, ``-m``/``-M`` when memory sizes are given) in a new session,
   so that Kamailio and every worker it forks are one process group of our own (Kamailio
   signals its group on shutdown: it must never be pytest's group). ``-DD`` keeps the main
   process in the foreground (it is our child: its exit code is seen) while it still forks
   its workers; ``-E`` with ``log_stderror=yes`` logs to stderr, which goes to
   ``DIR/kamailio.log`` (:meth:`Kamailio.log`);
3. waits until it serves (bounded by ``ready_within``): the UDP port is bound and the TCP
   port listens (read from /proc/net, no probe bind), then, with ``ready="options"`` (the
   default), an ``OPTIONS sip:127.0.0.1:PORT`` gets any SIP response, i.e. a worker has
   loaded the Lua file and runs routes. If Kamailio exits meanwhile, or the route raises
   a Lua error on the ping, the error says so at once and carries its log;
4. on leaving the block (normally, on an exception or on Trio cancellation) stops it:
   SIGTERM to the main process (Kamailio then stops its workers), after ``stop_within``
   seconds SIGKILL to its workers (the main process reaps them and exits; workers killed
   together with it would be orphans, zombies under a container's PID 1), then SIGKILL to
   the whole group, then waits (bounded) until no process of it is left, killing stragglers
   by pid. The work dir is removed unless
   ``keep_workdir`` or ``$TRIO_SIP_KEEP_KAMAILIO`` is set; the log text is kept in memory.

Blocking code: ``with Kamailio(routes, port) as k: ...``. Trio: ``async with Kamailio(...)
as k: ...`` (the waits use ``trio.sleep``; the stop is shielded from cancellation).

CPU time
--------
:meth:`Kamailio.cpu_seconds` sums utime+stime (and cutime+cstime, so exited workers that
were reaped still count) from ``/proc/PID/stat`` over every live process of Kamailio's
process group and the main process's descendants. Resolution is one clock tick
(``SC_CLK_TCK``, usually 10 ms): take the difference of two readings around a run of
hundreds of calls for "CPU µs per call".

Safety
------
Loopback only (``listen`` must be a loopback address; the config listens on that address
and port alone, udp and tcp, with DNS off and no control socket). Binary: ``$TRIO_SIP_KAMAILIO``,
else ``kamailio`` on PATH, else /usr/sbin/kamailio (:func:`kamailio_binary`, None if
missing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import trio

from .ports import LOOPBACK

__all__ = [
    "CFG_TEMPLATE",
    "TM_TIMER_DEFINES",
    "Kamailio",
    "KamailioError",
    "kamailio_binary",
    "kamailio_missing",
    "render_cfg",
]

REPO = Path(__file__).resolve().parent.parent.parent
CFG_TEMPLATE = REPO / "bench" / "kamailio" / "kamailio-lua.cfg"

# trio-sip's tm setting names (ms) -> the template's #!define names.
TM_TIMER_DEFINES = {
    "fr_timer": "TM_FR_TIMER",
    "fr_inv_timer": "TM_FR_INV_TIMER",
    "wt_timer": "TM_WT_TIMER",
    "retr_timer1": "TM_RETR_T1",
    "retr_timer2": "TM_RETR_T2",
    "max_inv_lifetime": "TM_MAX_INV_LIFETIME",
    "max_noninv_lifetime": "TM_MAX_NONINV_LIFETIME",
}

_CHECK_TIMEOUT_S = 20.0
_POLL_S = 0.05
_PING_EVERY_S = 0.2
_KILL_WAIT_S = 3.0
_DEFINE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


class KamailioError(RuntimeError):
    """Kamailio is missing, its config is bad, or it did not start serving in time."""


def kamailio_binary() -> str | None:
    """Path of the kamailio binary: $TRIO_SIP_KAMAILIO, else ``kamailio`` on PATH, else
    /usr/sbin/kamailio (not on a normal user's PATH); None if missing."""
    env = os.environ.get("TRIO_SIP_KAMAILIO")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("kamailio")
    if found:
        return found
    fallback = "/usr/sbin/kamailio"
    return fallback if os.access(fallback, os.X_OK) else None


def kamailio_missing() -> str | None:
    """Why Kamailio cannot run our routes here (a skip reason), or None when it can: the
    binary is missing, or app_lua.so is not in its default module path (Debian package
    kamailio-lua-modules). Cached; asks ``kamailio -h`` for the module path."""
    global _MISSING
    if _MISSING is not None:
        return _MISSING or None
    binary = kamailio_binary()
    if binary is None:
        _MISSING = (
            "kamailio not installed (Debian packages kamailio and "
            "kamailio-lua-modules; or set TRIO_SIP_KAMAILIO)"
        )
        return _MISSING
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, timeout=10, check=False)
        text = (out.stdout + out.stderr).decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        _MISSING = f"{binary} -h failed: {exc}"
        return _MISSING
    m = re.search(r"Modules search path \(default:\s*([^)\s]+)\)", text)
    if m and not (Path(m.group(1)) / "app_lua.so").exists():
        _MISSING = f"app_lua.so not in {m.group(1)} (Debian package kamailio-lua-modules)"
        return _MISSING
    _MISSING = ""
    return None


_MISSING: str | None = None


def _check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"Kamailio in tests listens on loopback only; {host!r} is not")
    return host


def render_cfg(
    routes: str | os.PathLike[str],
    port: int,
    *,
    children: int = 1,
    listen: str = LOOPBACK,
    defines: Mapping[str, str | int | None] | None = None,
    template: Path = CFG_TEMPLATE,
) -> str:
    """The config text: the template with its ``{{...}}`` placeholders filled in.

    ``defines`` become ``#!define NAME VALUE`` lines (``None``: ``#!define NAME``).
    """
    if children < 1:
        raise ValueError("children must be >= 1")
    if not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    lines = []
    for name, value in (defines or {}).items():
        if not _DEFINE_NAME.match(name):
            raise ValueError(f"bad define name {name!r}")
        text = "" if value is None else str(value)
        if "\n" in text:
            raise ValueError(f"define {name} has a newline")
        lines.append(f"#!define {name} {text}".rstrip())
    values = {
        "LISTEN_ADDR": _check_loopback(listen),
        "PORT": str(int(port)),
        "ROUTES": str(Path(routes).resolve()),
        "CHILDREN": str(int(children)),
        "DEFINES": "\n".join(lines),
    }
    if '"' in values["ROUTES"]:
        raise ValueError("routes path must not contain a double quote")

    def fill(m: re.Match[str]) -> str:
        try:
            return values[m.group(1)]
        except KeyError:
            raise KamailioError(f"{template}: unknown placeholder {m.group(0)}") from None

    return _PLACEHOLDER.sub(fill, template.read_text())


# --- /proc helpers ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)``: [state, ppid, pgrp, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _group_pids(pgid: int, root: int | None) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` or descending from ``root``."""
    stats = {}
    for pid in _all_pids():
        f = _stat_fields(pid)
        if f is not None and f[0] != "Z":
            stats[pid] = f
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    found = {pid for pid, f in stats.items() if int(f[2]) == pgid}
    todo = [root] if root is not None and root in stats else []
    while todo:
        p = todo.pop()
        if p in found and p != root:
            continue
        found.add(p)
        todo.extend(children.get(p, []))
    return sorted(found)


def _cpu_ticks(pid: int) -> int:
    f = _stat_fields(pid)
    if f is None:
        return 0
    # fields 14-17 of stat (utime stime cutime cstime) are 11-14 after "(comm) "
    return sum(int(x) for x in f[11:15])


def _socket_inodes(port: int, tcp: bool, host: str) -> set[str]:
    try:
        text = Path("/proc/net/tcp" if tcp else "/proc/net/udp").read_text()
    except OSError:
        return set()
    a = ipaddress.ip_address(host).packed[::-1].hex().upper()
    want = {f"{a}:{port:04X}"}
    out = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[1] in want and (not tcp or cols[3] == "0A"):
            out.add(cols[9])
    return out


def _pids_hold(pids: list[int], inodes: set[str]) -> bool:
    if not inodes:
        return False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


# --- the OPTIONS ping ---------------------------------------------------------------------


def _options_ping(host: str, port: int, local_port: int, call_id: str, cseq: int) -> bytes:
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{local_port};branch=z9hG4bK-ready-{call_id}-{cseq};rport\r\n"
        f"From: <sip:ready@{host}:{local_port}>;tag=ready{cseq}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _is_answer(data: bytes, call_id: str) -> bool:
    return data.startswith(b"SIP/2.0 ") and call_id.encode() in data


# --- the server ---------------------------------------------------------------------------


class Kamailio:
    """One Kamailio run with a Lua routes file on ``listen``:``port`` (udp and tcp).

    ``with Kamailio("routes/default.lua", port) as k:`` or ``async with ... as k:``.
    ``extra_defines``: more ``#!define`` lines for the template (e.g. ``DEBUG_LEVEL=2``
    to see ``KSR.info`` lines in :meth:`log`); ``tm``: tm timers in ms by trio-sip's names
    (``{"fr_timer": 5000, "fr_inv_timer": 30000}``, see :data:`TM_TIMER_DEFINES`).
    ``ready``: "options" (an OPTIONS to the server gets any reply) or "bound" (sockets
    bound only; for routes that answer no OPTIONS).
    """

    def __init__(
        self,
        routes: str | os.PathLike[str],
        port: int,
        *,
        children: int = 1,
        fast_malloc: bool = False,
        extra_defines: Mapping[str, str | int | None] | None = None,
        tm: Mapping[str, int] | None = None,
        listen: str = LOOPBACK,
        shm_mb: int | None = None,
        pkg_mb: int | None = None,
        ready: Literal["options", "bound"] = "options",
        ready_within: float = 15.0,
        stop_within: float = 5.0,
        keep_workdir: bool | None = None,
        binary: str | None = None,
    ) -> None:
        self.routes = Path(routes).resolve()
        if not self.routes.is_file():
            raise KamailioError(f"routes file not found: {self.routes}")
        self.port = int(port)
        self.listen = _check_loopback(listen)
        self.children = children
        self.fast_malloc = fast_malloc
        defines: dict[str, str | int | None] = {}
        for name, ms in (tm or {}).items():
            if name not in TM_TIMER_DEFINES:
                raise ValueError(f"unknown tm timer {name!r}; one of {sorted(TM_TIMER_DEFINES)}")
            defines[TM_TIMER_DEFINES[name]] = int(ms)
        defines.update(extra_defines or {})
        self.defines = defines
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        if ready not in ("options", "bound"):
            raise ValueError("ready must be 'options' or 'bound'")
        self.ready = ready
        self.ready_within = ready_within
        self.stop_within = stop_within
        if keep_workdir is None:
            keep_workdir = bool(os.environ.get("TRIO_SIP_KEEP_KAMAILIO"))
        self.keep_workdir = keep_workdir
        self._binary = binary
        self.workdir: Path | None = None
        self.returncode: int | None = None
        self.stopped_by: str | None = None  # None: still running or exited by itself
        self._log_text: str | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._trio_proc: trio.Process | None = None
        self._pid: int | None = None

    # -- description --

    @property
    def binary(self) -> str:
        b = self._binary or kamailio_binary()
        if b is None:
            raise KamailioError(
                "kamailio not found (Debian: kamailio kamailio-lua-modules;"
                " or set TRIO_SIP_KAMAILIO)"
            )
        return b

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen, self.port)

    @property
    def cfg_path(self) -> Path:
        return self._dir / "kamailio.cfg"

    @property
    def pid_file(self) -> Path:
        return self._dir / "kamailio.pid"

    @property
    def log_path(self) -> Path:
        return self._dir / "kamailio.log"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise KamailioError("not started")
        return self.workdir

    def render(self) -> str:
        return render_cfg(
            self.routes, self.port, children=self.children, listen=self.listen, defines=self.defines
        )

    def check_command(self) -> list[str]:
        return [self.binary, "-c", "-f", str(self.cfg_path)]

    def command(self) -> list[str]:
        d = str(self._dir)
        cmd = [
            self.binary,
            "-DD",
            "-E",
            "-f",
            str(self.cfg_path),
            "-w",
            d,
            "-Y",
            d,
            "-P",
            str(self.pid_file),
        ]
        if self.fast_malloc:
            cmd += ["-x", "fm", "-X", "fm"]
        if self.shm_mb is not None:
            cmd += ["-m", str(int(self.shm_mb))]
        if self.pkg_mb is not None:
            cmd += ["-M", str(int(self.pkg_mb))]
        return cmd

    # -- state --

    @property
    def pid(self) -> int:
        """The main (attendant) process; it is also the process group id."""
        if self._pid is None:
            raise KamailioError("not started")
        return self._pid

    def _poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        if self._trio_proc is not None:
            return self._trio_proc.poll()
        return self.returncode

    @property
    def running(self) -> bool:
        return self._pid is not None and self._poll() is None

    def pids(self) -> list[int]:
        """Live processes of this Kamailio: main process and workers (its process group;
        while the main process runs, also its descendants)."""
        if self._pid is None:
            return []
        # Once the main process is reaped its pid may be reused: match the group only.
        return _group_pids(self._pid, self._pid if self._poll() is None else None)

    def cpu_seconds(self) -> float:
        """CPU seconds (user+system) used so far by Kamailio's main process and workers."""
        ticks = sum(_cpu_ticks(p) for p in self.pids())
        return ticks / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        """Kamailio's stderr so far (or as captured when it stopped)."""
        if self._log_text is not None:
            return self._log_text
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, KamailioError):
            return ""

    def log_errors(self, *, route_logs: bool = False) -> list[str]:
        """Log lines at level ERROR or worse (CRITICAL, ALERT, BUG): Lua errors in routes,
        module and core errors. Lines the route wrote itself (``KSR.err``, ``KSR.crit``,
        ``KSR.log``: Kamailio's ``sr_kemi_core_*`` functions) only with ``route_logs``."""
        return [
            ln
            for ln in self.log().splitlines()
            if re.search(r"\b(ERROR|CRITICAL|ALERT|BUG):", ln)
            and (route_logs or "sr_kemi_core_" not in ln)
        ]

    def describe(self, max_chars: int = 3000) -> str:
        text = self.log()
        if len(text) > max_chars:
            text = f"... ({len(text) - max_chars} chars before)\n" + text[-max_chars:]
        state = (
            "running"
            if self.running
            else f"exited {self.returncode}"
            + (f" after {self.stopped_by}" if self.stopped_by else "")
        )
        where = (
            f"files in {self.workdir}"
            if self.keep_workdir
            else "files removed (keep: $TRIO_SIP_KEEP_KAMAILIO=1)"
        )
        try:
            cmd = " ".join(self.command())
        except KamailioError:
            cmd = "(not started)"
        return f"kamailio {state}; {where}\n  command: {cmd}\n  log:\n{text}"

    # -- preparing --

    def _prepare(self) -> None:
        self.binary  # noqa: B018  (raise early when missing)
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-sip-kamailio-"))
        self.cfg_path.write_text(self.render())

    def _check_failed(self, rc: int | None, out: str) -> KamailioError:
        why = "timed out" if rc is None else f"exit {rc}"
        return KamailioError(
            f"kamailio config check failed ({why}): {' '.join(self.check_command())}\n{out}"
        )

    def _not_ready(self, why: str) -> KamailioError:
        return KamailioError(
            f"kamailio not serving on {self.listen}:{self.port}: {why}\n" + self.describe()
        )

    def _lua_failed(self) -> None:
        """Raise at once when the route raised a Lua error while we wait (e.g. on the
        OPTIONS ping) instead of waiting out ``ready_within``."""
        errors = [ln for ln in self.log_errors() if "error from Lua" in ln]
        if errors:
            raise self._not_ready(f"the route raised a Lua error: {errors[0].strip()}")

    def _ready_state(self) -> bool:
        pids = self.pids()
        udp = _pids_hold(pids, _socket_inodes(self.port, False, self.listen))
        tcp = _pids_hold(pids, _socket_inodes(self.port, True, self.listen))
        return udp and tcp

    # -- blocking API --

    def __enter__(self) -> Kamailio:
        try:
            self._prepare()
            self._check_sync()
            out = self.log_path.open("wb")
            try:
                self._popen = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,
                )
            finally:
                out.close()
            self._pid = self._popen.pid
            self._wait_ready_sync()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _check_sync(self) -> None:
        try:
            r = subprocess.run(
                self.check_command(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_CHECK_TIMEOUT_S,
                cwd=self._dir,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"") + (exc.stderr or b"")
            raise self._check_failed(None, out.decode(errors="replace")) from None
        if r.returncode != 0:
            raise self._check_failed(r.returncode, (r.stdout + r.stderr).decode(errors="replace"))

    def _wait_ready_sync(self) -> None:
        deadline = time.monotonic() + self.ready_within
        while not self._ready_state():
            rc = self._poll()
            if rc is not None:
                self.returncode = rc
                raise self._not_ready(f"exited with {rc} during start")
            if time.monotonic() > deadline:
                raise self._not_ready(f"sockets not bound within {self.ready_within} s")
            time.sleep(_POLL_S)
        if self.ready == "bound":
            return
        call_id = f"ready-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.listen, 0))
            s.settimeout(_PING_EVERY_S)
            cseq = 0
            while True:
                rc = self._poll()
                if rc is not None:
                    self.returncode = rc
                    raise self._not_ready(f"exited with {rc} during start")
                self._lua_failed()
                if time.monotonic() > deadline:
                    raise self._not_ready(f"no answer to OPTIONS within {self.ready_within} s")
                cseq += 1
                s.sendto(
                    _options_ping(self.listen, self.port, s.getsockname()[1], call_id, cseq),
                    self.address,
                )
                end = time.monotonic() + _PING_EVERY_S
                while time.monotonic() < end:
                    try:
                        data = s.recv(65535)
                    except TimeoutError:
                        break
                    if _is_answer(data, call_id):
                        return

    def stop(self) -> int | None:
        """Stop Kamailio (TERM, then KILL of its group), wait for every process of it,
        keep the log text, remove the work dir (unless kept). Idempotent."""
        if self._popen is not None and self._popen.poll() is None:
            self._signal_main(signal.SIGTERM)
            try:
                self._popen.wait(self.stop_within)
                self.stopped_by = "SIGTERM"
            except subprocess.TimeoutExpired:
                self._kill_workers()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(_KILL_WAIT_S / 2)  # the main process may exit itself
                self._killpg()
                self.stopped_by = "SIGKILL"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(_KILL_WAIT_S)
        if self._popen is not None:
            self.returncode = self._popen.poll()
        self._reap_stragglers_sync()
        self._finish()
        return self.returncode

    # -- Trio API --

    async def __aenter__(self) -> Kamailio:
        try:
            self._prepare()
            await self._check_async()
            out = self.log_path.open("wb")
            try:
                self._trio_proc = await trio.lowlevel.open_process(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,
                )
            finally:
                out.close()
            self._pid = self._trio_proc.pid
            await self._wait_ready_async()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.astop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.astop()

    async def _check_async(self) -> None:
        with trio.move_on_after(_CHECK_TIMEOUT_S) as scope:
            r = await trio.run_process(
                self.check_command(),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=self._dir,
            )
        if scope.cancelled_caught:
            raise self._check_failed(None, "")
        if r.returncode != 0:
            raise self._check_failed(r.returncode, (r.stdout + r.stderr).decode(errors="replace"))

    async def _wait_ready_async(self) -> None:
        with trio.move_on_after(self.ready_within):
            while not self._ready_state():
                rc = self._poll()
                if rc is not None:
                    self.returncode = rc
                    raise self._not_ready(f"exited with {rc} during start")
                await trio.sleep(_POLL_S)
            if self.ready == "bound":
                return
            call_id = f"ready-{uuid.uuid4().hex}"
            s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with s:
                await s.bind((self.listen, 0))
                cseq = 0
                while True:
                    rc = self._poll()
                    if rc is not None:
                        self.returncode = rc
                        raise self._not_ready(f"exited with {rc} during start")
                    self._lua_failed()
                    cseq += 1
                    await s.sendto(
                        _options_ping(self.listen, self.port, s.getsockname()[1], call_id, cseq),
                        self.address,
                    )
                    with trio.move_on_after(_PING_EVERY_S):
                        while True:
                            data = await s.recv(65535)
                            if _is_answer(data, call_id):
                                return
        raise self._not_ready(f"not serving within {self.ready_within} s")

    async def astop(self) -> int | None:
        """:meth:`stop` for Trio (shield it when cancellation may be pending)."""
        p = self._trio_proc
        if p is not None and p.poll() is None:
            self._signal_main(signal.SIGTERM)
            with trio.move_on_after(self.stop_within):
                await p.wait()
            if p.poll() is None:
                self._kill_workers()
                with trio.move_on_after(_KILL_WAIT_S / 2):  # the main process may exit itself
                    await p.wait()
                self._killpg()
                with trio.move_on_after(_KILL_WAIT_S):
                    await p.wait()
                self.stopped_by = "SIGKILL"
            else:
                self.stopped_by = "SIGTERM"
        if p is not None:
            self.returncode = p.poll()
        deadline = time.monotonic() + _KILL_WAIT_S
        while self._stragglers() and time.monotonic() < deadline:
            self._kill_stragglers()
            await trio.sleep(_POLL_S)
        self._finish()
        return self.returncode

    # -- stopping, shared --

    def _signal_main(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _kill_workers(self) -> None:
        """SIGKILL every worker, not the main process: the main process (our child) reaps
        them, which it cannot do for workers killed together with it (orphans are left to
        PID 1, which in a container may never reap them: zombies)."""
        for pid in self.pids():
            if pid != self.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _killpg(self) -> None:
        # The group is ours: Kamailio was started in a new session, pgid == its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _stragglers(self) -> list[int]:
        return self.pids() if self._pid is not None else []

    def _kill_stragglers(self) -> None:
        for pid in self._stragglers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _reap_stragglers_sync(self) -> None:
        deadline = time.monotonic() + _KILL_WAIT_S
        while self._stragglers() and time.monotonic() < deadline:
            self._kill_stragglers()
            time.sleep(_POLL_S)

    def _finish(self) -> None:
        if self.workdir is None or self._log_text is not None:
            return
        self._log_text = self.log()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
