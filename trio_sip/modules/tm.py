"""KSR.tm: stateful processing (Kamailio ``tm`` module; OpenSIPS extras where Kamailio
has none). The transaction machinery lives in runtime/transactions.py and
runtime/branch.py; this file is the Lua-facing table.

Return codes follow Kamailio: 1 success, negative failure; ``t_check_trans``
may return 0 (stop) as Kamailio's does.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..runtime.transactions import TxSettings
from ..script import pv
from ..script.context import Branch as DsetBranch
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.message import SipRequest

log = logging.getLogger("trio_sip.tm")

m = ModuleBuilder("tm", "Stateful transactions: relay, replies, forking, failure routes, timers.")

R = RouteType
_RELAY_ROUTES = R.REQUEST | R.FAILURE | R.EVENT
_ARM_ROUTES = R.REQUEST | R.FAILURE | R.BRANCH | R.ONREPLY | R.EVENT
_TX_ROUTES = R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH | R.BRANCH_FAILURE | R.EVENT


def _tx(ctx: MsgContext) -> Any:
    return ctx.transaction


def _layer(ctx: MsgContext) -> Any:
    return ctx.core.tm


# -- relaying ------------------------------------------------------------------------


@m.export(routes=_RELAY_ROUTES, is_async=True)
def t_relay(ctx: MsgContext) -> Any:
    """Relay statefully to $du or the R-URI, plus every appended branch (parallel forking).
    Creates the transaction if needed (and sends 100 Trying for INVITE). Waits only when
    an armed branch route waits."""
    return _layer(ctx).relay(ctx)


@m.export(("str",), routes=_RELAY_ROUTES, is_async=True)
def t_relay_to_proxy(ctx: MsgContext, proxy: str) -> Any:
    """Relay statefully to "proto:host:port" (or "host:port"), keeping the R-URI."""
    target = _proxy_uri(proxy)
    if target is None:
        return -1
    return _layer(ctx).relay(ctx, target)


@m.export(("int",), routes=_RELAY_ROUTES, is_async=True)
def t_relay_to_flags(ctx: MsgContext, flags: int) -> Any:
    """t_relay with flags: 0x01 no 100 Trying, 0x02 no internal error reply, 0x04 no DNS
    failover."""
    return _layer(ctx).relay(ctx, None, flags)


@m.export(("str", "int"), routes=_RELAY_ROUTES, is_async=True)
def t_relay_to_proxy_flags(ctx: MsgContext, proxy: str, flags: int) -> Any:
    """t_relay_to_proxy with t_relay_to_flags flags."""
    target = _proxy_uri(proxy)
    if target is None:
        return -1
    return _layer(ctx).relay(ctx, target, flags)


@m.export(("str", "str", "int"), routes=_RELAY_ROUTES, is_async=True)
def t_relay_to_proto_addr(ctx: MsgContext, proto: str, host: str, port: int) -> Any:
    """Relay statefully to host:port over proto, keeping the R-URI."""
    target = _proxy_uri(f"{proto}:{host}:{port}")
    if target is None:
        return -1
    return _layer(ctx).relay(ctx, target)


def _proxy_uri(proxy: str) -> str | None:
    text = proxy.strip()
    if text.startswith("sip:") or text.startswith("sips:"):
        return text
    proto = ""
    head, _, rest = text.partition(":")
    if head.lower() in ("udp", "tcp", "tls", "sctp", "ws", "wss") and rest:
        proto, text = head.lower(), rest
    if not text:
        return None
    return f"sip:{text}" + (f";transport={proto}" if proto and proto != "udp" else "")


# -- creating and answering ----------------------------------------------------------


@m.export(routes=R.REQUEST | R.EVENT)
def t_newtran(ctx: MsgContext) -> int:
    """Create the transaction for the request (retransmissions are absorbed from now on)."""
    if not isinstance(ctx.msg, SipRequest) or ctx.msg.method == "ACK":
        return -1
    _layer(ctx).new_server_tx(ctx)
    return 1


def _reply(ctx: MsgContext, code: int, reason: str) -> int:
    if not 100 <= code <= 699 or not isinstance(ctx.msg, SipRequest):
        return -1
    if ctx.msg.method == "ACK":
        return -1
    tx = _tx(ctx) or _layer(ctx).new_server_tx(ctx, send_100=False)
    return 1 if tx.reply_local(code, reason) else -1


@m.export(("int", "str"), routes=R.REQUEST | R.FAILURE | R.EVENT)
def t_reply(ctx: MsgContext, code: int, reason: str) -> int:
    """Reply statefully (the transaction is created if needed)."""
    return _reply(ctx, code, reason)


@m.export(("int", "str"), routes=R.REQUEST | R.FAILURE | R.EVENT)
def t_send_reply(ctx: MsgContext, code: int, reason: str) -> int:
    """Reply statefully, creating the transaction if needed."""
    return _reply(ctx, code, reason)


@m.export(routes=R.REQUEST | R.FAILURE | R.EVENT)
def t_reply_error(ctx: MsgContext) -> int:
    """Reply statefully with the error of the last failed internal operation (500)."""
    return _reply(ctx, ctx.last_error or 500, "")


# -- matching ----------------------------------------------------------------------------


@m.export(routes=R.REQUEST)
def t_check_trans(ctx: MsgContext) -> int:
    """1 if the request belongs to a transaction: a CANCEL whose INVITE exists, an ACK to a
    2xx whose INVITE is still there, a request whose transaction this route created.
    Retransmissions and hop-by-hop ACKs never reach the script (they are absorbed)."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    if ctx.transaction is not None:
        return 1
    if req.method == "CANCEL":
        return 1 if _layer(ctx).invite_for_cancel(req) is not None else -1
    return -1


@m.export(routes=R.REQUEST)
def t_lookup_cancel(ctx: MsgContext) -> int:
    """1 if the CANCEL matches an INVITE transaction."""
    req = ctx.msg
    if not isinstance(req, SipRequest) or req.method != "CANCEL":
        return -1
    return 1 if _layer(ctx).invite_for_cancel(req) is not None else -1


@m.export(routes=R.REQUEST)
def t_lookup_request(ctx: MsgContext) -> int:
    """1 if the request has a transaction."""
    return 1 if ctx.transaction is not None else -1


@m.export(routes=_TX_ROUTES)
def t_exists(ctx: MsgContext) -> int:
    """1 if the message has a transaction."""
    return 1 if ctx.transaction is not None else -1


@m.export(routes=R.REQUEST)
def t_release(ctx: MsgContext) -> int:
    """Kamailio frees a transaction early; here it lives until its timers end, so this
    only reports whether there is one."""
    return 1 if ctx.transaction is not None else -1


# -- arming routes --------------------------------------------------------------------------


def _arm(kind: str) -> None:
    def fn(ctx: MsgContext, name: str) -> int:
        if not ctx.core.engine_for(ctx).has_function(name):
            log.error("t_on_%s(%r): no such function in the routes", kind, name)
            return -1
        if kind == "reply" and ctx.route_type == R.BRANCH:
            ctx.armed["branch_reply"] = name  # this branch's replies only (OpenSIPS)
            return 1
        tx = _tx(ctx)
        if tx is not None:
            setattr(tx, f"on_{kind}", name)
        else:
            ctx.armed[kind] = name
        return 1

    fn.__name__ = f"t_on_{kind}"
    fn.__doc__ = f"Arm the {kind} route: the Lua function with that name."
    m.export(("str",), routes=_ARM_ROUTES)(fn)


for _kind in ("failure", "reply", "branch", "branch_failure"):
    _arm(_kind)


@m.export(("str",), routes=_TX_ROUTES)
def t_is_set(ctx: MsgContext, which: str) -> int:
    """1 if the route type ("failure_route", "branch_route", "onreply_route",
    "branch_failure_route") is armed."""
    kind = which.removesuffix("_route").removeprefix("on")
    tx = _tx(ctx)
    value = getattr(tx, f"on_{kind}", None) if tx is not None else ctx.armed.get(kind)
    return 1 if value else -1


# -- state of the transaction -------------------------------------------------------------


@m.export(routes=_TX_ROUTES)
def t_is_canceled(ctx: MsgContext) -> int:
    """1 if the caller CANCELled the transaction."""
    tx = _tx(ctx)
    return 1 if tx is not None and tx.canceled else -1


m.alias("t_was_cancelled", "t_is_canceled")


@m.export(routes=_TX_ROUTES)
def t_is_expired(ctx: MsgContext) -> int:
    """1 if the transaction's lifetime is over."""
    import trio

    tx = _tx(ctx)
    return 1 if tx is not None and trio.current_time() >= tx.lifetime_deadline else -1


def _branch_of(ctx: MsgContext) -> Any:
    tx = _tx(ctx)
    if tx is None or not 0 <= ctx.branch_index < len(tx.branches):
        return None
    return tx.branches[ctx.branch_index]


@m.export(routes=R.FAILURE | R.BRANCH_FAILURE | R.ONREPLY)
def t_branch_timeout(ctx: MsgContext) -> int:
    """1 if the branch being processed timed out."""
    b = _branch_of(ctx)
    return 1 if b is not None and b.timed_out else -1


@m.export(routes=R.FAILURE | R.BRANCH_FAILURE | R.ONREPLY)
def t_branch_replied(ctx: MsgContext) -> int:
    """1 if the branch being processed received a reply."""
    b = _branch_of(ctx)
    return 1 if b is not None and (b.last_status or b.final is not None) else -1


@m.export(routes=_TX_ROUTES)
def t_any_timeout(ctx: MsgContext) -> int:
    """1 if any branch timed out."""
    tx = _tx(ctx)
    return 1 if tx is not None and any(b.timed_out for b in tx.branches) else -1


@m.export(routes=_TX_ROUTES)
def t_any_replied(ctx: MsgContext) -> int:
    """1 if any branch received a reply."""
    tx = _tx(ctx)
    return 1 if tx is not None and any(b.last_status for b in tx.branches) else -1


@m.export(("str",), routes=_TX_ROUTES)
def t_check_status(ctx: MsgContext, regex: str) -> int:
    """1 if $T_reply_code matches the regular expression."""
    code = reply_code(ctx)
    try:
        return 1 if re.match(regex, str(code)) else -1
    except re.error:
        log.error("t_check_status: bad regular expression %r", regex)
        return -1


@m.export(routes=_TX_ROUTES)
def t_get_status_code(ctx: MsgContext) -> int:
    """$T_reply_code (-1 without a transaction)."""
    return reply_code(ctx) if _tx(ctx) is not None else -1


@m.export(routes=_TX_ROUTES)
def t_get_branch_index(ctx: MsgContext) -> int:
    """$T_branch_idx."""
    return ctx.branch_index


@m.export(("str",), routes=_TX_ROUTES)
def t_local_replied(ctx: MsgContext, which: str) -> int:
    """OpenSIPS: 1 if "all" replies were local, or the "last" one was."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    if which == "last":
        return 1 if tx.local_final else -1
    return 1 if tx.local_final and not any(b.final is not None for b in tx.branches) else -1


def reply_code(ctx: MsgContext) -> int:
    tx = _tx(ctx)
    if tx is None:
        return 0
    return int(tx.reply_code_for_route(ctx))


# -- timers ----------------------------------------------------------------------------------


def _deadlines_moved(ctx: MsgContext) -> None:
    """A live transaction's deadlines moved (fr, lifetime): its task must wait for the
    new ones (it may be waiting for the old, from another task)."""
    tx = _tx(ctx)
    if tx is not None and getattr(tx, "running", False):
        tx.wake()


def _ms(v: int) -> float | None:
    return None if v <= 0 else v / 1000


@m.export(("int", "int"), min_args=1, routes=_ARM_ROUTES)
def t_set_fr(ctx: MsgContext, fr_inv: int, fr: int = 0) -> int:
    """Set fr_inv_timer and fr_timer (ms) for this transaction; 0 keeps a value. Running
    branches follow at their next provisional."""
    s = _settings(ctx)
    if fr_inv > 0:
        s.fr_inv = fr_inv / 1000
    if fr > 0:
        s.fr = fr / 1000
    _deadlines_moved(ctx)
    return 1


@m.export(routes=_ARM_ROUTES)
def t_reset_fr(ctx: MsgContext) -> int:
    """Back to the module's fr_timer and fr_inv_timer."""
    s = _settings(ctx)
    s.fr = s.fr_inv = None
    _deadlines_moved(ctx)
    return 1


@m.export(("int", "int"), routes=_ARM_ROUTES)
def t_set_retr(ctx: MsgContext, t1: int, t2: int) -> int:
    """Set T1 and T2 (ms) for this transaction; 0 keeps a value. Takes effect after the
    current retransmission interval."""
    tx = _tx(ctx)
    s = _settings(ctx)
    t1s = _ms(t1) if t1 > 0 else s.t1
    t2s = _ms(t2) if t2 > 0 else s.t2
    if tx is not None:
        tx.set_timers(t1s, t2s)
    else:
        s.t1, s.t2 = t1s, t2s
    return 1


@m.export(routes=_ARM_ROUTES)
def t_reset_retr(ctx: MsgContext) -> int:
    """Back to the module's T1 and T2."""
    tx = _tx(ctx)
    if tx is not None:
        tx.set_timers(None, None)
    else:
        s = _settings(ctx)
        s.t1 = s.t2 = None
    return 1


@m.export(("int", "int"), routes=_ARM_ROUTES)
def t_set_max_lifetime(ctx: MsgContext, inv: int, noninv: int) -> int:
    """Cap the transaction's lifetime (ms) for INVITE and other requests; 0 keeps it."""
    req = ctx.msg
    method = req.method if isinstance(req, SipRequest) else ""
    value = inv if method == "INVITE" else noninv
    if value > 0:
        _settings(ctx).max_lifetime = value / 1000
    _deadlines_moved(ctx)
    return 1


@m.export(routes=_ARM_ROUTES)
def t_reset_max_lifetime(ctx: MsgContext) -> int:
    """Back to the module's max lifetimes."""
    _settings(ctx).max_lifetime = None
    _deadlines_moved(ctx)
    return 1


@m.export(("int",), routes=_ARM_ROUTES)
def t_set_disable_6xx(ctx: MsgContext, on: int) -> int:
    """1: a 6xx no longer cancels the other branches."""
    _settings(ctx).disable_6xx = bool(on)
    return 1


@m.export(("int",), routes=_ARM_ROUTES)
def t_set_disable_failover(ctx: MsgContext, on: int) -> int:
    """1: no DNS failover for this transaction."""
    _settings(ctx).disable_failover = bool(on)
    return 1


@m.export(("int",), routes=_ARM_ROUTES)
def t_set_auto_inv_100(ctx: MsgContext, on: int) -> int:
    """0: do not send 100 Trying when the INVITE transaction is created."""
    _settings(ctx).auto_inv_100 = bool(on)
    return 1


def _settings(ctx: MsgContext) -> TxSettings:
    tx = _tx(ctx)
    if tx is not None:
        return tx.settings  # type: ignore[no-any-return]
    if ctx.tx_settings is None:
        ctx.tx_settings = TxSettings()
    return ctx.tx_settings  # type: ignore[no-any-return]


# -- replies of serial forking ---------------------------------------------------------------


@m.export(("str",), routes=R.FAILURE)
def t_drop_replies(ctx: MsgContext, mode: str) -> int:
    """Forget the replies of the branches so far ("a" all, "l" the last leg, "n" none), so
    the next leg's best reply is chosen among its own."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    if mode in ("", "a", "l"):
        tx.dropped_before = len(tx.branches)
    return 1


@m.export(routes=R.FAILURE)
def t_drop_replies_all(ctx: MsgContext) -> int:
    """t_drop_replies("a")."""
    return t_drop_replies(ctx, "a")


# -- serial forking by q value ----------------------------------------------------------------


@m.export(routes=R.REQUEST | R.FAILURE)
def t_load_contacts(ctx: MsgContext) -> int:
    """Take the R-URI and the appended branches, group them by q value (highest first)
    for t_next_contacts; clears the branches. 1, or -1 with nothing to load."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    if not ctx.branches:
        return 1  # Kamailio: nothing to do when there is only the R-URI
    entries = [DsetBranch(req.current_uri, req.dst_uri, q=1000), *ctx.branches]
    groups: dict[int, list[DsetBranch]] = {}
    for e in entries:
        q = e.q if e.q >= 0 else 1000
        groups.setdefault(q, []).append(e)
    ctx.vars["\0contacts"] = [groups[q] for q in sorted(groups, reverse=True)]
    ctx.branches = []
    return 1


@m.export(routes=R.REQUEST | R.FAILURE)
def t_next_contacts(ctx: MsgContext) -> int:
    """Put the next group of contacts (same q) in the R-URI and branches; -1 when none
    are left."""
    groups = ctx.vars.get("\0contacts")
    req = ctx.msg
    if not groups or not isinstance(req, SipRequest):
        return -1
    group = groups.pop(0)
    first, rest = group[0], group[1:]
    req.new_uri = first.uri
    req.dst_uri = first.dst_uri
    ctx.branches = list(rest)
    return 1


# -- replication ---------------------------------------------------------------------------


@m.export(("str",), routes=R.REQUEST)
def t_replicate(ctx: MsgContext, uri: str) -> int:
    """Send a copy of the request to ``uri`` statefully; its replies are absorbed."""
    return int(_layer(ctx).replicate(ctx, uri))


# -- OpenSIPS-style branch cancelling ----------------------------------------------------------


@m.export(("str",), min_args=0, routes=R.ONREPLY)
def t_cancel_branch(ctx: MsgContext, which: str = "") -> int:
    """OpenSIPS: cancel "a" all pending branches, "o" the others, "" this one."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    this = _branch_of(ctx)
    if which == "a":
        tx.cancel_branches()
    elif which == "o":
        tx.cancel_branches(except_branch=this)
    elif this is not None:
        this.cancel()
    return 1


@m.export(routes=_TX_ROUTES)
def t_cancel_call(ctx: MsgContext) -> int:
    """OpenSIPS: cancel the whole call as if the caller sent CANCEL."""
    tx = _tx(ctx)
    if tx is None:
        return -1
    tx.cancel_upstream()
    return 1


@m.export(("str", "str", "str", "str", "str", "str"), min_args=5)
def t_uac_send(ctx: MsgContext, method: str, ruri: str, nexthop: str, socket: str,
               headers: str, body: str | None = None) -> int:
    """Send a request as a local UAC transaction (tm's retransmissions and timeouts):
    method, R-URI, next hop ("" or "." none), socket ("" or "." any), header lines
    (From, To, Call-ID, CSeq are taken from them; default: the R-URI, generated),
    body. 1 sent, -1 not. The reply is not delivered: see KSR.uac (modules/uac.py)."""
    from .uac import tm_uac_send

    return tm_uac_send(ctx, method, ruri, nexthop, socket, headers, body)


MODULE = m.build()


# -- pseudo-variables ------------------------------------------------------------------------


def _fr_get(kind: str) -> Any:
    def get(ctx: MsgContext, _arg: str) -> Any:
        s = _settings(ctx)
        v = getattr(s, kind)
        if v is None:
            p = ctx.core.config.tm
            return (p.fr_inv_timer if kind == "fr_inv" else p.fr_timer) // 1000
        return int(v)

    return get


def _fr_set(kind: str) -> Any:
    def set_(ctx: MsgContext, _arg: str, value: Any) -> None:
        setattr(_settings(ctx), kind, None if value is None else float(int(value)))

    return set_


def _t_get(ctx: MsgContext, what: str) -> Any:
    tx = _tx(ctx)
    if tx is None:
        return None
    if what == "id_index":
        return tx.index
    if what == "id_label":
        return tx.label
    if what == "reply_code":
        return reply_code(ctx)
    if what == "branch_index":
        return ctx.branch_index
    return None


pv.register("T_reply_code", lambda c, _: reply_code(c))
pv.register("T_branch_idx", lambda c, _: c.branch_index if c.transaction is not None else -1)
pv.register("T_fr_timeout", _fr_get("fr"), _fr_set("fr"))
pv.register("T_fr_inv_timeout", _fr_get("fr_inv"), _fr_set("fr_inv"))
pv.register("T", _t_get, needs_arg=True)
