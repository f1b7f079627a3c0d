"""examples/accounting end to end: SIPp calls through the proxy (proxy.toml/proxy.lua); on
each 200 to an INVITE or BYE the proxy sends an ACCOUNTING request (uac_req_send) to a
second trio-sip, the accounting server (acc.toml/acc.lua), which stores the row in SQLite
with sqlops and answers 200. Both servers run the example files as they are; the tests
only move them to free ports and a temporary database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.transport.transport_helpers import wait_until
from trio_sip.config import load_config
from trio_sip.runtime.server import Server, serve

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "accounting"

pytestmark = [requires_sipp, pytest.mark.sipp]


@asynccontextmanager
async def example_server(toml: str, port: int, *extra: str) -> AsyncIterator[Server]:
    config = load_config(EXAMPLE / toml, [f"core.listen=udp:127.0.0.1:{port}", "mi.listen=",
                                          "core.log_level=warning", *extra])
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def rows(db: Path) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT method, callid, cseq, sip_code, sip_reason, src_user, "
                           "dst_user, from_tag, to_tag FROM acc ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []  # no table yet
    finally:
        con.close()


async def wait_rows(db: Path, n: int, within: float = 5.0) -> list[tuple[object, ...]]:
    with trio.move_on_after(within):
        await wait_until(lambda: len(rows(db)) >= n, poll=0.05)
    return rows(db)


async def test_each_answered_call_is_stored_twice_start_and_end(tmp_path, monkeypatch) -> None:
    calls = 10
    db = tmp_path / "acc.sqlite"
    acc_port, proxy_port = free_port(), free_port()
    monkeypatch.setenv("ACC_SERVER", f"sip:acc@127.0.0.1:{acc_port}")
    async with example_server("acc.toml", acc_port, f"core.data_dir={tmp_path}") as acc, \
            example_server("proxy.toml", proxy_port) as proxy:
        async with Sipp("uas.xml", calls=calls, timeout=20).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=proxy_port, service="bob",
                                rate=10, calls=calls, timeout=20).run_async()
        assert result.ok, result.describe()
        assert result.successful == calls
        stored = await wait_rows(db, 2 * calls)
        assert len(stored) == 2 * calls, stored
        assert sorted({r[0] for r in stored}) == ["BYE", "INVITE"]
        assert len({r[1] for r in stored}) == calls
        for method, _callid, cseq, code, reason, src, dst, ftag, ttag in stored:
            assert (code, reason, src, dst) == (200, "OK", "sipp", "bob")
            assert cseq == (1 if method == "INVITE" else 2)
            assert ftag and ttag
        ustats = proxy.registry.stats_groups()["uac"][0]()  # type: ignore[union-attr]
        assert ustats["sent"] >= 2 * calls and ustats.get("local_408", 0) == 0
        assert acc.core.stats["script_errors"] == 0 and proxy.core.stats["script_errors"] == 0


async def test_accounting_server_down_never_delays_calls(tmp_path, monkeypatch) -> None:
    """Nobody at the accounting address: the calls complete as usual (the ACCOUNTING
    requests are local transactions of their own), and each ends in a local 408 that the
    event callback logs."""
    calls = 5
    proxy_port = free_port()
    monkeypatch.setenv("ACC_SERVER", f"sip:acc@127.0.0.1:{free_port()}")
    async with example_server("proxy.toml", proxy_port, "tm.fr_timer=1000") as proxy:
        async with Sipp("uas.xml", calls=calls, timeout=20).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=proxy_port, service="bob",
                                rate=10, calls=calls, timeout=20).run_async()
        assert result.ok, result.describe()
        ustats = proxy.registry.stats_groups()["uac"][0]  # type: ignore[union-attr]
        with trio.move_on_after(5):
            await wait_until(lambda: ustats().get("callbacks", 0) >= 2 * calls, poll=0.05)
        assert ustats()["local_408"] == 2 * calls
        assert ustats()["callbacks"] == 2 * calls


async def test_accounting_server_refuses_bad_records(tmp_path) -> None:
    db = tmp_path / "acc.sqlite"
    acc_port = free_port()
    async with example_server("acc.toml", acc_port, f"core.data_dir={tmp_path}"):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        lport = sock.getsockname()[1]

        async def ask(method: str, body: str) -> str:
            msg = (f"{method} sip:acc@127.0.0.1:{acc_port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{method}{len(body)}\r\n"
                   "From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:acc@127.0.0.1>\r\n"
                   f"Call-ID: {method}-{len(body)}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}")
            await sock.sendto(msg.encode(), ("127.0.0.1", acc_port))
            with trio.fail_after(5):
                data = await sock.recv(65535)
            return data.split(b"\r\n", 1)[0].decode()

        assert await ask("OPTIONS", "") == "SIP/2.0 405 Method Not Allowed"
        assert await ask("ACCOUNTING", "method=INVITE\r\n") == "SIP/2.0 400 Bad Record (no callid)"
        good = ("method=INVITE\r\ncallid=x1\r\ncseq=1\r\nsip_code=200\r\ntime=1700000000\r\n"
                "src_user=a'; DROP TABLE acc; --\r\n")
        assert await ask("ACCOUNTING", good) == "SIP/2.0 200 Stored"
        assert await ask("ACCOUNTING", good + "to_tag=again\r\n") == "SIP/2.0 200 Stored"
        stored = rows(db)
        assert len(stored) == 1  # (callid, cseq, method) once
        assert stored[0][5] == "a'; DROP TABLE acc; --"  # bound: stored as data
        sock.close()
