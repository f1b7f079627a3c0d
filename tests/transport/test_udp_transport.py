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
