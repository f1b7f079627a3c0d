"""KSR.app_lua: runstring/dostring/runstring_args/run, and the MI app_lua.runstring."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from module_helpers import OUT_LUA, Direct, ask, outs, serving

OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-1\r\n"
    b"From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
    b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
    b'X-Evil: a]] tsip_t_pwned = true --[[ " \' ]==] end\r\n'
    b"Content-Length: 0\r\n\r\n"
)


@pytest.fixture
def direct() -> Direct:
    return Direct()


def test_runstring_and_dostring_run_in_the_route(direct: Direct) -> None:
    ctx = direct.ctx(OPTIONS)
    assert direct.value(ctx, "KSR.app_lua.runstring('tsip_t_a = KSR.hdr.get(\"Call-ID\")')") == 1
    assert direct.value(ctx, "tsip_t_a") == "c1"
    assert direct.value(ctx, "KSR.app_lua.dostring('tsip_t_b = 2')") == 1
    assert direct.value(ctx, "tsip_t_b") == 2


def test_runstring_args_values_cannot_break_out(direct: Direct) -> None:
    ctx = direct.ctx(OPTIONS)
    evil = direct.value(ctx, "KSR.hdr.get('X-Evil')")
    assert "]]" in evil and '"' in evil
    # the chunk gets the header value as a vararg: it is data, never code
    code = "local v, n = ... tsip_t_v = v tsip_t_n = n"
    assert direct.value(ctx, f"KSR.app_lua.runstring_args({code!r}, KSR.hdr.get('X-Evil'), 7)") == 1
    assert direct.value(ctx, "tsip_t_v") == evil
    assert direct.value(ctx, "tsip_t_n") == 7
    assert direct.value(ctx, "tsip_t_pwned") is None
    # what Kamailio's example does (splicing the value into source) runs the value as code
    direct.value(ctx, "KSR.app_lua.runstring('tsip_t_s = [[' .. KSR.hdr.get('X-Evil') .. ']]')")
    assert direct.value(ctx, "tsip_t_pwned") is True


def test_run_calls_a_global_with_string_params(direct: Direct) -> None:
    ctx = direct.ctx(OPTIONS)
    direct.engine.load_string(
        "function tsip_t_fn(a, b, c) tsip_t_r = table.concat({a, b, c or 'nil'}, ',') "
        "return 5 end")
    assert direct.value(ctx, "KSR.app_lua.run('tsip_t_fn', 'x', 2)") == 1
    assert direct.value(ctx, "tsip_t_r") == "x,2,nil"
    assert direct.value(ctx, "KSR.app_lua.run('tsip_t_fn', 'a', 'b', 'c')") == 1
    assert direct.value(ctx, "tsip_t_r") == "a,b,c"


def test_errors_return_minus_one_and_log(direct: Direct, caplog: Any) -> None:
    ctx = direct.ctx(OPTIONS)
    with caplog.at_level(logging.ERROR, logger="trio_sip.script"):
        assert direct.value(ctx, "(KSR.app_lua.runstring('this is not lua'))") == -1
        assert direct.value(ctx, "(KSR.app_lua.runstring('error(\"boom\")'))") == -1
        assert direct.value(ctx, "(KSR.app_lua.run('no_such_fn_here'))") == -1
    text = caplog.text
    assert "KSR.app_lua.runstring: cannot compile" in text
    assert "boom" in text
    assert "KSR.app_lua.run: no function no_such_fn_here" in text
    assert "t.lua:" in text  # the calling route's file:line


def test_exit_in_a_chunk_stops_the_route(direct: Direct) -> None:
    ctx = direct.ctx(OPTIONS)
    step = direct.run(ctx, "KSR.app_lua.runstring('KSR.x.exit()') tsip_t_after = 1")
    assert step.done
    assert direct.value(ctx, "tsip_t_after") is None


def test_chunks_are_cached_by_source(direct: Direct) -> None:
    chunk = direct.engine.lua.globals().tsip_app_lua_chunk
    same = direct.engine.lua.eval("function(c, s) return c(s) == c(s) end")
    assert same(chunk, "return 1") is True
    for i in range(100):  # bounded: old entries are evicted, and still compile again
        chunk(f"return {i}")
    assert chunk("return 1") is not None


async def test_runstring_from_a_route_on_the_wire(autojump_clock: Any,
                                                  write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('R', KSR.app_lua.runstring_args("
        "'local ua = ... KSR.hdr.append_to_reply(\"X-Got: \" .. ua .. \"\\\\r\\\\n\")', "
        "KSR.hdr.get('X-Evil')))\n"
        "  KSR.app_lua.runstring('KSR.async.ms_sleep(10)')\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        req = env.uac.request("OPTIONS", "sip:127.0.0.1",
                              headers=[("X-Evil", "a]] \" b")])
        o = outs(await ask(env, req))
        assert o["R"] == "number:1"
        assert o["Got"] == 'a]] " b'


async def test_mi_runstring(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes("function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') end\n")
    async with serving(routes) as env:
        server = env.server
        assert server.registry is not None and server.mi is not None
        call = server.registry.call
        got = await call("app_lua.runstring",
                         {"code": "local a, b = ... return KSR.pv.get('$rm') .. a .. b",
                          "args": json.dumps(["-x", "]]\""])}, server.mi)
        assert got == {"result": 'OPTIONS-x]]"'}
        got = await call("app_lua.runstring", ["KSR.async.ms_sleep(5) return 3"], server.mi)
        assert got == {"result": 3}
        from trio_sip.mi.registry import MiError
        with pytest.raises(MiError):
            await call("app_lua.runstring", {"code": "not lua"}, server.mi)
        with pytest.raises(MiError):
            await call("app_lua.runstring", {"code": "error('x')"}, server.mi)
