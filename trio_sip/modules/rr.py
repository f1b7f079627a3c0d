"""KSR.rr: Record-Route and loose routing (Kamailio ``rr`` module, RFC 3261 §16.4, §16.12).

``record_route()`` asks for our Record-Route entry (``<sip:ADDR:PORT;lr;ftag=T>``,
``;transport=tcp`` on TCP); it is written when the request is sent, so
``add_rr_param`` may be called before or after it. The From tag is added as
``ftag`` as Kamailio does by default (its ``append_fromtag`` param), so that
``is_direction`` works on the requests of the dialog. ``loose_route()`` consumes
the Route entries that name this server and sets the next hop: see
``proxy/stateless.py:loose_route`` for the rules.
"""

from __future__ import annotations

import re

from ..proxy.stateless import loose_route as _loose_route
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.errors import BadMessage
from ..sip.message import SipRequest

m = ModuleBuilder("rr", "Record-Route and loose routing.")

_RR_ROUTES = RouteType.REQUEST | RouteType.BRANCH | RouteType.FAILURE


@m.export(routes=_RR_ROUTES)
def record_route(ctx: MsgContext) -> int:
    """Add our Record-Route entry to the request when it is forwarded."""
    if not isinstance(ctx.msg, SipRequest):
        return -1
    if not ctx.record_route:
        tag = ctx.msg.from_tag
        # Kamailio's order: ;lr;ftag=T, then the add_rr_param() params (before or after)
        if tag and not re.search(r"(?i);ftag=", ctx.rr_params):
            ctx.rr_params = f";ftag={tag}" + ctx.rr_params
    ctx.record_route = True
    return 1


@m.export(("str",), routes=_RR_ROUTES)
def record_route_params(ctx: MsgContext, params: str) -> int:
    """record_route() with extra URI parameters (";a=b;c")."""
    if add_rr_param(ctx, params) < 0:
        return -1
    return record_route(ctx)


@m.export(("str",), routes=_RR_ROUTES)
def add_rr_param(ctx: MsgContext, param: str) -> int:
    """Add a parameter (";name=value") to our Record-Route URI."""
    p = param.strip()
    if not p:
        return -1
    if not p.startswith(";"):
        p = ";" + p
    if any(c in p for c in " \t\r\n<>,"):
        return -1
    ctx.rr_params += p
    return 1


@m.export(routes=RouteType.REQUEST)
def loose_route(ctx: MsgContext) -> int:
    """Process Route headers: 1 if routing was done, -1 if there is no Route."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    try:
        res = _loose_route(req, ctx.core.is_myself)
    except BadMessage:
        return -1
    if res.code < 0:
        return -1
    for idx in res.remove_headers:
        req.remove_header_at(idx)
    for idx, value in res.rewrite_route:
        req.replace_header_value(idx, value)
    if res.new_ruri is not None:
        req.new_uri = res.new_ruri
    if res.dst_uri is not None:
        req.dst_uri = res.dst_uri
    if res.append_route is not None:
        req.add_header("Route", res.append_route)
    ctx.route_params = res.consumed_params
    return 1


@m.export(("str",), routes=RouteType.REQUEST)
def check_route_param(ctx: MsgContext, regex: str) -> int:
    """1 if the parameters of our Route entry (consumed by loose_route) match ``regex``."""
    if ctx.route_params is None:
        return -1
    try:
        return 1 if re.search(regex, ctx.route_params) else -1
    except re.error:
        return -1


@m.export(("str",), routes=RouteType.REQUEST)
def is_direction(ctx: MsgContext, direction: str) -> int:
    """1 if the request goes in ``direction`` ("downstream": from the caller, whose
    From tag is the ;ftag of our Route entry; "upstream": from the callee). Without
    ;ftag (or before loose_route) the request counts as downstream, as in Kamailio."""
    params = ctx.route_params or ""
    match = re.search(r"(?i);ftag=([^;]*)", params)
    down = match is None or match.group(1) == ctx.msg.from_tag
    want_down = direction.lower() == "downstream"
    return 1 if down == want_down else -1


@m.export(routes=RouteType.REQUEST)
def remove_record_route(ctx: MsgContext) -> int:
    """Undo record_route() for this request."""
    ctx.record_route = False
    ctx.rr_params = ""
    return 1


MODULE = m.build()
