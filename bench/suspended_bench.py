"""Waiting transactions: memory and CPU per INVITE transaction held in a route, at 1k/10k/100k.

    python bench/suspended_bench.py --quick                   # 1000 and 10000, < 2 minutes
    python bench/suspended_bench.py                           # 1000, 10000, 100000
    python bench/suspended_bench.py --counts 100000 --rate 500 --json held.json
    python bench/suspended_bench.py --release notify          # end them all at once

trio-sip (one process, ``python -m trio_sip run``) runs bench/lua/suspended.lua: each INVITE
gets its transaction (tm answers 100 Trying, SIPp stops retransmitting), then the route
waits in ``KSR.tmx.t_wait_event("bench-hold", MS)``; when the wait ends the route answers
486 and tm absorbs the ACK. SIPp (bench/sipp/invite_hold.xml, ``-s hold-MS``) sends the
INVITEs at ``--rate`` with no limit on open calls, so the number of waiting transactions
grows to N.

Per count N, on a freshly started server (200 warm-up calls first, then idle):

* ``setup us/tx``: server CPU (schedstat, all threads) from the first INVITE until all N
  were sent and the server is idle again, over N: parse, route, transaction, 100 Trying,
  the wait armed;
* ``hold ms/s``: server CPU per second of wall time while all N wait and nothing arrives
  (``--window`` s): what holding them costs (timers, the scheduler), and ``hold ns/tx/s``
  the same per waiting transaction;
* ``answer us/tx``: server CPU from the end of that window until every call ended and the
  server is idle after its wt_timer (5 s), over N: the wait ends, 486, ACK absorbed, the
  transaction freed;
* ``B/tx (RSS)``, ``B/tx (PSS)``: (memory with all N waiting - memory before) / N;
* ``RSS after``: once all are answered and freed (Python returns little to the OS);
* ``waiting``: SIPp's count of open calls while all N should be waiting (it must be N; the
  run is invalid otherwise) and, with ``--release notify``, what t_notify_event reported;
* ``ok``: calls that ended with the 486 (every transaction answered at the end).

With ``--release timeout`` (default) each wait ends by its own timeout, MS = the time to
send N at the rate + ``--hold-margin``: they end at the rate they started. With
``--release notify`` MS is long and one OPTIONS to sip:release@ wakes all N at once
(``t_notify_event``; its reply says how many), a burst of N 486s. tm's fr_inv_timer and
max_inv_lifetime (and fr_timer, which bounds a transaction that has no branch, with
max_noninv_lifetime) are raised above MS so that tm does not end them first (408).

Kamailio is not run: t_wait_event is a trio-sip extra (Kamailio would hold transactions with
t_suspend + t_continue or async.route, a different route). Loopback only; the server and
SIPp are stopped at exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH,
    Snapshot,
    TrioServer,
    interrupt,
    mem_of,
    print_rows,
    wait_idle,
)

from tests.support.ports import LOOPBACK
from tests.support.sipp import Sipp, parse_stats_csv, sipp_binary

ROUTES = BENCH / "lua" / "suspended.lua"
SCENARIO = BENCH / "sipp" / "invite_hold.xml"


def _stats(workdir: Path) -> dict[str, str]:
    try:
        return parse_stats_csv((workdir / "stats.csv").read_text(errors="replace"))
    except OSError:
        return {}


def _int(stats: dict[str, str], key: str) -> int:
    try:
        return int(float(stats.get(key, "0") or 0))
    except ValueError:
        return 0


def release(port: int) -> str:
    """OPTIONS sip:release@ -> the server's reply line ("200 Released N")."""
    call_id = f"release-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(5.0)
        local = s.getsockname()[1]
        s.sendto((f"OPTIONS sip:release@{LOOPBACK}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch=z9hG4bK-{call_id};rport\r\n"
                  f"From: <sip:bench@{LOOPBACK}:{local}>;tag=r1\r\n"
                  f"To: <sip:release@{LOOPBACK}:{port}>\r\nCall-ID: {call_id}\r\n"
                  "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                 (LOOPBACK, port))
        try:
            return s.recv(65535).split(b"\r\n", 1)[0].decode(errors="replace")[8:]
        except TimeoutError:
            return "no answer within 5 s"


def one(n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    send_s = n / args.rate
    hold_ms = int((send_s + args.hold_margin) * 1000)
    if args.release == "notify":
        hold_ms = int((send_s + args.hold_margin + 600) * 1000)
    tm_ms = hold_ms + 60_000
    d = Path(tempfile.mkdtemp(prefix=f"held-{n}-", dir=base))
    cfg = d / "trio-sip.toml"
    # a transaction with no branch is bounded by fr_timer (30 s by default): raise all four
    cfg.write_text(f'[core]\ndata_dir = "{d}"\n\n[tm]\nfr_timer = {tm_ms}\n'
                   f"fr_inv_timer = {tm_ms}\nmax_inv_lifetime = {tm_ms}\n"
                   f"max_noninv_lifetime = {tm_ms}\n")
    server = TrioServer(d, routes=ROUTES, config=cfg, key="trio")
    res: dict[str, Any] = {"count": n, "rate": args.rate, "hold_ms": hold_ms,
                           "release": args.release}
    try:
        pid = server.pids()[0]
        warm = Sipp(str(SCENARIO), remote=server.port, service="hold-500", rate=200, calls=200,
                    limit=1000, timeout=60, workdir=d / "warm").run()
        res["warmup_ok"] = warm.successful
        time.sleep(5.5)  # tm wt_timer: the warm-up transactions go
        wait_idle(server)
        time.sleep(1.0)
        rss0, pss0 = mem_of([pid])
        s0 = Snapshot.take([pid])
        uac = Sipp(str(SCENARIO), remote=server.port, service=f"hold-{hold_ms}",
                   rate=args.rate, calls=n, limit=n + 10,
                   timeout=hold_ms / 1000 + send_s + 120, workdir=d / "uac")
        t0 = time.monotonic()
        with uac.start() as p:
            # all N sent?
            while p.popen.poll() is None and time.monotonic() - t0 < send_s * 3 + 60:
                if _int(_stats(d / "uac"), "TotalCallCreated") >= n:
                    break
                time.sleep(0.2)
            res["send_s"] = time.monotonic() - t0
            wait_idle(server, within=30.0)
            s1 = Snapshot.take([pid])
            rss1, pss1 = mem_of([pid])
            time.sleep(1.2)  # SIPp dumps its counters every second
            st = _stats(d / "uac")
            res["waiting_sipp"] = _int(st, "CurrentCall")
            res["answered_early"] = _int(st, "SuccessfulCall(C)") + _int(st, "FailedCall(C)")
            t1 = time.monotonic()
            time.sleep(args.window)
            s2 = Snapshot.take([pid])
            hold_wall = time.monotonic() - t1
            if args.release == "notify":
                res["notify_reply"] = release(server.port)
            result = p.wait()
        time.sleep(5.5)  # wt_timer after the last 486
        wait_idle(server, within=30.0)
        s3 = Snapshot.take([pid])
        rss3, pss3 = mem_of([pid])
        res.update({
            "ok": result.successful, "failed": result.failed,
            "retrans": result.retransmissions,
            "setup_us": s0.delta(s1)[1] * 1e6 / n,
            "hold_ms_per_s": s1.delta(s2)[1] * 1000 / hold_wall,
            "hold_ns_per_tx_s": s1.delta(s2)[1] * 1e9 / hold_wall / n,
            "answer_us": s2.delta(s3)[1] * 1e6 / n,
            "rss_before_mb": rss0, "rss_held_mb": rss1, "rss_after_mb": rss3,
            "pss_before_mb": pss0, "pss_held_mb": pss1, "pss_after_mb": pss3,
            "rss_b_per_tx": (rss1 - rss0) * 2**20 / n,
            "pss_b_per_tx": (pss1 - pss0) * 2**20 / n,
        })
        if not result.ok:
            res["errors"] = result.describe(1500)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return res



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="counts 1000,10000 (< 2 minutes)")
    ap.add_argument("--counts", help="comma-separated numbers of waiting transactions "
                                     "(default 1000,10000,100000)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="INVITEs/s (default 500: at 100,000 a faster rate makes trio-sip "
                         "late with its 100 Trying on a busy 2-core box)")
    ap.add_argument("--hold-margin", type=float, default=25.0,
                    help="s the wait lasts beyond the sending time (covers the idle wait "
                         "and the --window)")
    ap.add_argument("--window", type=float, default=5.0,
                    help="s of measuring the CPU of holding them")
    ap.add_argument("--release", choices=("timeout", "notify"), default="timeout",
                    help="how the waits end: their own timeout, or one t_notify_event")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    counts = ([int(x) for x in args.counts.split(",")] if args.counts
              else [1000, 10000] if args.quick else [1000, 10000, 100000])
    if args.quick and not args.counts:
        args.hold_margin = min(args.hold_margin, 12.0)
        args.window = min(args.window, 3.0)
    if sipp_binary() is None:
        print("sipp not found (Debian: sip-tester)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    base = Path(tempfile.mkdtemp(prefix="suspended-bench-"))
    t_start = time.monotonic()
    print(f"suspended_bench: {ROUTES.relative_to(BENCH.parent)}; Python "
          f"{platform.python_version()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
          f"counts {','.join(map(str, counts))} at {args.rate:g} INVITE/s; release by "
          f"{args.release}", flush=True)
    results = []
    try:
        for n in counts:
            r = one(n, args, base)
            results.append(r)
            print(f"  {n}: {r.get('ok')} ok, waiting {r.get('waiting_sipp')}, setup "
                  f"{r.get('setup_us', 0):.0f} us/tx, hold {r.get('hold_ms_per_s', 0):.1f} ms/s, "
                  f"answer {r.get('answer_us', 0):.0f} us/tx, RSS {r.get('rss_before_mb', 0):.1f}"
                  f" -> {r.get('rss_held_mb', 0):.1f} -> {r.get('rss_after_mb', 0):.1f} MB "
                  f"({r.get('rss_b_per_tx', 0):.0f} B/tx), retrans {r.get('retrans')}"
                  + (f", notify: {r['notify_reply']}" if "notify_reply" in r else ""),
                  flush=True)
            if "errors" in r:
                print(r["errors"])
    except KeyboardInterrupt:
        print("\ninterrupted: server and SIPp stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print("trio-sip, INVITE transactions waiting in t_wait_event (setup/answer: server CPU "
          "per transaction; hold: server CPU while they all wait; B/tx: memory with all "
          "waiting minus before, over their number)")
    print_rows(
        ["waiting", "ok", "sipp open", "setup us/tx", "hold ms/s", "hold ns/tx/s",
         "answer us/tx", "RSS before", "RSS held", "RSS after", "B/tx (RSS)", "B/tx (PSS)",
         "retrans"],
        [[str(r["count"]), str(r.get("ok")), str(r.get("waiting_sipp")),
          f"{r.get('setup_us', 0):.0f}", f"{r.get('hold_ms_per_s', 0):.1f}",
          f"{r.get('hold_ns_per_tx_s', 0):.1f}", f"{r.get('answer_us', 0):.0f}",
          f"{r.get('rss_before_mb', 0):.1f}", f"{r.get('rss_held_mb', 0):.1f}",
          f"{r.get('rss_after_mb', 0):.1f}", f"{r.get('rss_b_per_tx', 0):.0f}",
          f"{r.get('pss_b_per_tx', 0):.0f}", str(r.get("retrans"))] for r in results])
    if len(results) > 1 and results[0].get("rss_b_per_tx"):
        a, b = results[0], results[-1]
        print(f"flatness {b['count']} vs {a['count']}: memory per tx x"
              f"{b['rss_b_per_tx'] / a['rss_b_per_tx']:.2f}, setup CPU per tx x"
              f"{b['setup_us'] / a['setup_us']:.2f}, answer CPU per tx x"
              f"{b['answer_us'] / a['answer_us']:.2f}")
    print(f"total {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=1))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
