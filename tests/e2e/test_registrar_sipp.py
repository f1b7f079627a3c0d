"""SIPp against the running registrar (routes/registrar.lua), in real time on loopback:
SIPp registers (tests/sipp/reg.xml), the bindings are in the SQLite file; then calls from
a SIPp UAC reach a SIPp UAS through lookup("location") and t_relay, both with the UAS
registered (REGISTER sent by a small trio client, its Contact naming the UAS) and after a
restart of the server from the same file."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.ports import free_port_both
from tests.support.sipp import Sipp
from tests.usrloc.helpers import ensure_modules
from trio_sip.config import Config, config_from_dict
from trio_sip.modules.usrloc import usrloc_for
from trio_sip.runtime.server import Server, serve
from trio_sip.sip.message import SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.testing import build_message

REPO = Path(__file__).resolve().parents[2]
REGISTRAR = str(REPO / "routes" / "registrar.lua")

pytestmark = [requires_sipp, pytest.mark.sipp]

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _modules(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_modules(monkeypatch)


@asynccontextmanager
async def running_registrar(data_dir: Path, port: int | None = None
                            ) -> AsyncIterator[Server]:
    port = port or free_port_both()
    data: dict[str, dict[str, object]] = {
        "mi": {"listen": ""},  # no management socket: tests run side by side
        "core": {"listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
                 "log_level": "warning", "data_dir": str(data_dir)},
        "lua": {"routes": REGISTRAR},
    }
    if "mi" in Config.__dataclass_fields__:
        data["mi"] = {"listen": ""}  # tests run side by side: no fixed management port
    config = config_from_dict(data)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def udp_register(proxy: int, user: str, contact: str, expires: int = 3600
                       ) -> SipResponse:
    """One REGISTER from a plain UDP socket; its final response."""
    n = next(_ids)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        data = build_message(f"REGISTER sip:127.0.0.1:{proxy} SIP/2.0", [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKe2e{n};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@127.0.0.1>;tag=e2e{n}"),
            ("To", f"<sip:{user}@127.0.0.1>"),
            ("Call-ID", f"e2e-reg-{n}@127.0.0.1"), ("CSeq", "1 REGISTER"),
            ("Contact", f"<{contact}>"), ("Expires", str(expires))])
        await sock.sendto(data, ("127.0.0.1", proxy))
        with trio.fail_after(5):
            while True:
                raw, _ = await sock.recvfrom(65535)
                msg = parse_message_untrusted(raw)
                if isinstance(msg, SipResponse) and msg.status >= 200:
                    return msg


def stored(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "location.sqlite") as conn:
        return sorted(conn.execute("SELECT aor, contact FROM location"))


async def test_sipp_registrations_are_answered_and_stored(tmp_path: Path) -> None:
    async with running_registrar(tmp_path) as server:
        proxy = server.address("udp").port
        result = await Sipp("reg.xml", remote=proxy, service="alice", calls=20, rate=20,
                            timeout=30).run_async()
        assert result.ok, result.describe()
        assert result.successful == 20
        ul = server.core.usrloc
        looked = ul.lookup("location", "alice")
        assert looked is not None and len(looked) == 1  # the same contact every time
        assert ul.stats["accepted_regs"] == 20
        assert server.core.stats["script_errors"] == 0
        await ul.flush()
        assert [aor for aor, _ in stored(tmp_path)] == ["alice"]


async def test_sipp_calls_reach_the_registered_sipp_uas(tmp_path: Path) -> None:
    calls = 10
    async with running_registrar(tmp_path) as server:
        proxy = server.address("udp").port
        async with Sipp("uas.xml", calls=calls, timeout=60).running() as uas:
            ok = await udp_register(proxy, "bob", f"sip:bob@127.0.0.1:{uas.port}")
            assert ok.status == 200, ok.raw
            # the INVITE names the registrar (sip:bob@127.0.0.1:PROXY); lookup() finds
            # the UAS
            result = await Sipp("uac.xml", remote=proxy, service="bob", rate=10, calls=calls,
                                timeout=60).run_async()
            uas_result = await uas.wait()
        assert result.ok, result.describe()
        assert result.successful == calls
        assert uas_result.successful == calls, uas_result.describe()
        assert server.core.stats["script_errors"] == 0
        # nobody registered as carol: 404
        result = await Sipp("uac.xml", remote=proxy, service="carol", calls=1,
                            timeout=10).run_async()
        assert result.failed == 1


async def test_calls_still_reach_the_uas_after_a_restart(tmp_path: Path) -> None:
    port = free_port_both()
    async with Sipp("uas.xml", calls=2, timeout=60).running() as uas:
        async with running_registrar(tmp_path, port) as server:
            ok = await udp_register(port, "dave", f"sip:dave@127.0.0.1:{uas.port}")
            assert ok.status == 200
            assert stored(tmp_path) == [("dave", f"sip:dave@127.0.0.1:{uas.port}")]
        # a new server on the same SQLite file: the binding is loaded from it
        async with running_registrar(tmp_path, port) as server:
            assert server.core.stats["script_errors"] == 0
            looked = usrloc_for(server.core).lookup("location", "dave")
            assert looked is not None
            assert [c["Address"] for c in looked] == [f"sip:dave@127.0.0.1:{uas.port}"]
            result = await Sipp("uac.xml", remote=port, service="dave", rate=10, calls=2,
                                timeout=30).run_async()
            assert result.ok, result.describe()
            assert result.successful == 2
        uas_result = await uas.wait()
    assert uas_result.successful == 2, uas_result.describe()
