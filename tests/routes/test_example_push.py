"""examples/push (routes.lua + lua/push.lua, the example's own trio-sip.toml) in
virtual time, with the kit's fixtures and the scripted push gateway
(trio_sip/testing/http.py): a sleeping phone is woken by a push and rung the moment it
registers; one that does not wake costs the caller a 480 at the end of the wait; a
gateway that cannot be reached, a 480 at once.

What this shows a route author: a routes file whose options come from the environment
(``monkeypatch.setenv``), an HTTP peer scripted to *cause* something (the phone's
REGISTER when the push arrives: ``ScriptedHttp(on_request=...)``), and exact times
across SIP and HTTP. tests/push/test_push_virtual.py covers lua/push.lua in depth
(CANCEL while waiting, several phones, the fork window, slow and failing gateways);
tests/e2e/test_push_sipp.py runs the example with SIPp and a real HTTP gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.config import load_config
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimUA, build_message
from trio_sip.testing.http import HttpExchange, ScriptedHttp

from .conftest import REPO

EXAMPLE = Path(REPO) / "examples" / "push"
GATEWAY = "http://127.0.0.1:8088/push"
PHONE_CONTACT = "<sip:bob@127.0.0.3:5060;pn-provider=acme;pn-prid=tok1;pn-param=ACME.app>"


@pytest.fixture(autouse=True)
def push_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """routes.lua reads its push options from the environment."""
    for name in ("PUSH_AUTHORIZATION", "PUSH_FORK_WINDOW_MS", "PUSH_HTTP_TIMEOUT_MS",
                 "PUSH_HTABLE"):
        monkeypatch.delenv(name, raising=False)  # the example's defaults
    monkeypatch.setenv("PUSH_GATEWAY", GATEWAY)
    monkeypatch.setenv("PUSH_WAIT_MS", "5000")  # the example's default is 20 s


async def push_server(sip_server: Any, data_dir: Path, gateway: ScriptedHttp) -> Any:
    """The example's config as it is (its location table in ``data_dir``, no MI
    listener), its KSR.http_client talking to ``gateway``."""
    config = load_config(EXAMPLE / "trio-sip.toml", [f"core.data_dir={data_dir}",
                                                      "mi.listen="])
    server = await sip_server(config=config)
    gateway.install(server.core)
    return server


async def register(phone: SimUA, server: Any, cseq: int) -> SipResponse:
    """bob's phone registers its push-capable Contact (RFC 8599 pn-* parameters)."""
    data = build_message("REGISTER sip:127.0.0.1 SIP/2.0", [
        ("Via", f"SIP/2.0/UDP {phone.local};branch=z9hG4bKreg{cseq};rport"),
        ("Max-Forwards", "70"), ("From", "<sip:bob@127.0.0.1>;tag=reg"),
        ("To", "<sip:bob@127.0.0.1>"), ("Call-ID", "phone-registration"),
        ("CSeq", f"{cseq} REGISTER"), ("Contact", PHONE_CONTACT), ("Expires", "3600")])
    start = len(phone.received)
    await phone.send(data, server.address())
    return await phone.expect_response(200, method="REGISTER", start=start)


def invite(alice: SimUA, call_id: str) -> bytes:
    return alice.request("INVITE", "sip:bob@127.0.0.1", call_id=call_id)


async def test_the_push_wakes_the_phone_and_the_call_connects(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path, nursery: trio.Nursery) -> None:
    gateway = ScriptedHttp(status=200, delay=0.2)
    server = await push_server(sip_server, tmp_path, gateway)
    alice, phone = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    await register(phone, server, cseq=1)  # ... and the phone goes to sleep
    phone.answer(200, ringing=0.0, after=1.0)

    def wake_up(push: HttpExchange) -> None:  # the phone registers 1.5 s after its push
        async def later() -> None:
            await trio.sleep(1.5)
            await register(phone, server, cseq=2)
        nursery.start_soon(later)

    gateway.on_request = wake_up
    t0 = trio.current_time()
    await alice.send(invite(alice, "push-1"), server.address())
    await alice.expect_response(100, at=t0)
    push = await gateway.wait_for_request()
    assert (push.at, push.method, push.url) == (t0, "POST", GATEWAY)
    assert push.json() == {"type": "call", "aor": "bob", "pn-provider": "acme",
                           "pn-prid": "tok1", "pn-param": "ACME.app", "call-id": "push-1",
                           "from": "sip:ua@127.0.0.2:5060", "to": "sip:bob@127.0.0.1"}
    # nothing reaches the phone before it registers; the INVITE then goes at once
    got = await phone.expect_request("INVITE", at=t0 + 1.5)
    assert isinstance(got.msg, SipRequest)
    assert got.msg.ruri_text.startswith("sip:bob@127.0.0.3:5060;pn-provider=acme")
    await alice.expect_response(180, at=t0 + 1.5)
    await alice.expect_response(200, method="INVITE", at=t0 + 2.5)


async def test_a_phone_that_does_not_wake_up_gives_480_when_the_wait_ends(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    gateway = ScriptedHttp(status=200, delay=0.2)
    server = await push_server(sip_server, tmp_path, gateway)
    alice, phone = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    await register(phone, server, cseq=1)
    t0 = trio.current_time()
    await alice.send(invite(alice, "push-2"), server.address())
    # PUSH_WAIT_MS = 5000, counted from the gateway's answer
    await alice.expect_response(480, at=t0 + 0.2 + 5.0)
    assert len(gateway.requests) == 1
    assert [r for r in phone.requests() if r.method == "INVITE"] == []


async def test_an_unreachable_gateway_gives_480_at_once(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    gateway = ScriptedHttp(down=True)  # connection refused
    server = await push_server(sip_server, tmp_path, gateway)
    alice, phone = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    await register(phone, server, cseq=1)
    t0 = trio.current_time()
    await alice.send(invite(alice, "push-3"), server.address())
    await alice.expect_response(480, at=t0)
    assert [r for r in phone.requests() if r.method == "INVITE"] == []
