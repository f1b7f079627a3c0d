"""Stateful relay, side by side: routes/stateful.lua on trio-sip and on Kamailio 5.6, SIPp-driven.

    python bench/stateful_bench.py                 # defaults: well under 15 minutes
    python bench/stateful_bench.py --quick         # about 2 minutes
    python bench/stateful_bench.py --rates 50,100,200 --calls 600 --repeat 3 \\
        --servers trio,kamailio,kamailio-fm --search-seconds 75 --json out.json

The same routes file, unchanged, runs on

* ``trio``: ``python -m trio_sip run --routes routes/stateful.lua --listen udp:127.0.0.1:PORT
  --log-level warning --set core.loopback_only=true``, a separate process (one Python process);
* ``kamailio``: Kamailio 5.6 with app_lua as Debian ships it (q_malloc), ``children=1``
  (tests/support/kamailio.py, bench/kamailio/kamailio-lua.cfg);
* ``kamailio-fm``: the same with ``-x fm -X fm`` (f_malloc, what production builds run).

All servers run at once on their own loopback ports (an idle server costs < 1 ms CPU/s), get
100 warm-up calls each (not counted), and the measurements are interleaved: each repeat goes through every rate and, per rate, every
server, with the server order rotated per repeat. Every measurement is one fresh SIPp UAS
(tests/sipp/uas.xml) and one SIPp UAC (tests/sipp/uac.xml, INVITE/200/ACK/BYE/200, no pause)
at a fixed rate (``-r``) for a fixed number of calls (``-m``), through the proxy (``-rsa``), UDP.

Per measurement
---------------
* calls/s: achieved completion rate, (n-1)/(t_last - t_first) over the times the UAC received
  each INVITE's 200 (SIPp ``-trace_rtt`` Date_ms column), n = calls answered 200;
* fail%: calls asked for that did not end successfully (SIPp ``SuccessfulCall(C)``; calls SIPp
  never finished count as failed too);
* CPU us/call: utime+stime (+cutime+cstime) from /proc/PID/stat of the server's processes
  (trio: the one Python process; Kamailio: main process and every worker), after minus before,
  divided by the calls asked for. The window runs from just before the UAC starts until
  ``--settle`` seconds (default 5.5) after it ends, so the cleanup of completed transactions
  (tm ``wt_timer`` = 5 s on both) is included. Clock-tick resolution (10 ms): for the few
  hundred ms that Kamailio spends on a run this is coarse, hence
* sched us/call: the same from /proc/PID/task/*/schedstat (nanoseconds on the CPU, exact);
* worker us/call: schedstat of the process that did the SIP work only: Kamailio's UDP receiver
  (children=1: the one process blocked in recvfrom, wchan ``*skb_wait_for_more_packets``, found
  when idle); for trio-sip the process itself. Kamailio's timer processes (tm retransmission and
  wait timers, which free the transactions) make up the difference;
* p50/p99 ms: INVITE -> 200 response time at the UAC. ``--latency msg`` (default) takes it
  from SIPp's ``-trace_msg`` log (microsecond timestamps of the first INVITE sent and the first
  200 for its Call-ID received); ``--latency rtt`` from SIPp's own per-call rtd trace
  (``-trace_rtt -rtt_freq 1``), which SIPp keeps in whole milliseconds of its internal clock
  tick and on this machine reads 0 or 4 ms for most calls whatever the server, i.e. too coarse
  to tell a 0.5 ms proxy from a 3 ms one. The rtd figures are kept in the JSON output either way;
* RSS MB / PSS MB at the end of the window (servers are long-lived: this is the memory after
  every run so far): VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup), summed over
  the server's processes. For Kamailio the RSS sum counts the shared memory segment and the
  libraries once per process; PSS divides shared pages among the processes that map them, so
  the PSS sum is the fair figure to compare (for trio-sip the two are nearly equal);
* retrans: SIPp retransmissions (UAC + UAS): a sign of loss or of > 500 ms latency;
* kdrops: datagrams the kernel dropped on the server's UDP socket (/proc/net/udp ``drops``).
  trio-sip drains its socket into its own bounded queue (core.udp_queue_size) and drops there,
  counted only inside the process: for trio-sip, loss shows as SIPp retransmissions instead.

Each figure in the table is the median over ``--repeat`` repeats (the machine is shared and
noisy); the ratio rows divide trio's medians by each Kamailio's.

Max-rate search
---------------
Per server, after the fixed rates: probes of ``--probe-seconds`` (calls = rate x seconds, at
least 200), each on a freshly started server (no backlog, leftover transactions or heap from the
previous probe), starting from the highest fixed rate that passed, doubling while they pass, then
bisecting between the last pass and the first failure until they are within 10 %, within
``--search-seconds`` per server and up to ``--search-cap`` calls/s. A probe passes when fewer
than 0.1 % of its calls failed and the achieved rate was at least 95 % of the target. Probes
run without ``-trace_msg`` (so SIPp does less work) and with ``-recv_timeout`` 5 s. SIPp's
own CPU share is printed with each probe: SIPp (UAC and UAS, one process each, single
threaded) shares the 2 cores with the server, and near 100 % it is SIPp that cannot keep up.

Nothing outlives the run: servers and SIPps are stopped (TERM, then KILL) on exit, error or
Ctrl-C; every SIPp has a ``-timeout``; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.kamailio import Kamailio, kamailio_missing  # noqa: E402
from tests.support.ports import LOOPBACK, free_port_both  # noqa: E402
from tests.support.sipp import Sipp, SippResult, sipp_binary  # noqa: E402

ROUTES = REPO / "routes" / "stateful.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SERVERS = ("trio", "kamailio", "kamailio-fm")

# --- /proc -----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def cpu_ticks(pid: int) -> int:
    """utime+stime+cutime+cstime of ``pid`` (clock ticks)."""
    f = _stat_fields(pid)
    return sum(int(x) for x in f[11:15]) if f else 0


def sched_ns(pid: int) -> int:
    """Nanoseconds on the CPU of every thread of ``pid`` (/proc/PID/task/*/schedstat)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(path).read_text().split()[0])
    return total


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of ``pid`` in kB; 0 when unreadable."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def udp_drops(ports: set[int]) -> int:
    """Sum of the kernel's ``drops`` counter over UDP sockets bound to 127.0.0.1:port."""
    want = {f"0100007F:{p:04X}" for p in ports}
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 12 and cols[1] in want:
                total += int(cols[12])
    return total


@dataclass
class Snapshot:
    t: float
    ticks: dict[int, int]
    sched: dict[int, int]

    @classmethod
    def take(cls, pids: list[int]) -> Snapshot:
        return cls(time.monotonic(), {p: cpu_ticks(p) for p in pids},
                   {p: sched_ns(p) for p in pids})

    def delta(self, later: Snapshot) -> tuple[float, float, dict[int, float]]:
        """(CPU s by ticks, CPU s by schedstat, per-pid schedstat s)."""
        ticks = sum(later.ticks.get(p, 0) - v for p, v in self.ticks.items())
        per = {p: (later.sched.get(p, v) - v) / 1e9 for p, v in self.sched.items()}
        return ticks / CLK_TCK, sum(per.values()), per


# --- servers ---------------------------------------------------------------------------


def _options(port: int, local: int, call_id: str, cseq: int) -> bytes:
    return (
        f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch=z9hG4bK-bench-{call_id}-{cseq};rport\r\n"
        f"From: <sip:bench@{LOOPBACK}:{local}>;tag=b{cseq}\r\n"
        f"To: <sip:{LOOPBACK}:{port}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ping(port: int, within: float) -> bool:
    """True once an OPTIONS to the server gets a SIP response (bounded by ``within``)."""
    call_id = f"ping-{uuid.uuid4().hex}"
    deadline = time.monotonic() + within
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(0.2)
        cseq = 0
        while time.monotonic() < deadline:
            cseq += 1
            s.sendto(_options(port, s.getsockname()[1], call_id, cseq), (LOOPBACK, port))
            with contextlib.suppress(TimeoutError):
                data = s.recv(65535)
                if data.startswith(b"SIP/2.0 ") and call_id.encode() in data:
                    return True
    return False


class Server:
    key: str
    label: str
    port: int

    def pids(self) -> list[int]:
        raise NotImplementedError

    def worker(self) -> int | None:
        raise NotImplementedError

    def log_tail(self, n: int = 2000) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def command(self) -> str:
        raise NotImplementedError


class TrioServer(Server):
    """``python -m trio_sip run`` as a separate process in its own session."""

    def __init__(self, workdir: Path, *, routes: Path = ROUTES, config: Path | None = None,
                 key: str = "trio", label: str = "trio-sip") -> None:
        self.key = key
        self.label = label
        self.port = free_port_both()
        self.log_path = workdir / f"{key}-{self.port}.log"
        self.argv = [
            sys.executable, "-m", "trio_sip", "run",
            *(["--config", str(config)] if config is not None else []),
            "--routes", str(routes),
            "--listen", f"udp:{LOOPBACK}:{self.port}", "--log-level", "warning",
            "--set", "core.loopback_only=true",
            # no management interface: its fixed default port (8090) may be taken
            "--set", "mi.listen=",
        ]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if not ping(self.port, 30.0):
            self.stop()
            raise RuntimeError(f"trio-sip did not answer OPTIONS within 30 s\n{self.log_tail()}")

    def command(self) -> str:
        return " ".join(self.argv[1:]).replace(str(REPO) + "/", "")

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc.poll() is None else []

    def worker(self) -> int | None:
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class KamailioServer(Server):
    def __init__(self, fast_malloc: bool, shm_mb: int | None = None, *, routes: Path = ROUTES,
                 **kamailio_args: Any) -> None:
        self.key = "kamailio-fm" if fast_malloc else "kamailio"
        self.label = self.key
        self.port = free_port_both()
        self.k = Kamailio(routes, self.port, children=1, fast_malloc=fast_malloc, shm_mb=shm_mb,
                          **kamailio_args)
        self.k.__enter__()
        self._worker = self._find_worker()

    def command(self) -> str:
        return " ".join(self.k.command()).replace(str(self.k.workdir), "DIR")

    def _find_worker(self) -> int | None:
        """The UDP receiver: blocked in recvfrom on the SIP socket while idle."""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            found = [p for p in self.k.pids() if "skb_wait_for_more_packets" in wchan(p)]
            if len(found) == 1:
                return found[0]
            time.sleep(0.05)
        return None

    def pids(self) -> list[int]:
        return self.k.pids()

    def worker(self) -> int | None:
        return self._worker

    def log_tail(self, n: int = 2000) -> str:
        return self.k.log()[-n:]

    def stop(self) -> None:
        self.k.stop()


def start_server(key: str, workdir: Path, shm_mb: int | None = None) -> Server:
    if key == "trio":
        return TrioServer(workdir)
    return KamailioServer(fast_malloc=key == "kamailio-fm", shm_mb=shm_mb)


# --- one measurement -------------------------------------------------------------------


@dataclass
class Run:
    server: str
    rate: float
    calls: int
    kind: str  # "fixed" or "probe"
    ok: int = 0
    failed_sipp: int = 0
    achieved: float = 0.0
    cpu_us: float = 0.0  # utime+stime per call, all processes
    sched_us: float = 0.0  # schedstat per call, all processes
    worker_us: float = 0.0  # schedstat per call, the SIP worker only
    p50_ms: float | None = None
    p99_ms: float | None = None
    rtd_p50_ms: float | None = None  # SIPp rtd (whole ms)
    rtd_p99_ms: float | None = None
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    retrans: int = 0
    kdrops: int = 0
    sipp_cpu_pct: float = 0.0  # UAC + UAS CPU over the traffic phase, % of one core
    uac_rc: int = 0
    elapsed: float = 0.0
    errors: str = ""

    @property
    def fail_pct(self) -> float:
        return 100.0 * (self.calls - self.ok) / self.calls if self.calls else 0.0

    def passed(self) -> bool:
        return (self.calls - self.ok) < 0.001 * self.calls and self.achieved >= 0.95 * self.rate


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _clock(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


_MSG_HEAD = re.compile(r"^-{10,} \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d\.\d+)\s*$")


def msg_latencies(path: Path, method: str = "INVITE") -> tuple[list[float], list[float]]:
    """From a SIPp -trace_msg log: (INVITE->200 latencies in ms, 200 receive times in s).

    Start: the first INVITE sent for a Call-ID; end: the first 200 received for it after
    that (the BYE's 200 comes later). Timestamps are SIPp's (microseconds, wall clock at
    the time SIPp logged them). ``method``: another request method instead of INVITE (the
    first such request of each Call-ID starts the clock)."""
    sent: dict[str, float] = {}
    lat: list[float] = []
    got: list[float] = []
    done: set[str] = set()
    ts = 0.0
    direction = ""
    first = ""
    try:
        f = path.open(errors="replace")
    except OSError:
        return lat, got
    with f:
        for line in f:
            if line.startswith("-----"):
                m = _MSG_HEAD.match(line)
                if m:
                    ts = _clock(m.group(1))
                    direction = first = ""
                    continue
            if not direction:
                if line.startswith("UDP message sent"):
                    direction = "out"
                elif line.startswith("UDP message received"):
                    direction = "in"
                continue
            if not first:
                if line.strip():
                    first = line
                continue
            if line.startswith("Call-ID:") or line.startswith("i:"):
                cid = line.split(":", 1)[1].strip()
                if direction == "out" and first.startswith(method + " ") and cid not in sent:
                    sent[cid] = ts
                elif (direction == "in" and first.startswith("SIP/2.0 200") and cid in sent
                      and cid not in done):
                    # the 200 of the INVITE, not of the BYE (BYE 200s come after it)
                    done.add(cid)
                    d = ts - sent[cid]
                    if d < 0:
                        d += 86400  # midnight
                    lat.append(d * 1000)
                    got.append(ts)
    return lat, got


def rtt_samples(workdir: Path) -> tuple[list[float], list[float]]:
    """From SIPp's -trace_rtt file: (rtd in ms, Date_ms of each sample in s)."""
    lat: list[float] = []
    when: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            cols = line.split(";")
            if len(cols) >= 3 and cols[2].strip() == "1":
                with contextlib.suppress(ValueError):
                    when.append(float(cols[0]) / 1000)
                    lat.append(float(cols[1]))
    return lat, when


def _proc_cpu_s(pid: int) -> float:
    return cpu_ticks(pid) / CLK_TCK


# SIPp's -trace_err events start with "DATE\tTIME\tEPOCH: " (not always at a line start:
# an event carrying a SIP message ends with a quote and the next follows on the same line).
_EVENT = re.compile(r"\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: ")


def _first_line(text: str) -> str:
    """A SIP start line shortened to what matters: the method, or the status code and reason."""
    text = text.strip().strip("'")
    if text.startswith("SIP/2.0 "):
        return text[8:60]
    return text.split(" ", 1)[0]


# What each message index of tests/sipp/uac.xml and uas.xml is (SIPp's "index N").
STEPS = {
    "UAC": ["send INVITE", "recv 100", "recv 180", "recv 183", "recv 200 (INVITE)", "send ACK",
            "pause", "send BYE", "recv 200 (BYE)"],
    "UAS": ["recv INVITE", "send 180", "send 200", "recv ACK", "recv BYE", "send 200 (BYE)",
            "timewait"],
}


def _step(who: str, index: str) -> str:
    names = STEPS.get(who, [])
    i = int(index)
    return f"step {i}: {names[i]}" if i < len(names) else f"step {i}"


def summarize_errors(text: str, who: str = "") -> list[tuple[int, str]]:
    """SIPp's -trace_err log grouped by kind of event, most frequent first.

    An event may carry a whole SIP message; ids and numbers are stripped so that like
    events group together, and the CSeq method of the carried message is added (a 200 of a
    BYE is not a 200 of an INVITE)."""
    heads = list(_EVENT.finditer(text))
    kinds: dict[str, int] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end():end].rstrip("'\r\n ")
        lines = body.splitlines() or [""]
        head = lines[0]
        cseq = next((ln.split(":", 1)[1].split()[-1] for ln in lines[1:]
                     if ln.lower().startswith("cseq:") and ln.split(":", 1)[1].split()), "")
        on = f" ({cseq})" if cseq else ""
        x = re.search(r"while expecting '([^']*)' \(index (\d+)\), received '(.*)", head)
        t = re.search(r"receive timeout on message .*?:(\d+) ", head)
        if x:
            kind = (f"unexpected {_first_line(x.group(3))}{on} while expecting {x.group(1)} "
                    f"({_step(who, x.group(2))})")
        elif head.startswith("Dead call"):
            got = re.search(r"received '(.*)", head)
            kind = "message for a finished call: " + _first_line(got.group(1) if got else "") + on
        elif t:
            kind = f"receive timeout ({_step(who, t.group(1))}): call aborted"
        else:
            kind = re.sub(r"'[^']*'|\d+", "N", head)[:140]
        kinds[kind] = kinds.get(kind, 0) + 1
    return sorted(((n, k) for k, n in kinds.items()), reverse=True)


def _error_summary(result: SippResult | None, who: str, top: int = 6) -> str:
    if result is None or not result.errors.strip():
        return ""
    kinds = summarize_errors(result.errors, who)
    if not kinds:
        return f"  SIPp {who} error log: " + result.errors.strip()[:400]
    total = sum(n for n, _ in kinds)
    lines = [f"  SIPp {who} error log, {total} events by kind:"]
    lines += [f"    {n:>6} x {k}" for n, k in kinds[:top]]
    if len(kinds) > top:
        lines.append(f"    ... {len(kinds) - top} more kinds")
    return "\n".join(lines)


def measure(server: Server, rate: float, calls: int, *, kind: str, settle: float,
            latency: str, limit_seconds: float, base: Path, recv_timeout_ms: int | None = None,
            trace: bool = True, keep: bool = False) -> Run:
    run = Run(server=server.key, rate=rate, calls=calls, kind=kind)
    d = Path(tempfile.mkdtemp(prefix=f"{server.key}-{int(rate)}-", dir=base))
    traffic_s = calls / rate
    timeout = traffic_s + (20 if recv_timeout_ms else 45)
    use_msg = trace and latency == "msg"
    uas = Sipp("uas.xml", calls=calls, timeout=timeout + 5, workdir=d / "uas")
    uas_result: SippResult | None = None
    uac_result: SippResult | None = None
    pids = server.pids()
    ports = {server.port}
    with uas.start() as uas_p:
        uas_p.wait_ready()
        uac = Sipp(
            "uac.xml", remote=uas_p.port, via=server.port, rate=rate, calls=calls,
            limit=max(200, int(rate * limit_seconds)), timeout=timeout, workdir=d / "uac",
            recv_timeout_ms=recv_timeout_ms, trace_msg=use_msg,
            extra_args=["-trace_rtt", "-rtt_freq", "1"],
        )
        before = Snapshot.take(pids)
        drops0 = udp_drops(ports)
        t0 = time.monotonic()
        with uac.start() as uac_p:
            uac_pid, uas_pid = uac_p.popen.pid, uas_p.popen.pid
            sipp_cpu0 = _proc_cpu_s(uac_pid) + _proc_cpu_s(uas_pid)
            # sample SIPp's CPU while it runs (an exited process's /proc entry is gone)
            sipp_cpu_last = sipp_cpu0
            while uac_p.popen.poll() is None and time.monotonic() - t0 < uac.kill_after:
                time.sleep(0.1)
                c = _proc_cpu_s(uac_pid) + _proc_cpu_s(uas_pid)
                if uac_p.popen.poll() is None:
                    sipp_cpu_last = c
            t_traffic = time.monotonic() - t0
            uac_result = uac_p.wait()
        run.sipp_cpu_pct = 100 * (sipp_cpu_last - sipp_cpu0) / max(t_traffic, 1e-6)
        # the UAS ends by itself once its calls are done (plus its 1 s timewait); killed
        # after 3 s otherwise (calls that failed at the UAC never end at the UAS)
        uas_result = uas_p.wait(kill_after=3.0 if uac_result.successful == calls else 0.5)
    remaining = settle - (time.monotonic() - t0 - t_traffic)
    if remaining > 0:
        time.sleep(remaining)
    after = Snapshot.take(pids)
    run.elapsed = time.monotonic() - t0
    run.kdrops = udp_drops(ports) - drops0
    cpu_ticks_s, cpu_sched_s, per = before.delta(after)
    run.cpu_us = cpu_ticks_s * 1e6 / calls
    run.sched_us = cpu_sched_s * 1e6 / calls
    w = server.worker()
    if w is None and per:
        w = max(per, key=lambda p: per[p])
    run.worker_us = per.get(w, 0.0) * 1e6 / calls if w is not None else 0.0
    mems = [mem_kb(p) for p in server.pids()]
    run.rss_mb = sum(m[0] for m in mems) / 1024
    run.pss_mb = sum(m[1] for m in mems) / 1024

    assert uac_result is not None
    run.ok = uac_result.successful
    run.failed_sipp = uac_result.failed
    run.uac_rc = uac_result.returncode
    run.retrans = uac_result.retransmissions + (uas_result.retransmissions if uas_result else 0)
    rtd, rtd_when = rtt_samples(d / "uac")
    run.rtd_p50_ms, run.rtd_p99_ms = _pct(rtd, 0.5), _pct(rtd, 0.99)
    if use_msg:
        lat, when = msg_latencies(d / "uac" / "messages.log")
        run.p50_ms, run.p99_ms = _pct(lat, 0.5), _pct(lat, 0.99)
    else:
        lat, when = rtd, rtd_when
        run.p50_ms, run.p99_ms = run.rtd_p50_ms, run.rtd_p99_ms
    when = sorted(when)
    if len(when) >= 2 and when[-1] > when[0]:
        # completion rate of the answered INVITEs: (n - 1) intervals over their span
        run.achieved = (len(when) - 1) / (when[-1] - when[0])
    if run.ok < calls:
        parts = [f"  UAC: {uac_result.describe(800).splitlines()[0]}; "
                 f"{uac_result.total_calls} created, {run.ok} ok, {uac_result.failed} failed, "
                 f"{uac_result.retransmissions} retrans, {uac_result.timeouts} timeouts, "
                 f"{uac_result.unexpected_messages} unexpected"]
        parts.append(_error_summary(uac_result, "UAC"))
        parts.append(_error_summary(uas_result, "UAS"))
        # the server's last complaints (Kamailio logs its start banner too: skip that)
        tail = [ln for ln in server.log_tail(20000).splitlines()
                if re.search(r"ERROR|CRITICAL|ALERT|BUG|WARNING|Traceback|Error", ln)][-6:]
        if tail:
            parts.append("  server log, last errors:\n    " + "\n    ".join(ln[:200] for ln in tail))
        run.errors = "\n".join(p for p in parts if p)
    if not keep:
        shutil.rmtree(d, ignore_errors=True)
    return run


# --- quiescing ---------------------------------------------------------------------------


def wait_idle(server: Server, within: float = 10.0, busy_pct: float = 5.0) -> float:
    """Wait until the server uses < busy_pct % of a core over 0.25 s; returns waited s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        pids = server.pids()
        a = sum(sched_ns(p) for p in pids)
        time.sleep(0.25)
        b = sum(sched_ns(p) for p in pids)
        if (b - a) / 0.25e9 * 100 < busy_pct:
            break
    return time.monotonic() - t0


# --- reporting -------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    rate: float
    n: int
    values: dict[str, float | None] = field(default_factory=dict)


METRICS = ("achieved", "fail_pct", "cpu_us", "sched_us", "worker_us", "p50_ms", "p99_ms",
           "rss_mb", "pss_mb", "retrans", "kdrops")


def med(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def summarize(runs: list[Run], servers: list[str], rates: list[float]) -> list[Row]:
    rows = []
    for rate in rates:
        for s in servers:
            rs = [r for r in runs if r.server == s and r.rate == rate and r.kind == "fixed"]
            if not rs:
                continue
            row = Row(s, rate, len(rs))
            for m in METRICS:
                row.values[m] = med([getattr(r, m) for r in rs])
            rows.append(row)
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = [  # header, metric, format, width
    ("calls/s", "achieved", ".1f", 8), ("fail%", "fail_pct", ".2f", 6),
    ("CPU us/call", "cpu_us", ".0f", 11), ("sched us/call", "sched_us", ".0f", 13),
    ("worker us/call", "worker_us", ".0f", 14), ("p50 ms", "p50_ms", ".2f", 7),
    ("p99 ms", "p99_ms", ".2f", 7), ("RSS MB", "rss_mb", ".1f", 7), ("PSS MB", "pss_mb", ".1f", 7),
    ("retrans", "retrans", ".0f", 7), ("kdrops", "kdrops", ".0f", 6),
]
RATIO_METRICS = {"cpu_us", "sched_us", "worker_us", "p50_ms", "p99_ms", "rss_mb", "pss_mb"}


def print_table(rows: list[Row], servers: list[str], labels: dict[str, str]) -> None:
    w0 = max(14, *(len(f"trio/{s}") for s in servers))
    head = f"{'server':<{w0}} | {'rate':>5} | " + " | ".join(f"{h:>{w}}" for h, _, _, w in COLUMNS)
    print(head)
    print("-" * len(head))
    rates = sorted({r.rate for r in rows})
    for rate in rates:
        group = {r.server: r for r in rows if r.rate == rate}
        for s in servers:
            r = group.get(s)
            if r is None:
                continue
            cells = [f"{fmt(r.values[m], f):>{w}}" for _, m, f, w in COLUMNS]
            print(f"{labels.get(s, s):<{w0}} | {rate:>5g} | " + " | ".join(cells))
        t = group.get("trio")
        if t is not None:
            for s in servers:
                k = group.get(s)
                if s == "trio" or k is None:
                    continue
                cells = []
                for _, m, _, w in COLUMNS:
                    a, b = t.values[m], k.values[m]
                    if m in RATIO_METRICS and a is not None and b:
                        cells.append(f"{a / b:>{w - 1}.1f}x")
                    else:
                        cells.append(f"{'':>{w}}")
                print(f"{'trio/' + s:<{w0}} | {'':>5} | " + " | ".join(cells))
        print("-" * len(head))


# --- main ----------------------------------------------------------------------------------


class Deadline(Exception):
    pass


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop as Ctrl-C does (servers and SIPps are stopped on the way out)."""
    raise KeyboardInterrupt


def parse_rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small counts: rates 50,200, 200 calls, 1 repeat, short search (~2 min)")
    ap.add_argument("--rates", type=parse_rates, help="fixed rates, calls/s (default 50,100,200)")
    ap.add_argument("--calls", type=int, help="calls per fixed-rate run (default 600)")
    ap.add_argument("--repeat", type=int, help="repeats of each fixed-rate run (default 3)")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS),
                    help="comma-separated subset of trio,kamailio,kamailio-fm")
    ap.add_argument("--latency", choices=("msg", "rtt"), default="msg",
                    help="p50/p99 source: SIPp -trace_msg timestamps (us) or SIPp rtd (ms)")
    ap.add_argument("--settle", type=float, default=5.5,
                    help="seconds after the UAC ends still counted in the CPU window "
                         "(tm wt_timer is 5 s)")
    ap.add_argument("--limit-seconds", type=float, default=5.0,
                    help="SIPp -l = rate x this (at least 200): calls open at once")
    ap.add_argument("--no-search", action="store_true", help="skip the max-rate search")
    ap.add_argument("--search-seconds", type=float, help="max-rate search budget per server "
                    "(default 75; --quick 20)")
    ap.add_argument("--probe-seconds", type=float, help="traffic per probe (default 8, longer than tm's 5 s wt_timer so that "
                         "transaction memory reaches its steady state; quick 3)")
    ap.add_argument("--search-cap", type=float, default=5000, help="highest rate probed")
    ap.add_argument("--kamailio-shm", type=int, metavar="MB",
                    help="Kamailio shared memory (-m); default: Kamailio's own, 64 MB, as "
                         "Debian ships it (tm holds each transaction for wt_timer = 5 s in it)")
    ap.add_argument("--budget-minutes", type=float, default=15.0,
                    help="hard stop: no new measurement starts after this")
    ap.add_argument("--json", type=Path, help="write every run as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep SIPp work dirs (printed)")
    args = ap.parse_args()

    rates = args.rates or ([50, 200] if args.quick else [50, 100, 200])
    calls = args.calls or (200 if args.quick else 600)
    repeat = args.repeat or (1 if args.quick else 3)
    search_s = args.search_seconds or (20 if args.quick else 75)
    probe_s = args.probe_seconds or (3 if args.quick else 8)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; one of {', '.join(ALL_SERVERS)}")
    if sipp_binary() is None:
        print("sipp not found (Debian: sip-tester)", file=sys.stderr)
        return 2
    if any(s.startswith("kamailio") for s in servers):
        why = kamailio_missing()
        if why:
            print(f"skipping Kamailio: {why}", file=sys.stderr)
            servers = [s for s in servers if not s.startswith("kamailio")]
    if not servers:
        return 2

    t_start = time.monotonic()
    budget = args.budget_minutes * 60

    def check_budget() -> None:
        if time.monotonic() - t_start > budget:
            raise Deadline

    # SIGTERM -> unwind like Ctrl-C, so every process is stopped
    signal.signal(signal.SIGTERM, interrupt)

    base = Path(tempfile.mkdtemp(prefix="stateful-bench-"))
    print(f"stateful_bench: {ROUTES.relative_to(REPO)}; Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
          f"rates {','.join(f'{r:g}' for r in rates)} x {calls} calls x {repeat} repeats; "
          f"latency from {'SIPp -trace_msg' if args.latency == 'msg' else 'SIPp rtd'}")
    runs: list[Run] = []
    maxima: dict[str, tuple[float | None, str]] = {}
    labels: dict[str, str] = {}
    notes: list[str] = []
    srv: dict[str, Server] = {}
    try:
        with contextlib.ExitStack() as stack:
            for key in servers:
                s = start_server(key, base, args.kamailio_shm)
                stack.callback(s.stop)
                srv[key] = s
                labels[key] = s.label
                extra = ""
                if isinstance(s, KamailioServer):
                    extra = (f"; {len(s.pids())} processes, worker pid "
                             f"{s.worker() or '? (busiest process used)'}")
                print(f"  {key}: port {s.port}, pid {s.pids()[0]}{extra}\n    {s.command()}")
            # warm-up (not counted): first calls load code paths, fill caches
            for s in srv.values():
                measure(s, 100, 100, kind="warmup", settle=0.0, latency="rtt",
                        limit_seconds=args.limit_seconds, base=base, trace=False)
            time.sleep(5.5)  # let the warm-up transactions go (tm wt_timer)
            # idle baseline
            snap = {k: Snapshot.take(s.pids()) for k, s in srv.items()}
            time.sleep(2.0)
            idle = {k: snap[k].delta(Snapshot.take(s.pids()))[1] / 2.0 * 1000
                    for k, s in srv.items()}
            print("  idle CPU (ms/s): " + ", ".join(f"{k} {v:.2f}" for k, v in idle.items()))

            # fixed rates, interleaved
            try:
                for rep in range(repeat):
                    for rate in rates:
                        order = servers[rep % len(servers):] + servers[: rep % len(servers)]
                        for key in order:
                            check_budget()
                            wait_idle(srv[key])
                            try:
                                r = measure(srv[key], rate, calls, kind="fixed",
                                            settle=args.settle, latency=args.latency,
                                            limit_seconds=args.limit_seconds, base=base,
                                            keep=args.keep)
                            except Exception as exc:  # one broken run must not lose the rest
                                notes.append(f"{key} at {rate:g} cps, repeat {rep + 1}: "
                                             f"measurement error {exc!r}")
                                print(f"  [{rep + 1}/{repeat}] {key} {rate:g} cps: ERROR {exc!r}")
                                continue
                            runs.append(r)
                            print_run(r, rep, repeat)
                            if r.errors:
                                print(r.errors)
            except Deadline:
                notes.append("budget reached during the fixed-rate runs: later runs skipped")

            # the long-lived servers are done; each probe below gets a fresh one
            for s in srv.values():
                s.stop()

            # max-rate search
            if not args.no_search:
                for key in servers:
                    try:
                        best, why = search_max(key, runs, rates, args, search_s, probe_s,
                                               base, check_budget)
                    except Deadline:
                        best, why = None, "budget reached"
                    maxima[key] = (best, why)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers and SIPps", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work dirs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"Medians of {repeat} repeat(s), {calls} calls per run "
          f"(CPU us/call: utime+stime of all server processes; sched: schedstat, same "
          f"processes; worker: the SIP worker alone; p50/p99: INVITE->200 at the UAC "
          f"from {'SIPp -trace_msg' if args.latency == 'msg' else 'SIPp rtd'}; "
          f"RSS/PSS: sum over the server's processes at the end of the run)")
    print_table(summarize(runs, servers, rates), servers, labels)
    if maxima:
        print("max calls/s (fail < 0.1 % and achieved >= 95 % of target): " + "; ".join(
            f"{labels[k]} {fmt(v, '.0f')}{' (' + why + ')' if why else ''}"
            for k, (v, why) in maxima.items()))
        t = maxima.get("trio", (None, ""))[0]
        ratios = [f"trio/{k} {t / v:.2f}" for k, (v, _) in maxima.items()
                  if k != "trio" and t and v]
        if ratios:
            print("max-rate ratios: " + ", ".join(ratios))
    for n in notes:
        print("note: " + n)
    print(f"total {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "rates": rates, "calls": calls, "repeat": repeat, "latency": args.latency,
            "runs": [asdict(r) | {"fail_pct": r.fail_pct} for r in runs],
            "max": {k: v for k, (v, _) in maxima.items()},
        }, indent=1))
        print(f"runs written to {args.json}")
    return 0


def print_run(r: Run, rep: int, repeat: int) -> None:
    tag = f"[{rep + 1}/{repeat}]" if r.kind == "fixed" else "  probe"
    if r.kind == "fixed":
        lat = (f"p50 {fmt(r.p50_ms, '.2f')} p99 {fmt(r.p99_ms, '.2f')} ms "
               f"(rtd {fmt(r.rtd_p50_ms, '.0f')}/{fmt(r.rtd_p99_ms, '.0f')})")
    else:
        lat = f"rtd p50 {fmt(r.rtd_p50_ms, '.0f')} p99 {fmt(r.rtd_p99_ms, '.0f')} ms"
    print(f"  {tag} {r.server:<12} {r.rate:>6g} cps x {r.calls}: {r.ok} ok, "
          f"{r.achieved:.1f} cps, cpu {r.cpu_us:.0f}/{r.sched_us:.0f} us/call "
          f"(worker {r.worker_us:.0f}), {lat}, "
          f"rss {r.rss_mb:.1f} pss {r.pss_mb:.1f} MB, retrans {r.retrans}, kdrops {r.kdrops}, "
          f"sipp cpu {r.sipp_cpu_pct:.0f}%", flush=True)


def search_max(key: str, runs: list[Run], rates: list[float], args: argparse.Namespace,
               budget_s: float, probe_s: float, base: Path,
               check_budget: Callable[[], None]) -> tuple[float | None, str]:
    """Highest passing rate: doubling from the best fixed rate that passed in every repeat,
    then bisection between the last pass and the first failure (to within 10 %). Each probe
    runs on a freshly started server, so one probe's backlog, leftover transactions or
    memory fragmentation does not count against the next."""
    t0 = time.monotonic()
    cap = float(args.search_cap)
    fixed: dict[float, bool] = {}
    for rate in rates:
        rs = [r for r in runs if r.server == key and r.rate == rate and r.kind == "fixed"]
        if rs:
            fixed[rate] = all(r.passed() for r in rs)
    lo: float | None = max((r for r, ok in fixed.items() if ok), default=None)
    hi: float | None = min((r for r, ok in fixed.items() if not ok and (lo is None or r > lo)),
                           default=None)
    print(f"  max-rate search {key}: fixed rates passed up to {fmt(lo, 'g')}"
          f"{', failed at ' + format(hi, 'g') if hi else ''}; budget {budget_s:g} s, "
          f"cap {cap:g} cps, {probe_s:g} s per probe, fresh server per probe", flush=True)

    def probe(rate: float) -> Run:
        check_budget()
        server = start_server(key, base, args.kamailio_shm)
        try:
            n = max(200, int(rate * probe_s))
            return measure(server, rate, n, kind="probe", settle=0.0, latency="rtt",
                           limit_seconds=args.limit_seconds, base=base, recv_timeout_ms=5000,
                           trace=False, keep=args.keep)
        finally:
            server.stop()

    def on_probe(r: Run) -> None:
        runs.append(r)
        print_run(r, 0, 0)

    # the search itself is bench/_common.py's, shared with the newer benchmarks (imported
    # here: _common imports this module)
    from _common import search_max as doubling_then_bisection

    return doubling_then_bisection(key, lo, hi, probe,  # type: ignore[arg-type]
                                   budget_s=budget_s - (time.monotonic() - t0), cap=cap,
                                   on_probe=on_probe)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
