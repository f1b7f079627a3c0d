"""SimNetwork in virtual time (MockClock with autojump): exact times, seeded chaos."""

from __future__ import annotations

import logging
import math
import random

import pytest
import trio
import trio.testing
from transport_helpers import Inbox

from trio_sip.transport.base import Address, Transport
from trio_sip.transport.guard import LoopbackGuard
from trio_sip.transport.sim import LinkSpec, SimNetwork, SimStats, SimTransport, TraceEntry

A = Address("10.0.0.1", 5060)
B = Address("10.0.0.2", 5060)
C = Address("10.0.0.3", 5060)


async def test_exact_delivery_time_with_fixed_delay(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with SimNetwork(seed=1, default=LinkSpec(delay=(0.25, 0.25))) as net:
            a_in, b_in = Inbox(), Inbox()
            a = net.transport(A, a_in.handler)
            b = net.transport(B, b_in.handler)
            protocol_view: Transport = a
            assert (protocol_view.proto, a.reliable) == ("udp", False)

            await trio.sleep(3)
            sent_at = trio.current_time()
            assert await a.send(b"ping", B)
            got = await b_in.get()
            assert got.time == sent_at + 0.25
            assert (got.data, got.source, got.transport, got.conn_id) == (b"ping", A, b, None)

            assert await b.send(b"pong", got.source)
            back = await a_in.get()
            assert back.time == got.time + 0.25

            assert list(net.trace) == [
                TraceEntry(sent_at + 0.25, sent_at, A, B, "udp", b"ping", "delivered"),
                TraceEntry(got.time + 0.25, got.time, B, A, "udp", b"pong", "delivered"),
            ]
            assert net.statistics() == SimStats(sent=2, delivered=2)
            assert a.statistics().sent == 1 and a.statistics().received == 1


async def test_per_direction_link_and_callable_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with SimNetwork() as net:
            a_in, b_in = Inbox(), Inbox()
            a = net.transport(A, a_in.handler)
            b = net.transport(B, b_in.handler)
            net.set_link(A, B, LinkSpec(delay=lambda rng: 1.5))
            net.set_link(B, A, LinkSpec(delay=(0.5, 0.5)))
            t0 = trio.current_time()
            await a.send(b"x", B)
            await b.send(b"y", A)
            assert (await a_in.get()).time == t0 + 0.5
            assert (await b_in.get()).time == t0 + 1.5
            assert net.link(A, C) == LinkSpec()


async def test_zero_delay_arrives_at_the_same_virtual_instant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with SimNetwork() as net:
            b_in = Inbox()
            a = net.transport(A, Inbox().handler)
            net.transport(B, b_in.handler)
            t0 = trio.current_time()
            for i in range(5):
                await a.send(b"%d" % i, B)
            received = [await b_in.get() for _ in range(5)]
            assert [r.data for r in received] == [b"0", b"1", b"2", b"3", b"4"]
            assert {r.time for r in received} == {t0}


async def test_seeded_loss_rate(autojump_clock: trio.testing.MockClock) -> None:
    n, p = 2000, 0.3
    with trio.fail_after(600):
        async with SimNetwork(seed=42, default=LinkSpec(loss=p, delay=(0.01, 0.02))) as net:
            b_in = Inbox()
            a = net.transport(A, Inbox().handler)
            b = net.transport(B, b_in.handler)
            for i in range(n):
                assert await a.send(b"%d" % i, B)  # a lost datagram still leaves "fine"
            await trio.sleep(1)
            stats = net.statistics()
            assert stats.sent == n and stats.lost + stats.delivered == n
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(stats.lost - n * p) < 5 * sigma
            assert len(b_in.received) == stats.delivered == b.statistics().received
            assert {e.reason for e in net.entries(fate="lost")} == {"loss"}


async def test_duplication(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with SimNetwork(seed=3, default=LinkSpec(duplicate=1.0, delay=(0.1, 0.3))) as net:
            b_in = Inbox()
            a = net.transport(A, Inbox().handler)
            net.transport(B, b_in.handler)
            for i in range(20):
                await a.send(b"%d" % i, B)
            await trio.sleep(1)
            assert sorted(r.data for r in b_in.received) == sorted(
                [b"%d" % i for i in range(20)] * 2
            )
            assert net.statistics() == SimStats(sent=20, delivered=20, duplicated=20)
            for e in net.trace:
                assert e.sent_at + 0.1 <= e.time <= e.sent_at + 0.3

            net.set_default(LinkSpec(duplicate=0.25))
            for _ in range(1000):
                await a.send(b"x", B)
            await trio.sleep(1)
            dups = net.statistics().duplicated - 20
            assert abs(dups - 250) < 5 * math.sqrt(1000 * 0.25 * 0.75)


async def test_reordering(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with SimNetwork(seed=5) as net:
            b_in = Inbox()
            a = net.transport(A, Inbox().handler)
            net.transport(B, b_in.handler)
            payloads = [b"%03d" % i for i in range(100)]

            net.set_default(LinkSpec(delay=(0.1, 0.1)))
            for data in payloads:
                await a.send(data, B)
                await trio.sleep(0.01)
            await trio.sleep(1)
            assert [r.data for r in b_in.received] == payloads  # no reorder: FIFO

            b_in.received.clear()
            net.set_default(LinkSpec(delay=(0.1, 0.1), reorder=0.3, reorder_delay=(0.05, 0.2)))
            for data in payloads:
                await a.send(data, B)
                await trio.sleep(0.01)
            await trio.sleep(1)
            got = [r.data for r in b_in.received]
            assert sorted(got) == payloads and got != payloads
            late = [e for e in net.trace if e.time - e.sent_at > 0.1 + 1e-9][-100:]
            assert 10 < len(late) < 50
            for e in late:
                assert 0.15 - 1e-9 <= e.time - e.sent_at <= 0.3 + 1e-9


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with SimNetwork(default=LinkSpec(delay=(0.1, 0.1))) as net:
            a_in, b_in, c_in = Inbox(), Inbox(), Inbox()
            a = net.transport(A, a_in.handler)
            b = net.transport(B, b_in.handler)
            net.transport(C, c_in.handler)
            net.partition({A}, {B})
            assert net.partitioned(B, A)
            await a.send(b"1", B)
            await b.send(b"2", A)
            await a.send(b"3", C)  # C is on neither side
            assert (await c_in.get()).data == b"3"
            await trio.sleep(1)
            assert a_in.received == [] and b_in.received == []
            assert [(e.src, e.reason) for e in net.entries(fate="lost")] == [
                (A, "partition"),
                (B, "partition"),
            ]
            net.heal()
            await a.send(b"4", B)
            assert (await b_in.get()).data == b"4"


async def test_in_flight_message_survives_a_later_partition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with SimNetwork(default=LinkSpec(delay=(1.0, 1.0))) as net:
            b_in = Inbox()
            a = net.transport(A, Inbox().handler)
            net.transport(B, b_in.handler)
            await a.send(b"in flight", B)
            net.partition([A], [B])
            assert (await b_in.get()).data == b"in flight"


async def test_no_listener_is_lost(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with SimNetwork(default=LinkSpec(delay=(0.2, 0.2))) as net:
            a = net.transport(A, Inbox().handler)
            t0 = trio.current_time()
            assert await a.send(b"x", C)
            await trio.sleep(1)
            [entry] = net.trace
            assert (entry.fate, entry.reason, entry.time) == ("lost", "no-listener", t0 + 0.2)
            # A transport that goes down stops receiving.
            b_in = Inbox()
            b = net.transport(B, b_in.handler)
            b.close()
            await a.send(b"y", B)
            await trio.sleep(1)
            assert b_in.received == []
            assert net.trace[-1].reason == "no-listener"
            assert not await b.send(b"z", A)


def trace_of(net: SimNetwork, t0: float) -> list[tuple[object, ...]]:
    return [
        (round(e.time - t0, 9), round(e.sent_at - t0, 9), e.src, e.dst, e.data, e.fate, e.reason)
        for e in net.trace
    ]


async def chaotic_run(seed: int) -> list[tuple[object, ...]]:
    spec = LinkSpec(loss=0.2, duplicate=0.1, delay=(0.01, 0.2), reorder=0.2)
    async with SimNetwork(seed=seed, default=spec) as net:
        t0 = trio.current_time()

        async def echo(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            await transport.send(b"re:" + data, source)

        a = net.transport(A, Inbox().handler)
        net.transport(B, echo)
        for i in range(200):
            await a.send(b"%d" % i, B)
            await trio.sleep(0.005)
        await trio.sleep(5)
        return trace_of(net, t0)


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        first = await chaotic_run(7)
        again = await chaotic_run(7)
        other = await chaotic_run(8)
    assert len(first) > 300
    assert first == again
    assert first != other
    fates = {entry[5] for entry in first}
    assert fates == {"delivered", "duplicated", "lost"}


async def test_handler_exception_does_not_stop_delivery(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        async with SimNetwork() as net:
            b_in = Inbox()

            async def flaky(
                data: bytes, source: Address, transport: Transport, conn_id: int | None
            ) -> None:
                if data == b"boom":
                    raise ValueError("bug")
                await b_in.handler(data, source, transport, conn_id)

            a = net.transport(A, Inbox().handler)
            b = net.transport(B, flaky)
            with caplog.at_level(logging.ERROR, logger="trio_sip.transport"):
                await a.send(b"boom", B)
                await a.send(b"fine", B)
                assert (await b_in.get()).data == b"fine"
            assert b.statistics().handler_errors == 1
            assert any(r.exc_info for r in caplog.records)


async def test_queue_full_is_lost_and_counted(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with SimNetwork() as net:
            release = trio.Event()

            async def slow(
                data: bytes, source: Address, transport: Transport, conn_id: int | None
            ) -> None:
                await release.wait()

            a = net.transport(A, Inbox().handler)
            b = net.transport(B, slow, queue_size=2)
            await a.send(b"0", B)
            await trio.sleep(0.1)  # the consumer takes "0" and blocks
            for i in range(1, 6):
                await a.send(b"%d" % i, B)
            await trio.sleep(0.1)
            assert b.statistics().dropped_queue_full == 3
            assert [e.data for e in net.entries(fate="lost")] == [b"3", b"4", b"5"]
            release.set()


async def test_guard_is_applied_only_when_given(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with SimNetwork() as net:
            guard = LoopbackGuard(True)
            guarded = net.transport(Address("127.0.0.1", 5060), Inbox().handler, guard=guard)
            assert not await guarded.send(b"x", B)
            assert guarded.statistics().refused_by_guard == 1 and guard.refused == 1
            assert net.statistics().sent == 0
            free = net.transport(A, Inbox().handler)
            assert await free.send(b"x", B)


async def test_tcp_is_reliable_ordered_with_conn_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chaos = LinkSpec(loss=0.5, duplicate=0.5, reorder=0.5, delay=(0.01, 0.5))
    with trio.fail_after(60):
        async with SimNetwork(seed=9, default=chaos) as net:
            a_in, b_in = Inbox(), Inbox()
            a = net.transport(A, a_in.handler, proto="tcp")
            b = net.transport(B, b_in.handler, proto="tcp")
            net.transport(B, Inbox().handler)  # a udp transport at the same address is separate
            assert a.reliable and a.proto == "tcp"
            payloads = [b"%d" % i for i in range(50)]
            for data in payloads:
                assert await a.send(data, B)
            received = [await b_in.get() for _ in payloads]
            assert [r.data for r in received] == payloads
            times = [r.time for r in received]
            assert times == sorted(times)
            conn_ids = {r.conn_id for r in received}
            assert len(conn_ids) == 1 and None not in conn_ids
            [conn_id] = conn_ids
            assert (a.statistics().connected_out, b.statistics().accepted) == (1, 1)
            assert a.statistics().open_connections == 1

            assert await b.send(b"reply", Address("192.0.2.99", 1), conn_id=conn_id)
            reply = await a_in.get()
            assert (reply.data, reply.source, reply.conn_id) == (b"reply", B, conn_id)

            net.partition([A], [B])
            assert not await a.send(b"cut", B)
            assert a.statistics().open_connections == 0
            net.heal()
            assert await a.send(b"new", B)
            assert (await b_in.get()).conn_id != conn_id
            assert not await a.send(b"nobody", C)
            assert a.statistics().connect_errors == 1


async def test_run_form_and_errors(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        net = SimNetwork()
        with pytest.raises(RuntimeError):
            net.transport(A, Inbox().handler)
        async with trio.open_nursery() as nursery:
            started: SimNetwork = await nursery.start(net.run)
            t = net.transport(A, Inbox().handler)
            assert isinstance(t, SimTransport)
            with pytest.raises(ValueError):
                net.transport(A, Inbox().handler)
            with pytest.raises(ValueError):
                net.transport(B, Inbox().handler, proto="sctp")  # type: ignore[arg-type]
            assert started is net
            nursery.cancel_scope.cancel()
        assert t.closed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": -0.1},
        {"loss": 1.5},
        {"duplicate": 2.0},
        {"reorder": float("nan")},
        {"delay": (0.2, 0.1)},
        {"delay": (-1.0, 0.0)},
        {"reorder_delay": (1.0, 0.5)},
    ],
)
def test_link_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LinkSpec(**kwargs)  # type: ignore[arg-type]


def test_delay_function_must_return_non_negative() -> None:
    with pytest.raises(ValueError):
        LinkSpec(delay=lambda rng: -1.0).sample_delay(random.Random(0))
