"""examples/push end to end in real time, on loopback: the server runs the example's
routes (lua/push.lua), a real HTTP server stands in for the push gateway, SIPp is the
caller and the callee.

The callee (a SIPp UAS) registered with SIPp (examples/push/register_phone.xml: a Contact
naming the UAS, with RFC 8599 pn-* parameters) and is asleep: the INVITE is not relayed
to it. The push reaches the HTTP server, whose hook plays the phone waking up: it runs
the same SIPp REGISTER scenario again. Only then does the INVITE reach the UAS, and the
call connects (INVITE, 180, 200, ACK, BYE)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.test_registrar_sipp import udp_register
from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.http_server import HttpRequest, HttpServer
from tests.support.ports import free_port_both
from tests.support.sipp import Sipp
from tests.usrloc.helpers import ensure_modules
from trio_sip.config import config_from_dict
from trio_sip.runtime.server import Server, serve

REPO = Path(__file__).resolve().parents[2]
ROUTES = str(REPO / "examples" / "push" / "routes.lua")
REGISTER_PHONE = str(REPO / "examples" / "push" / "register_phone.xml")

pytestmark = [requires_sipp, pytest.mark.sipp]

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _modules(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_modules(monkeypatch)


async def register_phone(proxy_port: int, phone_port: int, prid: str) -> bool:
    """The example's SIPp registration of bob's phone; True when it got its 200."""
    result = await Sipp(REGISTER_PHONE, remote=proxy_port, service="bob", calls=1,
                        timeout=10, keys={"phone_port": str(phone_port),
                                          "pn_provider": "acme", "pn_prid": prid}
                        ).run_async()
    return result.ok and result.successful == 1


@asynccontextmanager
async def push_proxy(data_dir: Path) -> AsyncIterator[Server]:
    port = free_port_both()
    config = config_from_dict({
        "mi": {"listen": ""},
        "core": {"listen": [f"udp:127.0.0.1:{port}"], "log_level": "warning",
                 "data_dir": str(data_dir)},
        "lua": {"routes": ROUTES},
    })
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def test_a_push_wakes_the_sipp_callee_and_the_calls_connect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 3
    async with trio.open_nursery() as nursery:
        async with Sipp("uas.xml", calls=calls, timeout=30).running() as uas:
            registered: list[bool] = []

            def wake(req: HttpRequest) -> tuple[int, bytes]:
                # the phone gets the push and registers again (SIPp), a moment after
                # the gateway answered
                async def register_again() -> None:
                    registered.append(await register_phone(proxy_port, uas.port, "tok-e2e"))

                nursery.start_soon(register_again)
                return 200, b'{"sent": true}'

            gateway = await nursery.start(HttpServer(hook=wake).serve)
            monkeypatch.setenv("PUSH_GATEWAY", f"http://127.0.0.1:{gateway.port}/push")
            monkeypatch.setenv("PUSH_AUTHORIZATION", "Bearer e2e-token")
            monkeypatch.setenv("PUSH_WAIT_MS", "8000")
            async with push_proxy(tmp_path) as server:
                proxy_port = server.address("udp").port
                # the phone registered earlier, then went to sleep
                assert await register_phone(proxy_port, uas.port, "tok-e2e")
                result = await Sipp("uac.xml", remote=proxy_port, service="bob", calls=calls,
                                    rate=2, timeout=30).run_async()
                uas_result = await uas.wait()
                assert server.core.stats["script_errors"] == 0
        nursery.cancel_scope.cancel()
    assert result.ok, result.describe()
    assert result.successful == calls
    assert uas_result.successful == calls, uas_result.describe()
    # one push per call, each answered by a REGISTER of the woken phone
    assert len(gateway.requests) == calls
    assert registered == [True] * calls
    push = gateway.requests[0]
    assert (push.method, push.target) == ("POST", "/push")
    assert push.headers["authorization"] == "Bearer e2e-token"
    body = push.json()
    assert (body["aor"], body["pn-provider"], body["pn-prid"]) == ("bob", "acme", "tok-e2e")


async def test_the_caller_gets_480_when_the_phone_never_wakes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(HttpServer().serve)  # takes the push; no REGISTER
        monkeypatch.setenv("PUSH_GATEWAY", f"http://127.0.0.1:{gateway.port}/push")
        monkeypatch.setenv("PUSH_WAIT_MS", "1000")
        async with push_proxy(tmp_path) as server:
            proxy_port = server.address("udp").port
            ok = await udp_register(proxy_port, "bob",
                                    "sip:bob@127.0.0.1:9;pn-provider=acme;pn-prid=t2")
            assert ok.status == 200
            result = await Sipp("uac.xml", remote=proxy_port, service="bob", calls=1,
                                timeout=15).run_async()
            assert server.core.tm.statistics()["4xx_transactions"] >= 1
        nursery.cancel_scope.cancel()
    assert result.failed == 1  # uac.xml expects 180/200: the 480 fails the call
    assert len(gateway.requests) == 1
