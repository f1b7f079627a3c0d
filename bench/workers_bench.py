"""Scaling on one machine: routes/stateful.lua on ``trio-sip run --workers N``, N = 1 and 2.

    python bench/workers_bench.py                  # about 5 minutes
    python bench/workers_bench.py --quick          # about 2 minutes
    python bench/workers_bench.py --workers 1,2,3 --rates 100,200,400 --repeat 5

What runs
---------
* N = 1: ``python -m trio_sip run`` (one process: what --workers 1 is);
* N >= 2: ``python -m trio_sip run --workers N``: a supervisor and N workers sharing the
  listen port through SO_REUSEPORT (docs/workers.md).

Both with ``--log-level warning``, no management interface, the loopback guard on. Traffic is
SIPp (tests/sipp/uac.xml -> proxy -> tests/sipp/uas.xml, INVITE/200/ACK/BYE/200, UDP) with
**one UAC socket per call** (``-t un``) for every N, so the kernel's SO_REUSEPORT hash (over
the source port) has calls to spread; with one socket (``-t u1``) every call would land on the
same worker. The helpers (/proc sampling, SIPp rtd parsing, idle wait) are imported from
bench/stateful_bench.py.

Per measurement (fixed rate, fixed number of calls):

* calls/s: completion rate of the answered INVITEs ((n-1) over the span of their 200s,
  SIPp ``-trace_rtt``);
* fail%: calls asked for that did not succeed;
* CPU us/call: utime+stime (/proc/PID/stat, clock ticks) of every process of the server
  (supervisor and workers) from just before the UAC starts until ``--settle`` s after it ends (tm's 5 s wt linger
  included), divided by the calls;
* per-worker share: how the CPU split over the workers (is the load spread at all).

Max-rate search, per N: probes of ``--probe-seconds`` on a fresh server, doubling from
``--search-start`` while they pass, then bisecting to within 10 %, within ``--search-seconds``;
a probe passes with < 0.1 % failed calls and at least 95 % of the target rate achieved.

The figures are medians over ``--repeat`` runs, interleaved (N=1, N=2, N=1, ...). This
machine has 2 cores, shared with SIPp itself (UAC and UAS take a good part of one core at a
few hundred calls/s) and with other people's work: read the scaling ratio with that in mind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from stateful_bench import (  # noqa: E402
    ROUTES,
    Server,
    Snapshot,
    TrioServer,
    _pct,
    interrupt,
    med,
    ping,
    rtt_samples,
    wait_idle,
)

from tests.support.ports import LOOPBACK, free_port_both  # noqa: E402
from tests.support.sipp import Sipp, SippError, sipp_binary  # noqa: E402

READY_LINE = "workers: transactions, usrloc"  # the supervisor's warning once all serve


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat's cpu line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat; a restarted worker has
    a new pid, so this is asked at each snapshot)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return sorted(out)


class WorkersServer(Server):
    """``python -m trio_sip run --workers N`` in its own session."""

    def __init__(self, workdir: Path, n: int) -> None:
        self.key = f"N={n}"
        self.label = f"trio-sip --workers {n}"
        self.port = free_port_both()
        self.log_path = workdir / f"workers{n}-{self.port}.log"
        self.argv = [
            sys.executable, "-m", "trio_sip", "run", "--workers", str(n),
            "--routes", str(ROUTES), "--listen", f"udp:{LOOPBACK}:{self.port}",
            "--log-level", "warning", "--set", "core.loopback_only=true", "--set", "mi.listen=",
        ]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while READY_LINE not in self.log_tail(100000):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"trio-sip --workers {n} did not start\n{self.log_tail()}")
            time.sleep(0.1)
        if not ping(self.port, 30.0):
            self.stop()
            raise RuntimeError(f"no answer to OPTIONS\n{self.log_tail()}")

    def command(self) -> str:
        return " ".join(self.argv[1:]).replace(str(REPO) + "/", "")

    def pids(self) -> list[int]:
        if self.proc.poll() is not None:
            return []
        pid = self.proc.pid
        return [pid, *children(pid)]

    def worker(self) -> int | None:
        return None

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start(n: int, workdir: Path) -> Server:
    if n == 1:
        return TrioServer(workdir, key="N=1", label="trio-sip (one process)")
    return WorkersServer(workdir, n)


@dataclass
class Run:
    n: int
    rate: float
    calls: int
    ok: int = 0
    achieved: float = 0.0
    cpu_us: float = 0.0
    shares: list[float] = field(default_factory=list)  # CPU share of each process, %
    rtd_p50_ms: float | None = None
    machine_busy: float = 0.0  # % of all CPUs busy during the traffic (everyone's work)
    sipp_cpu_pct: float = 0.0  # SIPp UAC + UAS during the traffic, % of one core
    errors: str = ""

    @property
    def fail_pct(self) -> float:
        return 100.0 * (self.calls - self.ok) / self.calls if self.calls else 0.0

    def passed(self) -> bool:
        return (self.calls - self.ok) < 0.001 * self.calls and self.achieved >= 0.95 * self.rate


def measure(server: Server, n: int, rate: float, calls: int, *, settle: float,
            base: Path, recv_timeout_ms: int | None = None) -> Run:
    run = Run(n, rate, calls)
    d = Path(tempfile.mkdtemp(prefix=f"w{n}-{int(rate)}-", dir=base))
    timeout = calls / rate + 30
    pids = server.pids()
    uas = Sipp("uas.xml", calls=calls, timeout=timeout + 5, workdir=d / "uas")
    with uas.start() as uas_p:
        uas_p.wait_ready()
        uac = Sipp("uac.xml", remote=uas_p.port, via=server.port, rate=rate, calls=calls,
                   limit=max(200, int(rate * 5)), transport="un", max_sockets=4096,
                   timeout=timeout, workdir=d / "uac", recv_timeout_ms=recv_timeout_ms,
                   extra_args=["-trace_rtt", "-rtt_freq", "1"])
        before = Snapshot.take(pids)
        t0 = time.monotonic()
        busy0, total0 = machine_cpu()
        with uac.start() as uac_p:
            sipps = [uac_p.popen.pid, uas_p.popen.pid]
            sipp0 = Snapshot.take(sipps)
            sipp_last = sipp0
            while uac_p.popen.poll() is None and time.monotonic() - t0 < timeout + 10:
                time.sleep(0.1)
                if uac_p.popen.poll() is None:  # an exited process's /proc entry is gone
                    sipp_last = Snapshot.take(sipps)
            uac_result = uac_p.wait()
        t_traffic = time.monotonic() - t0
        busy1, total1 = machine_cpu()
        run.machine_busy = 100 * (busy1 - busy0) / max(1, total1 - total0)
        run.sipp_cpu_pct = 100 * sipp0.delta(sipp_last)[0] / max(t_traffic, 1e-6)
        uas_p.wait(kill_after=3.0 if uac_result.successful == calls else 0.5)
    remaining = settle - (time.monotonic() - t0 - t_traffic)
    if remaining > 0:
        time.sleep(remaining)
    after = Snapshot.take(pids)
    # utime+stime from /proc/PID/stat, not schedstat: a process's stat keeps the time of
    # its threads that ended (trio's idle worker threads exit after 10 s), while the sum
    # over /proc/PID/task/*/schedstat loses it and can even go down
    ticks_s, _sched_s, _per = before.delta(after)
    run.cpu_us = ticks_s * 1e6 / calls
    per = {p: after.ticks.get(p, v) - v for p, v in before.ticks.items()}
    total = sum(per.values()) or 1
    run.shares = [100 * per[p] / total for p in pids]
    run.ok = uac_result.successful
    rtd, when = rtt_samples(d / "uac")
    run.rtd_p50_ms = _pct(rtd, 0.5)
    when.sort()
    if len(when) >= 2 and when[-1] > when[0]:
        run.achieved = (len(when) - 1) / (when[-1] - when[0])
    if run.ok < calls:
        run.errors = uac_result.describe(600).splitlines()[0]
    shutil.rmtree(d, ignore_errors=True)
    return run


def measure_retrying(server: Server, n: int, rate: float, calls: int, **kwargs: Any) -> Run:
    """``measure``, tried again (up to 3 times) when SIPp cannot start, e.g. because its
    free port was taken by another process between the choice and the bind."""
    for attempt in range(3):
        try:
            return measure(server, n, rate, calls, **kwargs)
        except SippError as exc:
            print(f"    SIPp did not start ({str(exc).splitlines()[0]}); "
                  f"{'retrying' if attempt < 2 else 'giving up'}", flush=True)
    raise RuntimeError("SIPp did not start three times in a row")


def search(n: int, start_rate: float, *, budget_s: float, probe_s: float, cap: float,
           base: Path, settle: float) -> tuple[float | None, list[str]]:
    """The highest passing rate found for N within the budget; the probe log lines."""
    log: list[str] = []
    t0 = time.monotonic()
    good: float | None = None
    bad: float | None = None
    rate = start_rate
    while time.monotonic() - t0 < budget_s and rate <= cap:
        server = start(n, base)
        try:
            r = measure_retrying(server, n, rate, max(200, int(rate * probe_s)), settle=0.5,
                                 base=base, recv_timeout_ms=5000)
        finally:
            server.stop()
        ok = r.passed()
        log.append(f"    N={n} probe {rate:7.0f}/s: {'pass' if ok else 'FAIL'} "
                   f"(achieved {r.achieved:6.0f}/s, {r.fail_pct:.2f} % failed, "
                   f"{r.cpu_us:5.0f} us/call; SIPp {r.sipp_cpu_pct:.0f} % of a core, "
                   f"machine {r.machine_busy:.0f} % busy)")
        print(log[-1], flush=True)
        if ok:
            good = rate
        else:
            bad = rate
        if bad is None:
            rate *= 2
        else:
            lo = good or 0.0
            if bad - lo <= 0.1 * bad:
                break
            rate = (lo + bad) / 2 if good else bad / 2
    return good, log




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="rate 100 x 300 calls, 1 repeat, "
                    "short search (about 2 minutes)")
    ap.add_argument("--workers", default="1,2", help="comma-separated N values (default 1,2)")
    ap.add_argument("--rates", help="fixed rates, calls/s (default 100,200)")
    ap.add_argument("--calls", type=int, help="calls per fixed-rate run (default 600)")
    ap.add_argument("--repeat", type=int, help="repeats (default 3)")
    ap.add_argument("--settle", type=float, default=5.5,
                    help="seconds after the UAC ends still in the CPU window (wt is 5 s)")
    ap.add_argument("--no-search", action="store_true", help="skip the max-rate search")
    ap.add_argument("--search-start", type=float, default=200.0)
    ap.add_argument("--search-seconds", type=float, help="per N (default 60; quick 25)")
    ap.add_argument("--probe-seconds", type=float, help="traffic per probe (default 4)")
    ap.add_argument("--search-cap", type=float, default=5000.0)
    args = ap.parse_args()

    ns = [int(x) for x in args.workers.split(",") if x.strip()]
    rates = [float(x) for x in (args.rates or ("100" if args.quick else "100,200")).split(",")]
    calls = args.calls or (300 if args.quick else 600)
    repeat = args.repeat or (1 if args.quick else 3)
    search_s = args.search_seconds or (25 if args.quick else 60)
    probe_s = args.probe_seconds or 4.0
    if sipp_binary() is None:
        print("sipp not found (Debian: sip-tester)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    base = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    print(f"workers_bench: {ROUTES.relative_to(REPO)}; Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; N {ns}; rates "
          f"{','.join(f'{r:g}' for r in rates)} x {calls} calls x {repeat} repeats; "
          "SIPp UAC -t un (a socket per call)", flush=True)
    runs: list[Run] = []
    maxima: dict[int, float | None] = {}
    servers: dict[int, Server] = {}
    try:
        for n in ns:
            servers[n] = start(n, base)
            print(f"  N={n}: {servers[n].command()}", flush=True)
            measure(servers[n], n, 100, 100, settle=0.5, base=base)  # warm-up, not counted
        for rep in range(repeat):
            for rate in rates:
                order = ns[rep % len(ns):] + ns[:rep % len(ns)]
                for n in order:
                    wait_idle(servers[n])
                    r = measure_retrying(servers[n], n, rate, calls, settle=args.settle,
                                         base=base)
                    runs.append(r)
                    print(f"  repeat {rep + 1} N={n} {rate:5.0f}/s: achieved "
                          f"{r.achieved:6.1f}/s, {r.fail_pct:5.2f} % failed, "
                          f"{r.cpu_us:6.0f} us/call, CPU split "
                          f"{'/'.join(f'{s:.0f}' for s in r.shares)} %, SIPp "
                          f"{r.sipp_cpu_pct:.0f} %, machine {r.machine_busy:.0f} % busy"
                          + (f"  [{r.errors}]" if r.errors else ""), flush=True)
        for s in servers.values():
            s.stop()
        servers.clear()
        if not args.no_search:
            print("max-rate search (fresh server per probe):", flush=True)
            for n in ns:
                maxima[n], _ = search(n, args.search_start, budget_s=search_s,
                                      probe_s=probe_s, cap=args.search_cap, base=base,
                                      settle=args.settle)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"{'':8}{'rate':>7}{'calls/s':>10}{'fail%':>8}{'us/call':>9}{'rtd p50':>9}  "
          "(medians; CPU = supervisor + workers)")
    for rate in rates:
        for n in ns:
            rs = [r for r in runs if r.n == n and r.rate == rate]
            if not rs:
                continue
            a, f, c = (med([r.achieved for r in rs]), med([r.fail_pct for r in rs]),
                       med([r.cpu_us for r in rs]))
            p = med([r.rtd_p50_ms for r in rs])
            print(f"{'N=' + str(n):8}{rate:7.0f}{a or 0:10.1f}{f or 0:8.2f}{c or 0:9.0f}"
                  f"{(p if p is not None else float('nan')):9.1f}")
        base_cpu = med([r.cpu_us for r in runs if r.n == ns[0] and r.rate == rate])
        for n in ns[1:]:
            c = med([r.cpu_us for r in runs if r.n == n and r.rate == rate])
            if base_cpu and c:
                print(f"{'':8}{rate:7.0f}  CPU per call N={n} / N={ns[0]}: {c / base_cpu:.2f}")
    if maxima:
        print()
        print("max calls/s at < 0.1 % failed: " + ", ".join(
            f"N={n}: {m:.0f}" if m else f"N={n}: none passed" for n, m in maxima.items()))
        first = maxima.get(ns[0])
        for n in ns[1:]:
            m = maxima.get(n)
            if first and m:
                print(f"scaling ratio N={n} / N={ns[0]}: {m / first:.2f}")
    print("(2 shared cores: SIPp's UAC and UAS run on them too; medians of a noisy machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
