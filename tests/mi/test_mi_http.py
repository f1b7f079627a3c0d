"""The JSON-RPC HTTP server on real loopback sockets, with real HTTP clients
(http.client in a worker thread, raw Trio sockets for what http.client cannot send)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
import trio
from mi_helpers import http_request, raw_exchange, real_server, rpc, status_of

from trio_sip.mi.http import MAX_HEAD, MiHttpServer, parse_head

TOKEN = "s3cret-token-0123456789"


def req(method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    if rid is not None:
        out["id"] = rid
    return out


async def test_good_requests_batches_and_notifications() -> None:
    async with real_server() as server:
        addr = server.mi_address
        assert addr is not None and addr.host == "127.0.0.1" and addr.port > 0
        r = await rpc(addr, req("tm.stats"))
        assert r.status == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["id"] == 1 and body["result"]["current"] == 0
        r = await rpc(addr, req("nope", rid="a"))
        assert r.status == 200
        assert r.json() == {"jsonrpc": "2.0", "id": "a",
                            "error": {"code": -32601, "message": "Method not found: nope"}}
        r = await rpc(addr, [req("core.version"), req("core.uptime", rid=None),
                             req("stats.get_statistics", ["core:"], rid=2), {"x": 1}])
        items = r.json()
        assert [i["id"] for i in items] == [1, 2, None]
        assert items[2]["error"]["code"] == -32600
        # notifications only: 204, no body
        r = await rpc(addr, [req("core.uptime", rid=None), req("nope", rid=None)])
        assert (r.status, r.body) == (204, b"")
        r = await rpc(addr, b"{not json")
        assert r.json()["error"]["code"] == -32700
        r = await rpc(addr, "é".encode("latin-1"))  # not UTF-8
        assert r.json()["error"]["code"] == -32700
        # Kamailio's jsonrpcs path works too
        r = await http_request(addr, path="/RPC", body=json.dumps(req("core.version")).encode())
        assert r.json()["result"].startswith("trio-sip")


async def test_get_head_other_methods_and_paths() -> None:
    async with real_server() as server:
        addr = server.mi_address
        assert addr is not None
        r = await http_request(addr, "GET", "/", headers={})
        assert r.status == 200 and b"JSON-RPC" in r.body
        assert r.headers["content-type"].startswith("text/plain")
        r = await http_request(addr, "HEAD", "/?x=1", headers={})
        assert r.status == 200 and r.body == b"" and int(r.headers["content-length"]) > 0
        r = await http_request(addr, "PUT", "/", body=b"{}")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD, POST"
        r = await http_request(addr, "OPTIONS", "/", headers={"Origin": "http://evil.example"})
        assert r.status == 405  # no CORS preflight passes
        r = await http_request(addr, "POST", "/other", body=b"{}")
        assert r.status == 404
        r = await http_request(addr, "POST", "/", body=b"{}",
                               headers={"Content-Type": "text/plain"})
        assert r.status == 415
        r = await http_request(addr, "POST", "/", body=b"{}",
                               headers={"Content-Type": "application/json; charset=latin-1"})
        assert r.status == 415
        r = await http_request(addr, "POST", "/", body=json.dumps(req("core.version")).encode(),
                               headers={"Content-Type": "Application/JSON; charset=UTF-8"})
        assert r.status == 200


async def test_keep_alive_and_expect_100_continue() -> None:
    async with real_server() as server:
        addr = server.mi_address
        assert addr is not None

        def two_on_one_connection() -> list[Any]:
            conn = http.client.HTTPConnection(addr.host, addr.port, timeout=10)
            out = []
            try:
                for i in (1, 2):
                    conn.request("POST", "/", body=json.dumps(req("core.version", rid=i)),
                                 headers={"Content-Type": "application/json"})
                    out.append(json.loads(conn.getresponse().read())["id"])
            finally:
                conn.close()
            return out

        assert await trio.to_thread.run_sync(two_on_one_connection) == [1, 2]
        assert server.mi is not None
        assert server.mi.stats["http_connections"] == 1
        body = json.dumps(req("core.version")).encode()
        raw = await raw_exchange(addr, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                                 b"Connection: close\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        # HTTP/1.0 closes after the reply unless asked otherwise
        raw = await raw_exchange(addr, b"POST / HTTP/1.0\r\nContent-Type: application/json\r\n"
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
                                 half_close=False)
        assert status_of(raw) == 200 and b"Connection: close" in raw


BAD = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET relative HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
     400),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 100\r\n\r\n{}", 400),  # the body ends early
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 2\r\nExpect: magic\r\n\r\n{}", 417),
    (b"GET / HTTP/1.1\r\nHost: evil.example:5099\r\n\r\n", 403),  # DNS rebinding
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: 1\r\n" * 200 + b"\r\n", 431),
]


async def test_malformed_http_gets_4xx_and_the_server_carries_on() -> None:
    async with real_server() as server:
        addr = server.mi_address
        assert addr is not None
        for data, status in BAD:
            raw = await raw_exchange(addr, data)
            assert status_of(raw) == status, (data[:60], raw[:100])
            assert b"Connection: close" in raw
        # a connection that sends nothing, or half a request, then closes
        assert await raw_exchange(addr, b"") == b""
        assert status_of(await raw_exchange(addr, b"POST / HTT")) == 400
        r = await rpc(addr, req("core.version"))
        assert r.status == 200
        assert server.mi is not None
        assert server.mi.stats["http_bad_requests"] == len(BAD) + 1


async def test_oversized_body_is_413() -> None:
    async with real_server(mi={"max_body_size": 1024}) as server:
        addr = server.mi_address
        assert addr is not None
        big = json.dumps(req("core.version", ["x" * 2000])).encode()
        r = await http_request(addr, body=big)
        assert r.status == 413
        ok = json.dumps(req("system.methodHelp", ["tm.stats"])).encode()
        assert len(ok) < 1024
        assert (await http_request(addr, body=ok)).status == 200


async def test_bearer_token() -> None:
    async with real_server(mi={"token": TOKEN}) as server:
        addr = server.mi_address
        assert addr is not None
        r = await rpc(addr, req("tm.stats"))
        assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await rpc(addr, req("tm.stats"), token=TOKEN + "x")
        assert r.status == 401
        r = await http_request(addr, body=json.dumps(req("tm.stats")).encode(),
                               headers={"Content-Type": "application/json",
                                        "Authorization": f"Basic {TOKEN}"})
        assert r.status == 401
        r = await http_request(addr, "GET", "/", headers={})
        assert r.status == 401  # even the help text
        r = await rpc(addr, req("tm.stats"), token=TOKEN)
        assert r.status == 200 and r.json()["result"]["current"] == 0
        # with a token, names in Host are fine
        r = await http_request(addr, body=json.dumps(req("core.version")).encode(),
                               headers={"Content-Type": "application/json",
                                        "Authorization": f"Bearer {TOKEN}",
                                        "Host": "mgmt.example"})
        assert r.status == 200
        assert server.mi is not None
        assert server.mi.stats["http_unauthorized"] == 4


async def test_slow_clients_are_timed_out() -> None:
    async with real_server(mi={"timeout": 0.3}) as server:
        addr = server.mi_address
        assert addr is not None
        with trio.fail_after(5):
            # half a request, then silence: 408 and closed
            raw = await raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                     half_close=False)
            assert status_of(raw) == 408
            # nothing at all: closed quietly
            assert await raw_exchange(addr, b"", half_close=False) == b""
            # a body that never comes
            raw = await raw_exchange(addr, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     b"Content-Type: application/json\r\n"
                                     b"Content-Length: 10\r\n\r\n{", half_close=False)
            assert status_of(raw) == 408


async def test_async_commands_time_out_with_an_error() -> None:
    from trio_sip.script.exports import MiCommand

    async def forever(params: Any, ctx: Any) -> Any:
        await trio.sleep_forever()

    async with real_server(mi={"command_timeout": 0.2}) as server:
        assert server.registry is not None and server.mi_address is not None
        server.registry.add(MiCommand("test.forever", forever, "Never ends.", True))
        r = await rpc(server.mi_address, req("test.forever"))
        assert r.json()["error"]["code"] == -32001


def test_parse_head_is_strict() -> None:
    r = parse_head(b"POST http://127.0.0.1:5099/RPC?x HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2")
    assert (r.method, r.path, r.version) == ("POST", "/RPC", (1, 1))
    assert r.headers["x-two"] == ["1", "2"] and r.tokens("x-two") == {"1", "2"}


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
async def test_listen_addresses(listen: str) -> None:
    try:
        async with real_server(mi={"listen": listen}) as server:
            addr = server.mi_address
            assert addr is not None
            r = await rpc(addr, req("core.version"))
            assert r.status == 200
    except OSError as exc:  # pragma: no cover - hosts without IPv6
        pytest.skip(f"cannot bind {listen}: {exc}")


async def test_connections_are_bounded() -> None:
    async with real_server() as server:
        assert server.mi is not None
        http = MiHttpServer(server.mi, max_connections=1, timeout=5.0)
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(http.serve, "127.0.0.1:0")
            first = await trio.open_tcp_stream(addr.host, addr.port)
            async with first:
                # a kept-alive connection holds the only slot
                await first.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                got = b""
                with trio.fail_after(5):
                    while b"JSON-RPC" not in got:
                        got += await first.receive_some(65536)
                assert http.active == 1
                raw = await raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert status_of(raw) == 503
            # once it is closed, the slot is free again
            statuses = []
            for _ in range(100):
                statuses.append(status_of(await raw_exchange(
                    addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")))
                if statuses[-1] == 200:
                    break
                await trio.sleep(0.01)
            assert statuses[-1] == 200
            assert server.mi.stats["http_refused"] == len(statuses)
            nursery.cancel_scope.cancel()
