"""KSR.app_lua: running Lua text and functions by name (Kamailio ``app_lua``
``lua_runstring`` / ``lua_dostring`` / ``lua_run``).

* ``runstring(code)`` / ``dostring(code)``: compile ``code`` as a chunk and run it in
  the current route (it can use KSR, globals, and wait: the route waits with it).
* ``runstring_args(code, ...)`` (trio-sip addition): the same, and the chunk receives
  the other arguments as its varargs (``local user, hdr = ...``). Values never become
  source text: pass a header value as an argument instead of splicing it into the code
  (Kamailio's examples build code with string concatenation, which a ``]]`` or a quote
  in the value breaks out of; here it cannot).
* ``run(fn, p1, p2, p3)``: call the global function named ``fn`` with up to three
  string params.

They return 1, or -1 when the code does not compile, the function does not exist or
it raises an error (logged with the script's file:line). ``KSR.x.exit()`` in a chunk
stops the calling route as usual. Compiled chunks are kept in a small LRU cache keyed
by the source text (``CHUNK_CACHE_SIZE``), so a route running the same text again does
not compile it again. With Lua 5.1 (not LuaJIT), a chunk cannot wait (yield across
pcall): it fails with -1.

MI command ``app_lua.runstring`` (``code``, optional ``args``: a list or its JSON
text) runs a chunk in an event_route context with a dummy OPTIONS message and returns
``{"result": <the chunk's return value>}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..mi.registry import COMMAND_FAILED, InvalidParams, MiContext, MiError
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.parser import parse_message_untrusted
from ..transport.base import Address

#: compiled chunks kept per Lua runtime
CHUNK_CACHE_SIZE = 64

m = ModuleBuilder("app_lua", "Running Lua source text and functions by name (Kamailio app_lua).")

# Installs the global tsip_app_lua_chunk(code) -> f | nil, err (LRU cache by source text)
# and tsip_app_lua_fail(where, msg) -> -1 the first time an export of this module is built.
_SETUP = (
    "if tsip_app_lua_chunk == nil then "
    "  local cache, used, n, tick = {}, {}, 0, 0 "
    "  local compile = loadstring or load "
    "  function tsip_app_lua_chunk(code) "
    "    tick = tick + 1 "
    "    local f = cache[code] "
    "    if f ~= nil then used[code] = tick return f end "
    "    local err f, err = compile(code, '=app_lua.runstring') "
    "    if not f then return nil, err end "
    f"    if n >= {CHUNK_CACHE_SIZE} then "
    "      local old, t = nil, math.huge "
    "      for k, u in pairs(used) do if u < t then old, t = k, u end end "
    "      cache[old] = nil used[old] = nil n = n - 1 "
    "    end "
    "    cache[code] = f used[code] = tick n = n + 1 "
    "    return f "
    "  end "
    "  function tsip_app_lua_fail(what, msg) "
    "    local i = debug.getinfo(3, 'Sl') "
    "    local where = i and (i.short_src .. ':' .. (i.currentline or 0)) or '?' "
    "    tsip_log('err', where, 'KSR.app_lua.' .. what .. ': ' .. tostring(msg)) "
    "    return -1 "
    "  end "
    "end "
)


def _lua(body: str) -> str:
    return f"(function() {_SETUP} local chunk, fail = tsip_app_lua_chunk, tsip_app_lua_fail " \
           f"return {body} end)()"


_RUN_CHUNK = (
    "if type(code) ~= 'string' then return (fail('{name}', 'code must be a string')) end "
    "local f, err = chunk(code) "
    "if not f then return (fail('{name}', 'cannot compile: ' .. tostring(err))) end "
    "local ok, e = pcall(f{args}) "
    "if not ok then "
    "  if e == '~~ksr~exit~~' then error(e, 0) end "
    "  return (fail('{name}', e)) "
    "end "
    "return 1 "
)

for _name, _doc in (
    ("runstring", "Compile ``code`` as a Lua chunk and run it in the current route "
                  "(Kamailio lua_runstring). Returns 1, or -1 (logged) when it does not "
                  "compile or raises an error. Pass values with runstring_args(), never "
                  "by splicing them into ``code``."),
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
    "run",
    _lua(
        "function(fn, p1, p2, p3) "
        "local f = type(fn) == 'string' and rawget(_G, fn) or nil "
        "if type(f) ~= 'function' then return (fail('run', 'no function ' .. tostring(fn))) end "
        "local ok, e "
        "if p3 ~= nil then ok, e = pcall(f, tostring(p1), tostring(p2), tostring(p3)) "
        "elseif p2 ~= nil then ok, e = pcall(f, tostring(p1), tostring(p2)) "
        "elseif p1 ~= nil then ok, e = pcall(f, tostring(p1)) "
        "else ok, e = pcall(f) end "
        "if not ok then "
        "  if e == '~~ksr~exit~~' then error(e, 0) end "
        "  return (fail('run', e)) "
        "end "
        "return 1 end"
    ),
    params=("str", "str", "str", "str"), min_args=1, ret="int",
    doc="Call the global function named ``fn`` with up to three string params "
        "(Kamailio lua_run). Returns 1, or -1 (logged) when there is no such function "
        "or it raises an error.",
)

# -- MI ---------------------------------------------------------------------------------

_DUMMY_OPTIONS = (
    b"OPTIONS sip:mi@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK-mi-runstring\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:mi@127.0.0.1>;tag=mi\r\n"
    b"To: <sip:mi@127.0.0.1>\r\n"
    b"Call-ID: mi-runstring@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


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
    """Run Lua ``code`` in an event_route context with a dummy OPTIONS message; ``args``
    (a list or its JSON text) are the chunk's varargs. Returns ``{"result": value}``."""
    code = params.get("code")
    if not isinstance(code, str):
        raise InvalidParams("code must be a string")
    args = _mi_args(params.get("args"))
    core = ctx.core
    engine = core.engine
    compile_chunk = engine.lua.globals().tsip_app_lua_chunk
    if compile_chunk is None:
        raise MiError(COMMAND_FAILED, "the app_lua module is not loaded")
    res = compile_chunk(code)
    f, err = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
    if f is None:
        raise MiError(COMMAND_FAILED, f"cannot compile: {err}")
    transport = next(iter(core.transports.values()), None)
    mctx = MsgContext(parse_message_untrusted(_DUMMY_OPTIONS), Address("127.0.0.1", 0),
                      transport, None, RouteType.EVENT, core)  # type: ignore[arg-type]
    step = await core._drive(mctx, engine.start(f, mctx, *args))
    await core.flush(mctx)
    if step.failed:
        raise MiError(COMMAND_FAILED, f"runstring failed: {step.value}")
    return {"result": _jsonable(step.value)}


MODULE = m.build()
