"""Ring 3: the ng client against the real rtpengine (started by conftest.py), in real
time, on loopback, every wait bounded."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_sip.rtpengine import (
    ClientConfig,
    NgReplyError,
    RtpengineClient,
    decode_reply_untrusted,
    encode_command,
    new_cookie,
    wire_bytes,
)
from trio_sip.transport.guard import LoopbackGuard

from .conftest import Rtpengine, free_udp_port

CALLER_SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.2\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
CALLEE_SDP = (
    b"v=0\r\no=bob 1234567890 1234567890 IN IP4 127.0.0.3\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.3\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
FLAGS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove",
                         "flags": ["trust-address"]}
LIMIT = 10  # seconds: no test may wait longer


@asynccontextmanager
async def client_for(r: Rtpengine, *extra_socks: str, **cfg: Any
                     ) -> AsyncIterator[RtpengineClient]:
    cfg.setdefault("tout_ms", 500)
    cfg.setdefault("retr", 2)
    client = RtpengineClient(ClientConfig(sock=(" ".join((*extra_socks, r.sock)),), **cfg),
                             guard=LoopbackGuard(True))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            yield client
            nursery.cancel_scope.cancel()


def offer(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"command": "offer", "call-id": call_id, "from-tag": "alice-tag",
            "sdp": CALLER_SDP, **FLAGS, **extra}


def answer(call_id: str) -> dict[str, Any]:
    return {"command": "answer", "call-id": call_id, "from-tag": "alice-tag",
            "to-tag": "bob-tag", "sdp": CALLEE_SDP, **FLAGS}


def media(sdp: str) -> tuple[str, str, int]:
    o = re.search(r"^o=\S+ \S+ \S+ IN IP4 (\S+)\r$", sdp, re.M)
    c = re.search(r"^c=IN IP4 (\S+)\r$", sdp, re.M)
    m = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert o and c and m, sdp
    assert o.group(1) == c.group(1)
    return o.group(1), c.group(1), int(m.group(1))


async def test_ping(rtpengine: Rtpengine) -> None:
    async with client_for(rtpengine) as client:
        assert await client.request({"command": "ping"}) == {"result": "pong"}


async def test_offer_answer_query_delete(rtpengine: Rtpengine) -> None:
    cid = f"real-{new_cookie().decode()}"
    async with client_for(rtpengine) as client:
        reply = await client.request(offer(cid))
        assert reply["result"] == "ok"
        _, addr, port = media(reply["sdp"])
        # rtpengine rewrote the caller's 127.0.0.2:40000 to itself, a port of its range
        assert addr == "127.0.0.1"
        assert rtpengine.port_min <= port <= rtpengine.port_max
        assert "a=rtpmap:101 telephone-event/8000" in reply["sdp"]
        reply = await client.request(answer(cid))
        _, addr, port2 = media(reply["sdp"])
        assert addr == "127.0.0.1" and port2 != port
        assert rtpengine.port_min <= port2 <= rtpengine.port_max
        q = await client.request({"command": "query", "call-id": cid})
        assert q["result"] == "ok"
        assert set(q["tags"]) == {"alice-tag", "bob-tag"}
        assert {"created", "totals", "last signal"} <= set(q)
        d = await client.request({"command": "delete", "call-id": cid,
                                  "from-tag": "alice-tag"})
        assert d["result"] == "ok" and "warning" not in d
        with pytest.raises(NgReplyError) as info:
            await client.request({"command": "query", "call-id": cid})
        assert info.value.reason == "Unknown call-id"
        gone = await client.request({"command": "delete", "call-id": cid,
                                     "from-tag": "alice-tag"})
        assert gone["warning"] == "Call-ID not found or tags didn't match"
        stats = client.statistics()
        assert stats["retransmissions"] == 0 and stats["sticky_calls"] == 0


async def test_duplicate_cookie_gets_the_cached_reply(rtpengine: Rtpengine) -> None:
    cid = f"dup-{new_cookie().decode()}"
    cookie = new_cookie()
    data = encode_command(cookie, offer(cid))
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    with sock, trio.fail_after(LIMIT):
        await sock.connect(("127.0.0.1", rtpengine.ng_port))
        await sock.send(data)
        first = await sock.recv(65535)
        await sock.send(data)
        second = await sock.recv(65535)
        # same cookie, other payload: still the cached offer reply (keyed by cookie only)
        await sock.send(encode_command(cookie, {"command": "ping"}))
        third = await sock.recv(65535)
        assert first == second == third
        got_cookie, reply = decode_reply_untrusted(first)
        assert got_cookie == cookie and reply["result"] == "ok"
        await sock.send(encode_command(new_cookie(), {"command": "delete", "call-id": cid}))
        await sock.recv(65535)
    assert "as a duplicate" in rtpengine.log_tail(10**6)


async def test_lost_reply_is_recovered_by_resending_the_same_cookie(
        rtpengine: Rtpengine) -> None:
    """A relay in front of rtpengine drops the first reply: the client re-sends the
    same datagram after tout_ms and gets rtpengine's cached reply; the offer ran once."""
    relay = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    upstream = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    seen: list[bytes] = []
    with relay, upstream, trio.fail_after(LIMIT):
        await relay.bind(("127.0.0.1", 0))
        await upstream.connect(("127.0.0.1", rtpengine.ng_port))
        relay_port = relay.getsockname()[1]

        async def run_relay() -> None:
            dropped = False
            while True:
                data, client_addr = await relay.recvfrom(65535)
                seen.append(data)
                await upstream.send(data)
                reply = await upstream.recv(65535)
                if not dropped:
                    dropped = True
                    continue
                await relay.sendto(reply, client_addr)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_relay)
            client = RtpengineClient(ClientConfig(sock=(f"udp:127.0.0.1:{relay_port}",),
                                                  tout_ms=200, retr=3, ping_mode=0))
            await nursery.start(client.run)
            cid = f"lost-{new_cookie().decode()}"
            start = trio.current_time()
            reply = await client.request(offer(cid))
            elapsed = trio.current_time() - start
            assert reply["result"] == "ok"
            assert 0.2 <= elapsed < 0.4
            assert len(seen) == 2 and seen[0] == seen[1]
            assert client.statistics()["retransmissions"] == 1
            await client.request({"command": "delete", "call-id": cid})
            nursery.cancel_scope.cancel()


async def test_dead_node_fails_over_to_the_real_one(rtpengine: Rtpengine) -> None:
    dead = f"udp:127.0.0.1:{free_udp_port()}=100"  # nothing listens there
    async with client_for(rtpengine, dead, tout_ms=100, retr=2, ping_mode=0) as client:
        start = trio.current_time()
        cid = f"fo-{new_cookie().decode()}"
        reply = await client.request(offer(cid))
        assert reply["result"] == "ok"
        assert 0.2 <= trio.current_time() - start < 1.0
        nodes = {n["url"]: n for n in client.show()}
        assert [n["active"] for n in nodes.values()] == [False, True]
        start = trio.current_time()
        await client.request({"command": "delete", "call-id": cid})
        assert trio.current_time() - start < 0.1


async def test_concurrent_calls_through_one_socket(rtpengine: Rtpengine) -> None:
    """40 calls at once (the port range holds 50), each offer+answer+delete."""
    durations: list[float] = []
    async with client_for(rtpengine) as client:

        async def call(i: int) -> None:
            cid = f"conc-{i}-{new_cookie().decode()}"
            start = time.perf_counter()
            a = await client.request(offer(cid))
            b = await client.request(answer(cid))
            await client.request({"command": "delete", "call-id": cid,
                                  "from-tag": "alice-tag"})
            durations.append(time.perf_counter() - start)
            assert media(a["sdp"])[2] != media(b["sdp"])[2]

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(call, i)
        stats = client.statistics()
        assert stats["replies_ok"] == 120 and stats["pending"] == 0
    assert len(durations) == 40


async def test_round_trip_times(rtpengine: Rtpengine) -> None:
    """Sequential offer/answer/delete, medians bounded generously (the measured figures
    are in the report; rtpengine.md §7 has ~0.2/0.2/0.4 ms at log level 6)."""
    rtts: dict[str, list[float]] = {"offer": [], "answer": [], "delete": []}
    async with client_for(rtpengine) as client:
        for i in range(50):
            cid = f"rtt-{i}-{new_cookie().decode()}"
            for name, cmd in (("offer", offer(cid)), ("answer", answer(cid)),
                              ("delete", {"command": "delete", "call-id": cid,
                                          "from-tag": "alice-tag"})):
                t0 = time.perf_counter()
                await client.request(cmd)
                rtts[name].append(time.perf_counter() - t0)
    for values in rtts.values():
        assert statistics.median(values) < 0.05


def test_sdp_bytes_round_trip() -> None:
    assert wire_bytes("caf\udce9") == b"caf\xe9"
