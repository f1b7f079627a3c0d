"""KSR.kx: direct getters for message attributes (Kamailio ``kemix`` module).

``get_*`` return nil when the value is absent, ``gete_*`` an empty string and
``getw_*`` the string "<null>".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder
from ..sip.message import SipRequest

m = ModuleBuilder("kx", "Getters for message attributes.")

# name -> the PV it reads (the kx function is a shortcut for KSR.pv.get of that PV)
_BY_PV: dict[str, str] = {
    "ruri": "$ru", "ruser": "$rU", "rhost": "$rd", "ouri": "$ou", "duri": "$du",
    "furi": "$fu", "fuser": "$fU", "fhost": "$fd", "turi": "$tu", "tuser": "$tU", "thost": "$td",
    "method": "$rm", "callid": "$ci", "ua": "$ua", "srcip": "$si", "srcport": "$sp",
    "rcvip": "$Ri", "rcvport": "$Rp", "proto": "$pr", "body": "$rb", "cturi": "$ct",
}
_WITH_EW = ("au", "body", "cturi", "duri", "fhost", "fuser", "rhost", "ruser", "thost", "tuser",
            "ua")


def _make(name: str, getter: Callable[[MsgContext], Any], doc: str) -> None:
    def fn(ctx: MsgContext) -> Any:
        return getter(ctx)

    fn.__name__ = name
    fn.__doc__ = doc
    m.export(ret="xval")(fn)


def _pv_getter(text: str) -> Callable[[MsgContext], Any]:
    def g(ctx: MsgContext) -> Any:
        v = pv.get(ctx, text)
        if text == "$ct" and v:
            na = ctx.msg.contacts()
            return str(na[0].uri) if na and na[0].uri is not None else None
        return v

    return g


_getters: dict[str, Callable[[MsgContext], Any]] = {k: _pv_getter(v) for k, v in _BY_PV.items()}
_getters["au"] = lambda ctx: None  # digest auth user: set by the auth modules when they land
_getters["nhuri"] = lambda ctx: (
    (ctx.msg.dst_uri or ctx.msg.current_uri) if isinstance(ctx.msg, SipRequest) else None
)
_getters["srcuri"] = lambda ctx: (
    f"sip:{ctx.source}" + ("" if ctx.transport.proto == "udp" else
                           f";transport={ctx.transport.proto}")
)
_getters["rcvadvip"] = lambda ctx: ctx.core.advertised(ctx.transport)[0]
_getters["rcvadvport"] = lambda ctx: ctx.core.advertised(ctx.transport)[1]  # a number
_getters["msgbuf"] = lambda ctx: pv.get(ctx, "$mb")

for _name, _g in _getters.items():
    _make(f"get_{_name}", _g, f"The {_name} of the message, or nil.")
for _name in _WITH_EW:
    _g = _getters[_name]
    _make(f"gete_{_name}", (lambda g: lambda c: "" if (v := g(c)) is None else v)(_g),
          f"The {_name}, or an empty string.")
    _make(f"getw_{_name}", (lambda g: lambda c: "<null>" if (v := g(c)) is None else v)(_g),
          f"The {_name}, or \"<null>\".")


@m.export()
def get_status(ctx: MsgContext) -> int:
    """The reply status code, or -1 for a request."""
    v = pv.get(ctx, "$rs")
    return int(v) if v is not None else -1


@m.export(ret="xval")
def gets_status(ctx: MsgContext) -> Any:
    """The reply status code as a string, or nil."""
    v = pv.get(ctx, "$rs")
    return None if v is None else str(v)


@m.export()
def get_msgtype(ctx: MsgContext) -> int:
    """1 for a request, 2 for a reply."""
    return 1 if ctx.msg.is_request else 2


@m.export()
def get_msglen(ctx: MsgContext) -> int:
    """Length of the received message in bytes."""
    return ctx.msg.body_start + len(ctx.msg.body)


@m.export()
def get_bodylen(ctx: MsgContext) -> int:
    """Length of the body in bytes."""
    return len(ctx.msg.body)


@m.export()
def get_protoid(ctx: MsgContext) -> int:
    """Kamailio's protocol id: 1 UDP, 2 TCP, 3 TLS, 4 SCTP, 5 WS, 6 WSS."""
    return {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}.get(
        ctx.transport.proto, 0)


@m.export()
def get_conid(ctx: MsgContext) -> int:
    """The TCP connection id, or -1 for UDP."""
    return ctx.conn_id if ctx.conn_id is not None else -1


@m.export()
def get_timestamp(ctx: MsgContext) -> int:
    """Current time in seconds since the epoch."""
    return int(time.time())


@m.export(("str",), ret="xval")
def get_env(ctx: MsgContext, name: str) -> Any:
    """An environment variable, or nil."""
    return os.environ.get(name)


@m.export(("str",))
def get_envn(ctx: MsgContext, name: str) -> int:
    """An environment variable as an integer (0 if absent or not a number)."""
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


MODULE = m.build()
