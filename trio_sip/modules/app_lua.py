"""KSR.app_lua: running Lua text, files and functions by name (Kamailio ``app_lua``
``lua_runstring`` / ``lua_dostring`` / ``lua_dofile`` / ``lua_run``).

* ``runstring(code)`` / ``dostring(code)``: compile ``code`` as a chunk and run it in
  the current route (it can use KSR, globals, and wait: the route waits with it).
* ``runstring_args(code, ...)`` (trio-sip addition): the same, and the chunk receives
  the other arguments as its varargs (``local user, hdr = ...``). Values never become
  source text: pass a header value as an argument instead of splicing it into the code
  (Kamailio's examples build code with string concatenation, which a ``]]`` or a quote
  in the value breaks out of; here it cannot).
* ``dofile(path)``: load the Lua file ``path`` and run it (read at each call, as
  Kamailio's lua_dofile: a changed file is picked up; a blocking read of a local file).
* ``run(fn, p1, p2, p3)``: call the global function named ``fn`` with up to three
  string params.

They return 1, or -1 when the code does not compile, the file or the function does not
exist, it raises an error or runs out of its budget (logged with the calling route's
file:line and the chunk's). ``KSR.x.exit()`` in a chunk stops the calling route as
usual. Compiled chunks are kept in a small LRU cache keyed by the source text
(``CHUNK_CACHE_SIZE``), so a route running the same text again does not compile it
again.

Budget
------
A chunk (or file, or function called by ``run``) runs in a coroutine of its own with a
count hook (``debug.sethook``) every ``HOOK_STEP`` Lua instructions: past
``budget_instructions`` instructions or ``budget_ms`` milliseconds of CPU time
(``os.clock``) it is stopped with the error "instruction budget exceeded" / "time
budget exceeded" naming the chunk's file:line, and the call returns -1. Time spent
waiting (an async call in the chunk: the chunk's coroutine yields through to the
route's driver) does not count, and the hook is off while it waits, so other routes
never run under it. Once over budget every further instruction of the chunk raises
the error again, so a ``pcall`` inside the chunk cannot swallow it; ``debug.sethook``
is refused while a budgeted chunk runs. With LuaJIT, the chunk's functions (and those
called by ``run``) are run by the interpreter (``jit.off(f, true)``: compiled code
does not call hooks); a loop inside another function the chunk calls that LuaJIT has
already compiled is not interrupted (lua54 has no such gap), unless ``[lua]
route_budget_ms`` is on (the default), which turns LuaJIT's JIT off altogether. Memory
is not bounded.

Params (``[modparams.app_lua]``): ``budget_instructions`` (default 10000000; 0: no
limit) and ``budget_ms`` (default 1000; 0: no limit), both settable at runtime
(``cfg.set app_lua budget_ms 200``); ``mi_runstring`` (default false) enables the MI
command.

MI command ``app_lua.runstring`` (``code``, optional ``args``: a list or its JSON
text), refused unless ``mi_runstring = true``: runs a chunk, under the same budget, in
an event_route context on the faked OPTIONS message (as timer routes) and returns
``{"result": <the chunk's first return value>}`` (an error: -32000 with the message).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..mi.cfg import runtime_param
from ..mi.registry import COMMAND_FAILED, UNAVAILABLE, InvalidParams, MiContext, MiError
from ..script.context import MsgContext, faked_context
from ..script.exports import ModuleBuilder, RouteType
from ..script.modparams import modparams_of

log = logging.getLogger("trio_sip.script")

#: compiled chunks kept per Lua runtime
CHUNK_CACHE_SIZE = 64
#: Lua instructions between two runs of the budget hook
HOOK_STEP = 1000


@dataclass(frozen=True)
class AppLuaParams:
    """``[modparams.app_lua]``."""

    #: Lua instructions one runstring/dostring/dofile/run may execute (0: no limit)
    budget_instructions: int = runtime_param(10_000_000)
    #: CPU milliseconds one of them may take, waits excluded (0: no limit)
    budget_ms: int = runtime_param(1000)
    #: allow the MI command app_lua.runstring (operators running Lua in the server)
    mi_runstring: bool = False

    def validate(self) -> None:
        if self.budget_instructions < 0:
            raise ValueError("budget_instructions must be >= 0 (0: no limit)")
        if self.budget_ms < 0:
            raise ValueError("budget_ms must be >= 0 (0: no limit)")


m = ModuleBuilder("app_lua", "Running Lua source text, files and functions by name "
                  "(Kamailio app_lua).", params=AppLuaParams)

# Installs, the first time an export of this module is built in a Lua runtime:
# tsip_app_lua_chunk(code) -> f | nil, err (LRU cache by source text, JIT off);
# tsip_app_lua_exec(f, max_instructions, max_ms, ...) -> true, results... | false, err
# (f in a coroutine of its own under the budget; its yields pass through);
# tsip_app_lua_fail(what, msg) -> -1 (logged with the calling route's file:line).
_SETUP = (
    "if tsip_app_lua_chunk == nil then "
    "  local cache, used, n, tick = {}, {}, 0, 0 "
    "  local compile = loadstring or load "
    # the raw sethook for the chunk's own hooks; a script's debug.sethook goes through
    # the route budget's guard (script/engine.py) and then this module's
    "  local sethook, gethook, getinfo = tsip_sethook or debug.sethook, debug.gethook, "
    "    debug.getinfo "
    "  local guarded_sethook = debug.sethook "
    "  local create, resume, status, yield, running = coroutine.create, coroutine.resume, "
    "    coroutine.status, coroutine.yield, coroutine.running "
    "  local clock, select, unpack = os.clock, select, table.unpack or unpack "
    "  local jit_off = type(jit) == 'table' and jit.off or nil "
    f"  local STEP = {HOOK_STEP} "
    "  local active = 0 "
    "  function tsip_app_lua_chunk(code) "
    "    tick = tick + 1 "
    "    local f = cache[code] "
    "    if f ~= nil then used[code] = tick return f end "
    "    local err f, err = compile(code, '=app_lua.runstring') "
    "    if not f then return nil, err end "
    "    if jit_off then jit_off(f, true) end "
    f"    if n >= {CHUNK_CACHE_SIZE} then "
    "      local old, t = nil, math.huge "
    "      for k, u in pairs(used) do if u < t then old, t = k, u end end "
    "      cache[old] = nil used[old] = nil n = n - 1 "
    "    end "
    "    cache[code] = f used[code] = tick n = n + 1 "
    "    return f "
    "  end "
    "  debug.sethook = function(...) "
    "    if active > 0 then error('debug.sethook is not allowed in a budgeted app_lua chunk', 2) end "
    "    return guarded_sethook(...) "
    "  end "
    "  local function pack(...) return {n = select('#', ...), ...} end "
    # Lua 5.x keeps the hook function per coroutine: one a budgeted chunk creates gets
    # the chunk's hook (LuaJIT's hooks are global already)
    "  coroutine.create = function(f) "
    "    local c = create(f) "
    "    if active > 0 then local h, mask, n = gethook() if h then sethook(c, h, mask, n) end end "
    "    return c "
    "  end "
    "  local wrap = coroutine.wrap "
    "  coroutine.wrap = function(f) "
    "    if active == 0 then return wrap(f) end "
    "    local c = coroutine.create(f) "
    "    return function(...) "
    "      local r = pack(resume(c, ...)) "
    "      if not r[1] then error(r[2], 0) end "
    "      return unpack(r, 2, r.n) "
    "    end "
    "  end "
    "  function tsip_app_lua_exec(f, max_instr, max_ms, ...) "
    "    if jit_off then jit_off(f, true) end "
    "    local co, me = create(f), running() "
    "    local counted, spent, started, over = 0, 0, 0, nil "
    "    local function hook() "
    # LuaJIT's hooks are global: never count or raise in the caller's own code
    "      if running() == me then return end "
    "      counted = counted + STEP "
    "      local why "
    "      if over then why = over "
    "      elseif max_instr > 0 and counted > max_instr then "
    "        why = 'instruction budget exceeded (' .. max_instr .. ' instructions)' "
    "      elseif max_ms > 0 and (spent + clock() - started) * 1000 > max_ms then "
    "        why = 'time budget exceeded (' .. max_ms .. ' ms)' "
    "      end "
    "      if why == nil then return end "
    "      if not over then "
    "        local i = getinfo(2, 'Sl') "
    "        over = (i and (i.short_src .. ':' .. (i.currentline or 0) .. ': ') or '') .. why "
    "        sethook(co, hook, '', 1) "
    "      end "
    "      error(over, 0) "
    "    end "
    "    local args = pack(...) "
    "    while true do "
    "      local prev = pack(gethook()) "
    "      active = active + 1 "
    "      started = clock() "
    "      sethook(co, hook, '', STEP) "
    "      local res = pack(resume(co, unpack(args, 1, args.n))) "
    "      sethook(co) "
    "      if prev[1] then sethook(prev[1], prev[2], prev[3]) end "
    "      active = active - 1 "
    "      spent = spent + (clock() - started) "
    "      if not res[1] then return false, res[2] end "
    "      if status(co) == 'dead' then return true, unpack(res, 2, res.n) end "
    "      args = pack(yield(unpack(res, 2, res.n))) "
    "    end "
    "  end "
    "  function tsip_app_lua_fail(what, msg) "
    "    local i = getinfo(3, 'Sl') "
    "    local where = i and (i.short_src .. ':' .. (i.currentline or 0)) or '?' "
    "    tsip_log('err', where, 'KSR.app_lua.' .. what .. ': ' .. tostring(msg)) "
    "    return -1 "
    "  end "
    "  function tsip_app_lua_mi(f, max_instr, max_ms, ...) "
    "    local r = pack(tsip_app_lua_exec(f, max_instr, max_ms, ...)) "
    "    if not r[1] then error(r[2], 0) end "
    "    return r[2] "
    "  end "
    "end "
)


def _lua(body: str) -> str:
    return (f"(function() {_SETUP} local chunk, exec, fail = tsip_app_lua_chunk, "
            f"tsip_app_lua_exec, tsip_app_lua_fail return {body} end)()")


# ``run`` the compiled ``f`` with the budget and the route's varargs ``{args}``
_EXEC = (
    "local mi, ms = KSR.app_lua._budget() "
    "local ok, e = exec(f, mi, ms{args}) "
    "if not ok then "
    "  if e == '~~ksr~exit~~' then error(e, 0) end "
    "  return (fail('{name}', e)) "
    "end "
    "return 1 "
)

_RUN_CHUNK = (
    "if type(code) ~= 'string' then return (fail('{name}', 'code must be a string')) end "
    "local f, err = chunk(code) "
    "if not f then return (fail('{name}', 'cannot compile: ' .. tostring(err))) end "
    + _EXEC
)

for _name, _doc in (
    ("runstring", "Compile ``code`` as a Lua chunk and run it in the current route "
                  "(Kamailio lua_runstring), under the app_lua budget. Returns 1, or -1 "
                  "(logged) when it does not compile, raises an error or runs out of "
                  "budget. Pass values with runstring_args(), never by splicing them into "
                  "``code``."),
    ("dostring", "Same as runstring() (Kamailio lua_dostring)."),
):
    m.lua_export(_name, _lua("function(code) " + _RUN_CHUNK.format(name=_name, args="")
                             + "end"),
                 params=("str",), ret="int", doc=_doc)

m.lua_export(
    "runstring_args",
    _lua("function(code, ...) " + _RUN_CHUNK.format(name="runstring_args", args=", ...")
         + "end"),
    params=("str", "any", "any", "any", "any", "any", "any", "any", "any"), min_args=1,
    ret="int",
    doc="Like runstring(), and the chunk receives the other arguments as its varargs "
        "(``local a, b = ...``): values stay values, a quote or ``]]`` in them cannot change "
        "the code (trio-sip addition). Returns 1, or -1 (logged).",
)

m.lua_export(
    "dofile",
    _lua(
        "function(path) "
        "if type(path) ~= 'string' then return (fail('dofile', 'path must be a string')) end "
        "local f, err = loadfile(path) "
        "if not f then return (fail('dofile', 'cannot load: ' .. tostring(err))) end "
        + _EXEC.format(name="dofile", args="")
        + "end"
    ),
    params=("str",), ret="int",
    doc="Load the Lua file ``path`` and run it in the current route (Kamailio lua_dofile), "
        "under the app_lua budget; the file is read at each call. Returns 1, or -1 (logged) "
        "when it does not load, raises an error or runs out of budget.",
)

m.lua_export(
    "run",
    _lua(
        "function(fn, p1, p2, p3) "
        "local g = type(fn) == 'string' and rawget(_G, fn) or nil "
        "if type(g) ~= 'function' then return (fail('run', 'no function ' .. tostring(fn))) end "
        "local f "
        "if p3 ~= nil then f = function() return g(tostring(p1), tostring(p2), tostring(p3)) end "
        "elseif p2 ~= nil then f = function() return g(tostring(p1), tostring(p2)) end "
        "elseif p1 ~= nil then f = function() return g(tostring(p1)) end "
        "else f = function() return g() end end "
        "if type(jit) == 'table' then jit.off(g, true) end "
        + _EXEC.format(name="run", args="")
        + "end"
    ),
    params=("str", "str", "str", "str"), min_args=1, ret="int",
    doc="Call the global function named ``fn`` with up to three string params "
        "(Kamailio lua_run), under the app_lua budget. Returns 1, or -1 (logged) when "
        "there is no such function, it raises an error or runs out of budget.",
)


def params_of(core: Any) -> AppLuaParams:
    """The app_lua params of a server (defaults without one)."""
    return modparams_of(core, "app_lua", AppLuaParams)


@m.export((), ret="xval", name="_budget")
def _budget(ctx: MsgContext) -> tuple[int, int]:
    """Internal: the budget of a chunk (instructions, milliseconds), read at each call."""
    p = params_of(ctx.core)
    return p.budget_instructions, p.budget_ms


# -- MI ---------------------------------------------------------------------------------

def _mi_args(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidParams(f"args is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise InvalidParams("args must be a list (or its JSON text)")
    out: list[Any] = []
    for v in raw:
        out.append(v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v))
    return out


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


@m.mi("runstring", params=("code", "args?"))
async def mi_runstring(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Run Lua ``code`` (under the app_lua budget) in an event_route context on the faked
    OPTIONS message (``KSR.corex.is_faked_msg()`` is 1, as in timer routes); ``args``
    (a list or its JSON text) are the chunk's varargs. Returns ``{"result": value}``.
    Refused unless ``[modparams.app_lua] mi_runstring = true``."""
    core = ctx.core
    p = params_of(core)
    if not p.mi_runstring:
        raise MiError(UNAVAILABLE, "app_lua.runstring is disabled: set "
                      "[modparams.app_lua] mi_runstring = true to let operators run Lua")
    code = params.get("code")
    if not isinstance(code, str):
        raise InvalidParams("code must be a string")
    args = _mi_args(params.get("args"))
    engine = core.engine
    g = engine.lua.globals()
    compile_chunk, run = g.tsip_app_lua_chunk, g.tsip_app_lua_mi
    if compile_chunk is None or run is None:
        raise MiError(COMMAND_FAILED, "the app_lua module is not loaded")
    res = compile_chunk(code)
    f, err = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
    if f is None:
        raise MiError(COMMAND_FAILED, f"cannot compile: {err}")
    mctx = faked_context(core, RouteType.EVENT)
    step = await core._drive(mctx, engine.start(run, mctx, f, p.budget_instructions,
                                                p.budget_ms, *args))
    await core.flush(mctx)
    if step.failed:
        log.error("MI app_lua.runstring failed: %s", step.value)
        raise MiError(COMMAND_FAILED, f"runstring failed: {step.value}")
    return {"result": _jsonable(step.value)}


MODULE = m.build()
