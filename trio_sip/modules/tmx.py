"""KSR.tmx: transaction extras (Kamailio ``tmx`` module).

Suspending and continuing (Kamailio tmx ``t_suspend``/``t_continue``)::

    INVITE route                          another route (MESSAGE, an event...)
    ────────────                          ────────────────────────────────────
    KSR.tmx.t_suspend()   -- tx kept      KSR.tmx.t_continue(idx, label, "resume")
    save $T(id_index), $T(id_label)         └ runs resume() as an EVENT route in the
    return  -- the route exits               suspended transaction's task (t_relay,
                                             t_reply allowed there)

A suspended transaction with no branch is bounded by its fr timer (t_set_fr): the
caller gets 408 when it runs out, and a later t_continue returns -1.

Waiting for an event (trio-sip extra): ``t_wait_event(key, ms)`` makes the route wait
(async) until ``t_notify_event(key, value)`` is called from any route, and returns the
value (-2 on timeout). Waiters live in a per-core table ``key -> [waiter]``; a waiter
cancelled with its transaction (CANCEL, fr) removes itself.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import trio

from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..script.ops import AsyncOp
from ..sip.message import SipRequest
from ..transaction.matching import server_key

log = logging.getLogger("trio_sip.tmx")

m = ModuleBuilder("tmx", "Transaction extras: branch cancelling, route-type checks, "
                         "pre-transaction retransmission checks, suspend/continue, "
                         "waiting for events.")

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


# -- suspend / continue ------------------------------------------------------------------


@m.export(routes=R.REQUEST | R.FAILURE)
def t_suspend(ctx: MsgContext) -> int:
    """Suspend the transaction (created if needed, with its automatic 100 Trying) until
    ``t_continue`` resumes it; $T(id_index) and $T(id_label) identify it. The route
    should exit afterwards. Without a t_continue the caller gets 408 when fr runs out.
    Returns 1, -1 if the transaction cannot be suspended."""
    req = ctx.msg
    if not isinstance(req, SipRequest) or req.method in ("ACK", "CANCEL"):
        return -1
    tx = ctx.transaction or ctx.core.tm.new_server_tx(ctx)
    if tx.final_status or tx.canceled or tx.expired:
        log.warning("t_suspend: transaction %d is already answered or cancelled", tx.index)
        return -1
    if not tx.branches:
        # Kamailio starts fr for the suspension (its blind branch): from now
        tx.no_branch_deadline = trio.current_time() + tx.layer.fr_for(tx.method, tx.settings,
                                                                      tx.params)
    tx.suspended = True
    tx.wake()  # the run loop takes the new deadline
    return 1


async def _continue_route(tx: Any, fn: str) -> None:
    """The continuation, a task of the transaction (cancelled when it ends)."""
    await tx.layer.core.run_route(fn, tx.ctx, RouteType.EVENT)


@m.export(("int", "int", "str"))
def t_continue(ctx: MsgContext, index: int, label: int, fn: str) -> int:
    """Resume the transaction suspended with ``t_suspend`` ($T(id_index), $T(id_label)):
    the function named ``fn`` runs in it as an EVENT route (t_relay, t_reply allowed).
    Returns 1, or -1 (logged) if the transaction is unknown, timed out, cancelled,
    answered, not suspended or already continued, or ``fn`` does not exist."""
    tx = ctx.core.tm.by_index.get(index)
    if tx is None or tx.label != label:
        log.warning("t_continue: no transaction %s:%s (unknown or ended)", index, label)
        return -1
    why = None
    if tx.continued:
        why = "already continued"
    elif tx.canceled:
        why = "cancelled by the caller"
    elif tx.expired:
        why = "timed out"
    elif tx.final_status:
        why = f"already answered {tx.final_status}"
    elif not tx.suspended:
        why = "not suspended"
    elif tx.finished.is_set():
        why = "finished"
    if why is not None:
        log.warning("t_continue: transaction %d: %s", index, why)
        return -1
    if ctx.core.engine_for(tx.ctx).function(fn) is None:
        log.error("t_continue: no function %s() in the routes", fn)
        return -1
    tx.suspended = False
    tx.continued = True
    tx.spawn(_continue_route, tx, fn)
    return 1


# -- waiting for events ----------------------------------------------------------------------


class _Waiter:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None


#: per core: key -> the waiters of t_wait_event, in arrival order
_tables: weakref.WeakKeyDictionary[Any, dict[str, list[_Waiter]]] = weakref.WeakKeyDictionary()


def waiters(core: Any) -> dict[str, list[_Waiter]]:
    """The core's table of event waiters (tests look at it)."""
    table = _tables.get(core)
    if table is None:
        table = _tables[core] = {}
    return table


class WaitEventOp(AsyncOp):
    """t_wait_event: wait until t_notify_event(key) and return its value."""

    name = "t_wait_event"

    def __init__(self, key: str, timeout: float | None) -> None:
        self.key = key
        self.timeout = timeout

    async def run(self, ctx: MsgContext) -> Any:
        table = waiters(ctx.core)
        w = _Waiter()
        table.setdefault(self.key, []).append(w)
        try:
            await w.event.wait()
            return w.value
        finally:
            # woken, timed out or cancelled with the transaction: not a waiter any more
            lst = table.get(self.key)
            if lst is not None and w in lst:
                lst.remove(w)
                if not lst:
                    del table[self.key]


@m.export(("str", "int"), min_args=1, is_async=True, ret="xval")
def t_wait_event(ctx: MsgContext, key: str, timeout_ms: int = 0) -> Any:
    """Wait until ``t_notify_event(key, value)`` and return ``value``; -2 after
    ``timeout_ms`` (0: bounded only by the transaction). The route goes on at the next
    line; a CANCEL or fr timeout of the transaction ends the wait for good."""
    if timeout_ms < 0:
        return -1
    return WaitEventOp(str(key), timeout_ms / 1000 if timeout_ms > 0 else None)


@m.export(("str", "any"), min_args=1)
def t_notify_event(ctx: MsgContext, key: str, value: Any = 1) -> int:
    """Wake every route waiting in ``t_wait_event(key)``, which gets ``value``. Returns
    the number woken, or -1 if none waited (Kamailio: negative is false)."""
    lst = waiters(ctx.core).pop(str(key), [])
    for w in lst:
        w.value = value
        w.event.set()
    return len(lst) if lst else -1


MODULE = m.build()
