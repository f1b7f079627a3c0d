"""KSR.corex: extra core functions (Kamailio ``corex`` module): branches and small helpers."""

from __future__ import annotations

from ..script.context import Branch, MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.errors import BadMessage
from ..sip.message import SipRequest
from ..sip.uri import parse_uri_untrusted

m = ModuleBuilder("corex", "Branches and small core helpers.")

_BRANCH_ROUTES = RouteType.REQUEST | RouteType.FAILURE


def _q(text: str) -> int | None:
    """Kamailio q values are thousandths: "0.5" -> 500."""
    try:
        q = float(text)
    except ValueError:
        return None
    if not 0 <= q <= 1:
        return None
    return round(q * 1000)


@m.export(routes=_BRANCH_ROUTES)
def append_branch(ctx: MsgContext) -> int:
    """Add a branch with the current R-URI, $du and branch flags (the destination set
    grows)."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    ctx.branches.append(Branch(req.current_uri, req.dst_uri, flags=ctx.bflags))
    return 1


@m.export(("str",), routes=_BRANCH_ROUTES)
def append_branch_uri(ctx: MsgContext, uri: str) -> int:
    """Add a branch to ``uri``."""
    try:
        parse_uri_untrusted(uri)
    except BadMessage:
        return -1
    ctx.branches.append(Branch(uri))
    return 1


@m.export(("str", "str"), routes=_BRANCH_ROUTES)
def append_branch_uri_q(ctx: MsgContext, uri: str, q: str) -> int:
    """Add a branch to ``uri`` with q value ``q`` ("0.5")."""
    qv = _q(q)
    if qv is None:
        return -1
    try:
        parse_uri_untrusted(uri)
    except BadMessage:
        return -1
    ctx.branches.append(Branch(uri, q=qv))
    return 1


@m.export()
def has_ruri_user(ctx: MsgContext) -> int:
    """1 if the R-URI has a user part."""
    req = ctx.msg
    return 1 if isinstance(req, SipRequest) and req.ruri_view.user else -1


@m.export()
def has_user_agent(ctx: MsgContext) -> int:
    """1 if the message has a User-Agent header."""
    return 1 if ctx.msg.has("user-agent") else -1


@m.export()
def is_faked_msg(ctx: MsgContext) -> int:
    """1 for a message the server made up (timer and event routes)."""
    return 1 if getattr(ctx.msg, "faked", False) else -1


MODULE = m.build()
