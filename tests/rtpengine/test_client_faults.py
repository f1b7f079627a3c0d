"""Ring 2: the ng client against scripted peers on the SimNetwork, in virtual time.

Dead nodes, retransmissions with the same cookie at exact intervals, disabling,
failover, re-probing, stickiness, and many commands through one socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.rtpengine import (
    BadNgReply,
    ClientClosed,
    ClientConfig,
    NgReplyError,
    NgTimeout,
    NoNodeAvailable,
    RtpengineClient,
    SimEndpoint,
    sim_endpoints,
)
from trio_sip.rtpengine.nodes import call_hash
from trio_sip.transport.base import Address
from trio_sip.transport.guard import LoopbackGuard
from trio_sip.transport.sim import LinkSpec, SimNetwork

from .fake_ng import FakeNg

A = Address("127.0.0.1", 2223)
B = Address("127.0.0.1", 2224)
CLIENT = Address("127.0.0.1", 40000)
SDP = (b"v=0\r\no=a 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\n")


def offer(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"command": "offer", "call-id": call_id, "from-tag": "ft", "sdp": SDP, **extra}


def hashed_to(client: RtpengineClient, cid: str, set_id: int = 0) -> int:
    """The node index the weighted hash gives ``cid`` with every node of the set up."""
    weights = [n.spec.weight for n in client.sets[set_id]]
    cut = call_hash(cid, client.config.hash_algo) % sum(weights)
    for i, w in enumerate(weights):
        if cut < w:
            return i
        cut -= w
    raise AssertionError("unreachable")


def call_on(client: RtpengineClient, index: int, set_id: int = 0, prefix: str = "call") -> str:
    """A call-id that the weighted hash puts on node ``index`` of the set."""
    for n in range(10_000):
        cid = f"{prefix}-{n}@test"
        if hashed_to(client, cid, set_id) == index:
            return cid
    raise AssertionError("no such call-id")


@asynccontextmanager
async def running(net: SimNetwork, *socks: str, opened: list[SimEndpoint] | None = None,
                  guard: LoopbackGuard | None = None, **cfg: Any
                  ) -> AsyncIterator[RtpengineClient]:
    cfg.setdefault("ping_mode", 0)
    cfg.setdefault("ping_interval", 0)
    client = RtpengineClient(ClientConfig(sock=socks, **cfg), guard=guard,
                             open_endpoint=sim_endpoints(net, CLIENT.host, CLIENT.port,
                                                         opened))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def test_dead_node_gets_the_same_datagram_every_tout_then_the_next_node(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net:
        dead, live = FakeNg(net, A, mode="silent"), FakeNg(net, B)
        async with running(net, f"{dead.sock} {live.sock}") as client:
            cid = call_on(client, 0)
            start = trio.current_time()
            reply = await client.request(offer(cid))
            # Kamailio: rtpengine_retr (5) sends, rtpengine_tout_ms (1000) apart
            assert [g.at - start for g in dead.received] == [0, 1, 2, 3, 4]
            assert len({g.data for g in dead.received}) == 1  # same cookie, same bytes
            # after 5 x 1 s the node is disabled and the offer goes to the next node
            assert [g.at - start for g in live.received] == [5]
            assert live.received[0].cookie != dead.received[0].cookie
            assert trio.current_time() - start == 5
            assert reply["result"] == "ok" and reply["x-call-id"] == cid
            show = {n["url"]: n for n in client.show()}
            assert show[dead.sock]["active"] is False and show[live.sock]["active"] is True
            assert show[dead.sock]["recheck_ticks"] == 60
            stats = client.statistics()
            assert stats["retransmissions"] == 4 and stats["failovers"] == 1
            assert stats["nodes_disabled"] == 1 and stats["nodes_active"] == 1
            # the next call goes straight to the live node, with no waiting
            start = trio.current_time()
            await client.request(offer(call_on(client, 0, prefix="next")))
            assert trio.current_time() == start
            assert len(dead.received) == 5


async def test_custom_timeout_and_retr(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=2) as net:
        dead = FakeNg(net, A, mode="silent")
        async with running(net, dead.sock, tout_ms=200, retr=3) as client:
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c1"))
            assert [round(g.at - start, 9) for g in dead.received] == [0, 0.2, 0.4]
            assert trio.current_time() - start == pytest.approx(0.6)
            dead.received.clear()
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c2"), timeout_ms=50, retr=2)
            assert not dead.received  # the node is disabled: not even tried


async def test_all_nodes_down_fails_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=3) as net:
        a, b = FakeNg(net, A, mode="silent"), FakeNg(net, B, mode="silent")
        async with running(net, f"{a.sock} {b.sock}") as client:
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c1"))
            assert trio.current_time() - start == 10  # 5 s on each node
            sent = len(a.received) + len(b.received)
            assert sent == 10
            for i in range(20):
                start = trio.current_time()
                with pytest.raises(NoNodeAvailable):
                    await client.request(offer(f"more-{i}"))
                assert trio.current_time() == start  # no waiting at all
            assert len(a.received) + len(b.received) == sent
            assert client.statistics()["no_node_available"] == 21


async def test_disabled_node_is_probed_after_disable_tout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=4) as net:
        node = FakeNg(net, A, mode="silent")
        async with running(net, node.sock, disable_tout=60) as client:
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c1"))
            disabled_at = trio.current_time()
            assert disabled_at - start == 5
            # still dead at the first probe: a ping with its 5 sends, then 60 s more
            await trio.sleep(60 + 5 + 0.5)
            pings = node.commands("ping")
            assert [g.at - disabled_at for g in pings] == [60, 61, 62, 63, 64]
            assert len({g.cookie for g in pings}) == 1
            assert not client.show()[0]["active"]
            # it comes back: the next probe (at 65 + 60) enables it
            node.mode = "answer"
            await trio.sleep(125.5 - (trio.current_time() - disabled_at))
            pings = node.commands("ping")
            assert pings[-1].at - disabled_at == 125
            assert client.show()[0]["active"] is True
            reply = await client.request(offer("c2"))
            assert reply["result"] == "ok"
            stats = client.statistics()
            assert stats["nodes_enabled"] == 1 and stats["pings"] == 2


async def test_periodic_ping_disables_a_node_before_a_call_needs_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=5) as net:
        a, b = FakeNg(net, A), FakeNg(net, B)
        async with running(net, f"{a.sock} {b.sock}", ping_interval=60, ping_mode=1) as client:
            await trio.sleep(1)
            assert [g.at for g in a.commands("ping")] == [0]  # ping_mode 1: at start
            a.mode = "silent"
            await trio.sleep(60 + 5)
            assert not client.show(a.sock)[0]["active"]
            # a new call goes to b at once although the hash would pick a
            start = trio.current_time()
            await client.request(offer(call_on(client, 0)))
            assert trio.current_time() == start
            assert b.commands("offer")


async def test_stickiness_survives_a_node_coming_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=6) as net:
        a, b = FakeNg(net, A, mode="silent"), FakeNg(net, B)
        async with running(net, f"{a.sock} {b.sock}") as client:
            cid = call_on(client, 0)  # the hash says a
            await client.request(offer(cid))  # a is dead: the call lands on b
            a.mode = "answer"
            await client.ping()  # a is back (rtpengine.ping)
            assert all(n["active"] for n in client.show())
            await client.request({"command": "answer", "call-id": cid, "from-tag": "ft",
                                  "to-tag": "tt", "sdp": SDP})
            assert [g.command["command"] for g in b.received
                    if g.command["command"] != "ping"] == ["offer", "answer"]
            assert not a.commands("answer")
            assert client.statistics()["sticky_calls"] == 1
            await client.request({"command": "delete", "call-id": cid, "from-tag": "ft"})
            assert b.commands("delete") and not a.commands("delete")
            assert client.statistics()["sticky_calls"] == 0
            # a new offer of the same call-id follows the hash again
            await client.request(offer(cid))
            assert a.commands("offer")


async def test_stickiness_expires_after_hash_table_tout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=7) as net:
        a, b = FakeNg(net, A, mode="silent"), FakeNg(net, B)
        async with running(net, f"{a.sock} {b.sock}", hash_table_tout=100,
                           disable_tout=1) as client:
            cid = call_on(client, 0)
            await client.request(offer(cid))
            a.mode = "answer"
            a.received.clear()
            await trio.sleep(50)  # the probe after 1 s enabled a again
            assert client.show(a.sock)[0]["active"]
            await client.request(offer(cid))
            assert len(b.commands("offer")) == 2  # still sticky
            await trio.sleep(51)
            assert client.statistics()["sticky_calls"] == 1
            await client.request(offer(cid))
            assert len(a.commands("offer")) == 1  # expired: the hash chooses again


async def test_call_on_a_dead_node_is_not_moved(autojump_clock: trio.testing.MockClock) -> None:
    """An answer for a call whose node died fails (no other node has its media state),
    as Kamailio's "node ... is known but it has already been queried"."""
    async with SimNetwork(seed=8) as net:
        a, b = FakeNg(net, A), FakeNg(net, B)
        async with running(net, f"{a.sock} {b.sock}") as client:
            cid = call_on(client, 0)
            await client.request(offer(cid))
            a.mode = "silent"
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request({"command": "answer", "call-id": cid, "from-tag": "ft",
                                      "to-tag": "tt", "sdp": SDP})
            assert trio.current_time() - start == 5
            assert not b.commands("answer")
            # and once the node is disabled, the next command for the call fails at once
            start = trio.current_time()
            with pytest.raises(NoNodeAvailable):
                await client.request({"command": "delete", "call-id": cid, "from-tag": "ft"})
            assert trio.current_time() == start


async def test_commands_in_flight_move_on_when_their_node_is_disabled(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=9) as net:
        a, b = FakeNg(net, A, mode="silent"), FakeNg(net, B)
        async with running(net, f"{a.sock} {b.sock}") as client:
            done: dict[str, float] = {}
            start = trio.current_time()

            async def one(cid: str, delay: float) -> None:
                await trio.sleep(delay)
                await client.request(offer(cid))
                done[cid] = trio.current_time() - start

            c1, c2 = call_on(client, 0), call_on(client, 0, prefix="second")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, c1, 0)
                nursery.start_soon(one, c2, 2)
            # c1 waited 5 s; c2, sent at 2, moved to b when a was disabled at 5, not at 7
            assert done == {c1: 5, c2: 5}
            assert client.statistics()["moved_on_node_down"] == 1


async def test_lost_reply_from_a_live_node_does_not_disable_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """A reply that never comes (e.g. too big for a datagram) while the node answers
    other commands: NgTimeout for that command, the node stays enabled."""
    async with SimNetwork(seed=10) as net:
        node = FakeNg(net, A)
        node.reply = lambda c: None if c.get("call-id") == "huge" else node.default(c)

        async with running(net, node.sock) as client:
            async def chatter() -> None:
                for i in range(10):
                    await client.request(offer(f"small-{i}"))
                    await trio.sleep(0.7)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(chatter)
                with pytest.raises(NgTimeout):
                    await client.request({"command": "query", "call-id": "huge"})
            assert client.show()[0]["active"] is True
            assert client.statistics()["timeouts_node_alive"] == 1


async def test_many_commands_share_one_socket(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=11) as net:
        node = FakeNg(net, A)
        net.set_link(A, CLIENT, LinkSpec(delay=(0.001, 0.3), reorder=0.3,
                                          reorder_delay=(0.0, 0.4)))
        opened: list[SimEndpoint] = []
        async with running(net, node.sock, opened=opened) as client:
            results: dict[str, str] = {}

            async def one(i: int) -> None:
                reply = await client.request(offer(f"c{i}"))
                results[f"c{i}"] = reply["x-call-id"]

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
            assert results == {f"c{i}": f"c{i}" for i in range(300)}
            assert len(opened) == 1  # one socket for everything
            stats = client.statistics()
            assert stats["datagrams_sent"] == 300 and stats["replies_ok"] == 300
            assert stats["pending"] == 0


async def test_a_slow_node_does_not_delay_a_fast_one(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=12) as net:
        slow, fast = FakeNg(net, A), FakeNg(net, B)
        net.set_link(A, CLIENT, LinkSpec(delay=(0.9, 0.9)))
        net.set_link(B, CLIENT, LinkSpec(delay=(0.01, 0.01)))
        async with running(net, f"1 == {slow.sock}", f"2 == {fast.sock}",
                           setid_default=1) as client:
            finished: dict[str, float] = {}
            start = trio.current_time()

            async def one(cid: str, set_id: int) -> None:
                await client.request(offer(cid), set_id=set_id)
                finished[cid] = trio.current_time() - start

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, f"slow-{i}", 1)
                    nursery.start_soon(one, f"fast-{i}", 2)
            assert {v for k, v in finished.items() if k.startswith("fast")} == {0.01}
            assert {v for k, v in finished.items() if k.startswith("slow")} == {0.9}


async def test_soft_errors_and_load_limit_try_the_next_node(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=13) as net:
        a, b = FakeNg(net, A), FakeNg(net, B)
        a.reply = lambda c: {"result": "error", "error-reason": "Ran out of ports"}
        async with running(net, f"{a.sock} {b.sock}") as client:
            reply = await client.request(offer(call_on(client, 0)))
            assert reply["result"] == "ok" and b.commands("offer")
            a.reply = lambda c: {"result": "load limit", "message": "busy"}
            reply = await client.request(offer(call_on(client, 0, prefix="other")))
            assert reply["result"] == "ok"
            assert client.statistics()["load_limit"] == 1
            # a hard error is the route's answer
            b.reply = lambda c: {"result": "error", "error-reason": "Unknown call-id"}
            with pytest.raises(NgReplyError) as info:
                await client.request({"command": "query", "call-id": call_on(client, 1)})
            assert info.value.reason == "Unknown call-id"
            # both out of ports: the last error is reported
            b.reply = a.reply = lambda c: {"result": "error", "error-reason": "Ran out of ports"}
            with pytest.raises(NgReplyError):
                await client.request(offer("new"))
            assert all(n["active"] for n in client.show())  # errors do not disable


async def test_bad_replies_fail_the_command_not_the_node(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=14) as net:
        node = FakeNg(net, A)
        async with running(net, node.sock) as client:
            node.reply = lambda c: {"no-result": "x"}
            with pytest.raises(BadNgReply):
                await client.request(offer("c1"))
            assert client.show()[0]["active"] is True
            assert client.statistics()["bad_replies"] == 1


async def test_stray_and_duplicate_replies_are_counted_and_dropped(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=15) as net:
        node = FakeNg(net, A)
        net.set_link(A, CLIENT, LinkSpec(duplicate=1.0, delay=(0.1, 0.1)))
        stranger = net.transport(Address("127.0.0.9", 2223), _ignore)
        async with running(net, node.sock) as client:
            await client.request(offer("c1"))
            await stranger.send(b"junk-without-space", CLIENT)
            await trio.sleep(1)
            stats = client.statistics()
            # the copy came late (its request was done) or right behind the original
            assert stats["replies_unknown_cookie"] + stats["replies_duplicate"] == 1
            assert stats["replies_no_cookie"] == 1


async def _ignore(*args: object) -> None:
    return None


async def test_loopback_guard_refuses_remote_nodes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=16) as net:
        remote = FakeNg(net, Address("192.0.2.1", 2223))
        guard = LoopbackGuard(True)
        async with running(net, remote.sock, guard=guard) as client:
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c1"))
            assert not remote.received
            assert client.show()[0]["refused_by_guard"] is True
            assert guard.refused == 1


async def test_sets_and_unknown_set(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=17) as net:
        a, b = FakeNg(net, A), FakeNg(net, B)
        async with running(net, a.sock, f"5 == {b.sock}") as client:
            await client.request(offer("c1"))
            await client.request(offer("c2"), set_id=5)
            assert a.commands("offer")[0].command["call-id"] == "c1"
            assert b.commands("offer")[0].command["call-id"] == "c2"
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c3"), set_id=9)


async def test_manual_disable_and_enable(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=18) as net:
        a = FakeNg(net, A)
        async with running(net, a.sock, disable_tout=1) as client:
            assert await client.enable(a.sock, False) == "disable"
            await trio.sleep(100)  # never re-probed
            assert not a.received
            with pytest.raises(NoNodeAvailable):
                await client.request(offer("c1"))
            assert await client.enable(a.sock, True) == "enable"
            await client.request(offer("c1"))
            a.mode = "silent"
            assert await client.enable(a.sock, True) == "fail"
            assert client.show()[0]["recheck_ticks"] == 1


async def test_pending_commands_end_when_the_client_stops(
        autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=19) as net:
        a = FakeNg(net, A, mode="silent")
        client = RtpengineClient(ClientConfig(sock=(a.sock,), ping_mode=0),
                                 open_endpoint=sim_endpoints(net))
        errors: list[BaseException] = []

        async def ask() -> None:
            try:
                await client.request(offer("c1"))
            except ClientClosed as exc:
                errors.append(exc)

        async with trio.open_nursery() as outer, trio.open_nursery() as inner:
            await inner.start(client.run)
            outer.start_soon(ask)
            await trio.sleep(2.5)
            inner.cancel_scope.cancel()
        assert len(errors) == 1 and not client.running
        with pytest.raises(ClientClosed):
            await client.request(offer("c2"))


async def test_too_many_pending(autojump_clock: trio.testing.MockClock) -> None:
    from trio_sip.rtpengine import TooManyPending

    async with SimNetwork(seed=20) as net:
        a = FakeNg(net, A, mode="silent")
        async with running(net, a.sock, max_pending=3) as client:
            failures: list[float] = []

            async def one(i: int) -> None:
                try:
                    await client.request(offer(f"c{i}"))
                except TooManyPending:
                    failures.append(trio.current_time())
                except NoNodeAvailable:
                    pass

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
            assert failures == [0, 0]
