"""KSR.* core functions and KSR.x (Kamailio ``src/core/kemi.c``).

Return conventions follow KEMI: ``bool`` exports return true/false, ``int``
exports return >0 for success, <0 for failure.
"""

from __future__ import annotations

import logging
from typing import Any

from ..script.context import MsgContext
from ..script.exports import REQUEST_ROUTES, ModuleBuilder, RouteType
from ..sip.errors import BadMessage
from ..sip.message import SipRequest
from ..sip.uri import URI, parse_uri_untrusted, shared_uri_untrusted

log = logging.getLogger("trio_sip.script")

core = ModuleBuilder("", "Core functions directly under KSR: methods, flags, URIs, logging.")

_METHOD_LETTERS = {
    "I": "INVITE", "A": "ACK", "B": "BYE", "C": "CANCEL", "R": "REGISTER", "M": "MESSAGE",
    "O": "OPTIONS", "S": "SUBSCRIBE", "P": "PUBLISH", "N": "NOTIFY", "U": "UPDATE",
    "K": "KDMQ", "G": "GET", "T": "POST", "V": "PUT", "D": "DELETE", "F": "REFER", "E": "PRACK",
}


def _method(ctx: MsgContext) -> str:
    m = ctx.msg
    return m.method if isinstance(m, SipRequest) else m.cseq_method


def _is_method(name: str) -> None:
    def fn(ctx: MsgContext) -> bool:
        return _method(ctx) == name

    fn.__name__ = f"is_{name}"
    fn.__doc__ = f"True if the message is a {name} request (or a reply to one)."
    # answered in Lua from the method the engine passes when the route starts (the same
    # _method() value); a call with arguments defers to the Python export (an error)
    fast = f'function(m, ...) if select("#", ...) == 0 then return m == "{name}" end end'
    core.export(ret="bool", lua_fast=fast)(fn)


for _m in ("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "PUBLISH",
           "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE", "KDMQ", "GET", "POST", "PUT",
           "DELETE"):
    _is_method(_m)


@core.export(("str",), ret="bool")
def is_method(ctx: MsgContext, name: str) -> bool:
    """True if the method is ``name``, or one of ``"INVITE|BYE|..."`` (compared
    case-insensitively, as Kamailio does)."""
    m = _method(ctx).upper()
    return any(m == n.strip().upper() for n in name.split("|")) if name else False


# is_method_in in Lua: each letter's byte (either case) to its method, for a string
# argument; anything else (a number, nil, extra arguments) defers to the Python export
_IS_METHOD_IN_FAST = (
    "(function() local M = {"
    + ", ".join(f"[{ord(k)}] = '{v}', [{ord(k.lower())}] = '{v}'"
                for k, v in _METHOD_LETTERS.items())
    + "} local byte = string.byte "
    "return function(m, letters, ...) "
    "if type(letters) ~= 'string' or select('#', ...) ~= 0 then return nil end "
    "for i = 1, #letters do if M[byte(letters, i)] == m then return true end end "
    "return false end end)()"
)


@core.export(("str",), ret="bool", lua_fast=_IS_METHOD_IN_FAST)
def is_method_in(ctx: MsgContext, letters: str) -> bool:
    """True if the method is one of the letters: I A B C R M O S P N U (K G T V D F E);
    lower case letters too, as in Kamailio."""
    m = _method(ctx)
    return any(_METHOD_LETTERS.get(c.upper()) == m for c in letters)


# -- myself --------------------------------------------------------------------


def _uri_is_myself(ctx: MsgContext, text: str | None) -> bool:
    if not text:
        return False
    if not text[:5].lower().startswith(("sip:", "sips:")):
        # Kamailio's is_myself() takes anything else as a host name ("127.0.0.1")
        return bool(ctx.core.is_myself(text.strip().strip("[]").lower(), None, ""))
    try:
        u = shared_uri_untrusted(text)  # read only: no copy
    except BadMessage:
        return False
    return bool(ctx.core.is_myself(u.host_bare, u.port, u.transport))


@core.export(("str",), ret="bool")
def is_myself(ctx: MsgContext, uri: str) -> bool:
    """True if the URI's host and port name this server."""
    return _uri_is_myself(ctx, uri)


@core.export(ret="bool", routes=REQUEST_ROUTES)
def is_myself_ruri(ctx: MsgContext) -> bool:
    """True if the (current) Request-URI names this server."""
    return _uri_is_myself(ctx, ctx.request.current_uri)


@core.export(ret="bool", routes=REQUEST_ROUTES)
def is_myself_duri(ctx: MsgContext) -> bool:
    """True if the destination URI ($du) names this server."""
    return _uri_is_myself(ctx, ctx.request.dst_uri)


@core.export(ret="bool", routes=REQUEST_ROUTES)
def is_myself_nhuri(ctx: MsgContext) -> bool:
    """True if the next hop ($du, else the R-URI) names this server."""
    req = ctx.request
    return _uri_is_myself(ctx, req.dst_uri or req.current_uri)


@core.export(ret="bool")
def is_myself_furi(ctx: MsgContext) -> bool:
    """True if the From URI names this server."""
    u = ctx.msg.from_.uri
    return _uri_is_myself(ctx, str(u) if u is not None else None)


@core.export(ret="bool")
def is_myself_turi(ctx: MsgContext) -> bool:
    """True if the To URI names this server."""
    u = ctx.msg.to.uri
    return _uri_is_myself(ctx, str(u) if u is not None else None)


@core.export(ret="bool")
def is_myself_srcip(ctx: MsgContext) -> bool:
    """True if the message came from one of this server's own addresses."""
    return bool(ctx.core.is_my_ip(ctx.source.host))


# -- flags ---------------------------------------------------------------------


def _flag(fn: str, i: int) -> int:
    """The bit of flag ``i``, or 0 (logged) when it is out of 0..31: Kamailio's
    flag functions then return false instead of stopping the script."""
    if not 0 <= i <= 31:
        log.error("KSR.%s: invalid flag %d (0..31)", fn, i)
        return 0
    return 1 << i


@core.export(("int",), ret="bool")
def setflag(ctx: MsgContext, flag: int) -> bool:
    """Set message flag ``flag`` (0..31)."""
    bit = _flag("setflag", flag)
    ctx.flags |= bit
    return bit != 0


@core.export(("int",), ret="bool")
def resetflag(ctx: MsgContext, flag: int) -> bool:
    """Reset message flag ``flag``."""
    bit = _flag("resetflag", flag)
    ctx.flags &= ~bit
    return bit != 0


@core.export(("int",), ret="bool")
def isflagset(ctx: MsgContext, flag: int) -> bool:
    """True if message flag ``flag`` is set."""
    return bool(ctx.flags & _flag("isflagset", flag))


@core.export(("int",), ret="bool")
def setbflag(ctx: MsgContext, flag: int) -> bool:
    """Set branch flag ``flag`` of branch 0."""
    bit = _flag("setbflag", flag)
    ctx.bflags |= bit
    return bit != 0


@core.export(("int",), ret="bool")
def resetbflag(ctx: MsgContext, flag: int) -> bool:
    """Reset branch flag ``flag`` of branch 0."""
    bit = _flag("resetbflag", flag)
    ctx.bflags &= ~bit
    return bit != 0


@core.export(("int",), ret="bool")
def isbflagset(ctx: MsgContext, flag: int) -> bool:
    """True if branch flag ``flag`` of branch 0 is set."""
    return bool(ctx.bflags & _flag("isbflagset", flag))


# -- R-URI and destination -------------------------------------------------------


@core.export(("str",), ret="bool", routes=REQUEST_ROUTES)
def setdsturi(ctx: MsgContext, uri: str) -> int:
    """Set the destination URI ($du): where the request is sent, R-URI unchanged."""
    try:
        parse_uri_untrusted(uri)
    except BadMessage:
        return -1
    ctx.request.dst_uri = uri
    return 1


@core.export(ret="bool", routes=REQUEST_ROUTES)
def resetdsturi(ctx: MsgContext) -> int:
    """Clear the destination URI."""
    ctx.request.dst_uri = None
    return 1


@core.export(ret="bool", routes=REQUEST_ROUTES)
def isdsturiset(ctx: MsgContext) -> bool:
    """True if a destination URI is set."""
    return ctx.request.dst_uri is not None


@core.export(("str",), ret="bool", routes=REQUEST_ROUTES)
def seturi(ctx: MsgContext, uri: str) -> int:
    """Replace the Request-URI."""
    try:
        parse_uri_untrusted(uri)
    except BadMessage:
        return -1
    ctx.request.new_uri = uri
    return 1


def _edit_ruri(ctx: MsgContext, **change: Any) -> int:
    req = ctx.request
    u: URI = req.ruri.copy()
    for k, v in change.items():
        setattr(u, k, v)
    u.changed()
    req.new_uri = str(u)
    return 1


@core.export(("str",), ret="bool", routes=REQUEST_ROUTES)
def setuser(ctx: MsgContext, user: str) -> int:
    """Replace the user part of the Request-URI."""
    return _edit_ruri(ctx, user=user or None)


@core.export(("str",), ret="bool", routes=REQUEST_ROUTES)
def sethost(ctx: MsgContext, host: str) -> int:
    """Replace the host part of the Request-URI."""
    if not host:
        return -1
    return _edit_ruri(ctx, host=host)


@core.export(ret="bool", routes=REQUEST_ROUTES)
def revert_uri(ctx: MsgContext) -> int:
    """Undo changes to the Request-URI."""
    ctx.request.new_uri = None
    return 1


@core.export(routes=REQUEST_ROUTES, is_async=True)
def forward(ctx: MsgContext) -> Any:
    """Forward statelessly to $du or the R-URI (RFC 3261 §16.11). A host name is resolved
    (RFC 3263: NAPTR, SRV, A/AAAA) and the first usable target is used; the route waits
    only when the answer is not cached (no transaction is created for that wait).
    1, or -1 (unresolvable: $err 478; refused by the loopback guard: 477)."""
    return ctx.core.forward(ctx)


@core.export(("str",), routes=REQUEST_ROUTES, is_async=True)
def forward_uri(ctx: MsgContext, uri: str) -> Any:
    """Forward statelessly to the given URI (resolved like forward())."""
    return ctx.core.forward(ctx, uri)


@core.export(ret="bool")
def force_rport(ctx: MsgContext) -> bool:
    """Answer to the source port even if the top Via has no rport (RFC 3581)."""
    ctx.core.set_force_rport(ctx)
    return True


# -- drop ------------------------------------------------------------------------


@core.export(ret="none")
def set_drop(ctx: MsgContext) -> None:
    """Mark the message to be dropped at the end of the route; the route goes on."""
    ctx.drop = True


core.alias("drop", "set_drop")


# -- logging (implemented in Lua: the file:line comes from debug.getinfo) ----------

_LOG_FN = (
    "function(msg) if tsip_log_on.{lvl} then local i = debug.getinfo(2, 'Sl') "
    "tsip_log('{lvl}', i.short_src .. ':' .. (i.currentline or 0), msg) end end"
)
for _name, _lvl, _doc in (
    ("dbg", "dbg", "DEBUG"), ("info", "info", "INFO"), ("notice", "notice", "NOTICE"),
    ("warn", "warn", "WARNING"), ("err", "err", "ERROR"), ("crit", "crit", "CRITICAL"),
):
    core.lua_export(_name, _LOG_FN.format(lvl=_lvl), params=("str",),
                    doc=f"Log a line at {_doc} level, prefixed with the script's file:line.")

core.lua_export(
    "log",
    "function(level, msg) local lv = ({dbg='dbg', debug='dbg', info='info', notice='notice', "
    "warn='warn', warning='warn', err='err', error='err', crit='crit', alert='crit'})[level] "
    "or 'err' if tsip_log_on[lv] then local i = debug.getinfo(2, 'Sl') "
    "tsip_log(lv, i.short_src .. ':' .. (i.currentline or 0), msg) end end",
    params=("str", "str"),
    doc='Log at a level given by name ("dbg", "info", "notice", "warn", "err", "crit"); '
        'unknown names log at "err".',
)

MODULE = core.build()

# -- KSR.x ----------------------------------------------------------------------

x = ModuleBuilder("x", "Script control: exit and drop (they stop the route).")
x.lua_export("exit", "function() error('~~ksr~exit~~', 0) end",
             doc="Stop the route (like exit in kamailio.cfg).")
x.lua_export(
    "drop",
    "function() KSR.set_drop() error('~~ksr~exit~~', 0) end",
    doc="Mark the message dropped and stop the route.",
)
X_MODULE = x.build()

__all__ = ["MODULE", "X_MODULE", "RouteType"]
