"""examples/missed-call-notify end to end, with SIPp callers and callees and a real HTTP
server as the notify target: a call answered 480, a call the caller cancels while it
rings and one nobody answers (fr_inv), each POST one "missed call" notification; a target that is down (503) gets the
notification retried with backoff and loses nothing, even across a restart of the proxy
(the queue is in SQLite). The example's files are used as they are; the tests only move
them to free ports and a temporary directory."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.http_server import HttpRequest, HttpServer
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.transport.transport_helpers import wait_until
from trio_sip.config import load_config
from trio_sip.runtime.server import Server, serve

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "missed-call-notify"

pytestmark = [requires_sipp, pytest.mark.sipp]


def make_targets(db: Path, **targets: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE notify_targets (user TEXT PRIMARY KEY, url TEXT NOT NULL)")
        con.executemany("INSERT INTO notify_targets VALUES (?, ?)", targets.items())
    con.close()


@asynccontextmanager
async def proxy(tmp: Path, port: int, *extra: str) -> AsyncIterator[Server]:
    config = load_config(EXAMPLE / "trio-sip.toml", [
        f"core.listen=udp:127.0.0.1:{port}", "mi.listen=", "core.log_level=warning",
        f"core.data_dir={tmp}", *extra,
    ])
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def queued(tmp: Path) -> int:
    """Items of the notify queue in its SQLite file."""
    con = sqlite3.connect(tmp / "mqueue.sqlite")
    try:
        return int(con.execute("SELECT COUNT(*) FROM notify").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


async def call_480(proxy_port: int, callee: str = "bob") -> None:
    async with Sipp("uas_unavailable.xml", calls=1, timeout=15).running() as uas:
        result = await Sipp("uac_expect_unavailable.xml", remote=uas.port, via=proxy_port,
                            service=callee, calls=1, timeout=15).run_async()
    assert result.ok, result.describe()


async def test_480_cancelled_and_unanswered_calls_are_notified(tmp_path) -> None:
    http = HttpServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(http.serve)
        make_targets(tmp_path / "notify.sqlite", bob=f"http://127.0.0.1:{http.port}/notify/bob")
        port = free_port()
        # nobody answers within fr_inv_timer (1.5 s here): 408, a missed call as well
        async with proxy(tmp_path, port, "tm.fr_inv_timer=1500") as server:
            await call_480(port)
            first = await http.wait_for_request(1, within=5)
            # the caller hangs up while the callee rings: a missed call too (487)
            async with Sipp("uas_ring_forever.xml", calls=1, timeout=15).running() as uas:
                result = await Sipp("uac_cancel_expected.xml", remote=uas.port, via=port,
                                    service="bob", calls=1, pause_ms=300,
                                    timeout=15).run_async()
            assert result.ok, result.describe()
            second = await http.wait_for_request(2, within=5)
            async with Sipp("uas_ring_forever.xml", calls=1, timeout=15).running() as uas:
                result = await Sipp("uac_expect_timeout.xml", remote=uas.port, via=port,
                                    service="bob", calls=1, timeout=15).run_async()
            assert result.ok, result.describe()
            third = await http.wait_for_request(3, within=5)
            # a user without a notify target: queued, then dropped (nothing to notify)
            await call_480(port, callee="carol")
            with trio.move_on_after(5):
                await wait_until(lambda: server.core.shv.get("notify:dropped", 0) >= 1,
                                 poll=0.05)
            assert server.core.shv.get("notify:sent") == 3
            assert server.core.shv.get("notify:dropped") == 1
        nursery.cancel_scope.cancel()
    for req, code in ((first, 480), (second, 487), (third, 408)):
        assert req.method == "POST" and req.target == "/notify/bob"
        assert req.headers.get("content-type") == "application/json"
        note = req.json()
        assert (note["type"], note["to"], note["code"], note["attempt"]) == (
            "missed_call", "bob", code, 1)
        assert note["from"].startswith("sip:sipp@127.0.0.1")
    assert len(http.requests) == 3


async def test_down_target_loses_nothing_across_a_restart(tmp_path) -> None:
    up = False

    def hook(req: HttpRequest) -> tuple[int, bytes]:
        return (200, b"{}") if up else (503, b"down")

    http = HttpServer(hook=hook)
    async with trio.open_nursery() as nursery:
        await nursery.start(http.serve)
        make_targets(tmp_path / "notify.sqlite", bob=f"http://127.0.0.1:{http.port}/n")
        port = free_port()
        async with proxy(tmp_path, port) as server:
            await call_480(port)
            # tried at once (503), again 1 s later (503): still queued, in the file too
            await http.wait_for_request(2, within=6)
            await trio.sleep(0.2)
            assert server.core.shv.get("notify:retried", 0) >= 2
            assert queued(tmp_path) == 1
        # the proxy is stopped; the target comes back; a new proxy on the same files
        up = True
        tries = len(http.requests)
        async with proxy(tmp_path, port) as server:
            ok = await http.wait_for_request(tries + 1, within=8)
            with trio.move_on_after(2):
                await wait_until(lambda: server.core.shv.get("notify:sent") == 1, poll=0.05)
            assert server.core.shv.get("notify:sent") == 1
            assert queued(tmp_path) == 0
        nursery.cancel_scope.cancel()
    assert [r.json()["attempt"] for r in http.requests] == list(range(1, tries + 2))
    assert ok.json()["to"] == "bob" and ok.json()["code"] == 480
