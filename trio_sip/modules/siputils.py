"""KSR.siputils: SIP helpers (Kamailio ``siputils`` module)."""

from __future__ import annotations

import logging
import re

from ..script.context import MsgContext
from ..script.exports import REQUEST_ROUTES, ModuleBuilder
from ..sip.errors import BadMessage
from ..sip.message import SipRequest
from ..sip.uri import parse_uri_untrusted

log = logging.getLogger("trio_sip.script")

m = ModuleBuilder("siputils", "SIP helpers: To-tag, request/reply, URI parameters.")


def _b(v: bool) -> int:
    return 1 if v else -1


@m.export()
def has_totag(ctx: MsgContext) -> int:
    """1 if the To header has a tag (an in-dialog request), else -1."""
    return _b(bool(ctx.msg.to_tag))


@m.export()
def is_request(ctx: MsgContext) -> int:
    """1 for a request, -1 for a reply."""
    return _b(ctx.msg.is_request)


@m.export()
def is_reply(ctx: MsgContext) -> int:
    """1 for a reply, -1 for a request."""
    return _b(not ctx.msg.is_request)


@m.export(routes=REQUEST_ROUTES)
def is_first_hop(ctx: MsgContext) -> int:
    """1 if the request has a single Via (we are the first hop)."""
    return _b(len(ctx.msg.vias) == 1)


@m.export(("str",))
def is_uri(ctx: MsgContext, text: str) -> int:
    """1 if the text parses as a URI."""
    try:
        parse_uri_untrusted(text)
    except BadMessage:
        return -1
    return 1


@m.export(("str",))
def is_numeric(ctx: MsgContext, text: str) -> int:
    """1 if the text is made of digits only, else -2."""
    return 1 if re.fullmatch(r"[0-9]+", text) else -2


@m.export(("str",))
def is_tel_number(ctx: MsgContext, text: str) -> int:
    """1 if the text is a telephone number: digits, or '+' then digits not starting
    with 0; else -2."""
    return 1 if re.fullmatch(r"\+[1-9][0-9]*|[0-9]+", text) else -2


@m.export(("str",))
def is_alphanum(ctx: MsgContext, text: str) -> int:
    """1 if the text is made of ASCII letters and digits only; -2 if it is empty,
    -3 if it has another character."""
    if not text:
        return -2
    return 1 if re.fullmatch(r"[0-9A-Za-z]+", text) else -3


@m.export(("str",), routes=REQUEST_ROUTES)
def is_user(ctx: MsgContext, user: str) -> int:
    """1 if ``user`` is the user name of the credentials authorized earlier (Kamailio
    semantics: not the R-URI user). No auth module is loaded yet, so there are never
    authorized credentials: -1, with an error as in Kamailio."""
    log.error("KSR.siputils.is_user: no authorized credentials found "
              "(call an authorize function first)")
    return -1


@m.export(("str",), routes=REQUEST_ROUTES)
def uri_param(ctx: MsgContext, name: str) -> int:
    """1 if the R-URI has the parameter ``name`` *without a value* (";lr"), as in
    Kamailio; use uri_param_value for one with a value. The name is case-sensitive."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    return _b(any(k == name and v is None for k, v in req.ruri.params))


@m.export(("str", "str"), routes=REQUEST_ROUTES)
def uri_param_value(ctx: MsgContext, name: str, value: str) -> int:
    """1 if the R-URI has the parameter ``name`` with ``value``."""
    req = ctx.msg
    return _b(isinstance(req, SipRequest) and req.ruri.param(name) == value)


@m.export(("str",), routes=REQUEST_ROUTES)
def add_uri_param(ctx: MsgContext, param: str) -> int:
    """Add a parameter ("name=value" or "name") to the R-URI."""
    req = ctx.msg
    if not isinstance(req, SipRequest) or not param or any(c in param for c in " ;<>"):
        return -1
    uri = req.ruri.copy()
    name, eq, value = param.partition("=")
    uri.set_param(name, value if eq else None)
    req.new_uri = str(uri)
    return 1


@m.export(("str",), routes=REQUEST_ROUTES)
def uri_param_rm(ctx: MsgContext, name: str) -> int:
    """Remove a parameter from the R-URI."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    uri = req.ruri.copy()
    uri.remove_param(name)
    req.new_uri = str(uri)
    return 1


@m.export(("str", "str"))
def cmp_uri(ctx: MsgContext, a: str, b: str) -> int:
    """1 if two URIs are equal by the RFC 3261 §19.1.4 rules."""
    try:
        return _b(parse_uri_untrusted(a) == parse_uri_untrusted(b))
    except BadMessage:
        return -1


@m.export(("str", "str"))
def cmp_aor(ctx: MsgContext, a: str, b: str) -> int:
    """1 if two URIs have the same address of record (user and host)."""
    try:
        ua, ub = parse_uri_untrusted(a), parse_uri_untrusted(b)
    except BadMessage:
        return -1
    # Kamailio: a missing port is 5060 (whatever the scheme), parameters do not count
    return _b(ua.user == ub.user and ua.host_bare == ub.host_bare
              and (ua.port or 5060) == (ub.port or 5060))


@m.export(routes=REQUEST_ROUTES)
def options_reply(ctx: MsgContext) -> int:
    """Answer an OPTIONS addressed to this server (no user in the R-URI) with 200."""
    req = ctx.msg
    if not isinstance(req, SipRequest) or req.method != "OPTIONS" or req.ruri.user:
        return -1
    ok = ctx.core.send_reply(
        ctx, 200, "OK",
        ("Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, "
         "REFER, INFO, UPDATE, PRACK", "Accept: */*", "Accept-Encoding: identity",
         "Accept-Language: en"),
    )
    return 1 if ok else -1


MODULE = m.build()
