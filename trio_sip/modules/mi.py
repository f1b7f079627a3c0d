"""KSR.mi: management commands from a route (OpenSIPS ``mi()``, Kamailio ``jsonrpcs.exec``).

* ``KSR.mi.mi(command[, params_json])`` runs one command (``"tm.stats"``,
  ``"app_lua.reload"``, ``"rtpengine.ping"``) and returns its result as JSON text,
  or a negative number on error: the JSON-RPC error code (-32601 unknown command,
  -32602 bad params, -32000.. the command failed, see trio_sip/mi/registry.py),
  whose message ``KSR.mi.error()`` then returns. ``params_json`` is a JSON array
  or object; without it, words after the command are positional string params, as
  in OpenSIPS (``KSR.mi.mi("stats.get_statistics tm: core:")``).
* ``KSR.mi.exec(json_rpc_text)`` runs a whole JSON-RPC 2.0 request (or batch) and
  returns the reply text ("" for a notification), like Kamailio's
  ``KSR.jsonrpcs.exec``; ``$jsonrpl(code)``, ``$jsonrpl(text)`` and
  ``$jsonrpl(body)`` hold the outcome (200/"OK" or the error's code and message).
* ``KSR.jsonrpcs.exec(json_rpc_text)``: Kamailio's own, returns 1 (or -1 on an
  error reply) and leaves the reply in ``$jsonrpl(body)``.

Quick commands run inside the call. A command that waits (declared async, e.g.
``rtpengine.ping``) makes the route wait for it, in place, like any async export,
where the route can wait (request, failure, onreply, branch-failure and event
routes); elsewhere it answers -32003.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..mi.registry import (
    CANNOT_WAIT,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    PARSE_ERROR,
    UNAVAILABLE,
    MiContext,
    MiError,
)
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..script.ops import AsyncOp

#: Routes where a command may wait. Branch routes run synchronously inside t_relay
#: and the core reply route in the receive loop: neither can wait.
WAIT_ROUTES = (RouteType.REQUEST | RouteType.FAILURE | RouteType.ONREPLY
               | RouteType.BRANCH_FAILURE | RouteType.EVENT)

_ERROR_KEY = "\x00mi.error"
_JSONRPL_KEY = "\x00jsonrpl"



def _wait_if_op(params: str, call: str) -> str:
    """A Lua export: the Python side (``call``) answers at once (a string or a
    number), or returns the operation to wait for, which this wrapper yields to the
    runtime; the route resumes with the operation's result."""
    return (f"function({params}) local r = {call} "
            "if type(r) == 'userdata' then return coroutine.yield(r) end return r end")

m = ModuleBuilder("mi", "Management commands from routes (OpenSIPS mi(), Kamailio "
                        "jsonrpcs.exec), the same commands as trio-sip ctl.")


def _mi(ctx: MsgContext) -> MiContext | None:
    mi = getattr(ctx.core, "mi", None)
    return mi if isinstance(mi, MiContext) else None


def _from_lua(text: str) -> str:
    # Lua strings cross as latin-1: JSON written in a UTF-8 script comes as its bytes
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _to_lua(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def _can_wait(ctx: MsgContext) -> bool:
    return bool(ctx.route_type & WAIT_ROUTES)


# -- KSR.mi.mi ------------------------------------------------------------------------------


def _fail(ctx: MsgContext, exc: MiError) -> int:
    ctx.vars[_ERROR_KEY] = exc.message
    return exc.code


def _result(ctx: MsgContext, result: Any) -> Any:
    ctx.vars.pop(_ERROR_KEY, None)
    try:
        return _to_lua(json.dumps(result, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        return _fail(ctx, MiError(INTERNAL_ERROR, "Internal error: the result is not JSON"))


@dataclass(repr=False)
class MiCallOp(AsyncOp):
    """``KSR.mi.mi()`` of a command that waits: the route resumes with its result."""

    command: str
    params: Any
    name: str = "mi"

    async def run(self, ctx: MsgContext) -> Any:
        mi = _mi(ctx)
        if mi is None:
            return _fail(ctx, MiError(UNAVAILABLE, "no management interface in this server"))
        try:
            result = await mi.registry.call(self.command, self.params, mi)
        except MiError as exc:
            return _fail(ctx, exc)
        return _result(ctx, result)


@m.export(("str", "str"), min_args=1, ret="xval", name="_call")
def _call(ctx: MsgContext, command: str, params: str | None = None) -> Any:
    """Internal: the Python side of ``KSR.mi.mi`` (a result, a code, or an operation)."""
    mi = _mi(ctx)
    if mi is None:
        return _fail(ctx, MiError(UNAVAILABLE, "no management interface in this server"))
    name = command.strip()
    args: Any = None
    if params is None or params.strip() == "":
        words = name.split()
        if not words:
            return _fail(ctx, MiError(INVALID_PARAMS, "Invalid params: no command"))
        name, args = words[0], (words[1:] or None)
    else:
        try:
            args = json.loads(_from_lua(params))
        except (ValueError, RecursionError) as exc:
            return _fail(ctx, MiError(PARSE_ERROR, f"Parse error in params: {exc}"))
        if not isinstance(args, (list, dict)):
            return _fail(ctx, MiError(INVALID_PARAMS,
                                      "Invalid params: params must be a JSON array or object"))
    if mi.registry.is_async(name):
        if not _can_wait(ctx):
            return _fail(ctx, MiError(CANNOT_WAIT, f"{name} waits: not in a "
                                      f"{ctx.route_type.label}"))
        return MiCallOp(name, args, name=f"mi.{name}")
    try:
        result = mi.registry.call_now(name, args, mi)
    except MiError as exc:
        return _fail(ctx, exc)
    return _result(ctx, result)


m.lua_export(
    "mi", _wait_if_op("...", "KSR.mi._call(...)"), params=("str", "str"), min_args=1, ret="xval",
    doc="Run the management command ``command`` (OpenSIPS mi()) with ``params`` (a JSON "
        "array or object; without it, the words after the command name are its params) "
        "and return its result as JSON text, or the negative JSON-RPC error code (the "
        "message is in KSR.mi.error()). A command that waits makes the route wait.",
)


@m.export((), ret="str")
def error(ctx: MsgContext) -> str:
    """The message of the last KSR.mi.mi() error of this message ("" if none)."""
    return _to_lua(str(ctx.vars.get(_ERROR_KEY, "")))


# -- KSR.mi.exec / KSR.jsonrpcs.exec ------------------------------------------------------


def _exec_done(ctx: MsgContext, reply: str | None, as_int: bool) -> Any:
    code, text = 200, "OK"
    if reply is not None:
        try:
            doc = json.loads(reply)
        except ValueError:  # pragma: no cover - the registry writes valid JSON
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            code = int(doc["error"].get("code", INTERNAL_ERROR))
            text = str(doc["error"].get("message", ""))
    ctx.vars[_JSONRPL_KEY] = (code, text, reply or "")
    if as_int:
        return 1 if code == 200 else -1
    return _to_lua(reply or "")


@dataclass(repr=False)
class MiExecOp(AsyncOp):
    """``KSR.mi.exec()`` of a request that calls a command that waits."""

    payload: str
    as_int: bool
    name: str = "mi.exec"

    async def run(self, ctx: MsgContext) -> Any:
        mi = _mi(ctx)
        if mi is None:
            return _exec_done(ctx, _unavailable(), self.as_int)
        return _exec_done(ctx, await mi.registry.handle(self.payload, mi), self.as_int)


def _unavailable() -> str:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": UNAVAILABLE, "message": "no management interface in this server"}})


@m.export(("str", "int"), min_args=1, ret="xval", name="_exec")
def _exec(ctx: MsgContext, payload: str, as_int: int | None = None) -> Any:
    """Internal: the Python side of ``KSR.mi.exec`` and ``KSR.jsonrpcs.exec``."""
    flag = bool(as_int)
    mi = _mi(ctx)
    if mi is None:
        return _exec_done(ctx, _unavailable(), flag)
    text = _from_lua(payload)
    methods = mi.registry.methods_in(text) or []
    if _can_wait(ctx) and any(mi.registry.is_async(n) for n in methods):
        return MiExecOp(text, flag)
    return _exec_done(ctx, mi.registry.handle_now(text, mi), flag)


m.lua_export(
    "exec", _wait_if_op("s", "KSR.mi._exec(s, 0)"),
    params=("str",), ret="str",
    doc="Run a JSON-RPC 2.0 request or batch (text) and return the reply text (\"\" for a "
        "notification), like Kamailio's KSR.jsonrpcs.exec; $jsonrpl(code), $jsonrpl(text) "
        "and $jsonrpl(body) hold the outcome.",
)

MODULE = m.build()

j = ModuleBuilder("jsonrpcs", "Kamailio's jsonrpcs.exec: JSON-RPC commands from routes.")
j.lua_export(
    "exec", _wait_if_op("s", "KSR.mi._exec(s, 1)"),
    params=("str",), ret="int",
    doc="Run a JSON-RPC 2.0 request (text): 1, or -1 if the reply is an error; the reply is "
        "in $jsonrpl(body), its code in $jsonrpl(code) (200 on success) and message in "
        "$jsonrpl(text) (Kamailio jsonrpcs).",
)
JSONRPCS_MODULE = j.build()


def _jsonrpl(ctx: MsgContext, what: str) -> Any:
    found = ctx.vars.get(_JSONRPL_KEY)
    if found is None:
        return None
    code, text, body = found
    if what == "code":
        return code
    if what == "text":
        return _to_lua(text)
    if what == "body":
        return _to_lua(body)
    raise pv.PvError(f"$jsonrpl({what}): expected code, text or body")


pv.register("jsonrpl", _jsonrpl, needs_arg=True)
