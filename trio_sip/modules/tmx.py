"""KSR.tmx: transaction extras (Kamailio ``tmx`` module)."""

from __future__ import annotations

from typing import Any

from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.message import SipRequest
from ..transaction.matching import server_key

m = ModuleBuilder("tmx", "Transaction extras: branch cancelling, route-type checks, "
                         "pre-transaction retransmission checks.")

R = RouteType


def _tx(ctx: MsgContext) -> Any:
    return ctx.transaction


@m.export(("str",), routes=R.ONREPLY | R.FAILURE | R.BRANCH_FAILURE)
def t_cancel_branches(ctx: MsgContext, which: str) -> int:
    """Cancel "all" pending branches, the "others" than this one, or "this" one."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    this = None
    if 0 <= ctx.branch_index < len(tx.branches):
        this = tx.branches[ctx.branch_index]
    if which == "all":
        tx.cancel_branches()
    elif which == "others":
        tx.cancel_branches(except_branch=this)
    elif which == "this":
        if this is None:
            return -1
        this.cancel()
    else:
        return -1
    return 1


@m.export(routes=R.REQUEST)
def t_precheck_trans(ctx: MsgContext) -> int:
    """1 if another copy of this request is being processed right now (a retransmission
    that arrived before the first copy created its transaction), else -1."""
    req = ctx.msg
    if not isinstance(req, SipRequest) or req.method in ("ACK", "CANCEL"):
        return -1
    layer = ctx.core.tm
    try:
        key = server_key(req)
    except Exception:
        return -1
    if key in layer.servers and layer.servers[key] is not ctx.transaction:
        return 1
    return 1 if layer.in_progress.get(key, 0) > 1 else -1


@m.export(routes=R.REQUEST | R.FAILURE | R.BRANCH)
def t_flush_flags(ctx: MsgContext) -> int:
    """Copy the message flags into the transaction (they already are shared here)."""
    return 1 if _tx(ctx) is not None else -1


@m.export()
def t_is_request_route(ctx: MsgContext) -> int:
    """1 in a request route."""
    return 1 if ctx.route_type == R.REQUEST else -1


@m.export()
def t_is_failure_route(ctx: MsgContext) -> int:
    """1 in a failure route."""
    return 1 if ctx.route_type == R.FAILURE else -1


@m.export()
def t_is_branch_route(ctx: MsgContext) -> int:
    """1 in a branch route."""
    return 1 if ctx.route_type == R.BRANCH else -1


@m.export()
def t_is_reply_route(ctx: MsgContext) -> int:
    """1 in an onreply route."""
    return 1 if ctx.route_type in (R.ONREPLY, R.CORE_REPLY) else -1


@m.export(routes=R.REQUEST | R.FAILURE)
def t_drop(ctx: MsgContext) -> int:
    """Drop the transaction: no reply will be sent (it lingers until its timers end)."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    tx.final_status = tx.final_status or 1  # nothing more goes upstream
    tx.cancel_branches()
    return 1


MODULE = m.build()
