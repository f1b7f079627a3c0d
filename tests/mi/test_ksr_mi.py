"""KSR.mi and KSR.jsonrpcs from Lua routes (simulated network, virtual time)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from mi_helpers import PROXY, rewrite, sim_server

from trio_sip.mi.registry import MiContext, MiRegistry
from trio_sip.modules.mi import MiCallOp, MiExecOp
from trio_sip.runtime.server import default_modules
from trio_sip.runtime.transactions import ServerTx
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptEngine
from trio_sip.script.exports import MiCommand, RouteType
from trio_sip.sip.message import SipResponse

ROUTES = r"""
function out(name, v)
  KSR.hdr.append_to_reply('X-' .. name .. ': ' .. type(v) .. ':' .. tostring(v) .. '\r\n')
end
VERSION = "v1"
function bg()
  local r = KSR.mi.mi("test.wait", "[3]")
  KSR.pv.sets("$shv(bg)", tostring(r))
end
function ksr_reply_route()
  KSR.pv.sets("$shv(reply_route)", tostring(KSR.mi.mi("test.wait", "[1]")) .. " " .. KSR.mi.error())
  return 0
end
function ksr_request_route()
  local u = KSR.pv.get("$rU")
  if u == "exec" then
    out("r", KSR.mi.exec('{"jsonrpc": "2.0", "method": "tm.stats", "id": 1}'))
    out("code", KSR.pv.get("$jsonrpl(code)"))
    out("bad", KSR.mi.exec('{"jsonrpc": "2.0", "method": "nope", "id": "x"}'))
    out("badcode", KSR.pv.get("$jsonrpl(code)"))
    out("badtext", KSR.pv.get("$jsonrpl(text)"))
    out("note", KSR.mi.exec('{"jsonrpc": "2.0", "method": "core.uptime"}'))
  elseif u == "mi" then
    out("version", KSR.mi.mi("core.version"))
    out("words", KSR.mi.mi("stats.get_statistics core:rcv_requests"))
    out("named", KSR.mi.mi("stats.fetch", '{"names": ["core:rcv_requests"]}'))
    out("nope", KSR.mi.mi("nope"))
    out("err", KSR.mi.error())
    out("parse", KSR.mi.mi("tm.list", "["))
    out("params", KSR.mi.mi("tm.list", "5"))
    out("cannot", KSR.mi.mi("core.uptime", "[1, 2]"))
    out("waits", KSR.mi.mi("stats.fetch", '["core:rcv_requests"]'))
    out("err2", KSR.mi.error())
  elseif u == "jsonrpcs" then
    out("rc", KSR.jsonrpcs.exec('{"jsonrpc": "2.0", "method": "core.version", "id": 1}'))
    out("body", KSR.pv.get("$jsonrpl(body)"))
    out("rc2", KSR.jsonrpcs.exec('{"jsonrpc": "2.0", "method": "nope", "id": 1}'))
  elseif u == "reload" then
    out("reload", KSR.mi.mi("app_lua.reload"))
    out("still", VERSION)
  elseif u == "launch" then
    KSR.async.launch("bg")
  elseif u == "wait" then
    local before = VERSION .. "-local"
    out("waited", KSR.mi.mi("test.wait", '{"seconds": 2}'))
    out("exec", KSR.mi.exec('{"jsonrpc": "2.0", "method": "test.wait", "params": [1], "id": 9}'))
    out("kept", before)
  end
  KSR.sl.sl_send_reply(200, VERSION)
end
"""


def outs(msg: SipResponse) -> dict[str, str]:
    return {h.name[2:]: h.text for h in msg.headers if h.name.startswith("X-")}


def value(text: str) -> Any:
    """``string:{json}`` / ``number:-32601`` as written by out()."""
    kind, _, v = text.partition(":")
    return json.loads(v) if kind == "string" and v else int(v) if kind == "number" else v


async def test_ksr_mi_exec_from_a_route(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        o = outs(await env.ask("OPTIONS", "sip:exec@127.0.0.1"))
        reply = value(o["r"])
        assert reply["id"] == 1 and reply["result"]["current"] == 0
        assert o["code"] == "number:200"
        bad = value(o["bad"])
        assert bad["error"]["code"] == -32601 and bad["id"] == "x"
        assert o["badcode"] == "number:-32601"
        assert o["badtext"] == "string:Method not found: nope"
        assert o["note"] == "string:"  # a notification has no reply


async def test_ksr_mi_mi_from_a_route(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        o = outs(await env.ask("OPTIONS", "sip:mi@127.0.0.1"))
        assert value(o["version"]).startswith("trio-sip ")
        assert value(o["words"]) == ["core:rcv_requests = 1"]
        assert value(o["named"]) == {"core.rcv_requests": 1}
        assert o["nope"] == "number:-32601"
        assert o["err"] == "string:Method not found: nope"
        assert o["parse"] == "number:-32700"
        assert o["params"] == "number:-32602"
        assert o["cannot"] == "number:-32602"
        assert value(o["waits"]) == {"core.rcv_requests": 1}
        assert o["err2"] == "string:"  # a success clears the last error


async def test_ksr_jsonrpcs_exec_is_kamailios(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        o = outs(await env.ask("OPTIONS", "sip:jsonrpcs@127.0.0.1"))
        assert o["rc"] == "number:1"
        assert value(o["body"])["result"].startswith("trio-sip ")
        assert o["rc2"] == "number:-1"


async def test_reload_from_a_route(autojump_clock: Any, write_routes: Any) -> None:
    path = write_routes(ROUTES)
    async with sim_server(path) as env:
        rewrite(path, ROUTES.replace('VERSION = "v1"', 'VERSION = "v2"'))
        resp = await env.ask("OPTIONS", "sip:reload@127.0.0.1")
        o = outs(resp)
        assert value(o["reload"])["generation"] == 2
        # the route that asked goes on in the engine it started in
        assert o["still"] == "string:v1" and resp.reason == "v1"
        assert (await env.ask()).reason == "v2"


async def _wait(params: dict[str, Any], ctx: MiContext) -> Any:
    await trio.sleep(params["seconds"])
    return f"waited {params['seconds']}"


async def test_an_async_command_makes_the_route_wait(autojump_clock: Any,
                                                     write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        env.registry.add(MiCommand("test.wait", _wait, "Wait.", True, ("seconds",)))
        shv = env.server.core.shv
        await env.ask("OPTIONS", "sip:launch@127.0.0.1")
        await trio.sleep(1)
        assert "bg" not in shv  # still waiting, the server goes on
        await trio.sleep(5)
        assert shv["bg"] == '"waited 3"'
        # ksr_reply_route cannot wait: the call answers -32003 at once
        await env.uac.send(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bKx\r\n"
            b"From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\n"
            b"Call-ID: stray\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", PROXY)
        await trio.sleep(1)
        assert shv["reply_route"].startswith("-32003 test.wait waits: not in a reply_route")


@pytest.mark.skipif(not hasattr(ServerTx, "spawn"),
                    reason="the request route cannot wait yet: ServerTx.spawn is missing")
async def test_an_async_command_in_the_request_route(autojump_clock: Any,
                                                     write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        env.registry.add(MiCommand("test.wait", _wait, "Wait.", True, ("seconds",)))
        start = trio.current_time()
        o = outs(await env.ask("OPTIONS", "sip:wait@127.0.0.1", status=200))
        assert trio.current_time() - start >= 3
        assert value(o["waited"]) == "waited 2"
        assert value(o["exec"]) == {"jsonrpc": "2.0", "result": "waited 1", "id": 9}
        assert o["kept"] == "string:v1-local"


def test_the_wait_is_a_yield_in_a_route_that_can_wait() -> None:
    """Without a server: the Lua side yields the operation the runtime will await."""
    engine = ScriptEngine(default_modules())
    registry = MiRegistry()
    registry.add(MiCommand("test.wait", _wait, "Wait.", True, ("seconds",)))
    registry.add(MiCommand("test.now", lambda params, ctx: "now", "At once."))

    class Core:
        mi: MiContext

    core = Core()
    core.mi = MiContext(core, registry)  # type: ignore[arg-type]
    engine.load_string("function a() return KSR.mi.mi('test.wait', '[1]') end\n"
                       "function b() return KSR.mi.exec("
                       "'[{\"jsonrpc\": \"2.0\", \"method\": \"test.wait\", \"params\": [1], \"id\": 1}]') end\n"
                       "function c() return KSR.jsonrpcs.exec("
                       "'{\"jsonrpc\": \"2.0\", \"method\": \"test.now\", \"id\": 1}') end\n")
    ctx = MsgContext(None, None, None, None, RouteType.REQUEST, core)  # type: ignore[arg-type]
    step = engine.start(engine.function("a"), ctx)
    assert step.yielded and isinstance(step.value, MiCallOp)
    assert (step.value.command, step.value.params) == ("test.wait", [1])
    done = engine.resume(step.co_id, ctx, '"waited 1"')
    assert done.done and done.value == '"waited 1"'
    step = engine.start(engine.function("b"), ctx)
    assert step.yielded and isinstance(step.value, MiExecOp)
    engine.abandon(step.co_id)
    step = engine.start(engine.function("c"), ctx)  # quick: no yield
    assert step.done and step.value == 1
    # where the route cannot wait, the same request answers at once with an error
    ctx.route_type = RouteType.BRANCH
    step = engine.start(engine.function("b"), ctx)
    assert step.done
    assert json.loads(step.value)[0]["error"]["code"] == -32003
