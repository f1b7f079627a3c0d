"""Pseudo-variables (``$ru``, ``$hdr(Name)``, ``$var(x)``, ...) for ``KSR.pv``.

A PV name is parsed once into a :class:`PvSpec` (cached: route scripts use a
small set of literal names) holding a getter and, for writable ones, a setter.
Modules add their own classes (``$T_reply_code``, ``$sht(t=>k)``) with
:func:`register`.

Getters return ``str``, ``int`` or ``None`` (Kamailio's ``$null``); ``KSR.pv.get``
hands that to Lua unchanged (nil for null), as Kamailio's ``xval`` does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..sip.errors import BadMessage
from ..sip.headers import parse_name_addr_list_untrusted
from ..sip.message import SipRequest, SipResponse
from ..sip.uri import URI, parse_uri_untrusted
from .context import MsgContext

Getter = Callable[[MsgContext, str], Any]
Setter = Callable[[MsgContext, str, Any], None]


class PvError(Exception):
    """An unknown PV, or a write to a read-only one."""


@dataclass(frozen=True, slots=True)
class PvClass:
    getter: Getter
    setter: Setter | None = None
    #: a class that needs an argument in parentheses: $hdr(Name)
    needs_arg: bool = False


@dataclass(frozen=True, slots=True)
class PvSpec:
    name: str
    arg: str
    cls: PvClass


_classes: dict[str, PvClass] = {}
_cache: dict[str, PvSpec] = {}
_STARTED = int(time.time())


def register(name: str, getter: Getter, setter: Setter | None = None, *,
             needs_arg: bool = False) -> None:
    _classes[name] = PvClass(getter, setter, needs_arg)
    _cache.clear()


def spec(text: str) -> PvSpec:
    """Parse ``$name`` or ``$name(arg)`` (also ``$(name(arg))``); cached."""
    found = _cache.get(text)
    if found is not None:
        return found
    t = text.strip()
    if not t.startswith("$"):
        raise PvError(f"not a pseudo-variable: {text!r}")
    body = t[1:]
    if body.startswith("(") and body.endswith(")"):
        body = body[1:-1]
    arg = ""
    paren = body.find("(")
    if paren >= 0:
        if not body.endswith(")"):
            raise PvError(f"bad pseudo-variable: {text!r}")
        name, arg = body[:paren], body[paren + 1 : -1]
    else:
        name = body
    cls = _classes.get(name)
    if cls is None:
        raise PvError(f"unknown pseudo-variable: {text!r}")
    if cls.needs_arg and not arg:
        raise PvError(f"pseudo-variable {text!r} needs a name in parentheses")
    s = PvSpec(name, arg, cls)
    if len(_cache) < 4096:  # dynamic names must not grow the cache without bound
        _cache[text] = s
    return s


def get(ctx: MsgContext, text: str) -> Any:
    s = spec(text)
    try:
        return s.cls.getter(ctx, s.arg)
    except BadMessage:
        return None


def set_(ctx: MsgContext, text: str, value: Any) -> None:
    s = spec(text)
    if s.cls.setter is None:
        raise PvError(f"pseudo-variable {text!r} is read-only")
    s.cls.setter(ctx, s.arg, value)


# ---------------------------------------------------------------------------
# Core PVs
# ---------------------------------------------------------------------------


def _req(ctx: MsgContext) -> SipRequest | None:
    return ctx.msg if isinstance(ctx.msg, SipRequest) else None


def _ruri(ctx: MsgContext) -> URI | None:
    """The Request-URI for the getters, which only read it (no copy: ruri_view)."""
    req = _req(ctx)
    return req.ruri_view if req is not None else None


def _set_ruri_part(ctx: MsgContext, part: str, value: Any) -> None:
    req = _req(ctx)
    if req is None:
        raise PvError("the Request-URI exists only in requests")
    uri = req.ruri.copy()
    if part == "user":
        uri.user = None if value is None or value == "" else str(value)
    elif part == "host":
        if value is None or value == "":
            raise PvError("cannot set an empty host")
        uri.host = str(value)
    elif part == "port":
        uri.port = None if value in (None, "", 0) else int(value)
    uri.changed()
    req.new_uri = str(uri)


def _set_ru(ctx: MsgContext, _arg: str, value: Any) -> None:
    req = _req(ctx)
    if req is None:
        raise PvError("the Request-URI exists only in requests")
    if value is None:
        raise PvError("$ru cannot be set to null")
    text = str(value)
    parse_uri_untrusted(text)  # refuse what could not be sent
    req.new_uri = text


def _set_du(ctx: MsgContext, _arg: str, value: Any) -> None:
    req = _req(ctx)
    if req is None:
        raise PvError("$du exists only in requests")
    if value is None or value == "":
        req.dst_uri = None
        return
    text = str(value)
    parse_uri_untrusted(text)
    req.dst_uri = text


def _uri_part(uri: URI | None, part: str) -> Any:
    if uri is None:
        return None
    if part == "user":
        return uri.user
    if part == "host":
        return uri.host or None
    if part == "port":
        return uri.port
    return str(uri)


def _hdr(ctx: MsgContext, name: str) -> Any:
    return ctx.msg.get(name)


def _hdrc(ctx: MsgContext, name: str) -> Any:
    return sum(1 for _ in ctx.msg.find(name))


def _var_get(ctx: MsgContext, name: str) -> Any:
    return ctx.vars.get(name, 0)  # Kamailio: an unset $var is 0


def _var_set(ctx: MsgContext, name: str, value: Any) -> None:
    if value is None:
        ctx.vars[name] = 0
    else:
        ctx.vars[name] = value


def _avp_get(ctx: MsgContext, name: str) -> Any:
    stack = ctx.vars.get("\0avp:" + name)
    return stack[-1] if stack else None


def _avp_set(ctx: MsgContext, name: str, value: Any) -> None:
    key = "\0avp:" + name
    if value is None:
        # Kamailio: $avp(x) = $null (KSR.pv.unset) deletes the newest value only
        stack = ctx.vars.get(key)
        if stack:
            stack.pop()
            if not stack:
                del ctx.vars[key]
    else:
        ctx.vars.setdefault(key, []).append(value)


def _shv_get(ctx: MsgContext, name: str) -> Any:
    return ctx.core.shv.get(name, 0)


def _shv_set(ctx: MsgContext, name: str, value: Any) -> None:
    ctx.core.shv[name] = 0 if value is None else value


def _flags_get(ctx: MsgContext, _arg: str) -> Any:
    return ctx.flags


def _flags_set(ctx: MsgContext, _arg: str, value: Any) -> None:
    ctx.flags = int(value or 0)


def _bflags_set(ctx: MsgContext, _arg: str, value: Any) -> None:
    ctx.bflags = int(value or 0)


def _method(ctx: MsgContext, _arg: str) -> Any:
    m = ctx.msg
    return m.method if isinstance(m, SipRequest) else m.cseq_method


def _status(ctx: MsgContext, _arg: str) -> Any:
    m = ctx.reply if ctx.reply is not None else ctx.msg
    return m.status if isinstance(m, SipResponse) else None


def _reason(ctx: MsgContext, _arg: str) -> Any:
    m = ctx.reply if ctx.reply is not None else ctx.msg
    return m.reason if isinstance(m, SipResponse) else None


def _msg_buf(ctx: MsgContext, _arg: str) -> Any:
    return ctx.msg.raw[: ctx.msg.body_start + len(ctx.msg.body)].decode("latin-1")


def _local(ctx: MsgContext, what: str) -> Any:
    local = ctx.transport.local
    return local.host if what == "ip" else local.port


def _na_part(which: str, part: str) -> Getter:
    def getter(ctx: MsgContext, _arg: str) -> Any:
        # read only: the shared parse, no copy
        na = ctx.msg.from_view if which == "from" else ctx.msg.to_view
        if part == "tag":
            return na.tag
        if part == "display":
            return na.display or None  # as written, quotes kept (Kamailio's $fn)
        return _uri_part(na.uri, part)

    return getter


def _hdr_uri(name: str) -> Getter:
    """The URI of the first entry of a name-addr header ($ai, $di, $rt), as Kamailio
    gives it (without display name and parameters)."""

    def getter(ctx: MsgContext, _arg: str) -> Any:
        value = ctx.msg.get(name)
        if value is None:
            return None
        entries = parse_name_addr_list_untrusted(value)
        uri = entries[0].uri if entries else None
        return str(uri) if uri is not None else None

    return getter


def _register_core() -> None:
    r = register
    r("ru", lambda c, _: _uri_part(_ruri(c), "uri"), _set_ru)
    r("rU", lambda c, _: _uri_part(_ruri(c), "user"), lambda c, a, v: _set_ruri_part(c, "user", v))
    r("rd", lambda c, _: _uri_part(_ruri(c), "host"), lambda c, a, v: _set_ruri_part(c, "host", v))
    r("rp", lambda c, _: (u.port or (5061 if u.scheme == "sips" else 5060)) if (u := _ruri(c))
      else None, lambda c, a, v: _set_ruri_part(c, "port", v))
    r("rz", lambda c, _: u.scheme if (u := _ruri(c)) else None)
    r("ou", lambda c, _: q.ruri_text if (q := _req(c)) else None)
    r("du", lambda c, _: q.dst_uri if (q := _req(c)) else None, _set_du)
    for short, which in (("f", "from"), ("t", "to")):
        r(f"{short}u", _na_part(which, "uri"))
        r(f"{short}U", _na_part(which, "user"))
        r(f"{short}d", _na_part(which, "host"))
        r(f"{short}n", _na_part(which, "display"))
        r(f"{short}t", _na_part(which, "tag"))
    r("ci", lambda c, _: c.msg.call_id)
    r("cs", lambda c, _: c.msg.cseq_num)
    r("rm", _method)
    r("rs", _status)
    r("rr", _reason)
    r("si", lambda c, _: c.source.host)
    r("sp", lambda c, _: c.source.port)
    r("Ri", lambda c, _: _local(c, "ip"))
    r("Rp", lambda c, _: _local(c, "port"))
    r("pr", lambda c, _: c.transport.proto)
    r("proto", lambda c, _: c.transport.proto)
    r("ua", lambda c, _: c.msg.get("user-agent"))
    r("mb", _msg_buf)
    r("ml", lambda c, _: c.msg.body_start + len(c.msg.body))
    r("rb", lambda c, _: c.msg.body.decode("latin-1"))
    r("cl", lambda c, _: len(c.msg.body))
    r("cT", lambda c, _: c.msg.get("content-type"))
    r("ct", lambda c, _: c.msg.get("contact"))
    r("ai", _hdr_uri("p-asserted-identity"))
    r("di", _hdr_uri("diversion"))
    r("rt", _hdr_uri("refer-to"))
    r("hdr", _hdr, needs_arg=True)
    r("hdrc", _hdrc, needs_arg=True)
    r("var", _var_get, _var_set, needs_arg=True)
    r("vz", _var_get, _var_set, needs_arg=True)
    r("avp", _avp_get, _avp_set, needs_arg=True)
    r("shv", _shv_get, _shv_set, needs_arg=True)
    r("mf", _flags_get, _flags_set)
    r("mF", lambda c, _: f"{c.flags:08X}")
    r("bf", lambda c, _: c.bflags, _bflags_set)
    r("Ts", lambda c, _: int(time.time()))
    r("TS", lambda c, _: _STARTED)
    r("env", lambda c, name: os.environ.get(name), needs_arg=True)
    r("pp", lambda c, _: os.getpid())
    r("null", lambda c, _: None)


_register_core()
