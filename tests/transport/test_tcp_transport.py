"""TcpTransport on 127.0.0.1, real sockets, bounded by fail_after."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
import trio
from transport_helpers import Inbox, sip_request, wait_until

from trio_sip.transport.base import Address, Transport
from trio_sip.transport.guard import LoopbackGuard
from trio_sip.transport.tcp import TcpTransport

LOCAL = Address("127.0.0.1", 0)
REPLY = b"SIP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def start_tcp(
    nursery: trio.Nursery,
    inbox: Inbox,
    guard: LoopbackGuard | None = None,
    local: Address = LOCAL,
    **kwargs: float,
) -> TcpTransport:
    transport = TcpTransport(local, inbox.handler, guard or LoopbackGuard(True), **kwargs)  # type: ignore[arg-type]
    started: TcpTransport = await nursery.start(transport.serve)
    assert started is transport
    return transport


_open_clients: list[trio.SocketStream] = []


async def raw_client(t: TcpTransport) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(t.local.host, t.local.port)
    _open_clients.append(stream)
    return stream


@pytest.fixture(autouse=True)
async def close_raw_clients() -> AsyncIterator[None]:
    """Close every raw client a test opened (the sockets would leak a ResourceWarning)."""
    yield
    while _open_clients:
        await trio.aclose_forcefully(_open_clients.pop())


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_round_trip_reuses_the_incoming_connection(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        a_in, b_in = Inbox(), Inbox()
        a = await start_tcp(nursery, a_in)
        b = await start_tcp(nursery, b_in)
        protocol_view: Transport = a
        assert (protocol_view.proto, a.reliable) == ("tcp", True)

        request = sip_request()
        assert await a.send(request, b.local)
        got = await b_in.get()
        assert got.data == request and got.transport is b and got.conn_id is not None
        assert got.source.host == "127.0.0.1" and got.source.port != a.local.port  # ephemeral

        # RFC 3261 §18.2.2: the response goes back on the request's connection.
        assert await b.send(REPLY, got.source, conn_id=got.conn_id)
        reply = await a_in.get()
        assert (reply.data, reply.source) == (REPLY, b.local)
        assert reply.conn_id == a.connection_to(b.local)

        # Without conn_id, the open connection to the address is reused too.
        assert await b.send(REPLY, got.source)
        assert (await a_in.get()).data == REPLY
        # And a second request from a reuses a's outgoing connection.
        assert await a.send(request, b.local)
        assert (await b_in.get()).conn_id == got.conn_id

        sa, sb = a.statistics(), b.statistics()
        assert (sa.connected_out, sa.accepted, sa.open_connections) == (1, 0, 1)
        assert (sb.connected_out, sb.accepted, sb.open_connections) == (0, 1, 1)
        assert (sa.sent, sa.received, sb.sent, sb.received) == (2, 2, 2, 2)


async def test_concurrent_sends_to_a_new_destination_open_one_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        a = await start_tcp(nursery, Inbox())
        b = await start_tcp(nursery, b_in)
        results: list[bool] = []

        async def send(i: int) -> None:
            results.append(await a.send(sip_request(branch=f"z9hG4bK{i}"), b.local))

        async with trio.open_nursery() as senders:
            for i in range(10):
                senders.start_soon(send, i)
        assert results == [True] * 10
        for _ in range(10):
            await b_in.get()
        assert a.statistics().connected_out == 1
        assert b.statistics().accepted == 1
        assert len({r.conn_id for r in b_in.received}) == 1


async def test_keepalive_ping_is_answered_with_pong(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_tcp(nursery, b_in)
        client = await raw_client(b)
        await client.send_all(b"\r\n\r\n")
        assert await client.receive_some(100) == b"\r\n"
        await client.send_all(sip_request() + b"\r\n\r\n")
        assert (await b_in.get()).data == sip_request()
        assert await client.receive_some(100) == b"\r\n"
        stats = b.statistics()
        assert (stats.keepalives, stats.received, stats.sent) == (2, 1, 0)
        await client.aclose()


async def test_message_split_across_many_writes(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_tcp(nursery, b_in)
        client = await raw_client(b)
        stream = sip_request(b"v=0\r\n") * 2
        for i in range(len(stream)):
            await client.send_all(stream[i : i + 1])
        assert (await b_in.get()).data == sip_request(b"v=0\r\n")
        assert (await b_in.get()).data == sip_request(b"v=0\r\n")
        await client.aclose()


@pytest.mark.parametrize(
    ("payload", "too_large"),
    [
        (b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", 0),  # no Content-Length
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", 0),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 100000\r\n\r\n", 1),
    ],
)
async def test_framing_error_closes_the_connection(
    nursery: trio.Nursery, payload: bytes, too_large: int
) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_tcp(nursery, b_in)
        client = await raw_client(b)
        await client.send_all(sip_request() + payload + sip_request())
        assert await read_until_eof(client) == b""
        assert [r.data for r in b_in.received] == [sip_request()]  # nothing after the error
        stats = b.statistics()
        assert (stats.framing_errors, stats.dropped_too_large) == (1, too_large)
        await wait_until(lambda: b.statistics().open_connections == 0)


async def test_handler_exception_keeps_the_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        b_in = Inbox()

        async def flaky(
            data: bytes, source: Address, transport: Transport, conn_id: int | None
        ) -> None:
            await b_in.handler(data, source, transport, conn_id)
            if len(b_in.received) == 1:
                raise RuntimeError("handler bug")

        b = TcpTransport(LOCAL, flaky, LoopbackGuard(True))
        await nursery.start(b.serve)
        client = await raw_client(b)
        with caplog.at_level(logging.ERROR, logger="trio_sip.transport"):
            await client.send_all(sip_request(branch="z9hG4bK1"))
            first = await b_in.get()
            await client.send_all(sip_request(branch="z9hG4bK2"))
            second = await b_in.get()
        assert first.conn_id == second.conn_id
        assert b.statistics().handler_errors == 1
        assert b.statistics().open_connections == 1
        assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)
        # The transport still answers on that connection.
        assert await b.send(REPLY, second.source, conn_id=second.conn_id)
        assert await client.receive_some(1000) == REPLY
        await client.aclose()


async def test_idle_connection_is_closed(nursery: trio.Nursery) -> None:
    idle = 0.6
    with trio.fail_after(10):
        b = await start_tcp(nursery, Inbox(), idle_timeout=idle)
        client = await raw_client(b)
        # Traffic (pings here) keeps it open past the idle timeout...
        start = trio.current_time()
        for _ in range(8):
            await trio.sleep(0.1)
            await client.send_all(b"\r\n\r\n")
            assert await client.receive_some(10) == b"\r\n"
        assert trio.current_time() - start > idle
        assert b.statistics().open_connections == 1
        # ...and silence closes it.
        quiet_since = trio.current_time()
        assert await read_until_eof(client) == b""
        waited = trio.current_time() - quiet_since
        assert idle * 0.9 <= waited < idle + 2
        await wait_until(lambda: b.statistics().open_connections == 0)
        assert b.statistics().idle_closed == 1


async def test_max_connections(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b = await start_tcp(nursery, Inbox(), max_connections=1)
        first = await raw_client(b)
        await wait_until(lambda: b.statistics().open_connections == 1)
        second = await raw_client(b)
        assert await read_until_eof(second) == b""
        assert b.statistics().refused_connections == 1
        # The first one still works.
        await first.send_all(b"\r\n\r\n")
        assert await first.receive_some(10) == b"\r\n"
        # And an outgoing connection is refused as well.
        other = await start_tcp(nursery, Inbox())
        assert not await b.send(sip_request(), other.local)
        assert b.statistics().refused_connections == 2
        assert other.statistics().accepted == 0
        await first.aclose()


async def test_guard_refuses_without_connecting(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        guard = LoopbackGuard(True)
        a = await start_tcp(nursery, Inbox(), guard)
        with caplog.at_level(logging.WARNING, logger="trio_sip.transport"):
            assert not await a.send(sip_request(), Address("192.0.2.1", 5060))
        stats = a.statistics()
        assert (stats.refused_by_guard, stats.connected_out, stats.connect_errors) == (1, 0, 0)
        assert stats.open_connections == 0
        assert guard.refused == 1
        assert any("192.0.2.1" in r.getMessage() for r in caplog.records)


async def test_connect_failure_returns_false(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        a = await start_tcp(nursery, Inbox(), LoopbackGuard(False))
        assert not await a.send(sip_request(), Address("127.0.0.1", free_port()))
        assert a.statistics().connect_errors == 1
        assert a.statistics().open_connections == 0
        assert not await a.send(sip_request(), Address("localhost", 5060))
        assert a.statistics().send_errors == 1


async def test_stale_conn_id_falls_back_to_the_address(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        a_in = Inbox()
        a = await start_tcp(nursery, a_in)
        b = await start_tcp(nursery, Inbox())
        assert await b.send(sip_request(), a.local, conn_id=12345)
        got = await a_in.get()
        assert got.data == sip_request()
        assert b.statistics().connected_out == 1


async def test_peer_close_unregisters_the_connection(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        b_in = Inbox()
        b = await start_tcp(nursery, b_in)
        client = await raw_client(b)
        await client.send_all(sip_request())
        got = await b_in.get()
        await client.aclose()
        await wait_until(lambda: b.statistics().open_connections == 0)
        assert b.connection_to(got.source) is None


async def test_shutdown_closes_every_connection() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            b = await start_tcp(nursery, Inbox())
            clients = [await raw_client(b) for _ in range(3)]
            await wait_until(lambda: b.statistics().open_connections == 3)
            nursery.cancel_scope.cancel()
        for client in clients:
            assert await read_until_eof(client) == b""
            await client.aclose()
        assert b.statistics().open_connections == 0
        with socket.socket() as s:  # the listening port was released
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", b.local.port))


async def test_ipv6_round_trip_and_address_spelling(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with trio.fail_after(5):
        a_in, b_in = Inbox(), Inbox()
        a = await start_tcp(nursery, a_in, local=Address("::1", 0))
        b = await start_tcp(nursery, b_in, local=Address("::1", 0))
        assert await a.send(sip_request(), b.local)
        got = await b_in.get()
        assert got.source.host == "::1"
        # Another spelling of the same address reuses the same connection.
        assert await b.send(REPLY, Address("0:0:0:0:0:0:0:1", got.source.port))
        assert (await a_in.get()).data == REPLY
        assert b.statistics().connected_out == 0
