"""Ring 3 with real peers: SIPp through the running server with the stateless default
routes, and the RFC 4475/5118 torture corpus sent over UDP and TCP.

The server runs in the test's Trio loop on real loopback sockets, with its
loopback-only guard on (the torture messages name foreign hosts)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.support.ports import free_port_both
from tests.support.sipp import Sipp, sipp_binary
from tests.support.torture import find_torture_dir, run_torture
from trio_sip.config import config_from_dict
from trio_sip.runtime.server import Server, serve

requires_sipp = pytest.mark.skipif(
    sipp_binary() is None and not os.environ.get("CI"),
    reason="sipp not installed (Debian package sip-tester; scripts/test installs it)",
)


@asynccontextmanager
async def running_server(routes: str | None = None) -> AsyncIterator[Server]:
    port = free_port_both()
    data: dict[str, dict[str, object]] = {
        "mi": {"listen": ""},  # no management socket: tests run side by side
        "core": {"listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
                 "log_level": "warning"},
    }
    if routes:
        data["lua"] = {"routes": routes}
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config_from_dict(data))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@requires_sipp
@pytest.mark.sipp
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_calls_through_the_stateless_proxy(transport: str) -> None:
    calls = 500 if transport == "u1" else 200
    async with running_server() as server:
        proxy = server.address("udp").port
        async with Sipp("uas.xml", transport=transport, calls=calls, timeout=60).running() as uas:
            result = await Sipp(
                "uac.xml", remote=uas.port, via=proxy, transport=transport, rate=100,
                calls=calls, limit=200, timeout=60,
            ).run_async()
        assert result.ok, result.describe()
        assert result.successful == calls
        assert result.failed == 0
        stats = server.core.stats
        # INVITE, ACK and BYE of every call went through the proxy
        assert stats["fwd_requests"] >= 3 * calls
        assert stats["script_errors"] == 0


@pytest.mark.skipif(find_torture_dir() is None, reason="torture corpus not found")
async def test_torture_corpus_over_udp_and_tcp() -> None:
    async with running_server() as server:
        port = server.address("udp").port
        verdicts = await run_torture(("127.0.0.1", port), window=0.5)
        failed = [v for v in verdicts if not v.passed]
        assert not failed, "\n".join(f"{v.id}: {v.outcome} ({v.detail})" for v in failed)
        assert len(verdicts) >= 60
        # the server is still up and answering
        again = await run_torture(("127.0.0.1", port), window=0.5, ids=["zeromf"])
        assert again[0].passed
        assert server.guard.refused > 0  # foreign hosts were named, and refused
