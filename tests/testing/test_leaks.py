"""The chaos kit's memory detector (trio_sip.testing.invariants: ``Watch.leaks``) against
deliberate leaks: a transaction, a branch and a local UAC transaction kept alive after
their server stopped, each by a different kind of reference (a module-level list, a
cycle whose ``__del__`` resurrects what it held, a closure in a module-level table of
callbacks), and a clean run that reports nothing. Virtual time.

How the server frees things (what a leak would defeat): an ended ``ServerTx`` breaks its
own reference cycles (runtime/transactions.py ``_break_cycles``), so reference counting
frees it, its request and its branches (driven by the transaction, no task of their
own); a stopped server's nursery cancels whatever was still running. Anything that
keeps one of them keeps the layer and the server above it too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_sip.runtime.server import Server
from trio_sip.runtime.uac import LocalUac, UacRequest, local_uacs
from trio_sip.testing import (
    Callee,
    Caller,
    LinkSpec,
    SimNetwork,
    SimUA,
    Watch,
    start_server,
    stop_server,
)
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")
PROXY = Address("127.0.0.1", 5060)
A = Address("127.0.0.2", 5060)
B = Address("127.0.0.3", 5060)

#: what the tests keep on purpose (cleared by each test)
KEPT: list[Any] = []
GRAVEYARD: list[Any] = []
CALLBACKS: dict[str, Callable[[], Any]] = {}


async def run(watch: Watch, during: Callable[[Server, Caller], Awaitable[None]],
              behaviour: str = "answer") -> Caller:
    """A call through a stateful proxy (alice -> bob, ``behaviour``); ``during`` runs 0.5 s
    after the INVITE; then the call ends, every timer runs out, the server stops and
    is dropped."""
    async with SimNetwork(seed=5, default=LinkSpec(delay=(0.01, 0.01))) as net, \
            trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL,
                                    config={"tm": {"fr_inv_timer": 10000}})
        bob = Callee(net, B, "bob", behaviour, final_after=1.0)
        alice = Caller(net, A, "alice", PROXY, [f"sip:bob@{B}"], hold=2.0)
        async with trio.open_nursery() as agents:
            agents.start_soon(bob.run)
            agents.start_soon(alice.run)
            alice.dial()
            await trio.sleep(0.5)
            await during(server, alice)
            await trio.sleep(60)
            agents.cancel_scope.cancel()
        await stop_server(server)
        nursery.cancel_scope.cancel()
    assert watch.made["transactions"] >= 1 and watch.made["branches"] >= 1
    return alice


async def nothing(server: Server, alice: Caller) -> None:
    pass


def the_invite(server: Server) -> Any:
    [tx] = [t for t in server.core.tm.servers.values() if t.method == "INVITE"]
    return tx


async def test_a_clean_run_reports_nothing(autojump_clock: trio.testing.MockClock) -> None:
    with Watch() as watch:
        alice = await run(watch, nothing)
        assert {s for _, s, _ in alice.finals} == {200}
        assert watch.leaks() == []
        assert watch.alive() == {"transactions": 0, "branches": 0}
        assert watch.servers_alive() == 0


async def test_a_transaction_kept_by_a_module_global_is_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    async def keep(server: Server, alice: Caller) -> None:
        KEPT.append(the_invite(server))

    KEPT.clear()
    with Watch() as watch:
        try:
            alice = await run(watch, keep, behaviour="ring")
            leaks = watch.leaks()
            assert leaks, "a ServerTx kept by a module global was not found"
            # the transaction keeps its layer, and the server above it
            assert leaks[0] == "still in memory: servers: 1, transactions: 1", leaks
            tx = KEPT[0]
            line = next(x for x in leaks if x.startswith("ServerTx"))
            assert line == (f"ServerTx INVITE#{tx.index} (Call-ID {alice.call_id}) held by "
                            f"module {__name__}: ['KEPT'] -> list [0] -> "
                            f"ServerTx INVITE#{tx.index} (Call-ID {alice.call_id})"), leaks
            server_line = next(x for x in leaks if x.startswith("ProxyCore"))
            assert f"module {__name__}: ['KEPT'] -> list [0] -> ServerTx" in server_line
            del tx, line, server_line
        finally:
            KEPT.clear()
        assert watch.leaks() == []  # that reference was all that kept them


class Mourner:
    """A reference cycle with a ``__del__`` that resurrects what it held: collected, but
    what it held lives on in GRAVEYARD."""

    def __init__(self, held: Any) -> None:
        self.me = self
        self.held = held

    def __del__(self) -> None:
        GRAVEYARD.append(self.held)


async def test_a_branch_resurrected_by_a_finalizer_is_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    async def haunt(server: Server, alice: Caller) -> None:
        [branch] = the_invite(server).branches
        Mourner(branch)  # garbage at once: a cycle, freed by the next collection

    GRAVEYARD.clear()
    with Watch() as watch:
        try:
            await run(watch, haunt)
            leaks = watch.leaks()
            assert len(GRAVEYARD) == 1, "the finalizer did not run"
            assert leaks and leaks[0] == "still in memory: servers: 1, transactions: 1, branches: 1", leaks
            branch = GRAVEYARD[0]
            line = next(x for x in leaks if x.startswith("Branch"))
            assert line == (f"Branch INVITE #{branch.index} to {branch.uri} held by module "
                            f"{__name__}: ['GRAVEYARD'] -> list [0] -> Branch INVITE "
                            f"#{branch.index} to {branch.uri}"), leaks
            # the branch refers to its transaction: found through it
            tx_line = next(x for x in leaks if x.startswith("ServerTx"))
            assert "['GRAVEYARD'] -> list [0] -> Branch INVITE" in tx_line, leaks
            del branch, line, tx_line
        finally:
            GRAVEYARD.clear()
        assert watch.leaks() == []


def final_of(uac: LocalUac) -> Callable[[], Any]:
    return lambda: uac.final


async def test_a_local_uac_kept_by_a_callback_closure_is_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    """A fake MI client's table of callbacks keeps a closure over the LocalUac it sent."""
    CALLBACKS.clear()
    with Watch() as watch:
        try:
            async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
                server = await start_server(nursery, net, routes=STATEFUL)
                bob = SimUA(net, B)
                bob.on_request = lambda ua, req, src: ua.send_soon(src, ua.response_to(req, 200))
                uac = local_uacs(server.core).send(UacRequest("MESSAGE", f"sip:bob@{B}",
                                                              call_id="uac-leak"))
                CALLBACKS["on_reply"] = final_of(uac)
                assert isinstance(uac, LocalUac)
                await uac.wait()
                await trio.sleep(40)
                await stop_server(server)
                nursery.cancel_scope.cancel()
            del server, uac, bob
            assert watch.made["local_uacs"] == 1
            leaks = watch.leaks()
            assert leaks and leaks[0] == ("still in memory: servers: 1, branches: 1, "
                                       "local UAC transactions: 1"), leaks
            line = next(x for x in leaks if x.startswith("LocalUac"))
            assert line.startswith(f"LocalUac MESSAGE (Call-ID uac-leak, CSeq 10) held by "
                                   f"module {__name__}: ['CALLBACKS'] -> dict ['on_reply'] "
                                   f"-> function"), leaks
            assert line.endswith("-> LocalUac MESSAGE (Call-ID uac-leak, CSeq 10)"), leaks
        finally:
            CALLBACKS.clear()
        assert watch.leaks() == []


async def test_a_transaction_kept_by_a_local_is_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    """A reference from a running coroutine (this test) is found too."""
    holder: list[Any] = []

    async def keep(server: Server, alice: Caller) -> None:
        holder.append(the_invite(server))

    with Watch() as watch:
        await run(watch, keep, behaviour="busy")
        kept = holder.pop()
        leaks = watch.leaks()
        line = next(x for x in leaks if x.startswith("ServerTx"))
        assert "local 'kept' -> ServerTx INVITE" in line, leaks
        assert line.split(" held by ")[1].startswith("coroutine "), leaks
        del kept, line, leaks
        assert watch.leaks() == []
