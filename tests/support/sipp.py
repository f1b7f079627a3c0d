"""SIPp as a real peer in tests: build the command line, run it headless, read its figures.

Theory of operation
-------------------
A :class:`Sipp` is a frozen description of one SIPp run (scenario, addresses, transport,
rate, counts, timeouts). It renders a command line (:meth:`Sipp.command`) and can be run

* synchronously: ``Sipp(...).run()`` / :func:`run_sipp` (blocking, for plain tests and tools),
  or ``with Sipp(...).start() as uas: ...`` for a peer in the background;
* inside Trio (pytest-trio, while the server under test runs in the same loop):
  ``await Sipp(...).run_async()`` / :func:`run_sipp_async`, or
  ``async with Sipp(...).running() as uas: ...`` for a background peer.

Every run ends in a :class:`SippResult`: exit code, successful/failed calls, retransmissions,
response times (all from the last line of SIPp's ``-stf`` statistics CSV), and the text of the
error log (``-trace_err``) and final screen, so an assertion can show why calls failed
(``assert result.ok, result.describe()``).

Headless SIPp
-------------
SIPp draws a curses-like screen and reads keys from stdin. ``-nostdin`` plus stdin from
/dev/null and stdout/stderr to a file is all it needs; ``-bg`` is not used (it forks and the
parent exits, so the exit code and the process would be lost). ``-trace_screen`` keeps the
final screen. Each run gets its own directory holding the statistics CSV, the error log,
the screen dump, stdout and, with ``trace_msg=True``, every message sent and received.

Addresses and safety
--------------------
Only 127.0.0.1 is used: every host given here is checked to be loopback (ValueError
otherwise), SIPp binds ``-i 127.0.0.1`` and its remote control port (``-cp``, a UDP socket
SIPp opens on 0.0.0.0; it only listens) and media ports (``-mp`` and ``-mp`` + 2 for video,
127.0.0.1, nothing is sent from them: no RTP echo or stream is started) are taken from free
ports so parallel runs and fixed test ports do not collide; a SIPp that still loses the race
for them is started again on new ones. ``-timeout`` (default 30 s) bounds every run even if this
process dies; the runner kills SIPp on exit, error or cancellation, so no SIPp outlives its
test (SIGUSR1 = SIPp's graceful stop, then SIGTERM, which still writes the final statistics,
then SIGKILL).

Sending through a proxy while naming the UAS
--------------------------------------------
SIPp's Request-URI and To are ``sip:[service]@[remote_ip]:[remote_port]``, the positional
remote address. ``-rsa HOST:PORT`` changes only where packets are sent. So
``Sipp("uac.xml", remote=uas_port, via=proxy_port)`` renders
``sipp -sf tests/sipp/uac.xml 127.0.0.1:UAS -rsa 127.0.0.1:PROXY ...``: the INVITE's R-URI is
``sip:service@127.0.0.1:UAS`` and the packet goes to the proxy, which forwards it by R-URI.
ACK and BYE (uac.xml) go to [next_url] with [routes] from the 200's Record-Route, also sent to
the proxy. ``service`` (``-s``) sets the user part.

Exit codes (``sipp -h``)
------------------------
0 all calls successful; 1 at least one call failed; 97 exit on internal command (e.g. global
``-timeout`` without ``-timeout_error``); 99 normal exit without calls processed; 255 (-1)
fatal error, also the global timeout with ``-timeout_error``; 254 (-2) fatal error binding a
socket.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import trio

from .ports import LOOPBACK, free_port, free_port_block, free_port_both, is_port_free

__all__ = [
    "BUILTIN_SCENARIOS",
    "EXIT_ALL_OK",
    "EXIT_BIND_ERROR",
    "EXIT_FATAL",
    "EXIT_INTERNAL_COMMAND",
    "EXIT_NO_CALLS",
    "EXIT_SOME_FAILED",
    "SCENARIO_DIR",
    "AsyncSippProcess",
    "Sipp",
    "SippError",
    "SippProcess",
    "SippResult",
    "Transport",
    "parse_sipp_duration",
    "parse_stats_csv",
    "run_sipp",
    "run_sipp_async",
    "sipp_binary",
]

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
BUILTIN_SCENARIOS = frozenset({"uac", "uas", "regexp", "branchc", "branchs"})

EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERNAL_COMMAND = 97
EXIT_NO_CALLS = 99
EXIT_FATAL = 255  # -1
EXIT_BIND_ERROR = 254  # -2
#: runs made when SIPp loses a race for the free ports chosen for it
_BIND_ATTEMPTS = 3
#: SIPp 3.6 binds its -mp port for audio and -mp + 2 for video (RTCP would take +1 and +3):
#: the whole run is chosen free, not only the base
_MEDIA_SPAN = 4

_EXIT_MEANING = {
    EXIT_ALL_OK: "all calls successful",
    EXIT_SOME_FAILED: "at least one call failed",
    EXIT_INTERNAL_COMMAND: "exit on internal command (or global timeout)",
    EXIT_NO_CALLS: "normal exit without calls processed",
    EXIT_FATAL: "fatal error (or global timeout with -timeout_error)",
    EXIT_BIND_ERROR: "fatal error binding a socket",
}

Transport = Literal["u1", "un", "t1", "tn"]
Address = int | tuple[str, int]

# How often readiness is polled, and how long the stop sequence waits at each step.
_POLL_S = 0.02
_GRACEFUL_S = 5.0
_TERM_S = 2.0
# Kill SIPp this long after its own -timeout should have ended it.
_KILL_MARGIN_S = 10.0


class SippError(RuntimeError):
    """SIPp could not be started, did not become ready, or is not installed."""


def sipp_binary() -> str | None:
    """Path of the sipp binary: $TRIO_SIP_SIPP, else ``sipp`` on PATH; None if missing."""
    env = os.environ.get("TRIO_SIP_SIPP")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("sipp")


def _check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"tests only talk to loopback; {host!r} is not a loopback address")
    return host


def _addr(a: Address) -> tuple[str, int]:
    host, port = (LOOPBACK, a) if isinstance(a, int) else a
    return _check_loopback(host), int(port)


# --- statistics ----------------------------------------------------------------------


def parse_sipp_duration(text: str) -> float | None:
    """SIPp's ``HH:MM:SS:USEC`` (e.g. ``00:00:00:006000``) or ``HH:MM:SS`` in seconds."""
    parts = text.strip().split(":")
    try:
        if len(parts) == 4:
            h, m, s, us = (int(p) for p in parts)
            return h * 3600 + m * 60 + s + us / 1e6
        if len(parts) == 3:
            h, m, s = (int(p) for p in parts)
            return float(h * 3600 + m * 60 + s)
    except ValueError:
        return None
    return None


def parse_stats_csv(text: str) -> dict[str, str]:
    """The last data row of a ``-trace_stat`` CSV (``;``-separated) as {column: value}.

    The first line names the columns (``SuccessfulCall(C)``, ``FailedCall(C)``,
    ``Retransmissions(C)``, ``ResponseTime1(C)`` ...); each later line is one dump (every
    ``-fd`` period and one at exit). Returns {} when there is no data row yet.
    """
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if any(c.strip() for c in r)]
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}


def _int(stats: Mapping[str, str], key: str) -> int:
    try:
        return int(float(stats.get(key, "0") or 0))
    except ValueError:
        return 0


@dataclass(frozen=True)
class SippResult:
    """What one SIPp run did. Counters are cumulative ``(C)`` values of the final dump."""

    command: tuple[str, ...]
    returncode: int
    workdir: Path
    elapsed: float
    stats: Mapping[str, str]
    errors: str
    screen: str
    stopped: str | None = None  # None: exited by itself; else how we ended it
    messages: str = ""  # with trace_msg=True: every message sent and received
    kept: bool = False  # workdir left on disk (keep_workdir=True or $TRIO_SIP_KEEP_SIPP)

    @property
    def successful(self) -> int:
        return _int(self.stats, "SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return _int(self.stats, "FailedCall(C)")

    @property
    def total_calls(self) -> int:
        return _int(self.stats, "TotalCallCreated")

    @property
    def retransmissions(self) -> int:
        return _int(self.stats, "Retransmissions(C)")

    @property
    def unexpected_messages(self) -> int:
        return _int(self.stats, "FailedUnexpectedMessage(C)")

    @property
    def timeouts(self) -> int:
        return _int(self.stats, "FailedTimeoutOnRecv(C)") + _int(
            self.stats, "FailedMaxUDPRetrans(C)"
        )

    def response_time(self, n: int = 1) -> float | None:
        """Mean of response-time measure ``n`` (rtd="true" in the scenario), seconds."""
        v = self.stats.get(f"ResponseTime{n}(C)")
        return parse_sipp_duration(v) if v else None

    def response_time_stdev(self, n: int = 1) -> float | None:
        v = self.stats.get(f"ResponseTime{n}StDev(C)")
        return parse_sipp_duration(v) if v else None

    @property
    def call_length(self) -> float | None:
        v = self.stats.get("CallLength(C)")
        return parse_sipp_duration(v) if v else None

    @property
    def exit_meaning(self) -> str:
        return _EXIT_MEANING.get(self.returncode, "unknown exit code")

    @property
    def ok(self) -> bool:
        """Exit code 0, no failed call, at least one successful call."""
        return self.returncode == EXIT_ALL_OK and self.failed == 0 and self.successful > 0

    def describe(self, max_chars: int = 3000) -> str:
        """A multi-line summary for assertion messages."""
        rt = self.response_time()
        lines = [
            f"sipp exit {self.returncode} ({self.exit_meaning})"
            + (f", stopped by {self.stopped}" if self.stopped else ""),
            f"  calls: {self.total_calls} created, {self.successful} ok, {self.failed} failed,"
            f" {self.retransmissions} retransmissions, {self.unexpected_messages} unexpected,"
            f" {self.timeouts} timeouts"
            + (f", response time {rt * 1000:.1f} ms" if rt is not None else ""),
            f"  elapsed {self.elapsed:.2f} s; files "
            + (f"in {self.workdir}" if self.kept else "removed (keep: $TRIO_SIP_KEEP_SIPP=1)"),
            "  command: " + " ".join(self.command),
        ]
        if self.errors.strip():
            lines.append("  error log:\n" + _clip(self.errors, max_chars))
        elif self.returncode not in (EXIT_ALL_OK, EXIT_SOME_FAILED) and self.screen.strip():
            lines.append("  output:\n" + _clip(self.screen, max_chars))
        return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f"\n... ({len(text) - n} more chars)"


# --- the run description --------------------------------------------------------------


@dataclass(frozen=True)
class Sipp:
    """One SIPp run. Hosts are 127.0.0.1 unless a (host, port) tuple says otherwise
    (loopback only). Leave ``local_port`` None to get a free port (see ``.port``).

    ``scenario``: a built-in name (``uac``, ``uas`` ...: ``-sn``), a file name in tests/sipp/
    (``uac.xml``, or ``uac_cancel_expected`` without .xml), or a path (``-sf``).
    ``remote``: the positional remote address (UAC side; R-URI and To name it).
    ``via``: send every packet there instead (``-rsa``), e.g. the proxy under test.
    """

    scenario: str
    remote: Address | None = None
    via: Address | None = None
    local_port: int | None = None
    transport: Transport = "u1"
    service: str | None = None  # -s: user part of the Request-URI
    rate: float | None = None  # -r calls per rate period
    rate_period_ms: int | None = None  # -rp
    calls: int | None = None  # -m: stop after this many calls
    limit: int | None = None  # -l: max simultaneous calls
    lost: int | None = None  # -lost: percent of packets to drop
    pause_ms: int | None = None  # -d: length of <pause/> without a value
    timeout: float = 30.0  # -timeout (global, seconds), with -timeout_error
    timeout_error: bool = True
    recv_timeout_ms: int | None = None  # -recv_timeout
    auto_answer: bool = False  # -aa
    max_retrans: int | None = None  # -max_retrans
    max_sockets: int = 1024  # -max_socket, with transport un/tn (SIPp's default 50000 fails)
    # TCP only: SIPp aborts every call on a connection when the peer closes it (-reconnect_close
    # true), which fails the calls a SIPp UAS still holds in <timewait> when a SIPp UAC exits.
    # Off by default; set True to count such closes as failures.
    close_calls_on_disconnect: bool = False
    trace_msg: bool = False  # -trace_msg into the work dir
    keys: Mapping[str, str] = field(default_factory=dict)  # -key NAME VALUE
    variables: Mapping[str, str] = field(default_factory=dict)  # -set NAME VALUE
    extra_args: Sequence[str] = ()
    workdir: Path | None = None  # default: a fresh temp dir, removed after the run
    control_port: int | None = None  # -cp; default: a free UDP port
    media_port: int | None = None  # -mp; default: a free UDP port
    binary: str | None = None

    def __post_init__(self) -> None:
        if self.remote is not None:
            _addr(self.remote)
        if self.via is not None:
            _addr(self.via)
        if self.transport not in ("u1", "un", "t1", "tn"):
            raise ValueError(f"transport must be u1, un, t1 or tn, not {self.transport!r}")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0: every SIPp run is bounded")

    # -- resolution --

    @property
    def is_tcp(self) -> bool:
        return self.transport.startswith("t")

    def resolved(self, *, create_dir: bool = True) -> Sipp:
        """A copy with every free port chosen and the work dir created (with
        ``create_dir=False`` a placeholder path, for showing a command line)."""
        local = self.local_port
        if local is None:
            local = free_port_both() if self.is_tcp else free_port("udp")
        workdir = self.workdir
        if workdir is None:
            if create_dir:
                workdir = Path(tempfile.mkdtemp(prefix="sipp-"))
            else:
                workdir = Path(tempfile.gettempdir()) / "sipp-WORKDIR"
        elif create_dir:
            workdir.mkdir(parents=True, exist_ok=True)
        return replace(
            self,
            local_port=local,
            workdir=workdir,
            control_port=self.control_port or free_port("udp"),
            media_port=self.media_port or free_port_block(_MEDIA_SPAN),
        )

    @property
    def port(self) -> int:
        if self.local_port is None:
            raise ValueError("local port not chosen yet: use .resolved() or the process's .port")
        return self.local_port

    def scenario_args(self) -> list[str]:
        if self.scenario in BUILTIN_SCENARIOS:
            return ["-sn", self.scenario]
        candidates = [Path(self.scenario), SCENARIO_DIR / self.scenario]
        candidates.append(SCENARIO_DIR / f"{self.scenario}.xml")
        for c in candidates:
            if c.is_file():
                return ["-sf", str(c.resolve())]
        raise FileNotFoundError(f"no SIPp scenario {self.scenario!r} (looked in {SCENARIO_DIR})")

    def files(self) -> dict[str, Path]:
        assert self.workdir is not None
        d = self.workdir
        return {
            "stats": d / "stats.csv",
            "errors": d / "errors.log",
            "screen": d / "screen.log",
            "messages": d / "messages.log",
            "output": d / "output.log",
        }

    def command(self) -> list[str]:
        """The full command line. Unresolved ports are chosen here, and the work dir is a
        placeholder; the runners use a :meth:`resolved` copy."""
        if self.local_port is None or self.workdir is None:
            return self.resolved(create_dir=False).command()
        binary = self.binary or sipp_binary()
        if binary is None:
            raise SippError("sipp not found (install Debian's sip-tester or set TRIO_SIP_SIPP)")
        f = self.files()
        cmd: list[str] = [binary, *self.scenario_args()]
        if self.remote is not None:
            host, port = _addr(self.remote)
            cmd.append(f"{host}:{port}")
        cmd += ["-i", LOOPBACK, "-p", str(self.local_port), "-t", self.transport]
        if self.via is not None:
            host, port = _addr(self.via)
            cmd += ["-rsa", f"{host}:{port}"]
        if self.service is not None:
            cmd += ["-s", self.service]
        if self.rate is not None:
            cmd += ["-r", _num(self.rate)]
        if self.rate_period_ms is not None:
            cmd += ["-rp", str(self.rate_period_ms)]
        if self.calls is not None:
            cmd += ["-m", str(self.calls)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.lost is not None:
            cmd += ["-lost", str(self.lost)]
        if self.pause_ms is not None:
            cmd += ["-d", str(self.pause_ms)]
        if self.recv_timeout_ms is not None:
            cmd += ["-recv_timeout", str(self.recv_timeout_ms)]
        if self.max_retrans is not None:
            cmd += ["-max_retrans", str(self.max_retrans)]
        if self.auto_answer:
            cmd.append("-aa")
        if self.transport in ("un", "tn"):
            cmd += ["-max_socket", str(self.max_sockets)]
        if self.is_tcp and not self.close_calls_on_disconnect:
            cmd += ["-reconnect_close", "false"]
        for k, v in self.keys.items():
            cmd += ["-key", k, v]
        for k, v in self.variables.items():
            cmd += ["-set", k, v]
        cmd += ["-cp", str(self.control_port), "-mp", str(self.media_port)]
        cmd += ["-timeout", f"{_num(self.timeout)}s"]
        if self.timeout_error:
            cmd.append("-timeout_error")
        cmd += [
            "-nostdin",
            "-trace_stat", "-stf", str(f["stats"]), "-fd", "1",
            "-trace_err", "-error_file", str(f["errors"]),
            "-trace_screen", "-screen_file", str(f["screen"]),
        ]  # fmt: skip
        if self.trace_msg:
            cmd += ["-trace_msg", "-message_file", str(f["messages"])]
        cmd += list(self.extra_args)
        return cmd

    @property
    def kill_after(self) -> float:
        """Seconds after start when the runner kills a SIPp that its -timeout did not end."""
        return self.timeout + _KILL_MARGIN_S

    # -- running --

    def run(self, *, keep_workdir: bool | None = None) -> SippResult:
        """Run to completion (blocking) and return the result (see ``_bind_race``)."""
        for _ in range(_BIND_ATTEMPTS):
            with self.start() as proc:
                result = proc.wait(keep_workdir=keep_workdir)
            if not self._bind_race(result):
                break
        return result

    def _bind_race(self, result: SippResult) -> bool:
        """True when SIPp could not bind a port we chose for it before any call started:
        the ports are picked free and bound by SIPp a moment later, and a parallel test
        may take one in between. Then the run is made again on new free ports (only
        ports the caller did not fix are chosen again)."""
        return (result.returncode == EXIT_BIND_ERROR and result.total_calls == 0
                and self._may_have_lost_a_race())

    def _may_have_lost_a_race(self) -> bool:
        """After a bind error: only a port chosen here can have been lost to a race. A
        local port the caller fixed that is taken stays taken: no run again for that."""
        if self.local_port is not None and not is_port_free(
                self.local_port, "tcp" if self.is_tcp else "udp"):
            return False
        return None in (self.local_port, self.control_port, self.media_port)

    def start(self) -> SippProcess:
        """Start in the background (blocking API); use as a context manager."""
        return SippProcess(self.resolved(), owns_workdir=self.workdir is None)

    async def run_async(self, *, keep_workdir: bool | None = None) -> SippResult:
        """Run to completion inside Trio; cancellation kills SIPp (see ``_bind_race``)."""
        for _ in range(_BIND_ATTEMPTS):
            async with self.running(ready=False) as proc:
                result = await proc.wait(keep_workdir=keep_workdir)
            if not self._bind_race(result):
                break
        return result

    async def _start_ready(self, ready: bool, ready_within: float) -> AsyncSippProcess:
        """Start SIPp and, with ``ready``, wait until its port is bound. A SIPp that exits
        with a bind error before that lost the race for the free ports chosen for it (see
        ``_bind_race``): it is started again on new ones, at most ``_BIND_ATTEMPTS`` times."""
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            proc = AsyncSippProcess(self.resolved(), owns_workdir=self.workdir is None)
            await proc._start()
            if not ready:
                return proc
            try:
                await proc.wait_ready(ready_within)
                return proc
            except BaseException as exc:
                rc = proc.process.poll()
                with trio.CancelScope(shield=True):
                    await proc._kill_and_clean()
                lost_race = (isinstance(exc, SippError) and rc == EXIT_BIND_ERROR
                             and self._may_have_lost_a_race())
                if not lost_race or attempt == _BIND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def running(
        self, *, ready: bool = True, ready_within: float = 5.0
    ) -> AsyncIterator[AsyncSippProcess]:
        """Start SIPp inside Trio; with ``ready`` wait (bounded) until its port is bound.

        On leaving the block SIPp is stopped if it still runs (graceful, then TERM, then
        KILL) and ``proc.result`` is set; on an exception or cancellation it is killed.
        """
        proc = await self._start_ready(ready, ready_within)
        try:
            yield proc
        except BaseException:
            with trio.CancelScope(shield=True):
                await proc._kill_and_clean()
            raise
        else:
            with trio.CancelScope(shield=True):
                await proc.stop()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# --- readiness: is the port bound? -----------------------------------------------------


def _socket_inodes(port: int, tcp: bool) -> set[str] | None:
    """Inodes of sockets bound to 127.0.0.1/0.0.0.0:``port`` (TCP: listening), from
    /proc/net; None if it cannot be read. Reading /proc has no side effect, unlike a probe
    bind(), which could take the port from SIPp at the wrong moment."""
    path = Path("/proc/net/tcp" if tcp else "/proc/net/udp")
    try:
        text = path.read_text()
    except OSError:
        return None
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    inodes: set[str] = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[1] in want and (not tcp or cols[3] == "0A"):
            inodes.add(cols[9])
    return inodes


def _bound_by(pid: int, port: int, tcp: bool) -> bool:
    """True once process ``pid`` holds a socket bound to ``port`` (so a port already held by
    someone else does not pass for SIPp being ready)."""
    inodes = _socket_inodes(port, tcp)
    if inodes is None:  # no /proc: fall back to "someone has bound it"
        return not is_port_free(port, "tcp" if tcp else "udp")
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(fd_dir / name) for name in os.listdir(fd_dir)]
    except OSError:
        return False
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


# --- processes ---------------------------------------------------------------------------


class _ProcessBase:
    def __init__(self, sipp: Sipp, *, owns_workdir: bool) -> None:
        self.sipp = sipp
        self.command = sipp.command()
        self.owns_workdir = owns_workdir
        self.result: SippResult | None = None
        self._started_at = 0.0
        self._stopped: str | None = None

    @property
    def port(self) -> int:
        return self.sipp.port

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.sipp.port)

    def _collect(self, returncode: int, keep_workdir: bool | None) -> SippResult:
        f = self.sipp.files()
        assert self.sipp.workdir is not None
        stats = parse_stats_csv(_read(f["stats"]))
        screen = _read(f["screen"]) or _read(f["output"])
        result = SippResult(
            command=tuple(self.command),
            returncode=returncode,
            workdir=self.sipp.workdir,
            elapsed=time.monotonic() - self._started_at,
            stats=stats,
            errors=_read(f["errors"]),
            screen=screen,
            stopped=self._stopped,
        )
        if keep_workdir is None:
            keep_workdir = bool(os.environ.get("TRIO_SIP_KEEP_SIPP"))
        kept = keep_workdir or not self.owns_workdir
        result = replace(result, messages=_read(f["messages"]), kept=kept)
        if not kept:
            self._cleanup()
        self.result = result
        return result

    def _cleanup(self) -> None:
        """Remove the work dir we created (the texts are in the result by now)."""
        if self.owns_workdir and self.sipp.workdir is not None:
            if not os.environ.get("TRIO_SIP_KEEP_SIPP"):
                shutil.rmtree(self.sipp.workdir, ignore_errors=True)

    def _not_ready(self, why: str) -> SippError:
        f = self.sipp.files()
        out = _read(f["output"]) + _read(f["errors"])
        return SippError(
            f"SIPp not ready on {LOOPBACK}:{self.sipp.port}: {why}\n"
            f"command: {' '.join(self.command)}\n{_clip(out, 2000)}"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class SippProcess(_ProcessBase):
    """A SIPp process for blocking code. ``with Sipp(...).start() as p:`` ... ``p.wait()``."""

    def __init__(self, sipp: Sipp, *, owns_workdir: bool) -> None:
        super().__init__(sipp, owns_workdir=owns_workdir)
        self._popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SippProcess:
        assert self.sipp.workdir is not None
        out = self.sipp.files()["output"].open("wb")
        try:
            self._started_at = time.monotonic()
            self._popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.sipp.workdir,
            )
        finally:
            out.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._popen is None or self._popen.returncode is not None:
            return
        if exc[0] is not None:
            self._kill()
        else:
            self.stop()

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise SippError("not started: use 'with sipp.start() as proc'")
        return self._popen

    def wait_ready(self, within: float = 5.0) -> None:
        """Wait until SIPp's local port is bound (TCP: listening), at most ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rc = self.popen.poll()
            if rc is not None:
                raise self._not_ready(f"exited with {rc} before binding its port")
            if _bound_by(self.popen.pid, self.sipp.port, self.sipp.is_tcp):
                return
            time.sleep(_POLL_S)
        raise self._not_ready(f"port not bound within {within} s")

    def wait(
        self, kill_after: float | None = None, *, keep_workdir: bool | None = None
    ) -> SippResult:
        """Wait for SIPp to exit; after ``kill_after`` seconds (default: its -timeout plus a
        margin, counted from its start) it is killed."""
        if kill_after is None:
            kill_after = max(0.0, self._started_at + self.sipp.kill_after - time.monotonic())
        try:
            rc = self.popen.wait(kill_after)
        except subprocess.TimeoutExpired:
            self._stopped = "kill (overran its timeout)"
            rc = self._kill()
        return self._collect(rc, keep_workdir)

    def stop(self, *, keep_workdir: bool | None = None) -> SippResult:
        """Graceful stop (SIGUSR1: no new calls, finish running ones), then TERM, then KILL."""
        p = self.popen
        if p.poll() is None:
            for sig, wait_s, name in (
                (signal.SIGUSR1, _GRACEFUL_S, "SIGUSR1"),
                (signal.SIGTERM, _TERM_S, "SIGTERM"),
            ):
                self._stopped = name
                p.send_signal(sig)
                try:
                    p.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self._kill()
        return self._collect(p.wait(), keep_workdir)

    def _kill(self) -> int:
        p = self.popen
        if p.poll() is None:
            self._stopped = self._stopped or "kill"
            p.kill()
        rc = p.wait()
        if self.result is None:
            self._cleanup()
        return rc


class AsyncSippProcess(_ProcessBase):
    """A SIPp process inside Trio; made by ``async with Sipp(...).running() as p``."""

    def __init__(self, sipp: Sipp, *, owns_workdir: bool) -> None:
        super().__init__(sipp, owns_workdir=owns_workdir)
        self._process: trio.Process | None = None

    async def _start(self) -> None:
        assert self.sipp.workdir is not None
        out = self.sipp.files()["output"].open("wb")
        try:
            self._started_at = time.monotonic()
            self._process = await trio.lowlevel.open_process(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.sipp.workdir,
            )
        finally:
            out.close()

    @property
    def process(self) -> trio.Process:
        if self._process is None:
            raise SippError("not started")
        return self._process

    async def wait_ready(self, within: float = 5.0) -> None:
        """Wait until SIPp's local port is bound (TCP: listening), at most ``within`` s."""
        with trio.move_on_after(within):
            while True:
                rc = self.process.poll()
                if rc is not None:
                    raise self._not_ready(f"exited with {rc} before binding its port")
                if _bound_by(self.process.pid, self.sipp.port, self.sipp.is_tcp):
                    return
                await trio.sleep(_POLL_S)
        raise self._not_ready(f"port not bound within {within} s")

    async def wait(
        self, kill_after: float | None = None, *, keep_workdir: bool | None = None
    ) -> SippResult:
        """Wait for SIPp to exit; after ``kill_after`` seconds (default: its -timeout plus a
        margin, counted from its start) it is killed. Cancelling the wait kills SIPp."""
        if kill_after is None:
            kill_after = max(0.0, self._started_at + self.sipp.kill_after - time.monotonic())
        try:
            with trio.move_on_after(kill_after):
                rc = await self.process.wait()
                return self._collect(rc, keep_workdir)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._kill()
            raise
        self._stopped = "kill (overran its timeout)"
        with trio.CancelScope(shield=True):
            rc = await self._kill()
        return self._collect(rc, keep_workdir)

    async def stop(self, *, keep_workdir: bool | None = None) -> SippResult:
        """Graceful stop (SIGUSR1), then SIGTERM, then SIGKILL; each step bounded."""
        p = self.process
        if p.poll() is None:
            for sig, wait_s, name in (
                (signal.SIGUSR1, _GRACEFUL_S, "SIGUSR1"),
                (signal.SIGTERM, _TERM_S, "SIGTERM"),
            ):
                self._stopped = name
                p.send_signal(sig)
                with trio.move_on_after(wait_s):
                    await p.wait()
                if p.poll() is not None:
                    break
            else:
                await self._kill()
        if self.result is not None:
            return self.result
        return self._collect(await p.wait(), keep_workdir)

    async def _kill(self) -> int:
        p = self.process
        if p.poll() is None:
            self._stopped = self._stopped or "kill"
            p.kill()
        return await p.wait()

    async def _kill_and_clean(self) -> None:
        await self._kill()
        if self.result is None:
            self._cleanup()


# --- conveniences ----------------------------------------------------------------------


def run_sipp(scenario: str, **kwargs: Any) -> SippResult:
    """``Sipp(scenario, **kwargs).run()``: run to completion, blocking."""
    return Sipp(scenario, **kwargs).run()


async def run_sipp_async(scenario: str, **kwargs: Any) -> SippResult:
    """``await Sipp(scenario, **kwargs).run_async()``: run to completion inside Trio."""
    return await Sipp(scenario, **kwargs).run_async()
