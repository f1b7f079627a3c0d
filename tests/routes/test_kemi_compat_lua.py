"""routes/kemi-compat.lua (the file that also runs on Kamailio), tested with the kit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from trio_sip.testing import SimNetwork, SimUA, sip_log

from .conftest import routes

ROUTES = routes("routes/kemi-compat.lua")


async def test_busy_user_is_answered_by_the_route(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], sip_net: SimNetwork) -> None:
    server = await sip_server(routes=ROUTES)
    alice = sip_ua("127.0.0.2")
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:busy@127.0.0.3"), server.address())
    await alice.expect_response(486, at=t0)
    assert sip_log(sip_net, src=server.address(), requests=True) == []  # nothing relayed


async def test_invite_normalized_record_routed_and_tagged(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob.answer(200, after=0.5)
    invite = alice.request("INVITE", "sip:0044123@127.0.0.3",
                           headers=[("X-Route", "forged")])
    t0 = trio.current_time()
    await alice.send(invite, server.address())
    got = await bob.expect_request("INVITE", at=t0)
    assert str(got.msg.ruri) == "sip:+44123@127.0.0.3"  # the 00 prefix became +
    assert got.msg.get_all("X-Route") == ["kemi-compat"]  # the forged one replaced
    assert ";kc=1" in (got.msg.get("Record-Route") or "")
    await alice.expect_response(200, at=t0 + 0.5)


async def test_in_dialog_request_without_our_route_is_refused(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    alice = sip_ua("127.0.0.2")
    await alice.send(alice.request("BYE", "sip:bob@127.0.0.3", to_tag="x1"), server.address())
    assert (await alice.expect_response(final=True)).status == 404
