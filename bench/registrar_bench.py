"""Registrar load: REGISTER/s through routes/registrar.lua on trio-sip and on Kamailio 5.6.

    python bench/registrar_bench.py --quick          # about 2 minutes
    python bench/registrar_bench.py                  # rates 100,300,600 x 1000 x 3 + memory + search
    python bench/registrar_bench.py --servers trio,kamailio --contacts 20000 --json reg.json

The same ``routes/registrar.lua``, unchanged, on

* ``trio``: ``python -m trio_sip run --config CFG --routes routes/registrar.lua ...`` with
  the location table in SQLite, write-through (trio-sip's default: every binding is in the
  file before the 200 leaves), data_dir a temporary directory;
* ``trio-mem``: the same with ``[modparams.usrloc] db_url = "none"`` (memory only, what
  Kamailio does by default);
* ``kamailio`` / ``kamailio-fm``: Kamailio 5.6 + app_lua, ``children=1``, as Debian ships
  it (q_malloc) and with ``-x fm -X fm``; bench/kamailio/kamailio-lua.cfg with
  ``WITH_REGISTRAR`` (usrloc db_mode 0, i.e. in memory, and ``preload "location"``, which a
  KEMI route needs since it names the table only at run time).

SIPp (bench/sipp/reg_many.xml) sends one REGISTER per call, each for a distinct AoR
``sip:<prefix><n>@127.0.0.1`` (a new prefix per run, so every REGISTER adds a binding),
Expires 3600, straight to the server, UDP.

Three parts:

1. fixed rates: every server long-lived, all at once, 200 warm-up REGISTERs each, then per
   repeat, per rate, every server (order rotated per repeat) gets ``--calls`` REGISTERs at
   that rate. CPU us/REGISTER: utime+stime (and schedstat) of the server's processes over a
   window that ends when the server is idle again (so trio-sip's SQLite writes, done in a
   worker thread after the route, are counted), divided by the REGISTERs asked for;
   p50/p99: REGISTER -> 200 at SIPp (``-trace_msg`` timestamps, us); RSS/PSS at the end;
2. memory per registered contact: a fresh server per kind, its memory when idle, then
   ``--contacts`` distinct AoRs registered (at ``--contacts-rate``, in three equal runs,
   memory read when idle after each, so that a one-off growth shows in the first step):
   (after - before) / contacts, from VmRSS and from Pss summed over its processes.
   For Kamailio the bindings live in the shared memory segment, which every process maps:
   the PSS delta is the fair figure (the RSS sum counts shared pages once per process);
   for trio-sip the two agree. No tracemalloc: the process's own resident memory, so the
   figure includes allocator overhead and, for ``trio``, SQLite's page cache;
3. max-rate search: doubling from the best fixed rate that passed, then bisection to within
   10 %, each probe (``--probe-seconds`` of traffic, SIPp without a message trace) on a
   freshly started server; pass = fewer than 0.1 % failed and >= 95 % of the target rate.

Loopback only; every server and SIPp is stopped at exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH,
    REPO,
    KamailioServer,
    Load,
    Server,
    TrioServer,
    drive,
    fmt,
    interrupt,
    med,
    mem_of,
    print_rows,
    search_max,
    wait_idle,
)

from tests.support.kamailio import kamailio_missing
from tests.support.sipp import sipp_binary

ROUTES = REPO / "routes" / "registrar.lua"
SCENARIO = BENCH / "sipp" / "reg_many.xml"
ALL_SERVERS = ("trio", "trio-mem", "kamailio", "kamailio-fm")
MEMORY_STEPS = 3  # the contacts are registered in this many runs, memory read after each


def start(key: str, base: Path, shm_mb: int | None) -> Server:
    """A fresh server of kind ``key`` (trio-sip: its own data_dir under ``base``)."""
    if key.startswith("trio"):
        d = Path(tempfile.mkdtemp(prefix=f"{key}-data-", dir=base))
        cfg = d / "trio-sip.toml"
        text = f'[core]\ndata_dir = "{d}"\n'
        if key == "trio-mem":
            text += '\n[modparams.usrloc]\ndb_url = "none"\ndb_mode = 0\n'
        cfg.write_text(text)
        return TrioServer(base, routes=ROUTES, config=cfg, key=key,
                          label="trio-sip" if key == "trio" else "trio-sip mem")
    return KamailioServer(key == "kamailio-fm", shm_mb, routes=ROUTES,
                          extra_defines={"WITH_REGISTRAR": None})


def register(server: Server, rate: float, n: int, base: Path, *, kind: str = "fixed",
             trace: bool = True, keep: bool = False) -> Load:
    prefix = "u" + uuid.uuid4().hex[:8] + "-"
    return drive(server, SCENARIO, rate=rate, calls=n, base=base, kind=kind, method="REGISTER",
                 keys={"prefix": prefix}, trace=trace, keep=keep,
                 recv_timeout_ms=5000 if kind == "probe" else None)


def show(r: Load, tag: str) -> None:
    print(f"  {tag} {r.server:<11} {r.rate:>6g}/s x {r.calls}: {r.ok} ok, "
          f"{r.achieved:.1f}/s, cpu {r.cpu_us:.0f}/{r.sched_us:.0f} us/REGISTER, "
          f"p50 {fmt(r.p50_ms, '.2f')} p99 {fmt(r.p99_ms, '.2f')} ms, rss {r.rss_mb:.1f} "
          f"pss {r.pss_mb:.1f} MB, retrans {r.retrans}, sipp cpu {r.sipp_cpu_pct:.0f}%",
          flush=True)
    if r.errors:
        print(r.errors)




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="rates 100,400 x 300 x 1, 2400 contacts, 6 s of search (< 2 min)")
    ap.add_argument("--rates", help="fixed rates, REGISTER/s (default 100,300,600)")
    ap.add_argument("--calls", type=int, help="REGISTERs per fixed-rate run (default 1000)")
    ap.add_argument("--repeat", type=int, help="repeats (default 3)")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS),
                    help="subset of " + ",".join(ALL_SERVERS))
    ap.add_argument("--contacts", type=int,
                    help="distinct AoRs for the memory figure (default 10000)")
    ap.add_argument("--contacts-rate", type=float, default=500.0,
                    help="REGISTER/s while filling the table for the memory figure")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--search-seconds", type=float, help="per server (default 60; quick 6)")
    ap.add_argument("--probe-seconds", type=float, help="traffic per probe (default 5; quick 2)")
    ap.add_argument("--search-cap", type=float, default=8000.0)
    ap.add_argument("--kamailio-shm", type=int, metavar="MB",
                    help="Kamailio shared memory (-m), default Kamailio's 64 MB")
    ap.add_argument("--json", type=Path, help="write every run here")
    ap.add_argument("--keep", action="store_true", help="keep SIPp work dirs")
    args = ap.parse_args()

    rates = ([float(x) for x in args.rates.split(",")] if args.rates
             else [100.0, 400.0] if args.quick else [100.0, 300.0, 600.0])
    calls = args.calls or (300 if args.quick else 1000)
    repeat = args.repeat or (1 if args.quick else 3)
    contacts = args.contacts or (2400 if args.quick else 10000)
    search_s = args.search_seconds or (6 if args.quick else 60)
    probe_s = args.probe_seconds or (2 if args.quick else 5)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; one of {', '.join(ALL_SERVERS)}")
    if sipp_binary() is None:
        print("sipp not found (Debian: sip-tester)", file=sys.stderr)
        return 2
    if any(s.startswith("kamailio") for s in servers) and (why := kamailio_missing()):
        print(f"skipping Kamailio: {why}", file=sys.stderr)
        servers = [s for s in servers if not s.startswith("kamailio")]
    if not servers:
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    t_start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="registrar-bench-"))
    print(f"registrar_bench: {ROUTES.relative_to(REPO)}; Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; rates "
          f"{','.join(f'{r:g}' for r in rates)} x {calls} REGISTERs x {repeat}; "
          f"{contacts} contacts for memory")
    runs: list[Load] = []
    memory: dict[str, dict[str, float]] = {}
    maxima: dict[str, tuple[float | None, str]] = {}
    try:
        # 1. fixed rates, long-lived servers, interleaved
        with contextlib.ExitStack() as stack:
            srv: dict[str, Server] = {}
            for key in servers:
                s = start(key, base, args.kamailio_shm)
                stack.callback(s.stop)
                srv[key] = s
                print(f"  {key}: port {s.port}, pids {s.pids()}\n    {s.command()}")
            for s in srv.values():
                register(s, 200, 200, base, kind="warmup", trace=False)
            for rep in range(repeat):
                for rate in rates:
                    order = servers[rep % len(servers):] + servers[:rep % len(servers)]
                    for key in order:
                        wait_idle(srv[key])
                        r = register(srv[key], rate, calls, base, keep=args.keep)
                        runs.append(r)
                        show(r, f"[{rep + 1}/{repeat}]")
        # 2. memory per registered contact, fresh servers
        for key in servers:
            s = start(key, base, args.kamailio_shm)
            try:
                register(s, 200, 200, base, kind="warmup", trace=False)  # code paths, caches
                wait_idle(s)
                time.sleep(1.0)
                rss0, pss0 = mem_of(s.pids())
                steps = [(0, rss0, pss0)]
                ok = 0
                for i in range(MEMORY_STEPS):
                    n = contacts // MEMORY_STEPS + (contacts % MEMORY_STEPS if i == 0 else 0)
                    r = register(s, args.contacts_rate, n, base, kind="memory", trace=False)
                    ok += r.ok
                    if r.errors:
                        print(r.errors)
                    wait_idle(s)
                    time.sleep(1.0)
                    steps.append((ok, *mem_of(s.pids())))
                rss1, pss1 = steps[-1][1], steps[-1][2]
                memory[key] = {
                    "contacts": ok, "rss_before_mb": rss0, "rss_after_mb": rss1,
                    "pss_before_mb": pss0, "pss_after_mb": pss1,
                    "rss_bytes_per_contact": (rss1 - rss0) * 2**20 / max(ok, 1),
                    "pss_bytes_per_contact": (pss1 - pss0) * 2**20 / max(ok, 1),
                    "steps": steps,
                }
                per_step = ", ".join(
                    f"{(b[1] - a[1]) * 2**20 / max(b[0] - a[0], 1):.0f}"
                    for a, b in itertools.pairwise(steps))
                print(f"  memory {key:<11} {ok}/{contacts} registered: RSS {rss0:.1f} -> "
                      f"{rss1:.1f} MB, PSS {pss0:.1f} -> {pss1:.1f} MB; RSS B/contact per "
                      f"step of {contacts // MEMORY_STEPS}: {per_step}", flush=True)
            finally:
                s.stop()
        # 3. max-rate search, fresh server per probe
        if not args.no_search:
            for key in servers:
                fixed = {rate: all(r.passed() for r in runs
                                   if r.server == key and r.rate == rate and r.kind == "fixed")
                         for rate in rates}
                lo = max((x for x, ok in fixed.items() if ok), default=None)
                hi = min((x for x, ok in fixed.items() if not ok and (lo is None or x > lo)),
                         default=None)

                def probe(rate: float, key: str = key) -> Load:
                    s = start(key, base, args.kamailio_shm)
                    try:
                        return register(s, rate, max(200, int(rate * probe_s)), base,
                                        kind="probe", trace=False, keep=args.keep)
                    finally:
                        s.stop()

                def on_probe(r: Load) -> None:
                    runs.append(r)
                    show(r, "  probe")

                print(f"  max-rate search {key}: from {fmt(lo, 'g')}; {search_s:g} s, "
                      f"{probe_s:g} s per probe", flush=True)
                maxima[key] = search_max(key, lo, hi, probe, budget_s=search_s,
                                         cap=args.search_cap, on_probe=on_probe)
    except KeyboardInterrupt:
        print("\ninterrupted: servers and SIPps stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"Medians of {repeat} repeat(s), {calls} REGISTERs per run, each for a new AoR "
          "(CPU: utime+stime of the server's processes until idle again, per REGISTER; "
          "sched: schedstat; p50/p99: REGISTER -> 200 at SIPp)")
    header = ["server", "rate", "REG/s", "fail%", "CPU us/REG", "sched us/REG", "p50 ms",
              "p99 ms", "RSS MB", "PSS MB", "retrans"]
    rows: list[list[str]] = []
    metrics = ("achieved", "fail_pct", "cpu_us", "sched_us", "p50_ms", "p99_ms", "rss_mb",
               "pss_mb", "retrans")
    forms = (".1f", ".2f", ".0f", ".0f", ".2f", ".2f", ".1f", ".1f", ".0f")
    for rate in rates:
        meds: dict[str, dict[str, float | None]] = {}
        for key in servers:
            rs = [r for r in runs if r.server == key and r.rate == rate and r.kind == "fixed"]
            if not rs:
                continue
            meds[key] = {m: med([getattr(r, m) for r in rs]) for m in metrics}
            rows.append([key, f"{rate:g}", *(fmt(meds[key][m], f)
                                             for m, f in zip(metrics, forms, strict=True))])
        for t in ("trio", "trio-mem"):
            for k in ("kamailio", "kamailio-fm"):
                if t in meds and k in meds:
                    cells = []
                    for m in metrics:
                        a, b = meds[t][m], meds[k][m]
                        ok = m in ("cpu_us", "sched_us", "p50_ms", "p99_ms", "rss_mb", "pss_mb")
                        cells.append(f"{a / b:.1f}x" if ok and a is not None and b else "")
                    rows.append([f"{t}/{k}", "", *cells])
        rows.append([])
    print_rows(header, rows)
    if memory:
        print(f"\nMemory per registered contact ({contacts} distinct AoRs, one binding each; "
              "server idle before and after)")
        print_rows(["server", "contacts", "RSS before", "RSS after", "PSS before", "PSS after",
                    "B/contact (RSS)", "B/contact (PSS)"],
                   [[k, f"{v['contacts']:.0f}", f"{v['rss_before_mb']:.1f}",
                     f"{v['rss_after_mb']:.1f}", f"{v['pss_before_mb']:.1f}",
                     f"{v['pss_after_mb']:.1f}", f"{v['rss_bytes_per_contact']:.0f}",
                     f"{v['pss_bytes_per_contact']:.0f}"] for k, v in memory.items()])
    if maxima:
        print("\nmax REGISTER/s (fail < 0.1 % and >= 95 % of target): " + "; ".join(
            f"{k} {fmt(v, '.0f')}{' (' + why + ')' if why else ''}"
            for k, (v, why) in maxima.items()))
    print(f"total {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "rates": rates, "calls": calls, "repeat": repeat, "contacts": contacts,
            "runs": [asdict(r) | {"fail_pct": r.fail_pct} for r in runs],
            "memory": memory, "max": {k: v for k, (v, _) in maxima.items()},
        }, indent=1))
        print(f"runs written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
