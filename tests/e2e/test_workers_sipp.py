"""``trio-sip run --workers 2`` end to end: the real command (a supervisor and two
worker processes on one SO_REUSEPORT group) driven by SIPp through routes/stateful.lua.

Also home of :func:`running_workers`, which tests/runtime/test_workers.py uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.ports import free_port, free_port_both, is_port_free
from tests.support.sipp import Sipp
from trio_sip.mi.client import call

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")


@dataclass
class Workers:
    """A running ``trio-sip run --workers N``: its process, ports and log."""

    proc: trio.Process
    port: int
    mi_ports: list[int]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mi(self, index: int, method: str, params: Any = None) -> Any:
        return call(f"http://127.0.0.1:{self.mi_ports[index]}/", method, params, timeout=10)

    async def ami(self, index: int, method: str, params: Any = None) -> Any:
        return await trio.to_thread.run_sync(self.mi, index, method, params)

    async def wait_log(self, done: Callable[[str], bool], within: float = 30.0) -> str:
        """Poll the log (every 0.1 s, at most ``within`` s) until ``done(log)``."""
        for _ in range(int(within * 10)):
            text = self.log()
            if done(text):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"trio-sip exited:\n{text}")
            await trio.sleep(0.1)
        raise AssertionError(f"not in the log after {within}s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        """The workers' pids, from the supervisor's "worker I (pid P) serving" lines
        (the last one of each index: a restarted worker logs again)."""
        pids: dict[int, int] = {}
        for line in self.log().splitlines():
            if "trio_sip.workers worker " in line and " serving: " in line:
                head = line.split("trio_sip.workers worker ", 1)[1]
                index, rest = head.split(" (pid ", 1)
                pids[int(index)] = int(rest.split(")", 1)[0])
        return [pids[i] for i in sorted(pids)]


def _mi_base(n: int) -> int:
    """A port p with p..p+n-1 free for TCP (worker i's management interface: p + i)."""
    for _ in range(50):
        p = free_port("tcp")
        if p + n <= 65535 and all(is_port_free(p + i, "tcp") for i in range(n)):
            return p
    raise RuntimeError("no run of free TCP ports for the management interfaces")


def workers_command(routes: str, port: int, mi_base: int, workers: int | str,
                    extra: Sequence[str] = (), protos: Sequence[str] = ("udp",)) -> list[str]:
    listen = [a for p in protos for a in ("--listen", f"{p}:127.0.0.1:{port}")]
    return [sys.executable, "-m", "trio_sip", "run", "--workers", str(workers),
            *listen, "--routes", routes,
            "--set", f"mi.listen=127.0.0.1:{mi_base}", "--log-level", "info", *extra]


@asynccontextmanager
async def running_workers(tmp_path: Path, routes: str = STATEFUL, workers: int = 2,
                          extra: Sequence[str] = (), *, check_exit: bool = True,
                          protos: Sequence[str] = ("udp",)) -> AsyncIterator[Workers]:
    """Start the real command, wait until every worker serves, SIGTERM it at the end
    (and check that it stopped cleanly, exit 0, when ``check_exit``)."""
    port = free_port_both() if "tcp" in protos else free_port("udp")
    mi_base = _mi_base(workers)
    log_path = tmp_path / "trio-sip.log"
    with log_path.open("wb") as log_file:
        proc = await trio.lowlevel.open_process(
            workers_command(routes, port, mi_base, workers, extra, protos),
            stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO))
    w = Workers(proc, port, [mi_base + i for i in range(workers)], log_path)
    try:
        await w.wait_log(lambda log: f"{workers} workers running" in log)
        yield w
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(25) as scope:
                await proc.wait()
            if scope.cancelled_caught:
                proc.kill()
                await proc.wait()
                raise AssertionError(f"trio-sip did not stop on SIGTERM:\n{w.log()}")
    if check_exit:
        assert proc.returncode == 0, w.log()
        assert "all workers stopped" in w.log()


def requests_handled(stats: dict[str, Any]) -> int:
    return int(stats.get("core", {}).get("rcv_requests", 0))


@requires_sipp
@pytest.mark.sipp
async def test_200_calls_through_2_workers(tmp_path: Path) -> None:
    """SIPp's UAC with one socket per call (``-t un``): the kernel's SO_REUSEPORT hash of
    each call's source port spreads the calls over both workers (all 200 on one worker:
    odds 2**-199); each call's ACK and BYE come from its own socket, so they reach the
    worker that relayed its INVITE."""
    async with running_workers(tmp_path) as w:
        async with Sipp("uas.xml", calls=200, timeout=60).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=w.port, rate=50, calls=200,
                                limit=100, transport="un", timeout=60).run_async()
        assert result.ok, result.describe()
        assert result.successful == 200
        per_worker = [await w.ami(i, "core.stats") for i in range(2)]
        handled = [requests_handled(s) for s in per_worker]
        replies = [int(s.get("core", {}).get("rcv_replies", 0)) for s in per_worker]
        assert sum(handled) >= 200 * 3, (handled, per_worker)  # INVITE, ACK, BYE
        assert all(h > 0 for h in handled), handled  # both workers took calls
        assert all(s.get("core", {}).get("script_errors", 0) == 0 for s in per_worker)
        # every response to a relayed request came back to the worker that relayed it
        # (its own Via port): a worker received as many replies as its requests drew
        for i in range(2):
            assert (replies[i] > 0) == (handled[i] > 0), (i, per_worker)
    assert "Traceback" not in w.log(), w.log()


@requires_sipp
@pytest.mark.sipp
async def test_cancel_of_a_ringing_call_through_2_workers(tmp_path: Path) -> None:
    """Ringing calls cancelled by the caller, one socket per call, spread over both
    workers (all 20 on one: odds 2**-19)."""
    calls = 20
    async with running_workers(tmp_path) as w:
        async with Sipp("uas_ring_forever.xml", calls=calls, timeout=60).running() as uas:
            result = await Sipp("uac_cancel_expected.xml", remote=uas.port, via=w.port,
                                rate=20, calls=calls, pause_ms=300, transport="un",
                                timeout=60).run_async()
            uas_result = await uas.wait()
        # a call succeeds only when its 487 arrives: the CANCEL reached the worker that
        # holds the INVITE transaction, which cancelled the branch downstream
        assert result.ok, result.describe()
        assert result.successful == calls
        assert uas_result.successful == calls, uas_result.describe()
        tm = [await w.ami(i, "tm.stats") for i in range(2)]
        assert sum(int(t.get("4xx", 0)) for t in tm) >= calls, tm
        assert all(int(t.get("4xx", 0)) > 0 for t in tm), tm  # both workers had some


@requires_sipp
@pytest.mark.sipp
async def test_calls_over_tcp_through_2_workers(tmp_path: Path) -> None:
    """SO_REUSEPORT on the TCP listener: a connection per call (``-t tn``) is accepted by
    one worker or the other; everything on it (ACK, BYE) reaches that worker, and the
    responses of the callee come back on the connection the worker opened."""
    calls = 60
    async with running_workers(tmp_path, protos=("udp", "tcp")) as w:
        async with Sipp("uas.xml", transport="t1", calls=calls, timeout=60).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=w.port, transport="tn",
                                rate=30, calls=calls, limit=60, timeout=60).run_async()
        assert result.ok, result.describe()
        assert result.successful == calls
        handled = [requests_handled(await w.ami(i, "core.stats")) for i in range(2)]
        assert sum(handled) >= 3 * calls and all(h > 0 for h in handled), handled


def test_worker_scenarios_exist() -> None:
    for name in ("uac.xml", "uas.xml", "uas_ring_forever.xml", "uac_cancel_expected.xml"):
        assert (REPO / "tests" / "sipp" / name).is_file(), name
    assert os.path.isfile(STATEFUL)
