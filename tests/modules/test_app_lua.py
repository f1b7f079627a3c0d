"""KSR.app_lua: runstring/dostring/runstring_args/dofile/run, their budget, and the MI
app_lua.runstring (off unless enabled)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, Direct, ask, outs, serving

from trio_sip.modules.app_lua import AppLuaParams

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
    config = {"modparams": {"app_lua": {"mi_runstring": True}}}
    async with serving(routes, config=config) as env:
        server = env.server
        assert server.registry is not None and server.mi is not None
        call = server.registry.call
        got = await call("app_lua.runstring",
                         {"code": "local a, b = ... return KSR.pv.get('$rm') .. a .. b",
                          "args": json.dumps(["-x", "]]\""])}, server.mi)
        assert got == {"result": 'OPTIONS-x]]"'}
        got = await call("app_lua.runstring", ["KSR.async.ms_sleep(5) return 3"], server.mi)
        assert got == {"result": 3}
        # the chunk runs on the faked OPTIONS, as timer routes do (Kamailio core/fmsg.c)
        got = await call("app_lua.runstring",
                         ["return KSR.corex.is_faked_msg() .. ' ' .. KSR.pv.get('$ci')"],
                         server.mi)
        assert got == {"result": "1 dummycallid"}
        from trio_sip.mi.registry import MiError
        with pytest.raises(MiError):
            await call("app_lua.runstring", {"code": "not lua"}, server.mi)
        with pytest.raises(MiError):
            await call("app_lua.runstring", {"code": "error('x')"}, server.mi)



# -- the budget ---------------------------------------------------------------------------

RUNAWAYS = {
    "loop": "while true do end",
    "counting": "local x = 0 while true do x = x + 1 end",
    "pcall swallows": "while true do pcall(function() while true do end end) end",
    "nested pcall": "pcall(function() while true do pcall(function() while true do end end) end end)",
    "own coroutine": "coroutine.wrap(function() while true do end end)()",
    "recursion": "local function f(n) return f(n + 1) + 1 end f(1)",
    "unhook": "debug.sethook() while true do end",
}


def _small_budget(ctx: Any, instructions: int = 200_000, ms: int = 0) -> None:
    ctx.core.modparams = {"app_lua": AppLuaParams(budget_instructions=instructions,
                                                  budget_ms=ms)}


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
@pytest.mark.parametrize("name", sorted(RUNAWAYS))
def test_a_runaway_chunk_is_stopped(engine: str, name: str, caplog: Any) -> None:
    direct = Direct(engine)
    ctx = direct.ctx(OPTIONS)
    _small_budget(ctx)
    with caplog.at_level(logging.ERROR, logger="trio_sip.script"):
        got = direct.value(ctx, f"(KSR.app_lua.runstring({RUNAWAYS[name]!r}))")
    if name == "recursion":  # a stack overflow comes first: an error all the same
        assert got == -1
        return
    assert got == -1
    text = caplog.text
    if name == "unhook":
        assert "debug.sethook is not allowed in a budgeted app_lua chunk" in text
    else:
        assert "instruction budget exceeded (200000 instructions)" in text
        assert "app_lua.runstring:1: " in text  # the chunk's file:line
    assert "t.lua:" in text  # and the calling route's
    # the route, the engine and hooks are fine afterwards
    assert direct.value(ctx, "(KSR.app_lua.runstring('tsip_t_ok = 1'))") == 1
    assert direct.value(ctx, "tsip_t_ok") == 1
    assert direct.engine.lua.eval("(debug.gethook())") is None


def test_a_time_budget(caplog: Any) -> None:
    direct = Direct()
    ctx = direct.ctx(OPTIONS)
    _small_budget(ctx, instructions=0, ms=50)
    with caplog.at_level(logging.ERROR, logger="trio_sip.script"):
        assert direct.value(ctx, "(KSR.app_lua.runstring('while true do end'))") == -1
    assert "time budget exceeded (50 ms)" in caplog.text


def test_a_chunk_within_budget_and_nested_chunks(direct: Direct) -> None:
    ctx = direct.ctx(OPTIONS)
    _small_budget(ctx, instructions=2_000_000)
    code = "local s = 0 for i = 1, 10000 do s = s + i end tsip_t_sum = s"
    assert direct.value(ctx, f"(KSR.app_lua.runstring({code!r}))") == 1
    assert direct.value(ctx, "tsip_t_sum") == 50005000
    # a chunk running a chunk: the inner one's budget ends, the outer one keeps its own
    inner = "KSR.app_lua.runstring('while true do end') tsip_t_after = 1 while true do end"
    assert direct.value(ctx, f"(KSR.app_lua.runstring({inner!r}))") == -1
    assert direct.value(ctx, "tsip_t_after") == 1


def test_run_and_dofile_have_the_budget(direct: Direct, tmp_path: Any, caplog: Any) -> None:
    ctx = direct.ctx(OPTIONS)
    _small_budget(ctx)
    direct.engine.load_string("function tsip_t_spin(a) while true do end end\n"
                              "function tsip_t_ok(a) tsip_t_got = a end\n", "=fns.lua")
    good = tmp_path / "good.lua"
    good.write_text("local a = ... tsip_t_file = KSR.hdr.get('Call-ID')\n")
    bad = tmp_path / "spin.lua"
    bad.write_text("-- spins\n\nwhile true do end\n")
    with caplog.at_level(logging.ERROR, logger="trio_sip.script"):
        assert direct.value(ctx, "(KSR.app_lua.run('tsip_t_spin', 'x'))") == -1
        assert direct.value(ctx, "(KSR.app_lua.run('tsip_t_ok', 'y'))") == 1
        assert direct.value(ctx, f"(KSR.app_lua.dofile({str(good)!r}))") == 1
        assert direct.value(ctx, f"(KSR.app_lua.dofile({str(bad)!r}))") == -1
        assert direct.value(ctx, "(KSR.app_lua.dofile('/nonexistent/x.lua'))") == -1
    assert direct.value(ctx, "tsip_t_got") == "y"
    assert direct.value(ctx, "tsip_t_file") == "c1"
    text = caplog.text
    assert "fns.lua:1: instruction budget exceeded" in text
    assert "spin.lua:3: instruction budget exceeded" in text  # the file's own line
    assert "KSR.app_lua.dofile: cannot load" in text


async def test_waiting_does_not_count_and_other_routes_run_free(
        autojump_clock: Any, write_routes: Any) -> None:
    """A chunk that waits: its budget is paused (the hook is off while other routes run)."""
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  if KSR.pv.get('$rU') == 'slow' then\n"
        "    out('R', KSR.app_lua.runstring("
        "'for i = 1, 3 do local s = 0 for j = 1, 10000 do s = s + j end "
        "KSR.async.ms_sleep(1000) end'))\n"
        "  else\n"
        "    local s = 0 for j = 1, 200000 do s = s + j end out('S', s)\n"
        "  end\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    # 3 s of waits against a budget of 100 ms: waits do not count
    config = {"modparams": {"app_lua": {"budget_instructions": 150_000, "budget_ms": 100}}}
    async with serving(routes, config=config) as env:
        await env.uac.send(env.uac.request("OPTIONS", "sip:slow@127.0.0.1"), PROXY)
        await trio.sleep(0.5)
        # another route runs 200000 iterations while the chunk waits: no budget applies
        o = outs(await ask(env, env.uac.request("OPTIONS", "sip:fast@127.0.0.1")))
        assert o["S"] == "number:20000100000"
        got = await env.uac.wait_for(lambda r: "R" in outs(r.msg), within=10)
        assert outs(got.msg)["R"] == "number:1"  # 3 x ~20000 instructions, 3 waits


async def test_mi_runstring_is_off_unless_enabled_and_has_the_budget(
        autojump_clock: Any, write_routes: Any) -> None:
    from trio_sip.mi.registry import COMMAND_FAILED, UNAVAILABLE, MiError

    routes = write_routes("function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') end\n")
    async with serving(routes) as env:
        assert env.server.registry is not None and env.server.mi is not None
        with pytest.raises(MiError) as exc:
            await env.server.registry.call("app_lua.runstring", ["return 1"], env.server.mi)
        assert exc.value.code == UNAVAILABLE
        assert "mi_runstring = true" in exc.value.message
    config = {"modparams": {"app_lua": {"mi_runstring": True, "budget_instructions": 100000}}}
    async with serving(routes, config=config) as env:
        assert env.server.registry is not None and env.server.mi is not None
        call = env.server.registry.call
        with pytest.raises(MiError) as exc:
            await call("app_lua.runstring", ["while true do end"], env.server.mi)
        assert exc.value.code == COMMAND_FAILED
        assert "instruction budget exceeded (100000 instructions)" in exc.value.message
        # hostile argument values stay data here too
        got = await call("app_lua.runstring", ["return (...)", ["]] error('x') --[[\n\"'"]],
                         env.server.mi)
        assert got == {"result": "]] error('x') --[[\n\"'"}
        # the server is fine: it still answers
        assert (await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1"))).status == 200


@pytest.mark.parametrize("engine", ["lua51", "lua54", "luajit"])
def test_a_chunk_waits_with_every_engine(engine: str) -> None:
    """The chunk's wait goes through its own coroutine to the route's driver (no yield
    across pcall, so plain Lua 5.1 can wait too), and it resumes with the result."""
    direct = Direct(engine)
    ctx = direct.ctx(OPTIONS)
    step = direct.run(ctx, "local r = KSR.app_lua.runstring('tsip_t_x = KSR.async.ms_sleep(10)')"
                           " return r")
    assert step.yielded and type(step.value).__name__ == "SleepOp"
    done = direct.engine.resume(step.co_id, ctx, 7)
    assert done.done and done.value == 1
    assert direct.value(ctx, "tsip_t_x") == 7
