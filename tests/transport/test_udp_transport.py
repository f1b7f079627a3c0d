"""UdpTransport on 127.0.0.1 / ::1, real sockets, bounded by fail_after."""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest
import trio
from transport_helpers import Inbox, sip_request, wait_until

from trio_sip.transport.base import Address, Transport, TransportCounters, TransportStats
from trio_sip.transport.guard import LoopbackGuard
from trio_sip.transport.udp import UdpTransport

LOCAL = Address("127.0.0.1", 0)


async def start_udp(
    nursery: trio.Nursery,
    inbox: Inbox,
    guard: LoopbackGuard | None = None,
    local: Address = LOCAL,
    **kwargs: int,
) -> UdpTransport:
    transport = UdpTransport(local, inbox.handler, guard or LoopbackGuard(True), **kwargs)
    started: UdpTransport = await nursery.start(transport.serve)
    assert started is transport
    return transport


def test_counters_mirror_stats() -> None:
    names = [f.name for f in dataclasses.fields(TransportStats)]
    assert [f.name for f in dataclasses.fields(TransportCounters)] == names
    stats = TransportCounters(received=3).snapshot(open_connections=2)
    assert (stats.received, stats.open_connections, stats.sent) == (3, 2, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.received = 1  # type: ignore[misc]


async def test_round_trip(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        a_in, b_in = Inbox(), Inbox()
        a = await start_udp(nursery, a_in)
        b = await start_udp(nursery, b_in)
        assert a.local.port != 0 and b.local.port != 0 and a.local != b.local
        protocol_view: Transport = a  # structural: mypy checks UdpTransport fits
        assert protocol_view.proto == "udp"
        assert (a.proto, a.reliable) == ("udp", False)

        request = sip_request()
        assert await a.send(request, b.local)
        got = await b_in.get()
        assert (got.data, got.source, got.transport, got.conn_id) == (request, a.local, b, None)

        assert await b.send(b"SIP/2.0 200 OK\r\n\r\n", got.source)
        reply = await a_in.get()
        assert (reply.data, reply.source) == (b"SIP/2.0 200 OK\r\n\r\n", b.local)

        assert a.statistics().sent == 1 and a.statistics().received == 1
        assert b.statistics() == TransportStats(received=1, sent=1)


async def test_round_trip_ipv6(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with trio.fail_after(5):
        a_in, b_in = Inbox(), Inbox()
        a = await start_udp(nursery, a_in, local=Address("::1", 0))
        b = await start_udp(nursery, b_in, local=Address("::1", 0))
        assert await a.send(b"hello", b.local)
        got = await b_in.get()
        assert (got.data, got.source) == (b"hello", a.local)


async def test_queue_overflow_is_dropped_and_counted(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        entered = trio.Event()
        release = trio.Event()
        handled: list[bytes] = []

        async def blocked_handler(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            entered.set()
            await release.wait()
            handled.append(data)

        b = UdpTransport(LOCAL, blocked_handler, LoopbackGuard(True), queue_size=4)
        await nursery.start(b.serve)
        a = await start_udp(nursery, Inbox())

        assert await a.send(b"m0", b.local)
        await entered.wait()  # the consumer holds m0; the queue is empty
        for i in range(1, 20):
            assert await a.send(b"m%d" % i, b.local)
        await wait_until(lambda: b.statistics().received == 20)
        assert b.statistics().dropped_queue_full == 20 - 1 - 4

        release.set()
        await wait_until(lambda: len(handled) == 5)
        assert handled == [b"m0", b"m1", b"m2", b"m3", b"m4"]


async def test_too_large_datagram_dropped(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_udp(nursery, b_in, max_message_size=100)
        a = await start_udp(nursery, Inbox())
        assert await a.send(b"x" * 101, b.local)
        assert await a.send(b"y" * 100, b.local)
        got = await b_in.get()
        assert got.data == b"y" * 100
        stats = b.statistics()
        assert (stats.dropped_too_large, stats.received) == (1, 1)


async def test_crlf_keepalive_datagrams_are_not_messages(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_udp(nursery, b_in)
        a = await start_udp(nursery, Inbox())
        assert await a.send(b"\r\n\r\n", b.local)
        assert await a.send(b"\r\n", b.local)
        assert await a.send(b"real", b.local)
        assert (await b_in.get()).data == b"real"
        assert b.statistics().keepalives == 2
        assert b.statistics().received == 1


async def test_guard_refuses_and_counts_without_sending(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        guard = LoopbackGuard(True)
        a = await start_udp(nursery, Inbox(), guard)
        with caplog.at_level(logging.WARNING, logger="trio_sip.transport"):
            assert not await a.send(b"x", Address("192.0.2.1", 5060))
            assert not await a.send(b"x", Address("192.0.2.1", 5060))
        stats = a.statistics()
        assert (stats.refused_by_guard, stats.sent, stats.send_errors) == (2, 0, 0)
        assert guard.refused == 2
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_handler_exception_does_not_kill_the_transport(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        b_in = Inbox()

        async def flaky(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            if data == b"boom":
                raise RuntimeError("handler bug")
            await b_in.handler(data, source, transport, conn_id)

        b = UdpTransport(LOCAL, flaky, LoopbackGuard(True))
        await nursery.start(b.serve)
        a = await start_udp(nursery, Inbox())
        with caplog.at_level(logging.ERROR, logger="trio_sip.transport"):
            assert await a.send(b"boom", b.local)
            assert await a.send(b"after", b.local)
            assert (await b_in.get()).data == b"after"
        assert b.statistics().handler_errors == 1
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_send_errors_return_false(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        unstarted = UdpTransport(LOCAL, Inbox().handler, LoopbackGuard(True))
        assert not await unstarted.send(b"x", Address("127.0.0.1", 5060))
        a = await start_udp(nursery, Inbox(), LoopbackGuard(False))
        assert not await a.send(b"x", Address("localhost", 5060))  # names are not resolved
        assert not await a.send(b"x", Address("::1", 5060))  # wrong family: OSError
        assert not await a.send(b"x" * 70000, Address("127.0.0.1", 5060))  # EMSGSIZE
        assert a.statistics().send_errors == 3
        assert unstarted.statistics().send_errors == 1


async def test_socket_closed_when_serve_ends() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await start_udp(nursery, Inbox())
            port = t.local.port
            nursery.cancel_scope.cancel()
        # The port is free again: a second bind would fail if the socket leaked.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
        assert not await t.send(b"x", Address("127.0.0.1", port))


def test_bad_local_address_is_an_early_error() -> None:
    with pytest.raises(ValueError):
        UdpTransport(Address("not-an-ip", 0), Inbox().handler, LoopbackGuard(True))


async def test_handler_that_waits_hands_the_socket_over_and_back(nursery: trio.Nursery) -> None:
    # The handler runs in the receiving task until it waits; then the standby task
    # reads (and drops, counted) while it waits. Two such episodes in a row check
    # that the roles swap back: the datagrams after each are all handled, in order.
    with trio.fail_after(5):
        gates: dict[bytes, trio.Event] = {b"w1": trio.Event(), b"w2": trio.Event()}
        entered: dict[bytes, trio.Event] = {b"w1": trio.Event(), b"w2": trio.Event()}
        handled: list[bytes] = []

        async def handler(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            if data in gates:
                entered[data].set()
                await gates[data].wait()
            handled.append(data)

        b = UdpTransport(LOCAL, handler, LoopbackGuard(True), queue_size=2)
        await nursery.start(b.serve)
        a = await start_udp(nursery, Inbox())
        sent = 0
        for episode in (b"w1", b"w2"):
            assert await a.send(episode, b.local)
            await entered[episode].wait()
            for i in range(5):
                assert await a.send(episode + b"-%d" % i, b.local)
            sent += 6
            await wait_until(lambda n=sent: b.statistics().received == n)
            gates[episode].set()
            await wait_until(lambda e=episode: handled[-1:] == [e + b"-1"])
            # not waiting any more: handled in place, one at a time, in order
            for i in range(3):
                assert await a.send(b"x%d" % i, b.local)
            sent += 3
            await wait_until(lambda: handled[-1:] == [b"x2"])
        assert handled == [b"w1", b"w1-0", b"w1-1", b"x0", b"x1", b"x2",
                           b"w2", b"w2-0", b"w2-1", b"x0", b"x1", b"x2"]
        stats = b.statistics()
        assert (stats.received, stats.dropped_queue_full, stats.handler_errors) == (18, 6, 0)


async def test_handler_error_after_a_wait_is_counted(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        gate = trio.Event()
        entered = trio.Event()
        b_in = Inbox()

        async def handler(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            if data == b"wait":
                entered.set()
                await gate.wait()
                raise RuntimeError("failed after waiting")
            if data == b"boom":
                raise RuntimeError("failed in the queue")
            await b_in.handler(data, source, transport, conn_id)

        b = UdpTransport(LOCAL, handler, LoopbackGuard(True))
        await nursery.start(b.serve)
        a = await start_udp(nursery, Inbox())
        assert await a.send(b"wait", b.local)
        await entered.wait()
        assert await a.send(b"boom", b.local)
        assert await a.send(b"after", b.local)
        await wait_until(lambda: b.statistics().received == 3)
        gate.set()
        assert (await b_in.get()).data == b"after"
        assert b.statistics().handler_errors == 2


async def test_shutdown_while_a_handler_waits_closes_the_socket() -> None:
    with trio.fail_after(5):
        entered = trio.Event()
        cancelled: list[bool] = []

        async def stuck(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            entered.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(True)
                raise

        async with trio.open_nursery() as nursery:
            b = UdpTransport(LOCAL, stuck, LoopbackGuard(True))
            await nursery.start(b.serve)
            a = await start_udp(nursery, Inbox())
            assert await a.send(b"x", b.local)
            await entered.wait()
            nursery.cancel_scope.cancel()
        assert cancelled == [True]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", b.local.port))  # free again: the socket was closed


async def test_send_in_a_cancelled_scope_raises_and_sends_nothing(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_udp(nursery, b_in)
        a = await start_udp(nursery, Inbox())
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send(b"never", b.local)
            raise AssertionError("send did not raise Cancelled")  # pragma: no cover
        assert scope.cancelled_caught
        assert await a.send(b"sent", b.local)
        assert (await b_in.get()).data == b"sent"
        assert a.statistics().sent == 1


async def test_send_nowait_sends_from_synchronous_code(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_udp(nursery, b_in)
        a = await start_udp(nursery, Inbox())
        assert a.send_nowait(b"now", b.local)
        got = await b_in.get()
        assert (got.data, got.source) == (b"now", a.local)
        assert not a.send_nowait(b"x", Address("192.0.2.1", 5060))  # the guard refuses
        assert not a.send_nowait(b"x", Address("::1", b.local.port))  # wrong family: OSError
        stats = a.statistics()
        assert (stats.sent, stats.refused_by_guard, stats.send_errors) == (1, 1, 1)
        unstarted = UdpTransport(LOCAL, Inbox().handler, LoopbackGuard(True))
        assert not unstarted.send_nowait(b"x", b.local)
        assert unstarted.statistics().send_errors == 1
