"""Helpers shared by registrar_bench.py, suspended_bench.py and rtpengine_bench.py.

The /proc readings, the servers (trio-sip as a separate process, Kamailio through
tests/support/kamailio.py), SIPp error summaries and the table formatting live in
stateful_bench.py and are imported from there; this adds what the three newer benchmarks
need on top:

* :func:`drive`: one SIPp UAC run (repeated if SIPp could not bind its sockets) (optionally with a SIPp UAS behind the server) at a fixed
  rate for a fixed number of calls against one server, with the server's CPU (utime+stime
  and schedstat) over a window that ends when the server is idle again, its memory at the
  end, the achieved rate, p50/p99 from SIPp's message trace and SIPp's own CPU;
* :func:`search_max`: the max-rate search of stateful_bench (doubling, then bisection to
  within 10 %, a fresh server per probe), for any ``probe(rate) -> Load``;
* :func:`mem_of`: summed VmRSS and Pss of a server's processes;
* :func:`print_rows`: a plain table.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from stateful_bench import (  # noqa: E402
    CLK_TCK,
    REPO,
    KamailioServer,
    Server,
    Snapshot,
    TrioServer,
    _error_summary,
    _pct,
    _proc_cpu_s,
    fmt,
    interrupt,
    med,
    mem_kb,
    msg_latencies,
    rtt_samples,
    sched_ns,
    udp_drops,
    wait_idle,
)

from tests.support.sipp import EXIT_BIND_ERROR, Sipp, SippResult  # noqa: E402

__all__ = [
    "BENCH",
    "REPO",
    "KamailioServer",
    "Load",
    "Server",
    "Snapshot",
    "TrioServer",
    "drive",
    "fmt",
    "interrupt",
    "med",
    "mem_of",
    "print_rows",
    "sched_ns",
    "search_max",
    "wait_idle",
]

SCENARIOS = BENCH / "sipp"


def mem_of(pids: Sequence[int]) -> tuple[float, float]:
    """(RSS MB, PSS MB) summed over ``pids``."""
    mems = [mem_kb(p) for p in pids]
    return sum(m[0] for m in mems) / 1024, sum(m[1] for m in mems) / 1024


@dataclass
class Load:
    """One SIPp run against one server."""

    server: str
    rate: float
    calls: int
    kind: str
    ok: int = 0
    achieved: float = 0.0
    cpu_us: float = 0.0  # utime+stime per call, all server processes
    sched_us: float = 0.0  # schedstat per call, all server processes
    worker_us: float = 0.0  # schedstat per call, the SIP worker only
    other_us: float = 0.0  # schedstat per call of the extra processes (e.g. rtpengine)
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    retrans: int = 0
    kdrops: int = 0
    sipp_cpu_pct: float = 0.0
    elapsed: float = 0.0
    errors: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fail_pct(self) -> float:
        return 100.0 * (self.calls - self.ok) / self.calls if self.calls else 0.0

    def passed(self) -> bool:
        return (self.calls - self.ok) < 0.001 * self.calls and self.achieved >= 0.95 * self.rate


def drive(server: Server, scenario: str | Path, **kwargs: Any) -> Load:
    """:func:`drive_once`, repeated (up to 3 times) when SIPp could not bind one of its
    sockets and so never started (exit 254: a port picked free was taken meanwhile, e.g.
    by rtpengine's media range): a harness hiccup, not a result."""
    for _ in range(2):
        run = drive_once(server, scenario, **kwargs)
        if not run.extra.pop("bind_error", False):
            return run
        print(f"  ({server.key}: SIPp could not bind a socket; run repeated)", flush=True)
    run = drive_once(server, scenario, **kwargs)
    run.extra.pop("bind_error", None)
    return run


def drive_once(server: Server, scenario: str | Path, *, rate: float, calls: int, base: Path,
               kind: str = "fixed", method: str = "INVITE", uas: str | Path | None = None,
               keys: Mapping[str, str] | None = None, service: str | None = None,
               limit: int | None = None, trace: bool = True,
               recv_timeout_ms: int | None = None, extra_pids: Sequence[int] = (),
               settle: float = 0.0, idle_within: float = 15.0, keep: bool = False) -> Load:
    """Run a SIPp UAC (``scenario``) through ``server`` at ``rate`` for ``calls`` calls.

    With ``uas`` a SIPp UAS runs behind the server (the UAC names it as its remote address
    and sends to the server with ``-rsa``); without, the UAC's remote address is the server.
    The CPU window opens just before the UAC starts and closes once the UAC has ended,
    ``settle`` seconds have passed and the server has been idle (< 5 % of a core over
    0.25 s, at most ``idle_within`` s): work the server defers (database writes, timers)
    is counted. ``extra_pids``: processes whose CPU is reported separately (``other_us``).
    ``method``: the request whose first 200 ends the latency clock (from ``-trace_msg``);
    the scenario must mark that 200 ``rtd="true"`` for the rate without a trace.
    """
    run = Load(server=server.key, rate=rate, calls=calls, kind=kind)
    d = Path(tempfile.mkdtemp(prefix=f"{server.key}-{int(rate)}-", dir=base))
    traffic_s = calls / rate
    timeout = traffic_s + 45
    scen = str(scenario)
    pids = server.pids()
    with contextlib.ExitStack() as stack:
        uas_p = None
        if uas is not None:
            uas_p = stack.enter_context(
                Sipp(str(uas), calls=calls, timeout=timeout + 5, workdir=d / "uas").start())
            uas_p.wait_ready()
        uac = Sipp(
            scen, remote=uas_p.port if uas_p is not None else server.port,
            via=server.port if uas_p is not None else None, rate=rate, calls=calls,
            limit=limit or max(200, int(rate * 5)), timeout=timeout, workdir=d / "uac",
            service=service, keys=dict(keys or {}), recv_timeout_ms=recv_timeout_ms,
            trace_msg=trace, extra_args=["-trace_rtt", "-rtt_freq", "1"],
        )
        before = Snapshot.take([*pids, *extra_pids])
        drops0 = udp_drops({server.port})
        t0 = time.monotonic()
        with uac.start() as uac_p:
            sipp_pids = [uac_p.popen.pid] + ([uas_p.popen.pid] if uas_p is not None else [])
            c0 = last = sum(_proc_cpu_s(p) for p in sipp_pids)
            while uac_p.popen.poll() is None and time.monotonic() - t0 < uac.kill_after:
                time.sleep(0.1)
                c = sum(_proc_cpu_s(p) for p in sipp_pids)
                if uac_p.popen.poll() is None:
                    last = c
            t_traffic = time.monotonic() - t0
            uac_result = uac_p.wait()
        run.sipp_cpu_pct = 100 * (last - c0) / max(t_traffic, 1e-6)
        uas_result: SippResult | None = None
        if uas_p is not None:
            uas_result = uas_p.wait(kill_after=3.0 if uac_result.successful == calls else 0.5)
    if settle > 0:
        time.sleep(max(0.0, settle - (time.monotonic() - t0 - t_traffic)))
    wait_idle(server, within=idle_within)
    after = Snapshot.take([*pids, *extra_pids])
    run.elapsed = time.monotonic() - t0
    run.kdrops = udp_drops({server.port}) - drops0
    ticks_s, _, per = before.delta(after)
    extra_ticks = sum(after.ticks.get(p, 0) - before.ticks.get(p, 0) for p in extra_pids)
    run.cpu_us = (ticks_s - extra_ticks / CLK_TCK) * 1e6 / calls
    run.sched_us = sum(v for p, v in per.items() if p in pids) * 1e6 / calls
    run.other_us = sum(v for p, v in per.items() if p in extra_pids) * 1e6 / calls
    w = server.worker()
    if w is None and pids:
        w = max(pids, key=lambda p: per.get(p, 0.0))
    run.worker_us = per.get(w, 0.0) * 1e6 / calls if w is not None else 0.0
    run.rss_mb, run.pss_mb = mem_of(server.pids())
    run.ok = uac_result.successful
    run.extra["bind_error"] = (uac_result.returncode == EXIT_BIND_ERROR
                               and uac_result.total_calls == 0)
    run.retrans = uac_result.retransmissions + (uas_result.retransmissions if uas_result else 0)
    if trace:
        lat, when = msg_latencies(d / "uac" / "messages.log", method)
    else:
        lat, when = rtt_samples(d / "uac")
    run.p50_ms, run.p99_ms = _pct(lat, 0.5), _pct(lat, 0.99)
    when = sorted(when)
    if len(when) >= 2 and when[-1] > when[0]:
        run.achieved = (len(when) - 1) / (when[-1] - when[0])
    if run.ok < calls:
        parts = [f"  UAC: {uac_result.describe(800).splitlines()[0]}; "
                 f"{uac_result.total_calls} created, {run.ok} ok, {uac_result.failed} failed, "
                 f"{uac_result.retransmissions} retrans, {uac_result.timeouts} timeouts"]
        parts.append(_error_summary(uac_result, "UAC"))
        parts.append(_error_summary(uas_result, "UAS"))
        tail = [ln for ln in server.log_tail(20000).splitlines()
                if any(w in ln for w in ("ERROR", "CRITICAL", "WARNING", "Traceback"))][-6:]
        if tail:
            parts.append("  server log, last errors:\n    "
                         + "\n    ".join(ln[:200] for ln in tail))
        run.errors = "\n".join(p for p in parts if p)
    if not keep:
        shutil.rmtree(d, ignore_errors=True)
    return run


def search_max(key: str, start: float | None, fail_at: float | None,
               probe: Callable[[float], Load], *, budget_s: float, cap: float,
               on_probe: Callable[[Load], None]) -> tuple[float | None, str]:
    """Highest passing rate: doubling from ``start`` (the best fixed rate that passed), then
    bisecting between the last pass and the first failure to within 10 %, within
    ``budget_s`` seconds and up to ``cap``. ``probe(rate)`` runs one probe (on a freshly
    started server)."""
    t0 = time.monotonic()
    lo, hi = start, fail_at
    while True:
        if lo is not None and hi is not None and hi / lo <= 1.1:
            return lo, ""
        if lo is not None and hi is None and lo >= cap:
            return lo, f"cap {cap:g} reached"
        if hi is None:
            rate = min(lo * 2, cap) if lo else 100.0
        elif lo is None:
            rate = hi / 2
        else:
            rate = (lo + hi) / 2
        rate = float(round(rate))
        if rate < 5:
            return lo, "nothing passed"
        if time.monotonic() - t0 > budget_s:
            return lo, f"search time used up; lowest failure {fmt(hi, 'g')}"
        r = probe(rate)
        on_probe(r)
        if r.passed():
            lo = rate
        else:
            hi = rate
            why = []
            if r.calls - r.ok:
                why.append(f"{r.calls - r.ok} of {r.calls} failed ({r.fail_pct:.2f} %)")
            if r.achieved < 0.95 * r.rate:
                why.append(f"achieved {r.achieved:.0f} < 95 % of {r.rate:g}")
            print(f"    FAIL at {rate:g}/s ({key}): " + "; ".join(why))
            if r.errors:
                print(r.errors)


def print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: first column left-aligned, the rest right-aligned."""
    full = [r for r in rows if r]
    widths = [max([len(h), *(len(r[i]) for r in full)]) for i, h in enumerate(header)]
    line = " | ".join((h.ljust(w) if i == 0 else h.rjust(w))
                      for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in rows:
        if not r:
            print("-" * len(line))
            continue
        print(" | ".join((c.ljust(w) if i == 0 else c.rjust(w))
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))))
