"""routes/stateful.lua (the stateful proxy), tested with the kit: scripted callees with
behaviours (answer after N s, ring forever, busy, crash in the dialog), a caller that
follows RFC 3261, exact virtual times, and nothing left behind once the timers ran."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.runtime.server import Server
from trio_sip.testing import (
    Callee,
    Caller,
    LinkSpec,
    SimNetwork,
    SimUA,
    Watch,
    leftovers,
    sent_times,
    start_server,
)
from trio_sip.transport.base import Address

from .conftest import routes

ROUTES = routes("routes/stateful.lua")
PROXY = Address("127.0.0.1", 5060)
ALICE = Address("127.0.0.2", 5060)
BOB = Address("127.0.0.3", 5060)
TM = {"fr_inv_timer": 20000, "wt_timer": 2000}


@asynccontextmanager
async def call(behaviour: str, *, link: LinkSpec | None = None, cancel_after: float | None = None,
               **callee: Any) -> AsyncIterator[tuple[SimNetwork, Server, Caller, Callee]]:
    """One call from alice to bob through the routes; yields once it started."""
    async with SimNetwork(seed=1, default=link) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=ROUTES, config={"tm": TM})
        bob = Callee(net, BOB, "bob", behaviour, **callee)
        alice = Caller(net, ALICE, "alice", PROXY, [f"sip:bob@{BOB}"], hold=3.0,
                       cancel_after=cancel_after)
        nursery.start_soon(bob.run)
        nursery.start_soon(alice.run)
        alice.dial()
        yield net, server, alice, bob
        nursery.cancel_scope.cancel()


async def test_answered_call_with_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    link = LinkSpec(delay=(0.02, 0.02))
    with Watch() as watch:
        async with call("answer", link=link, ring_after=0.5, final_after=2.0) as (
                net, server, alice, bob):
            t0 = trio.current_time()
            await trio.sleep(60)
            # the proxy's 100 Trying: one hop there, one back
            assert alice.provisional_at == pytest.approx(t0 + 0.04)
            # the INVITE needs 2 hops (40 ms) to bob; the proxy relays his 180 when it
            # gets it, one hop after bob sent it
            assert sent_times(net, relative_to=t0, src=PROXY, dst=ALICE, status=180) == [
                pytest.approx(0.04 + 0.5 + 0.02)]
            assert [(round(t - t0, 6), s) for t, s, _ in alice.finals] == [(2.08, 200)]
            leg = next(iter(bob.legs.values()))
            assert leg.acked_at == pytest.approx(t0 + 2.08 + 0.04)  # the ACK, end to end
            assert leg.byes == [pytest.approx(t0 + 2.08 + 3.0 + 0.04)]  # hold 3 s, BYE
            assert next(iter(alice.dialogs.values())).bye_status == 200
            assert leftovers(server) == []
        assert watch.problems() == []


async def test_ring_forever_ends_at_fr_inv(autojump_clock: trio.testing.MockClock) -> None:
    async with call("ring", ring_after=1.0) as (_net, server, alice, bob):
        t0 = trio.current_time()
        await trio.sleep(60)
        # fr_inv_timer (20 s) runs from the 180: 408 to alice, CANCEL to bob
        assert [(round(t - t0, 6), s) for t, s, _ in alice.finals] == [(21.0, 408)]
        assert next(iter(bob.legs.values())).cancelled
        assert leftovers(server) == []


@pytest.mark.parametrize(("behaviour", "status"), [("busy", 486), ("decline", 603)])
async def test_rejections_are_relayed(autojump_clock: trio.testing.MockClock, behaviour: str,
                                      status: int) -> None:
    async with call(behaviour, final_after=1.5) as (_net, server, alice, _bob):
        t0 = trio.current_time()
        await trio.sleep(40)
        assert [(round(t - t0, 6), s) for t, s, _ in alice.finals] == [(1.5, status)]
        assert leftovers(server) == []


async def test_cancel_while_ringing(autojump_clock: trio.testing.MockClock) -> None:
    async with call("ring", ring_after=0.2, cancel_after=3.0) as (_net, server, alice, bob):
        t0 = trio.current_time()
        await trio.sleep(40)
        assert alice.cancel_status == 200
        assert [(round(t - t0, 6), s) for t, s, _ in alice.finals] == [(3.0, 487)]
        assert next(iter(bob.legs.values())).cancelled
        assert leftovers(server) == []


async def test_callee_crash_in_dialog_under_loss(autojump_clock: trio.testing.MockClock) -> None:
    """bob answers and dies 0.5 s later; what the proxy sends him is lost 30 % of the
    time (the INVITE is retransmitted, Timer A). The call is set up, and the BYE to the
    dead host times out (Timer F: 408 to alice)."""
    async with call("crash", final_after=1.0, crash_after=0.5) as (net, server, alice, bob):
        net.set_link(PROXY, BOB, LinkSpec(loss=0.3, delay=(0.01, 0.05)))
        await trio.sleep(90)
        assert alice.dialogs and bob.crashed_at is not None
        assert next(iter(alice.dialogs.values())).bye_status == 408
        assert net.entries(dst=BOB, fate="lost")  # at least the BYEs to the dead host
        assert leftovers(server) == []


async def test_a_plain_simua_against_the_routes(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    """The pytest fixtures: no agents, every message written by the test."""
    server = await sip_server(routes=ROUTES, config={"tm": TM})
    alice = sip_ua("127.0.0.2")
    sip_ua("127.0.0.3")  # bob is there but never answers
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3"), server.address())
    await alice.expect_response(100, at=t0)  # the transaction's 100 Trying, at once
    # no provisional from bob: fr_timer (Kamailio's default 30 s) ends the branch
    await alice.expect_response(408, at=t0 + 30.0)
