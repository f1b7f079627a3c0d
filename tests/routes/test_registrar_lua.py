"""routes/registrar.lua: REGISTER, then calls to the registered contact; tested with the
kit in virtual time (the registration expires exactly when its Expires says)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from trio_sip.testing import SimUA

from .conftest import routes

ROUTES = routes("routes/registrar.lua")


async def test_register_then_call_then_expiry(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    proxy = server.address()
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob.answer(200, after=1.0)
    register = bob.request("REGISTER", "sip:127.0.0.1", to="sip:bob@127.0.0.1",
                           headers=[("Expires", "60")])
    register = register.replace(b"Contact: <sip:ua@127.0.0.3:5060>",
                                b"Contact: <sip:bob@127.0.0.3:5060>")
    t0 = trio.current_time()
    await bob.send(register, proxy)
    ok = await bob.expect_response(200, method="REGISTER", at=t0)
    assert "sip:bob@127.0.0.3:5060" in (ok.get("Contact") or "")

    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.1"), proxy)
    got = await bob.expect_request("INVITE", at=t0)
    assert str(got.msg.ruri) == "sip:bob@127.0.0.3:5060"  # lookup("location") rewrote it
    await alice.expect_response(200, at=t0 + 1.0)

    # 60 s later the contact expired: the next call finds nobody
    await trio.sleep_until(t0 + 61)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.1"), proxy)
    assert (await alice.expect_response(final=True, start=len(alice.received))).status == 404


async def test_unknown_user_is_not_found(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    alice = sip_ua("127.0.0.2")
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:nobody@127.0.0.1"), server.address())
    await alice.expect_response(404, at=t0)
