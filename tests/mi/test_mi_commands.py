"""The built-in commands against a running server (simulated network, virtual time)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from mi_helpers import PROXY, ROUTES_V, real_server, sim_server

from trio_sip.mi.registry import INVALID_PARAMS, UNAVAILABLE, MiError, add_module_stats
from trio_sip.rtpengine.protocol import BadNgReply, decode_command_untrusted, encode_reply

RELAY = """
function ksr_request_route()
  if KSR.is_OPTIONS() then
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  KSR.tm.t_relay()
end
"""


async def test_core_commands(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES_V.format(version="v1"))) as env:
        up = await env.call("core.uptime")
        assert set(up) == {"now", "up_since", "uptime"} and up["uptime"] >= 0
        assert (await env.call("core.version")).startswith("trio-sip ")
        info = await env.call("core.info")
        assert info["lua_engine"] == "luajit" and info["pid"] > 0
        ps = await env.call("core.ps")
        assert ps["tasks"] >= 2 and sum(ps["by_name"].values()) == ps["tasks"]
        mem = await env.call("core.shmmem")
        assert mem["rss"] > 0 and mem["lua"][0]["generation"] == 1
        with pytest.raises(MiError) as exc:
            await env.call("core.uptime", [1])
        assert exc.value.code == INVALID_PARAMS


async def test_statistics_groups_and_selectors(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES_V.format(version="v1"))) as env:
        await env.ask()
        await env.ask()
        everything = await env.call("core.stats")
        assert {"core", "tm", "udp", "script", "mi"} <= set(everything)
        assert everything["core"]["rcv_requests"] == 2
        assert everything["udp"]["received"] == 2
        lines = await env.call("stats.get_statistics", ["core:rcv_requests", "script:"])
        assert lines[0] == "core:rcv_requests = 2"
        assert "script:generation = 1" in lines
        assert await env.call("stats.get_statistics", ["sent_replies"]) == \
            ["core:sent_replies = 2"]
        assert await env.call("stats.fetch", {"names": ["core:rcv_requests"]}) == \
            {"core.rcv_requests": 2}
        assert await env.call("stats.get_statistics", ["nosuch:", "nosuch"]) == []
        with pytest.raises(MiError) as exc:
            await env.call("stats.get_statistics")
        assert exc.value.code == INVALID_PARAMS
        assert len(await env.call("stats.get_statistics", ["all"])) > 20
        done = await env.call("stats.reset_statistics", ["core:rcv_requests"])
        assert done == {"reset": ["core:rcv_requests"]}
        assert await env.call("stats.fetch", ["core:rcv_requests"]) == {}
        assert (await env.call("stats.fetch", ["core:sent_replies"]))["core.sent_replies"] == 2
        # a module can add its own group
        env.registry.add_stats_group("demo", lambda: {"x": 5})
        assert await env.call("stats.get_statistics", ["demo:"]) == ["demo:x = 5"]
        # ... from its init hook, with its gauges (a core without MI gets nothing)
        assert add_module_stats(env.server.core, "demo2", lambda: {"level": 3, "hits": 1},
                                gauges=["level"])
        assert await env.call("stats.get_statistics", ["demo2:"]) == [
            "demo2:hits = 1", "demo2:level = 3"]
        assert env.registry.stats_gauges()["demo2"] == frozenset({"level"})
        assert not add_module_stats(object(), "demo3", lambda: {"x": 1})


async def test_tm_stats_and_list(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(RELAY)) as env:
        # an INVITE to a callee that never answers: one transaction in flight
        await env.uac.send(env.uac.request("INVITE", "sip:bob@127.0.0.3:5060",
                                           call_id="tm-list-1"), PROXY)
        await env.uac.expect_response(100)
        stats = await env.call("tm.stats")
        assert list(stats) == ["current", "waiting", "total", "total_local", "rpl_received",
                               "rpl_generated", "rpl_sent", "6xx", "5xx", "4xx", "3xx",
                               "2xx", "created", "freed", "delayed_free"]
        assert (stats["current"], stats["total"], stats["created"], stats["freed"]) == (1, 1, 1, 0)
        assert stats["rpl_generated"] == 1  # the 100 Trying
        listed = await env.call("tm.list")
        assert listed["count"] == 1
        tx = listed["transactions"][0]
        assert (tx["call_id"], tx["method"], tx["status"]) == ("tm-list-1", "INVITE", 0)
        assert tx["state"] and tx["age"] >= 0 and tx["branches"] == 1
        assert (await env.call("tm.list", {"limit": 0}))["transactions"] == []
        with pytest.raises(MiError):
            await env.call("tm.list", ["many"])
        # the callee never answers: 408 after fr_inv/fr, then the transaction lingers and goes
        await env.uac.expect_response(408, within=200)
        stats = await env.call("tm.stats")
        assert stats["4xx"] == 1


async def test_transport_api_and_method_lists(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES_V.format(version="v1"))) as env:
        await env.ask()
        ts = await env.call("transport.stats")
        assert ts["udp:127.0.0.1:5060"]["received"] == 1
        api = await env.call("app_lua.api_list")
        names = {(m["func"]["module"], m["func"]["name"]) for m in api["methods"]}
        assert ("sl", "sl_send_reply") in names and ("mi", "exec") in names
        assert ("mi", "_call") not in names  # internal helpers are not listed
        assert api["msize"] == len(api["methods"])
        listing = await env.call("app_lua.list")
        assert listing["scripts"][0]["version"] == 1 and listing["older"] == []
        methods = await env.call("system.listMethods")
        assert methods == sorted(methods) and "tm.stats" in methods
        assert "tm.stats" in await env.call("system.methodHelp", ["tm.stats"])
        full = await env.call("mi.list")
        assert {
            k: v for k, v in next(c for c in full if c["name"] == "tm.list").items()
            if k != "doc"} == {"name": "tm.list", "params": ["limit?"], "async": False}


async def test_rtpengine_commands_without_rtpengine_say_so(autojump_clock: Any,
                                                           write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES_V.format(version="v1"))) as env:
        for cmd in ("rtpengine.show", "rtpengine.ping"):
            with pytest.raises(MiError) as exc:
                await env.call(cmd)
            assert exc.value.code == UNAVAILABLE and "rtpengine_sock" in exc.value.message


async def _ng_responder(sock: trio.socket.SocketType, answering: list[bool]) -> None:
    """A minimal rtpengine ng peer on a real UDP socket: pong to ping while answering."""
    while True:
        data, source = await sock.recvfrom(65535)
        try:
            cookie, command = decode_command_untrusted(data)
        except BadNgReply:
            continue
        if answering[0] and command.get("command") == "ping":
            await sock.sendto(encode_reply(cookie, {"result": "pong"}), source)


async def test_rtpengine_show_ping_enable_against_a_ng_peer(write_routes: Any) -> None:
    answering = [True]
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"udp:127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ng_responder, sock, answering)
            routes = write_routes(ROUTES_V.format(version="v1"))
            async with real_server(routes=routes, modparams={"rtpengine": {
                    "rtpengine_sock": url, "rtpengine_tout_ms": 200,
                    "rtpengine_retr": 1}}) as server:
                assert server.registry is not None and server.mi is not None
                call = server.registry.call
                with trio.fail_after(10):
                    shown = await call("rtpengine.show", ["all"], server.mi)
                    assert [n["url"] for n in shown] == [url]
                    assert await call("rtpengine.ping", [], server.mi) == {
                        "url": "all", "status": "success"}
                    assert (await call("rtpengine.enable", [url, 0], server.mi))["status"] \
                        == "disable"
                    assert (await call("rtpengine.show", [url], server.mi))[0]["disabled"]
                    assert (await call("rtpengine.enable", {"url": url, "flag": 1},
                                       server.mi))["status"] == "enable"
                    answering[0] = False
                    assert (await call("rtpengine.ping", [url], server.mi))["status"] == "fail"
                    with pytest.raises(MiError) as exc:
                        await call("rtpengine.ping", ["udp:127.0.0.1:1"], server.mi)
                    assert "no rtpengine node" in exc.value.message
                    with pytest.raises(MiError) as exc:
                        await call("rtpengine.enable", [url, 2], server.mi)
                    assert exc.value.code == INVALID_PARAMS
                    stats = await call("stats.fetch", ["rtpengine:"], server.mi)
                    assert stats["rtpengine.nodes"] == 1
            nursery.cancel_scope.cancel()
