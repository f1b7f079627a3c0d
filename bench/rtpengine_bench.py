"""rtpengine: the cost per call of awaited offer/answer/delete against a real rtpengine.

    python bench/rtpengine_bench.py --quick              # < 2 minutes
    python bench/rtpengine_bench.py                      # rates 50,100 x 500 x 3 + search
    python bench/rtpengine_bench.py --servers trio,kamailio,kamailio-fm --json rtp.json

One real rtpengine (Debian rtpengine-daemon, userspace, started with
/work/shared/bin/start-rtpengine.sh or the same flags as tests/rtpengine/conftest.py: loopback,
``--delete-delay=0``, log level 4) and, side by side, each server running
bench/lua/rtpengine.lua: examples/rtpengine/routes.lua (offer on the INVITE with SDP, answer
on the 180/200 with SDP, delete on BYE/CANCEL/failure; each KSR.rtpengine.* call waits for
rtpengine's answer, other calls are served meanwhile) with one switch, the To user:
``media`` calls go through rtpengine, ``nomedia`` calls skip every KSR.rtpengine.* call, so
they run the same route minus rtpengine.

* ``trio``: ``python -m trio_sip run`` with ``[modparams.rtpengine] rtpengine_sock``;
* ``kamailio`` / ``kamailio-fm`` (optional): Kamailio 5.6 + app_lua + its rtpengine module
  (bench/kamailio/kamailio-lua.cfg with WITH_RTPENGINE), q_malloc / ``-x fm -X fm``.

SIPp: tests/sipp/uac.xml (INVITE with SDP, 100/180/200 with SDP from tests/sipp/uas.xml,
ACK, BYE, 200) through the server, UDP, at fixed rates. Per repeat, rate and server, a
``media`` run and a ``nomedia`` run, in alternating order, on the same long-lived server.

Figures (medians over the repeats):

* ``calls/s``, ``fail%``, ``p50``/``p99`` (INVITE -> 200 at the UAC, from SIPp's message
  trace), as in stateful_bench.py;
* ``CPU us/call``: the server's CPU (schedstat, all its processes) per call, over a window
  that ends 5.5 s after the UAC (tm's wt_timer) once the server is idle;
* ``rtpengine us/call``: rtpengine's own CPU per call in the same window;
* the ``media - nomedia`` row: what the three awaited rtpengine calls (offer, answer,
  delete) add per call on the server, and the ratio;
* max calls/s (unless ``--no-search``): per server and variant, doubling then bisection to
  within 10 %, each probe on a freshly started server, pass = < 0.1 % failed and >= 95 %
  of the target rate.

Loopback only; the servers, SIPp and rtpengine are stopped at exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH,
    KamailioServer,
    Load,
    Server,
    TrioServer,
    drive,
    fmt,
    interrupt,
    med,
    print_rows,
    search_max,
    wait_idle,
)

from tests.rtpengine.conftest import (
    Rtpengine,
    command,
    free_port_range,
    free_udp_port,
    ping,
    rtpengine_binary,
    stop_rtpengine,
)
from tests.support.kamailio import kamailio_missing
from tests.support.sipp import sipp_binary

ROUTES = BENCH / "lua" / "rtpengine.lua"
ALL_SERVERS = ("trio", "kamailio", "kamailio-fm")
VARIANTS = ("media", "nomedia")


def start_rtpengine(log: Path) -> Rtpengine:
    """rtpengine on loopback with a free ng port and a free media range of 2000 ports
    (4 per call while it lives), logging warnings only."""
    env = dict(os.environ, RTPENGINE_LOG_LEVEL="4")
    lo, hi = free_port_range(2000)
    for _ in range(5):
        ng = free_udp_port()
        with log.open("ab") as err:
            proc = subprocess.Popen(command(ng, lo, hi), stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=env, start_new_session=True)
        r = Rtpengine(ng, lo, hi, proc, log)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            if ping(ng):
                return r
            time.sleep(0.01)
        stop_rtpengine(r)
    raise RuntimeError(f"rtpengine did not start:\n{r.log_tail()}")


def start(key: str, base: Path, rtp: Rtpengine, shm_mb: int | None = None) -> Server:
    if key == "trio":
        d = Path(tempfile.mkdtemp(prefix="trio-data-", dir=base))
        cfg = d / "trio-sip.toml"
        cfg.write_text(f'[core]\ndata_dir = "{d}"\n\n[modparams.rtpengine]\n'
                       f'rtpengine_sock = "{rtp.sock}"\n')
        return TrioServer(base, routes=ROUTES, config=cfg)
    return KamailioServer(key == "kamailio-fm", shm_mb, routes=ROUTES, extra_defines={
        "WITH_RTPENGINE": None, "RTPENGINE_SOCK": f'"{rtp.sock}"'})


def call(server: Server, variant: str, rate: float, n: int, base: Path, rtp: Rtpengine, *,
         kind: str = "fixed", keep: bool = False) -> Load:
    r = drive(server, "uac.xml", uas="uas.xml", service=variant, rate=rate, calls=n,
              base=base, kind=kind, trace=kind == "fixed", extra_pids=[rtp.proc.pid],
              settle=5.5 if kind == "fixed" else 0.0,
              recv_timeout_ms=5000 if kind == "probe" else None, keep=keep)
    r.extra["variant"] = variant
    return r


def show(r: Load, tag: str) -> None:
    print(f"  {tag} {r.server:<11} {r.extra['variant']:<7} {r.rate:>5g} cps x {r.calls}: "
          f"{r.ok} ok, {r.achieved:.1f} cps, cpu {r.sched_us:.0f} us/call, rtpengine "
          f"{r.other_us:.0f} us/call, p50 {fmt(r.p50_ms, '.2f')} p99 {fmt(r.p99_ms, '.2f')} ms, "
          f"retrans {r.retrans}, sipp cpu {r.sipp_cpu_pct:.0f}%", flush=True)
    if r.errors:
        print(r.errors)




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="rate 50 x 200 calls x 1, trio only, short search (< 2 min)")
    ap.add_argument("--rates", help="fixed rates, calls/s (default 50,100)")
    ap.add_argument("--calls", type=int, help="calls per run (default 500)")
    ap.add_argument("--repeat", type=int, help="repeats (default 3)")
    ap.add_argument("--servers", help="subset of trio,kamailio,kamailio-fm (default "
                                      "trio,kamailio; quick: trio)")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--search-seconds", type=float,
                    help="per server and variant (default 45; quick 15)")
    ap.add_argument("--probe-seconds", type=float, help="traffic per probe (default 5; quick 2)")
    ap.add_argument("--search-cap", type=float, default=4000.0)
    ap.add_argument("--kamailio-shm", type=int, metavar="MB",
                    help="Kamailio shared memory (-m); default Kamailio's 64 MB, which runs "
                         "out near 500 calls/s (tm keeps each transaction for wt_timer)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    rates = ([float(x) for x in args.rates.split(",")] if args.rates
             else [50.0] if args.quick else [50.0, 100.0])
    calls = args.calls or (200 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    search_s = args.search_seconds or (15 if args.quick else 45)
    probe_s = args.probe_seconds or (2 if args.quick else 5)
    servers = [s.strip() for s in (args.servers or ("trio" if args.quick else "trio,kamailio"))
               .split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; one of {', '.join(ALL_SERVERS)}")
    if sipp_binary() is None or rtpengine_binary() is None:
        print("needs sipp (sip-tester) and rtpengine (rtpengine-daemon)", file=sys.stderr)
        return 2
    if any(s.startswith("kamailio") for s in servers) and (why := kamailio_missing()):
        print(f"skipping Kamailio: {why}", file=sys.stderr)
        servers = [s for s in servers if not s.startswith("kamailio")]
    if not servers:
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    t_start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="rtpengine-bench-"))
    print(f"rtpengine_bench: {ROUTES.relative_to(BENCH.parent)}; Python "
          f"{platform.python_version()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
          f"rates {','.join(f'{r:g}' for r in rates)} x {calls} calls x {repeat}", flush=True)
    runs: list[Load] = []
    maxima: dict[tuple[str, str], tuple[float | None, str]] = {}
    try:
        with contextlib.ExitStack() as stack:
            rtp = start_rtpengine(base / "rtpengine.log")
            stack.callback(stop_rtpengine, rtp)
            print(f"  rtpengine: pid {rtp.proc.pid}, ng {rtp.sock}, media "
                  f"{rtp.port_min}-{rtp.port_max}")
            with contextlib.ExitStack() as servers_stack:
                srv: dict[str, Server] = {}
                for key in servers:
                    s = start(key, base, rtp, args.kamailio_shm)
                    servers_stack.callback(s.stop)
                    srv[key] = s
                    print(f"  {key}: port {s.port}, pids {s.pids()}\n    {s.command()}")
                for s in srv.values():
                    for v in VARIANTS:
                        call(s, v, 50, 50, base, rtp, kind="warmup")
                for rep in range(repeat):
                    for rate in rates:
                        for key in servers:
                            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
                            for v in order:
                                wait_idle(srv[key])
                                r = call(srv[key], v, rate, calls, base, rtp, keep=args.keep)
                                runs.append(r)
                                show(r, f"[{rep + 1}/{repeat}]")
            if not args.no_search:
                for key in servers:
                    for v in VARIANTS:
                        ok = [r.rate for r in runs if r.server == key and r.kind == "fixed"
                              and r.extra["variant"] == v and r.passed()]

                        def probe(rate: float, key: str = key, v: str = v) -> Load:
                            s = start(key, base, rtp, args.kamailio_shm)
                            try:
                                return call(s, v, rate, max(200, int(rate * probe_s)), base,
                                            rtp, kind="probe", keep=args.keep)
                            finally:
                                s.stop()

                        def on_probe(r: Load) -> None:
                            runs.append(r)
                            show(r, "  probe")

                        print(f"  max-rate search {key} {v}: {search_s:g} s, {probe_s:g} s "
                              "per probe", flush=True)
                        maxima[(key, v)] = search_max(
                            f"{key} {v}", max(ok, default=None), None, probe,
                            budget_s=search_s, cap=args.search_cap, on_probe=on_probe)
    except KeyboardInterrupt:
        print("\ninterrupted: servers, SIPps and rtpengine stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"Medians of {repeat} repeat(s), {calls} calls per run (CPU: schedstat of the "
          "server's processes per call, until idle after tm's wt_timer; rtpengine: its own "
          "CPU per call; media - nomedia: what offer+answer+delete add per call)")
    header = ["server", "route", "rate", "calls/s", "fail%", "CPU us/call", "rtpengine us/call",
              "p50 ms", "p99 ms", "retrans"]
    rows: list[list[str]] = []
    for rate in rates:
        for key in servers:
            m: dict[str, dict[str, float | None]] = {}
            for v in VARIANTS:
                rs = [r for r in runs if r.server == key and r.rate == rate
                      and r.kind == "fixed" and r.extra["variant"] == v]
                if not rs:
                    continue
                m[v] = {x: med([getattr(r, x) for r in rs]) for x in
                        ("achieved", "fail_pct", "sched_us", "other_us", "p50_ms", "p99_ms",
                         "retrans")}
                rows.append([key, v, f"{rate:g}", fmt(m[v]["achieved"], ".1f"),
                             fmt(m[v]["fail_pct"], ".2f"), fmt(m[v]["sched_us"], ".0f"),
                             fmt(m[v]["other_us"], ".0f"), fmt(m[v]["p50_ms"], ".2f"),
                             fmt(m[v]["p99_ms"], ".2f"), fmt(m[v]["retrans"], ".0f")])
            if len(m) == 2:
                a, b = m["media"]["sched_us"], m["nomedia"]["sched_us"]
                pa, pb = m["media"]["p50_ms"], m["nomedia"]["p50_ms"]
                rows.append([key, "media - nomedia", "", "", "",
                             f"+{a - b:.0f} (x{a / b:.2f})" if a and b else "", "",
                             f"+{pa - pb:.2f}" if pa is not None and pb is not None else "",
                             "", ""])
            rows.append([])
    print_rows(header, rows)
    for rate in rates:
        added = {}
        for key in servers:
            m = {v: med([r.sched_us for r in runs if r.server == key and r.rate == rate
                         and r.kind == "fixed" and r.extra["variant"] == v]) for v in VARIANTS}
            if m["media"] is not None and m["nomedia"] is not None:
                added[key] = m["media"] - m["nomedia"]
        if "trio" in added:
            ratios = [f"trio/{k} {added['trio'] / v:.1f}x" for k, v in added.items()
                      if k != "trio" and v > 0]
            if ratios:
                print(f"at {rate:g} cps, CPU the rtpengine calls add per call: "
                      + ", ".join(ratios))
    if maxima:
        print("\nmax calls/s (fail < 0.1 % and >= 95 % of target): " + "; ".join(
            f"{k} {v} {fmt(best, '.0f')}{' (' + why + ')' if why else ''}"
            for (k, v), (best, why) in maxima.items()))
    print(f"total {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "rates": rates, "calls": calls, "repeat": repeat,
            "runs": [asdict(r) | {"fail_pct": r.fail_pct} for r in runs],
            "max": {f"{k} {v}": best for (k, v), (best, _) in maxima.items()},
        }, indent=1))
        print(f"runs written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
