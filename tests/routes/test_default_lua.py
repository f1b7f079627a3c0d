"""routes/default.lua (the stateless default routes), tested with the kit in virtual
time: the pattern docs/testing.md explains. Every time asserted here is exact: the
network has no delay unless a test sets one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from trio_sip.testing import LinkSpec, SimNetwork, SimUA, assert_sent_at

from .conftest import routes

ROUTES = routes("routes/default.lua")


async def test_options_to_the_server_is_answered_at_once(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    alice = sip_ua("127.0.0.2")
    t0 = trio.current_time()
    await alice.send(alice.request("OPTIONS", "sip:127.0.0.1"), server.address())
    ok = await alice.expect_response(200, at=t0)
    assert ok.cseq_method == "OPTIONS"


async def test_invite_is_forwarded_statelessly_with_record_route(
        autojump_clock: trio.testing.MockClock, sip_server: Any, sip_net: SimNetwork,
        sip_ua: Callable[..., SimUA]) -> None:
    sip_net.set_default(LinkSpec(delay=(0.05, 0.05)))  # 50 ms each way, every link
    server = await sip_server(routes=ROUTES)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob.answer(200, after=1.0, ringing=0.25)
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3"), server.address())
    invite = await bob.expect_request("INVITE", at=t0 + 0.1)  # two hops of 50 ms
    assert invite.msg.get("Record-Route") is not None
    assert invite.msg.get("Max-Forwards") == "69"
    # stateless: no 100 Trying from the proxy; bob's 180 and 200 come back through it
    await alice.expect_response(180, at=t0 + 0.1 + 0.25 + 0.1)
    await alice.expect_response(200, at=t0 + 0.1 + 1.0 + 0.1)
    assert [r.status for r in alice.responses()] == [180, 200]
    assert_sent_at(sip_net, [0.05], relative_to=t0, src=server.address(),
                   method="INVITE", requests=True)
    assert sip_net.statistics().lost == 0


async def test_requests_to_the_server_itself(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES)
    alice = sip_ua("127.0.0.2")
    await alice.send(alice.request("MESSAGE", "sip:carol@127.0.0.1"), server.address())
    assert (await alice.expect_response(final=True)).status == 404
    await alice.send(alice.request("MESSAGE", "sip:bob@127.0.0.3", max_forwards=0),
                     server.address())
    assert (await alice.expect_response(483)).reason == "Too Many Hops"
