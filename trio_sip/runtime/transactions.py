"""Stateful proxying: server transactions as Trio tasks that own their branches.

Theory of operation
-------------------
"Trio nurseries own each SIP transaction and its timers." A :class:`ServerTx`
is created when a route arms a transaction (``t_newtran``, ``t_relay``,
``t_reply``...). Its task owns:

* the sans-IO server machine (IST/NIST, RFC 3261 §17.2 + RFC 6026) and its
  timers G/H/I/J/L, whose linger durations are Kamailio's ``wt_timer``;
* one :class:`~trio_sip.runtime.branch.Branch` per client transaction (each with
  its own A/B/D/E/F/K/M timers and fr/fr_inv), driven in this same task: the task
  waits for the earliest deadline of the machine, its lifetime and every branch;
* a nursery, opened only when the transaction has a task to own (a route
  continuation that waits, a DNS lookup of t_relay): then the loop goes on inside it;
* the transaction's lifetime deadline (``max_inv_lifetime``, Timer C's role,
  or ``max_noninv_lifetime``), after which pending branches are cancelled and
  408 is answered;
* every routing decision: reply routes, the best response (§16.7), failure
  routes that may relay again (serial forking), replies.

Everything reaches the task through its inbox (branch events, request
retransmissions, ACKs); the task is the only one that touches its state, one
event at a time, so no route ever sees a half-updated transaction. When the
machine and every branch have terminated, the task ends (and its nursery, if it
had one, closes): nothing the transaction started outlives it.

::

    dispatcher ─┬─ retransmission / ACK ─────────────▶ ServerTx.inbox
                └─ response (client key §17.1.3) ───▶ ServerTx.inbox (BranchResponse)
    ServerTx task: loop { begin new branches; branches' prepare; flush sends;
                          wait(inbox, earliest deadline); receive / timeout }

One task per transaction, not one per branch as well: a response costs one task
switch, and a transaction that never waits for a route costs no nursery
(runtime/mailbox.py has the figures of what the inboxes save).

Branches settled locally (408 on fr or on the lifetime, 487 after an unanswered
CANCEL) *linger* (branch.py): the task does not wait for them and ends them when it
ends.

After the task: Kamailio's wt (Timers D, J, L, M here; I is T4) is shorter than 64*T1,
during which RFC 3261/6026 peers still retransmit. So the layer keeps, for 64*T1 (at
least 32 s), a small record of each ended server transaction (its key and final:
a late request copy is answered from it, never routed again) and of each ended
INVITE branch (its machine: a late non-2xx is ACKed and absorbed, a late 1xx
CANCELled; a 2xx is still forwarded). See ``_server_ended_now`` and ``branch_ended``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import random
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ..config import TmConfig, parse_reply_codes
from ..dns import Resolution
from ..dns.resolver import supported_transports
from ..log import current_call_id
from ..proxy.forking import challenge_header_name, pick_best, upstream_status
from ..proxy.stateless import (
    record_route_line,
    remove_top_via,
    reply_destination,
    target_of_uri,
    via_line,
)
from ..script.context import MsgContext
from ..script.engine import Step
from ..script.exports import RouteType
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.message import SipRequest, SipResponse
from ..sip.reply import build_reply, generated_to_tag, reason_phrase
from ..sip.uri import URI, parse_uri_untrusted
from ..transaction import (
    ClientInviteTransaction,
    ISTState,
    LocalProtocolError,
    RemoteProtocolError,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    TimerConfig,
    Transmit,
    build_ack,
    build_cancel,
)
from ..transaction.actions import Action
from ..transaction.builders import parse_sent_invite
from ..transaction.matching import (
    AnyServerKey,
    ClientKey,
    LegacyServerKey,
    ack_matches_invite_2543,
    cancel_target_key,
    client_key,
    client_key_for_request,
    same_request_2543,
    server_key,
)
from ..transport.base import Address, Transport, is_ip_literal
from .branch import Branch, BranchEvent, BranchResponse, cancel_transaction, send_counted
from .mailbox import Mailbox

if TYPE_CHECKING:
    from .core import ProxyCore

log = logging.getLogger("trio_sip.tm")

# t_relay_to_flags
F_NO_100 = 0x01
F_NO_INTERNAL_ERROR_REPLY = 0x02
F_NO_DNS_FAILOVER = 0x04

_VIA_SEQ = -1000


@dataclass
class TxSettings:
    """Per-transaction values (Kamailio t_set_fr, t_set_retr, t_set_max_lifetime...),
    in seconds; None means the module default."""

    fr: float | None = None
    fr_inv: float | None = None
    t1: float | None = None
    t2: float | None = None
    max_lifetime: float | None = None
    disable_6xx: bool = False
    disable_failover: bool = False
    auto_inv_100: bool | None = None


@dataclass
class _Retransmission:
    pass


@dataclass
class _Ack:
    ack: SipRequest


@dataclass
class _Upstream:
    """Where responses to the request go (§18.2.2), fixed when the transaction is made."""

    transport: Transport
    dest: Address
    conn_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ServerTx:
    """One server transaction and everything it started."""

    _ids = itertools.count(1)
    #: lingering branches (settled locally, see branch.py) stay until this task ends
    keeps_lingering_branches = True

    def __init__(self, layer: TransactionLayer, ctx: MsgContext, key: AnyServerKey,
                 now: float, settings: TxSettings | None = None) -> None:
        req = ctx.msg
        assert isinstance(req, SipRequest)
        self.layer = layer
        self.ctx = ctx
        self.request = req
        self.key = key
        self.method = req.method
        self.index = next(self._ids)  # $T(id_index)
        self.label = layer.labels.getrandbits(31)  # $T(id_label)
        self.created = now
        self.settings = settings if settings is not None else TxSettings()
        #: the [tm] values when the transaction was made: kept for its whole life, so a
        #: cfg.set (MI) changes new transactions only
        self.params = layer.params
        #: the script generation the transaction started in: its armed routes (failure,
        #: onreply, branch...) run that generation's functions after a reload
        self.engine = ctx.engine if ctx.engine is not None else layer.core.engine
        reliable = ctx.transport.reliable
        timers = layer.timers(self.settings, self.params)
        self.machine: ServerInviteTransaction | ServerNonInviteTransaction
        if self.method == "INVITE":
            self.machine = ServerInviteTransaction(req, reliable, timers, now)
        else:
            self.machine = ServerNonInviteTransaction(req, reliable, timers, now)
        if reliable:
            self.upstream = _Upstream(ctx.transport, ctx.source, ctx.conn_id)
        else:
            host, port = reply_destination(req.via1, ctx.source.host, ctx.source.port,
                                           force_rport=ctx.force_rport)
            self.upstream = _Upstream(ctx.transport, Address(host, port))
        self._to_tag: str | None = None  # made when a reply needs it (``to_tag``)
        self.branches: list[Branch] = []
        self._unstarted: list[Branch] = []
        #: tasks the transaction owns besides its branches: route continuations that wait
        #: (the async bridge), started in its nursery; cancelled when it ends
        self._unstarted_tasks: list[tuple[Callable[..., Awaitable[object]], tuple[object, ...]]] = []
        self.waiting_routes = 0
        self._route_scopes: list[trio.CancelScope] = []
        self.inbox: Mailbox[object] = Mailbox(256)
        #: events of the task's own making, and events put aside while a route waited
        self._events: deque[object] = deque()
        self._task: trio.lowlevel.Task | None = None
        # armed routes (function names), Kamailio t_on_*
        self.on_failure: str | None = ctx.armed.pop("failure", None)
        self.on_reply: str | None = ctx.armed.pop("reply", None)
        self.on_branch: str | None = ctx.armed.pop("branch", None)
        self.on_branch_failure: str | None = ctx.armed.pop("branch_failure", None)
        #: final status sent upstream (0: none yet), and whether it was ours
        self.final_status = 0
        self.local_final = False
        #: the To tag of the non-2xx final sent upstream (RFC 2543 ACK matching)
        self.final_to_tag: str | None = None
        self.last_reply_code = 0  # $T_reply_code in the request route
        self.canceled = False
        self.cancel_reason: str | None = None
        self.running = False
        self.finished = trio.Event()
        self.started_at = now
        #: t_suspend (tmx): waiting for a t_continue; bounded by fr like t_newtran
        self.suspended = False
        #: t_continue already ran (tmx): a second one is refused
        self.continued = False
        self.failure_runs = 0
        #: replies of previous serial legs are kept (t_drop_replies drops them)
        self.dropped_before = 0
        self.no_branch_deadline = now + layer.fr_for(self.method, self.settings, self.params)
        #: the lifetime (or fr without branches) ran out and was acted upon: once only
        self.expired = False
        #: branches whose final (received or local) was processed, and the last of them
        #: ($T_branch_idx in the failure route: "the branch with the last final reply")
        self._finalized: set[Branch] = set()
        self._last_final: Branch | None = None
        #: t_relay_to_flags 0x04 on the last relay: no DNS failover for its branches
        self.no_dns_failover = False

    @property
    def to_tag(self) -> str:
        """The To tag of our own replies: the same for every retransmission of the
        request (a hash of it), made the first time a reply (> 100) needs it, which a
        relayed call never does."""
        tag = self._to_tag
        if tag is None:
            req = self.request
            tag = self._to_tag = generated_to_tag(
                req.call_id, req.from_tag, (req.via1.branch if req.via1 else "") or "",
                str(req.cseq_num))
        return tag

    @to_tag.setter
    def to_tag(self, tag: str) -> None:
        self._to_tag = tag

    # -- timers -----------------------------------------------------------------

    def fr_timeouts(self) -> tuple[float, float]:
        p = self.params
        fr = self.settings.fr if self.settings.fr is not None else p.fr_timer / 1000
        fr_inv = self.settings.fr_inv if self.settings.fr_inv is not None else p.fr_inv_timer / 1000
        return fr, fr_inv

    @property
    def restart_fr_on_each_reply(self) -> bool:
        return self.params.restart_fr_on_each_reply

    @property
    def lifetime_deadline(self) -> float:
        p = self.params
        if self.settings.max_lifetime is not None:
            life = self.settings.max_lifetime
        elif self.method == "INVITE":
            life = p.max_inv_lifetime / 1000
        else:
            life = p.max_noninv_lifetime / 1000
        return self.started_at + life

    def cancel_reason_headers(self) -> tuple[str, ...]:
        return (f"Reason: {self.cancel_reason}",) if self.cancel_reason else ()

    def set_timers(self, t1: float | None, t2: float | None) -> None:
        """t_set_retr on a live transaction. The machines keep their armed
        retransmission and take the new values after it (Kamailio: "after the current
        interval"). Each machine's actions are carried out by its owner: ours are
        queued here, a branch applies its own in its task (``Branch.retime``)."""
        self.settings.t1, self.settings.t2 = t1, t2
        timers = self.layer.timers(self.settings, self.params)
        if not self.machine.terminated:
            self._execute(self.machine.set_timers(timers, trio.current_time()))
        for b in self.branches:
            b.retime(timers)
        self.wake()

    # -- events -----------------------------------------------------------------

    def post(self, event: object, *, count: bool = True) -> bool:
        """Queue an event for the task (False: the inbox is full, the event is dropped
        and counted in events_dropped, unless the caller counts it: a response is
        counted in rpl_dropped by Branch.deliver)."""
        if self.inbox.put(event):
            return True
        if count:
            self.layer.stats["events_dropped"] += 1
        return False

    def wake(self) -> None:
        """Have the task look at its state again (new deadlines, branches, queued sends)."""
        self.inbox.wake()

    def absorbs_ack(self, ack: SipRequest) -> bool:
        """An ACK for a non-2xx final we sent (hop-by-hop, §17.2.1) is ours to absorb."""
        m = self.machine
        if not isinstance(m, ServerInviteTransaction):
            return False
        if m.state not in (ISTState.COMPLETED, ISTState.CONFIRMED):
            return False
        if isinstance(self.key, LegacyServerKey):
            # §17.2.3: "the To tag of the ACK matches the To tag of the response sent
            # by the server transaction" (ours for a local reply, the callee's for a
            # relayed one); an ACK with another tag is for a 2xx (CANCEL/200 race)
            return ack_matches_invite_2543(self.request, self.final_to_tag or self.to_tag, ack)
        return True

    # -- replies upstream ----------------------------------------------------------

    def reply_local(self, code: int, reason: str | None = None, *,
                    headers: Iterable[str] = (), body: bytes = b"") -> bool:
        """A reply generated here (t_reply, 100 Trying, 408/487/500 on failures)."""
        if self.final_status and code >= 200:
            log.warning("t_reply %d: a final reply (%d) was already sent", code,
                        self.final_status)
            return False
        data = build_reply(self.request, code, reason or reason_phrase(code),
                           to_tag=self.to_tag if code > 100 else None,
                           via_edit=self.request.top_via_edit,
                           headers=[*self.ctx.reply_headers, *headers], body=body,
                           server=self.layer.core.config.core.server_header)
        if not self._send_upstream(data, code):
            return False
        self.layer.stats["rpl_generated"] += 1
        if code >= 200:
            self.local_final = True
            self.ctx.replied = code
            if code >= 300:
                self.final_to_tag = self.to_tag
        return True

    def reply(self, ctx: MsgContext, code: int, reason: str | None = None) -> bool:
        """The stateful reply ``KSR.sl.send_reply`` uses when a transaction exists."""
        return self.reply_local(code, reason)

    def _send_upstream(self, data: bytes, code: int) -> bool:
        try:
            actions = self.machine.send_response(data, code, trio.current_time())
        except LocalProtocolError as exc:
            if 200 <= code < 300 and self.method == "INVITE":
                # a 2xx after our non-2xx final (the CANCEL/200 race): §16.7 step 10
                # says forward it anyway; it goes out statelessly
                self._queue(data)
                self.layer.stats["rpl_sent"] += 1
                return True
            log.debug("reply %d not sent: %s", code, exc)
            return False
        self._execute(actions)
        if self._task is not None and trio.lowlevel.current_task() is not self._task:
            # sent from another task (a route continuation of ours, MI, t_reply_callid):
            # the machine armed timers (G, H...) ours must now wait for
            self.wake()
        self.layer.stats["rpl_sent"] += 1
        if code >= 200 and not self.final_status:
            self.final_status = code
            self.layer.stats[f"{code // 100}xx_transactions"] += 1
        if code >= 200:
            self.last_reply_code = code
        return True

    def _queue(self, data: bytes) -> None:
        u = self.upstream
        # from the socket the request came in on (RFC 3581 §4; with --workers the shared
        # listener, not the worker's own socket)
        self.ctx.outbox.append((u.transport, u.dest, data, u.conn_id))

    def _execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                if a.retransmission:
                    self.layer.stats["retransmissions"] += 1
                self._queue(a.data)
            elif isinstance(a, Terminated):
                self.layer.forget(self)
            # PassUp (ACK in Accepted) never reaches here: the dispatcher routes those
            # ACKs to the script; TimedOut("H") is only counted
            elif isinstance(a, TimedOut):
                self.layer.stats["timer_h_expired"] += 1

    # -- upstream CANCEL ---------------------------------------------------------------

    def cancel_upstream(self, reason: str | None = None) -> None:
        """The caller CANCELled (§16.10): cancel every pending branch; the final reply
        (487 normally) goes up when they have all answered."""
        if self.canceled:
            return
        self.canceled = True
        self.cancel_reason = reason
        self.cancel_branches()
        self.cancel_waiting_routes("the caller cancelled")
        if not self.pending_branches and not self._unstarted and not self.final_status \
                and self.method == "INVITE":
            # nothing downstream to wait for (a route still waiting, or suspended): the
            # caller gets its 487 now
            self.reply_local(487, "Request Terminated")
        self.wake()

    def cancel_waiting_routes(self, why: str) -> None:
        """Cancel every route continuation of this transaction that is waiting: the route
        never runs again (its coroutine is abandoned by core._drive)."""
        for scope in self._route_scopes:
            if not scope.cancel_called:
                log.info("transaction %d: a waiting route is cancelled: %s", self.index, why)
                scope.cancel()

    def cancel_branches(self, which: str = "all", *, except_branch: Branch | None = None) -> int:
        n = 0
        for b in self.branches:
            if b is except_branch or not b.pending:
                continue
            b.cancel()
            n += 1
        return n

    # -- branches ---------------------------------------------------------------------

    def add_branch(self, branch: Branch) -> None:
        self.branches.append(branch)
        self._unstarted.append(branch)
        self.layer.stats["UAC_transactions"] += 1
        if self.running:
            self.wake()

    @property
    def pending_branches(self) -> list[Branch]:
        return [b for b in self.branches if b.pending]

    # -- the task --------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` as a task of this transaction: a request route that waits
        goes on here (core._finish hands its coroutine over). It is cancelled when the
        transaction ends, so no route code runs after its transaction is gone; until it
        has an answer the transaction stays bounded by fr and its lifetime."""
        self._unstarted_tasks.append((fn, args))
        self.waiting_routes += 1
        if self.running:
            self.wake()  # else run(), already start_soon'ed, starts it first thing

    async def _owned(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
                     ) -> None:
        scope = trio.CancelScope()
        self._route_scopes.append(scope)
        try:
            with scope:
                await fn(*args)
        except Exception:
            log.exception("transaction %d: a route continuation failed", self.index)
            self.layer.stats["tx_errors"] += 1
            if not self.final_status:
                self.reply_local(500, "Server Internal Error")
        finally:
            self._route_scopes.remove(scope)
            self.waiting_routes -= 1
            self.wake()

    #: the branches of a server transaction are driven by its task (Branch.deliver
    #: posts their responses here), not by tasks of their own
    drives_branches = True

    async def run(self) -> None:
        token = current_call_id.set(self.request.call_id)
        self.running = True
        self._task = trio.lowlevel.current_task()
        try:
            # Most transactions own no task: their branches are driven right here. A
            # nursery is opened the first time there is a task to own (a route
            # continuation that waits, a branch on a reliable transport), and the same
            # loop goes on inside it.
            if not await self._loop(None):
                async with trio.open_nursery() as nursery:
                    await self._loop(nursery)
                    nursery.cancel_scope.cancel()  # what it still owns ends with it
        finally:
            self.running = False
            self._task = None
            for b in self.branches:
                if b.started:
                    b.end()  # lingering branches end with us
            self.layer.forget(self)
            self.inbox.close()
            self._events.clear()
            self.finished.set()
            current_call_id.reset(token)
            self._break_cycles()

    def _break_cycles(self) -> None:
        """Drop the references that make the ended transaction a reference cycle, so that
        reference counting frees it, its request and its branches as soon as nothing
        else holds its context. Left to the cyclic GC, ~200 objects a call waited to be
        found, got promoted to the older generations and made every full collection
        longer (about 100 ms each with a few thousand calls in the heap).

        The context keeps its ``transaction`` (route code still holding the context
        sees a transaction that is over: t_relay answers -1, testing.Watch sees
        ``finished``); the transaction keeps its context weakly, and forgets its
        branches (the tables forgot them, nothing reads them after the end)."""
        self.ctx = weakref.proxy(self.ctx)
        self.branches = []
        self._finalized = set()
        self._last_final = None
        self._unstarted = []
        self._route_scopes = []

    def _next_event(self) -> object | None:
        """An event the task itself produced or put aside (its driven branches' reports,
        events that came while a route of ours waited), oldest first."""
        return self._events.popleft() if self._events else None

    async def _loop(self, nursery: trio.Nursery | None) -> bool:
        """Serve events and deadlines until the transaction is done (True); without a
        nursery, return False as soon as a task is to be started."""
        layer = self.layer
        timed_out = False
        while True:
            if self._unstarted_tasks:
                if nursery is None:
                    return False
                for fn, args in self._unstarted_tasks:
                    nursery.start_soon(self._owned, fn, args)
                self._unstarted_tasks.clear()
            if self._unstarted:
                if nursery is None and any(not b.driven for b in self._unstarted):
                    return False
                starting, self._unstarted = self._unstarted, []
                for b in starting:
                    if b.driven:
                        await self._drive(b, b.begin())
                    else:
                        # on a reliable transport a send may wait (a TCP connect): such a
                        # branch runs in a task of its own, so it never holds the others up
                        assert nursery is not None
                        nursery.start_soon(b.run)
            # replies to the caller first (a 2xx must not wait behind the CANCELs of the
            # other branches, §16.7 step 5 before step 10)
            await layer.core.flush(self.ctx)
            # (what the branches send goes to them, not into the context's outbox)
            deadline = min(self.machine.next_deadline(), self._own_deadline(),
                           await self._prepare_branches())
            if self._done():
                return True
            event = self._next_event()
            if event is None:
                event = await self._wait(deadline, timed_out)
            now = trio.current_time()
            timed_out = event is None
            try:
                if event is not None:
                    await self._handle(event)
                    continue
                await self._branch_timeouts(now)
                if now >= self._own_deadline():
                    await self._expire(now)
                if now >= self.machine.next_deadline() and not self.machine.terminated:
                    self._execute(self.machine.handle_timer(now))
            except Exception:
                # a bug here must not take the server (the layer's nursery) down
                # with it: log it, count it, answer if we still can
                log.exception("transaction %d: error handling %r", self.index, event)
                layer.stats["tx_errors"] += 1
                if not self.final_status:
                    self.reply_local(500, "Server Internal Error")

    async def _wait(self, deadline: float, timed_out: bool) -> object | None:
        """The next event from the inbox, or None at ``deadline``. After a pass that
        served deadlines (``timed_out``), what is queued is taken first, however overdue
        the next deadline: timers cannot starve the inbox."""
        if timed_out and len(self.inbox):
            return self.inbox.get_nowait()
        return await self.inbox.get(deadline)

    async def _prepare_branches(self) -> float:
        """What the driven branches do before a wait (new timers, CANCELs); ends those
        that are over. Returns the earliest of their deadlines."""
        deadline = math.inf
        for b in self.branches:
            if b.driven and b.started and not b.ended:
                # prepare() only when it has something to do (most passes: nothing)
                if await self._drive(b, b.prepare()) if b.has_work() \
                        else not b.machine.terminated:
                    deadline = min(deadline, b.deadline())
                else:
                    b.end()
        return deadline

    async def _branch_timeouts(self, now: float) -> None:
        for b in self.branches:
            if b.driven and b.started and not b.ended and now >= b.deadline():
                await self._drive(b, b.timeout(now))

    async def _drive(self, b: Branch, step: Awaitable[bool | None]) -> bool:
        """Run one of ``b``'s handlers. A bug in one ends that branch (logged, counted,
        a local 500 for it) instead of the transaction or the server; False then."""
        try:
            return bool(await step)
        except Exception:
            b.crashed()
            b.end()
            return False

    def report(self, event: object) -> None:
        """An event of the task's own making (a driven branch's reply, timeout...): kept
        in order on an unbounded local queue, never in the bounded inbox, which a flood
        of responses from outside could fill (the task is the only producer: its own
        work bounds it)."""
        self._events.append(event)

    # -- routes run by the task ----------------------------------------------------------

    async def _run_route(self, name: str, ctx: MsgContext, route_type: RouteType) -> Step | None:
        """Run an armed route (onreply, branch-failure, failure) in this task. While it
        waits (an async export), the driven branches are served by a task of ours that
        only does what they need at the machine level (responses, retransmissions, fr,
        CANCELs); what else comes is put aside for the task, which takes it in order
        when the route is done: no decision of the transaction changes under the route's
        feet, and no branch stops while it waits."""
        return await self.layer.core.run_route(name, ctx, route_type,
                                               while_waiting=self._serving_branches)

    @asynccontextmanager
    async def _serving_branches(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_branches)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_branches(self) -> None:
        timed_out = False
        while True:
            deadline = await self._prepare_branches()
            await self.layer.core.flush(self.ctx)
            event = await self._wait(deadline, timed_out)
            now = trio.current_time()
            timed_out = event is None
            if event is None:
                await self._branch_timeouts(now)
            elif isinstance(event, BranchResponse):
                await self._handle(event)
            else:
                self._events.append(event)  # the task's, after the route

    def _final_sent(self) -> bool:
        """A final response went through the machine (t_drop marks final_status
        without one)."""
        status = self.machine.last_status
        return status is not None and status >= 200

    def _own_deadline(self) -> float:
        if self.expired or (self.final_status and self._final_sent()):
            return math.inf
        if self.final_status:  # dropped (t_drop): nothing goes up; it ends at its lifetime
            return self.lifetime_deadline
        # no branch yet (t_newtran, a route that waits, t_suspend): fr bounds it, and
        # _expire answers 408 then; a suspended transaction is no exception
        if not self.branches:
            return min(self.no_branch_deadline, self.lifetime_deadline)
        return self.lifetime_deadline

    def _done(self) -> bool:
        if self._unstarted or self._unstarted_tasks:
            return False
        if not self.machine.terminated and not (self.expired and not self._final_sent()):
            return False
        return all(b.ended or b.lingering for b in self.branches)

    async def _expire(self, now: float) -> None:
        """The lifetime (Timer C / max_*_lifetime), or fr for a transaction that never
        relayed (t_newtran, t_suspend) ran out: cancel what is pending, answer 408.
        Runs once: a transaction that still has no final afterwards (t_drop, a failure
        route that neither replied nor relayed) ends without one."""
        self.expired = True
        self.cancel_waiting_routes("the transaction timed out")
        if self.final_status:
            return
        self.layer.stats["timeouts"] += 1
        for b in self.branches:
            if b.pending:
                # a local 408, and a CANCEL if it rang (§16.8); before, b.cancel() came
                # after the 408 made the branch non-pending, so no CANCEL was ever sent
                b.expire()
                self._finalized.add(b)
                self._last_final = b
        if self.branches:
            await self._complete()
        else:
            self.reply_local(408, "Request Timeout")

    async def _handle(self, event: object) -> None:
        if isinstance(event, BranchResponse):
            b = event.branch
            if b.started and not b.ended:
                await self._drive(b, b.receive(event.response, trio.current_time()))
        elif isinstance(event, BranchEvent):
            b = event.branch
            if event.kind == "reply" and event.response is not None:
                await self._on_reply(b, event.response)
            elif event.kind in ("timeout", "failed") and b not in self._finalized:
                await self._on_branch_final(b, None)
        elif isinstance(event, _Retransmission):
            self.layer.stats["req_retransmissions"] += 1
            try:
                self._execute(self.machine.receive_request(trio.current_time()))
            except (RemoteProtocolError, LocalProtocolError):
                pass
        elif isinstance(event, _Ack):
            try:
                self._execute(self.machine.receive_ack(event.ack, trio.current_time()))  # type: ignore[union-attr]
            except (RemoteProtocolError, LocalProtocolError, AttributeError):
                pass

    async def _on_reply(self, b: Branch, resp: SipResponse) -> None:
        layer = self.layer
        layer.stats["rpl_received"] += 1
        code = resp.status
        route = b.on_reply or self.on_reply
        dropped = False
        if route is not None:
            rctx = self._reply_ctx(resp, b)
            await self._run_route(route, rctx, RouteType.ONREPLY)
            dropped = rctx.drop
        if code < 200:
            # not from a branch already settled locally (it is being CANCELled)
            if code > 100 and not dropped and not self.final_status and not b.local_status:
                if self._send_upstream(_upstream_bytes(resp), code):
                    layer.stats["rpl_relayed"] += 1
            return
        if 200 <= code < 300:
            # §16.7 step 5: forward every 2xx at once; step 10: cancel the other branches
            if self._send_upstream(_upstream_bytes(resp), code):
                layer.stats["rpl_relayed"] += 1
            self.cancel_branches(except_branch=b)
            return
        if b in self._finalized:
            # a late final on a branch settled locally (408 on fr, 487 after an
            # unanswered CANCEL): §16.7 step 10, not forwarded, no second failure run
            layer.stats["rpl_absorbed"] += 1
            return
        await self._on_branch_final(b, resp)

    async def _on_branch_final(self, b: Branch, resp: SipResponse | None) -> None:
        self._finalized.add(b)
        self._last_final = b
        if self._dns_failover(b):
            return  # a new branch to the next target of the same resolution is on its way
        code = b.final_status
        if self.on_branch_failure is not None and code >= 300:
            rctx = self._reply_ctx(resp, b) if resp is not None else self._failure_ctx(b)
            await self._run_route(self.on_branch_failure, rctx, RouteType.BRANCH_FAILURE)
        if code >= 600 and not self.settings.disable_6xx:
            # §16.7 step 5 / Kamailio: a 6xx ends the forking
            self.cancel_branches(except_branch=b)
        await self._complete()

    def _dns_failover(self, b: Branch) -> bool:
        """DNS failover (OpenSIPS "DNS failover", Kamailio use_dns_failover): a branch to
        a resolved name that could not be sent (477), got no reply at all before fr
        (408), or got a 503 (or a code of dns.failover_reply_codes) goes to the next
        target of the same resolution, as a new branch. Not after a CANCEL, a final
        sent, the transaction's lifetime, or when disabled (dns.disable_failover,
        t_set_disable_failover, t_relay_to_flags 0x04). True if a branch was added."""
        if b.resolution is None or b.dns is None or b.dns.no_failover:
            return False
        if self.canceled or self.final_status or self.expired:
            return False
        dns_cfg = self.layer.core.config.dns
        if dns_cfg.disable_failover or self.settings.disable_failover:
            return False
        if b.final is not None:
            code = b.final.status
            codes, classes = self.layer.failover_codes
            if code != 503 and code not in codes and code // 100 not in classes:
                return False
        elif not ((b.local_status == 408 and b.last_status == 0) or b.local_status == 477):
            return False
        dns = self.layer.core.dns
        if b.target is not None:
            dns.block(b.target)
        nb = self.layer.failover_branch(self, b)
        if nb is None:
            return False
        self.layer.stats["dns_failovers"] += 1
        log.info("transaction %d: branch %d to %s failed (%d): DNS failover to %s",
                 self.index, b.index, b.target, b.final_status, nb.target)
        return True

    def _is_minor(self, b: Branch) -> bool:
        """OpenSIPS minor branches: a branch whose flags have tm's ``minor_branch_flag`` is
        not waited for; when every other branch has failed it is cancelled."""
        flag = self.params.minor_branch_flag
        return flag >= 0 and bool(b.flags & (1 << flag))

    async def _complete(self) -> None:
        """When every branch has a final response: failure route, else the best reply."""
        if self.final_status or self._unstarted:
            return
        pending = self.pending_branches
        if pending:
            if not all(self._is_minor(b) for b in pending):
                return
            if not any(not self._is_minor(b) for b in self.branches):
                return  # only minor branches: they are waited for like any other
            for b in pending:  # every major branch failed: the minor ones go too
                b.cancel()
                b.local_status = 487
                self._finalized.add(b)
        if any(200 <= (b.final_status or 0) < 300 for b in self.branches):
            return
        if any(200 <= (b.final_status or 0) < 300 for b in self.branches):
            return
        if self.on_failure is not None:
            route, self.on_failure = self.on_failure, None  # one run per arming
            self.failure_runs += 1
            best = self._best_branch()
            # $T_branch_idx: the branch with the last final reply; the reply seen
            # ($T_reply_code, t_check_status) is the winning one
            fctx = self._failure_ctx(self._last_final or best)
            fctx.reply = best.final if best is not None else None
            before = len(self.branches)
            await self._run_route(route, fctx, RouteType.FAILURE)
            if self.final_status or len(self.branches) > before:
                return  # replied, or relayed again (serial forking)
        self._send_best()

    def _best_branch(self) -> Branch | None:
        majors = [b for b in self.branches[self.dropped_before:] if not self._is_minor(b)]
        if majors and len(majors) < len(self.branches[self.dropped_before:]):
            idx = pick_best([(b.final_status, b.final is None) for b in majors],
                            faked_reply_prio=self.layer.faked_reply_prio)
            if idx is not None:
                return majors[idx]
        return self._best_of_all()

    def _best_of_all(self) -> Branch | None:
        live = self.branches[self.dropped_before:]
        idx = pick_best([(b.final_status, b.final is None) for b in live],
                        faked_reply_prio=self.layer.faked_reply_prio)
        return live[idx] if idx is not None else None

    def _send_best(self) -> None:
        best = self._best_branch()
        if self.canceled:
            # the caller cancelled: a downstream 487 goes up as it is, else our own 487
            for b in self.branches:
                if b.final is not None and b.final.status == 487:
                    self._relay_final(b.final, 487)
                    return
            self.reply_local(487, "Request Terminated")
            return
        if best is None:
            self.reply_local(500, "No branch could be sent")
            return
        if best.final is None:
            code = best.local_status or 500
            self.reply_local(code, reason_phrase(code))
            return
        code = upstream_status(best.final.status)
        resp = best.final
        hname = challenge_header_name(resp.status)
        if hname is not None:
            # §16.7 step 7: collect every challenge of every 401/407 branch
            for b in self.branches:
                if b is best or b.final is None or b.final.status not in (401, 407):
                    continue
                for h in b.final.headers:
                    if h.key in ("www-authenticate", "proxy-authenticate"):
                        resp.append_header(f"{h.name}: {h.text}")
        if code != resp.status:
            line_end = resp.text.find("\r\n")
            resp.replace_span(0, line_end, f"SIP/2.0 {code} {reason_phrase(code)}")
        self._relay_final(resp, code)

    def _relay_final(self, resp: SipResponse, code: int) -> None:
        if self._send_upstream(_upstream_bytes(resp), code):
            self.layer.stats["rpl_relayed"] += 1
            if code >= 300:
                self.final_to_tag = resp.to_tag

    def _reply_ctx(self, resp: SipResponse, b: Branch) -> MsgContext:
        rctx = MsgContext(resp, b.dest, b.transport, None, RouteType.ONREPLY, self.layer.core,
                          flags=self.ctx.flags, transaction=self)
        rctx.vars = self.ctx.vars
        rctx.branch_index = b.index
        return rctx

    def _failure_ctx(self, b: Branch | None) -> MsgContext:
        ctx = self.ctx
        ctx.reply = b.final if b is not None else None
        ctx.branch_index = b.index if b is not None else -1
        ctx.drop = False
        return ctx

    def reply_code_for_route(self, ctx: MsgContext) -> int:
        """$T_reply_code: the reply being processed (reply routes), the winning reply
        (failure route), the last final sent (request route), 0 if none."""
        if ctx.route_type in (RouteType.ONREPLY, RouteType.CORE_REPLY, RouteType.BRANCH_FAILURE):
            if isinstance(ctx.msg, SipResponse):
                return ctx.msg.status
            # a branch failure route for a local final (timeout): its 408/487/477
            if 0 <= ctx.branch_index < len(self.branches):
                return self.branches[ctx.branch_index].final_status
            return 0
        if ctx.route_type == RouteType.FAILURE:
            best = self._best_branch()
            return best.final_status if best is not None else 0
        return self.last_reply_code


def _upstream_bytes(resp: SipResponse) -> bytes:
    """The response without our (top) Via, as it goes upstream."""
    remove_top_via(resp)
    return resp.to_bytes()


class TransactionLayer:
    """The tables of server and client transactions, and what the tm exports call."""

    def __init__(self, core: ProxyCore, params: TmConfig) -> None:
        self.core = core
        self.params = params
        self.servers: dict[AnyServerKey, ServerTx] = {}
        #: the same transactions by $T(id_index), for t_continue (tmx)
        self.by_index: dict[int, ServerTx] = {}
        self.clients: dict[Any, Any] = {}
        self.stats: Counter[str] = Counter()
        self.nursery: trio.Nursery | None = None
        self.faked_reply_prio = 0
        #: requests whose request route is running, by server key (t_precheck_trans)
        self.in_progress: Counter[AnyServerKey] = Counter()
        self._branch_ids = itertools.count(1)
        self._secret = os.urandom(4).hex()
        #: the start of the branch of every request this layer sends (this process only)
        self._branch_prefix = f"z9hG4bK{self._secret}."
        #: $T(id_label) of new transactions: unpredictable enough for a label (Kamailio's
        #: is a counter), without a getrandom() system call per transaction
        self.labels = random.Random(os.urandom(16))
        self._timers_cache: dict[tuple[object, ...], tuple[TmConfig, TimerConfig]] = {}
        #: INVITE branches that ended, by client key, until a late response to one is
        #: no longer ours to answer (see ``branch_ended``); and the same keys in the
        #: order they ended, for pruning
        self._ended: dict[ClientKey, _EndedBranch] = {}
        self._ended_order: deque[tuple[float, ClientKey]] = deque()
        #: the same for server transactions (``_server_ended_now``)
        self._server_ended: dict[AnyServerKey, _EndedServer] = {}
        self._server_ended_order: deque[tuple[float, AnyServerKey]] = deque()

    # -- configuration ------------------------------------------------------------------

    def timers(self, s: TxSettings, params: TmConfig | None = None) -> TimerConfig:
        """The timers of a transaction with settings ``s``, from ``params`` (the
        transaction's own snapshot; default: the layer's current values)."""
        p = params if params is not None else self.params
        # the same few combinations for every transaction: made once each (a
        # TimerConfig is immutable); keyed by the params object, replaced on cfg.set
        key = (id(p), s.fr, s.fr_inv, s.t1, s.t2, s.max_lifetime)
        hit = self._timers_cache.get(key)
        if hit is not None and hit[0] is p:
            return hit[1]
        timers = self._make_timers(s, p)
        if len(self._timers_cache) >= 64:
            self._timers_cache.clear()  # t_set_fr with ever new values: stay bounded
        self._timers_cache[key] = (p, timers)
        return timers

    @staticmethod
    def _make_timers(s: TxSettings, p: TmConfig) -> TimerConfig:
        wt = p.wt_timer / 1000
        t1 = s.t1 if s.t1 is not None else p.retr_timer1 / 1000
        t2 = s.t2 if s.t2 is not None else p.retr_timer2 / 1000
        # A branch times out on fr/fr_inv and the transaction on its lifetime, as in
        # Kamailio, which has no Timer B/F for branches: with RFC's 64*T1 here a
        # t_set_fr above 32 s (or a t_set_retr T1 below 470 ms) would cut the branch
        # at 64*T1 instead. So B and F lie beyond every fr and lifetime.
        beyond = max(p.fr_timer, p.fr_inv_timer, p.max_inv_lifetime,
                     p.max_noninv_lifetime) / 1000
        beyond = max(beyond, s.fr or 0.0, s.fr_inv or 0.0, s.max_lifetime or 0.0) + 64 * t1
        return TimerConfig(
            t1=t1,
            # t_set_retr(5000, 0) must not make T2 < T1 (TimerConfig refuses it)
            t2=max(t1, t2),
            t4=p.t4 / 1000,
            # Kamailio keeps a completed transaction for wt_timer, not RFC 3261's 64*T1
            d=wt, j=wt, l=wt, m=wt,
            b=beyond, f=beyond,
        )

    def fr_for(self, method: str, s: TxSettings, params: TmConfig | None = None) -> float:
        p = params if params is not None else self.params
        fr = s.fr if s.fr is not None else p.fr_timer / 1000
        return fr

    # -- dispatch ------------------------------------------------------------------------

    def match_request(self, req: SipRequest) -> bool:
        """Absorb what belongs to an existing server transaction (§17.2.3): request
        retransmissions and ACKs of non-2xx finals. True if absorbed."""
        try:
            key = server_key(req)
        except BadMessage:
            return False
        tx = self.servers.get(key)
        if tx is None:
            return self._late_request(key, req)
        if (isinstance(key, LegacyServerKey) and req.method != "ACK"
                and not same_request_2543(tx.request, req)):
            return False  # the RFC 2543 key leaves the To tag out: confirm (§17.2.3)
        if req.method == "ACK":
            if tx.absorbs_ack(req):
                self.stats["ack_absorbed"] += 1
                tx.post(_Ack(req))
                return True
            return False  # an ACK for a 2xx: a new transaction, routed by the script
        tx.post(_Retransmission())
        return True

    def match_response(self, resp: SipResponse) -> bool:
        """Deliver a response to its client transaction (§17.1.3). False: no match (the
        core forwards it statelessly if our Via is on top, as Kamailio does)."""
        try:
            key = client_key(resp)
        except BadMessage:
            return False
        target = self.clients.get(key)
        if target is None:
            return self._late_response(key, resp)
        # matched: if its inbox is full it is dropped (counted by deliver; a callee
        # retransmits its finals), never forwarded statelessly past its transaction
        target.deliver(resp)
        return True

    def branch_ended(self, b: Branch) -> None:
        """An INVITE branch's task ended: Timer D or M (wt here, Kamailio's linger, where
        RFC 3261 wants D >= 32 s), or it was settled locally and cut when its
        transaction ended. The callee may still retransmit its final until its Timer H
        (64*T1), or answer late. For that long the branch is remembered, and a late
        response is handled as the RFC's Completed ICT and §16.7 would:

        * a 300-699 is ACKed again (the callee's Timer G stops) and absorbed: §16.7
          step 10 "MUST NOT ... forward any other responses" once a final went up;
          forwarded statelessly, as before, the caller got a second final (a 487 or
          a 486 seconds after our 408 or after a 2xx);
        * a 1xx of a branch that never had a final is answered with a CANCEL (the
          branch gave up on it: Kamailio cancel_b_method 1), and absorbed; the CANCEL
          is a client transaction of its own, retransmitted over UDP (``_LateCancel``);
        * a 2xx is not ours: the core forwards it statelessly (§16.7 step 5).
        """
        if b.method != "INVITE" or not isinstance(b.machine, ClientInviteTransaction):
            return
        now = trio.current_time()
        self._prune_ended(now)
        until = now + max(64 * b.machine.timers.t1, 32.0)
        self._ended[b.key] = _EndedBranch(until, b.machine.data, b.machine.timers,
                                          b.transport, b.dest,
                                          b.final is not None or b.last_status >= 200)
        self._ended_order.append((until, b.key))

    def _prune_ended(self, now: float) -> None:
        order = self._ended_order
        while order and order[0][0] <= now:
            until, key = order.popleft()
            ended = self._ended.get(key)
            if ended is not None and ended.until == until:
                del self._ended[key]

    def _late_response(self, key: ClientKey, resp: SipResponse) -> bool:
        now = trio.current_time()
        self._prune_ended(now)
        ended = self._ended.get(key)
        if 200 <= resp.status < 300:
            return False  # a 2xx: the core forwards it statelessly (§16.7 step 5)
        if ended is None or ended.until <= now:
            if not key.branch.startswith(self._branch_prefix):
                return False  # not a branch of ours: the core forwards it statelessly
            # A branch of ours, ended so long ago that its record expired (a callee that
            # answers minutes late, after a partition): its transaction sent its final
            # long since, so a 1xx or a 300-699 must not go upstream (§16.7 step 10). Sent
            # on statelessly, the caller got e.g. a 486 after its 200 (chaos seed 1133).
            self.stats["rpl_absorbed"] += 1
            return True
        self.stats["rpl_absorbed"] += 1
        # like Timer D, restarted by each final: the callee retransmits for 64*T1
        ended.until = max(ended.until, now + max(64 * ended.timers.t1, 32.0))
        self._ended_order.append((ended.until, key))
        if self.nursery is None:
            return True
        cancel_key = client_key_for_request(key.branch, "CANCEL")
        try:
            # ACK and CANCEL copy the INVITE *as sent* (our Via and branch, its R-URI
            # and Route set: §17.1.1.3, §9.1), parsed again now: this is rare
            if resp.status >= 300:
                ended.answered = True
                ack = build_ack(ended.sent_request(), resp)
                self.stats["late_replies_answered"] += 1
                self.nursery.start_soon(ended.transport.send, ack, ended.dest)
            elif not ended.answered and cancel_key not in self.clients:
                cancel = _LateCancel(self, cancel_key, ended,
                                     build_cancel(ended.sent_request()))
                self.nursery.start_soon(cancel.run)
                self.stats["late_replies_answered"] += 1
        except ValueError:
            pass
        return True

    def invite_for_cancel(self, cancel: SipRequest) -> ServerTx | None:
        try:
            return self.servers.get(cancel_target_key(cancel))
        except BadMessage:
            return None

    def forget(self, tx: ServerTx) -> None:
        if self.by_index.get(tx.index) is tx:
            del self.by_index[tx.index]
        if self.servers.get(tx.key) is tx:
            del self.servers[tx.key]
            self._server_ended_now(tx)

    def _server_ended_now(self, tx: ServerTx) -> None:
        """A server transaction left the table: Timer I/J/L, which are wt here
        (Kamailio's linger) where RFC 3261/6026 keep the state 64*T1 for the client's
        retransmissions (J, L) on unreliable transports. A copy of the request that
        comes later (the client never got our final, an INVITE still retransmitted by
        a caller that missed every 2xx copy) must not run the script again (a second
        transaction, the callee gets a merged request and answers 482). So for 64*T1
        (at least 32 s) the key is remembered with the final: a retransmitted request
        gets the final again (absorbed silently after a 2xx, as RFC 6026 Accepted
        does), the ACK of a non-2xx final is absorbed. The whole transaction still
        lingers exactly wt."""
        if tx.upstream.transport.reliable:
            return  # no retransmissions on a reliable transport
        m = tx.machine
        status = m.last_status or 0
        now = trio.current_time()
        self._prune_server_ended(now)
        # the client's Timer B/F run 64 of *its* T1: 32 s with the RFC's, whatever ours
        until = now + max(64 * m.timers.t1, 32.0)
        final = m.last_response if status >= 300 or (status >= 200 and tx.method != "INVITE") \
            else None
        # the parsed request only for RFC 2543 matching; for RFC 3261 keys the key says
        # it all (a request holds ~100 objects: kept 32 s at 100 calls/s they were most
        # of the heap every full GC pass walked)
        legacy_req = tx.request if isinstance(tx.key, LegacyServerKey) else None
        # the To tag matters for RFC 2543 ACK matching only
        to_tag = (tx.final_to_tag or tx.to_tag) if legacy_req is not None else ""
        self._server_ended[tx.key] = _EndedServer(
            until, legacy_req, final, tx.method == "INVITE" and status >= 300,
            to_tag, tx.upstream)
        self._server_ended_order.append((until, tx.key))

    def _prune_server_ended(self, now: float) -> None:
        order = self._server_ended_order
        while order and order[0][0] <= now:
            until, key = order.popleft()
            ended = self._server_ended.get(key)
            if ended is not None and ended.until == until:
                del self._server_ended[key]

    def _late_request(self, key: AnyServerKey, req: SipRequest) -> bool:
        now = trio.current_time()
        self._prune_server_ended(now)
        ended = self._server_ended.get(key)
        if ended is None or ended.until <= now:
            return False
        legacy = ended.request  # kept for legacy (RFC 2543) keys only
        if req.method == "ACK":
            if not ended.absorbs_ack or (
                    legacy is not None and not ack_matches_invite_2543(legacy, ended.to_tag,
                                                                       req)):
                return False  # the ACK of a 2xx: the script's
            self.stats["ack_absorbed"] += 1
            return True
        if legacy is not None and not same_request_2543(legacy, req):
            return False
        self.stats["req_retransmissions"] += 1
        u = ended.upstream
        if ended.final is not None and self.nursery is not None:
            self.stats["retransmissions"] += 1
            self.nursery.start_soon(partial(u.transport.send, ended.final, u.dest,
                                            conn_id=u.conn_id))
        return True

    # -- what the exports call ---------------------------------------------------------------

    def new_server_tx(self, ctx: MsgContext, *, send_100: bool = True) -> ServerTx:
        """t_newtran: the transaction of the request in ``ctx`` (created once)."""
        if ctx.transaction is not None:
            tx: ServerTx = ctx.transaction
            return tx
        req = ctx.msg
        assert isinstance(req, SipRequest)
        key = server_key(req)
        tx = ServerTx(self, ctx, key, trio.current_time(), ctx.tx_settings)
        self.servers[key] = tx
        self.by_index[tx.index] = tx
        ctx.transaction = tx
        self.stats["UAS_transactions"] += 1
        auto_100 = tx.settings.auto_inv_100
        if auto_100 is None:
            auto_100 = tx.params.auto_inv_100
        if req.method == "INVITE" and send_100 and auto_100:
            tx.reply_local(100, "Trying")
        self._start(tx)
        return tx

    def _start(self, tx: ServerTx) -> None:
        if self.nursery is None:
            raise RuntimeError("the transaction layer is not running")
        self.nursery.start_soon(tx.run)

    def relay(self, ctx: MsgContext, target: str | None = None, flags: int = 0) -> int:
        """t_relay: forward statefully to the R-URI (or $du, or ``target``) and every
        appended branch. 1 on success, <0 when no branch could be sent."""
        req = ctx.msg
        if not isinstance(req, SipRequest):
            return -1
        if req.method == "ACK":
            return self.core.forward(ctx, target)  # type: ignore[return-value]  # no transaction
        if req.method == "CANCEL":
            inv = self.invite_for_cancel(req)
            if inv is not None:
                cancel_tx = self.new_server_tx(ctx)
                cancel_tx.reply_local(200, "canceling")
                inv.cancel_upstream(req.get("reason"))
                self.stats["cancels"] += 1
                return 1
        tx = self.new_server_tx(ctx, send_100=not flags & F_NO_100)
        if tx.final_status:
            log.warning("t_relay: the transaction was already answered %d", tx.final_status)
            return -1
        if tx.canceled:
            # §16.10: no new branches once the caller CANCELled (Kamailio E_CANCELED)
            ctx.last_error = 487
            return -1
        if tx.expired or trio.current_time() >= tx.lifetime_deadline:
            # the lifetime is over: new branches would be expired at once
            ctx.last_error = 408
            return -1
        tx.no_dns_failover = bool(flags & F_NO_DNS_FAILOVER)
        targets: list[tuple[str, str | None, int]] = []
        if target is not None:
            targets.append((req.current_uri, target, ctx.bflags))
        else:
            targets.append((req.current_uri, req.dst_uri, ctx.bflags))
        for extra in ctx.branches:
            targets.append((extra.uri, extra.dst_uri, extra.flags))
        ctx.branches = []
        sent = 0
        pending: list[_PendingDns] = []
        for i, (uri, dst, bflags) in enumerate(targets):
            made = self._make_branch(tx, ctx, uri, dst, bflags)
            if isinstance(made, _WaitingBranch):
                # the branch route waits: t_relay yields, and the rest of the branches are
                # made when it is done (RelayOp, in the transaction's task)
                return RelayOp(self, tx, made, targets[i + 1:], sent, flags, pending)  # type: ignore[return-value]
            if isinstance(made, _PendingDns):
                pending.append(made)
            elif made is not None:
                sent += 1
        if pending:
            # names the cache cannot answer: t_relay yields while they are resolved (in
            # the transaction's nursery), then their branches are made
            return RelayOp(self, tx, None, [], sent, flags, pending)  # type: ignore[return-value]
        return self._relay_result(tx, ctx, sent, flags)

    def _relay_result(self, tx: ServerTx, ctx: MsgContext, sent: int, flags: int) -> int:
        if not sent:
            if (ctx.route_type == RouteType.REQUEST and not flags & F_NO_INTERNAL_ERROR_REPLY
                    and not tx.branches and not tx.final_status):
                # Kamailio t_relay_to: kill_transaction() answers the error statefully.
                # Without it the transaction, with no branch and no answer, gave a
                # second final (408) at fr after the script's stateless error reply.
                code = ctx.last_error or 500
                tx.reply_local(code, reason_phrase(code))
            return -1
        return 1

    def _make_branch(self, tx: ServerTx, ctx: MsgContext, uri: str, dst: str | None,
                     bflags: int | None = None) -> Branch | _WaitingBranch | _PendingDns | None:
        """One branch: the branch route runs on the request with this branch's R-URI and
        $du; what it changes is this branch's only (edits rolled back after). If the branch
        route waits, a _WaitingBranch carries the state to finish it later."""
        state = _BranchState.begin(tx, ctx, uri, dst, bflags)
        waiting = False
        try:
            step = None
            if tx.on_branch is not None:
                ctx.drop = False
                step = self.core.start_route(tx.on_branch, ctx, RouteType.BRANCH)
                if step is not None and step.yielded:
                    waiting = True
                    return _WaitingBranch(state, step)
            return self._finish_branch(tx, ctx, step)
        finally:
            if not waiting:
                state.restore()

    def _finish_branch(self, tx: ServerTx, ctx: MsgContext, step: Step | None
                       ) -> Branch | _PendingDns | None:
        """The part of _make_branch after the branch route: route the branch and build it."""
        req = tx.request
        branch_reply = ctx.armed.pop("branch_reply", None)
        if step is not None and step.failed:
            self.core.stats["script_errors"] += 1
            log.error("branch route error: %s", step.traceback or step.value)
        if ctx.drop or (step is not None and step.failed):
            self.stats["branches_dropped"] += 1
            return None
        target = req.dst_uri or req.current_uri
        try:
            parsed = parse_uri_untrusted(target)
            hop = target_of_uri(parsed)
        except BadMessage as exc:
            log.warning("t_relay to %r: %s", target, exc.reason)
            ctx.last_error = 400
            return None
        if not is_ip_literal(hop.host):
            # RFC 3263 (docs/dns.md): from the cache at once, else resolved while t_relay
            # waits; the request as this branch sends it is kept for the failover branches
            data0 = req.to_bytes()
            cut = data0.find(b"\r\n") + 2
            pend = _PendingDns(parsed, target, req.current_uri, data0[:cut], data0[cut:],
                               ctx.record_route, ctx.rr_params, ctx.bflags, branch_reply,
                               getattr(tx, "no_dns_failover", True))
            res = self.core.dns.cached(parsed, supported_transports(self.core.transports))
            if res is None:
                return pend
            return self.branch_from_resolution(tx, ctx, pend, res)
        transport = self.core.transport_for(hop.proto)
        if transport is None:
            log.warning("t_relay to %s: no %s transport", target, hop.proto)
            ctx.last_error = 503
            return None
        dest = Address(hop.host, hop.port)
        if not self.core.guard.allows(dest):
            ctx.last_error = 477
            return None
        host, port = self.core.advertised(transport)
        branch_id = f"{self._branch_prefix}{next(self._branch_ids)}"
        first = req.headers[0].start if req.headers else req.headers_end
        extra = [(first, first, (via_line(transport.proto, host, port, branch_id)
                                 + "\r\n").encode("latin-1"), _VIA_SEQ)]
        if ctx.record_route:
            rr = record_route_line(transport.proto, *self.core.record_route_address(transport),
                                   ctx.rr_params) + "\r\n"
            extra.append((first, first, rr.encode("latin-1"), _VIA_SEQ + 1))
        data = req.to_bytes(extra)
        b = Branch(tx, len(tx.branches), req.current_uri, dest, transport, data, branch_id,
                   self.timers(tx.settings, tx.params), trio.current_time())
        b.on_reply = branch_reply
        b.flags = ctx.bflags
        tx.add_branch(b)
        return b

    def branch_from_resolution(self, tx: ServerTx, ctx: MsgContext, pend: _PendingDns,
                               res: Resolution, start: int = 0) -> Branch | None:
        """The branch to the first usable target of ``res`` from index ``start``: not
        blocklisted, with a transport of ours, allowed by the loopback guard. None (and
        $err set: 478 unresolvable, 477 refused by the guard) when there is none."""
        if getattr(tx, "final_status", 0) or getattr(tx, "canceled", False):
            ctx.last_error = 487 if getattr(tx, "canceled", False) else 500
            return None
        i, transport, guarded = self.core.usable_target(res, start)
        if transport is not None:
            t = res.targets[i]
            dest = Address(t.host, t.port)
            host, port = self.core.advertised(transport)
            branch_id = f"{self._branch_prefix}{next(self._branch_ids)}"
            lines = via_line(transport.proto, host, port, branch_id) + "\r\n"
            if pend.record_route:
                lines += record_route_line(transport.proto,
                                           *self.core.record_route_address(transport),
                                           pend.rr_params) + "\r\n"
            data = pend.head + lines.encode("latin-1") + pend.tail
            # the transaction's own [tm] snapshot, as every other branch of it
            b = Branch(tx, len(tx.branches), pend.ruri, dest, transport, data, branch_id,
                       self.timers(tx.settings, tx.params), trio.current_time())
            b.on_reply = pend.branch_reply
            b.flags = pend.bflags
            b.resolution, b.target_index, b.dns, b.target = res, i, pend, t
            tx.add_branch(b)
            return b
        if start == 0:
            log.warning("t_relay to %s: %s", pend.target,
                        self.core.unusable_reason(res, guarded))
            ctx.last_error = 477 if guarded else 478
        return None

    def failover_branch(self, tx: ServerTx, failed: Branch) -> Branch | None:
        """DNS failover: a new branch like ``failed`` to the next target of its resolution."""
        if failed.resolution is None or failed.dns is None:
            return None
        return self.branch_from_resolution(tx, tx.ctx, failed.dns, failed.resolution,
                                           failed.target_index + 1)

    @functools.cached_property
    def failover_codes(self) -> tuple[frozenset[int], frozenset[int]]:
        """dns.failover_reply_codes, parsed (checked when the config was read)."""
        return parse_reply_codes(self.core.config.dns.failover_reply_codes)

    def replicate(self, ctx: MsgContext, uri: str) -> int:
        """t_replicate: a stateful copy of the request to ``uri``; its replies are counted
        and dropped. The copy's client transaction runs in the layer's nursery."""
        req = ctx.msg
        if not isinstance(req, SipRequest) or req.method in ("ACK", "CANCEL"):
            return -1
        owner = _ReplicaOwner(self, req, ctx.tx_settings or TxSettings())
        saved_rr = ctx.record_route
        ctx.record_route = False
        try:
            b = self._make_branch(owner, ctx, req.current_uri, uri)  # type: ignore[arg-type]
        finally:
            ctx.record_route = saved_rr
        if b is None or isinstance(b, _WaitingBranch):
            return -1
        if isinstance(b, _PendingDns):
            # a name not in the cache: the copy goes when it is resolved (the route does
            # not wait for a replica; its result cannot change the call)
            if self.nursery is None:
                return -1
            self.nursery.start_soon(self._replicate_resolved, owner, ctx, b)
        self.stats["replicated"] += 1
        return 1

    async def _replicate_resolved(self, owner: _ReplicaOwner, ctx: MsgContext,
                                  pend: _PendingDns) -> None:
        with trio.move_on_after(self.params.max_noninv_lifetime / 1000):
            res = await self.core.dns.resolve(pend.uri,
                                              supported_transports(self.core.transports))
            self.branch_from_resolution(owner, ctx, pend, res)  # type: ignore[arg-type]

    def statistics(self) -> dict[str, int]:
        out = dict(self.stats)
        out["inuse_transactions"] = len(self.servers)
        out["active_transactions"] = sum(1 for t in self.servers.values() if t.pending_branches)
        return out


@dataclass
class _EndedServer:
    """What ``TransactionLayer._server_ended_now`` keeps of a server transaction."""

    until: float
    #: the request, for RFC 2543 matching only (None for RFC 3261 keys)
    request: SipRequest | None
    #: what a retransmitted request is answered with (None: absorbed silently)
    final: bytes | None
    absorbs_ack: bool
    to_tag: str
    upstream: _Upstream


@dataclass
class _EndedBranch:
    """What ``TransactionLayer.branch_ended`` keeps of an INVITE branch: a few objects
    (the bytes it sent, not its machine, whose parsed request and final response were
    ~150 objects a call kept for 32 s and walked by every full GC pass)."""

    until: float
    #: the INVITE as this branch sent it
    data: bytes
    #: its timers (T1/T2 for a late CANCEL's retransmissions, 64*T1 for the record)
    timers: TimerConfig
    transport: Transport
    dest: Address
    #: a final response came (a late 1xx is then a reordered one: no CANCEL)
    answered: bool

    def sent_request(self) -> SipRequest:
        """The INVITE as sent, parsed (ValueError if it does not parse: it always does)."""
        return parse_sent_invite(self.data)


class _LateCancel:
    """The CANCEL of a late 1xx to an ended branch (``TransactionLayer._late_response``):
    an ordinary non-INVITE client transaction (§9.1), retransmitted on Timer E over UDP
    until its final response or Timer F (64*T1), in a task of the layer's nursery. While
    it is in the client table (under the CANCEL's own key, §17.1.3) a further late 1xx
    does not start another. Sent once and lost, the callee rang on unCANCELled."""

    def __init__(self, layer: TransactionLayer, key: ClientKey, ended: _EndedBranch,
                 data: bytes) -> None:
        self.layer, self.key, self.ended, self.data = layer, key, ended, data
        self.inbox: Mailbox[SipResponse] = Mailbox(8)
        layer.clients[key] = self

    def deliver(self, resp: SipResponse) -> bool:
        ok = self.inbox.put(resp)
        if not ok:
            self.layer.stats["rpl_dropped"] += 1
        return ok

    async def run(self) -> None:
        layer, ended = self.layer, self.ended
        transport = ended.transport
        try:
            now = trio.current_time()
            nict = cancel_transaction(self.data, transport.reliable, ended.timers, now)
            actions = nict.start(now)
            while True:
                for a in actions:
                    if isinstance(a, Transmit):
                        await send_counted(layer.stats, transport, ended.dest, a.data,
                                           a.retransmission)
                if nict.terminated:
                    return
                resp = await self.inbox.get(nict.next_deadline())
                now = trio.current_time()
                try:
                    actions = (nict.receive_response(resp, now) if resp is not None
                               else nict.handle_timer(now))
                except RemoteProtocolError:
                    actions = []
        except Exception:  # never the server's end: the CANCEL is a courtesy to the callee
            log.exception("late CANCEL %s failed", self.key.branch)
        finally:
            self.inbox.close()
            if layer.clients.get(self.key) is self:
                del layer.clients[self.key]


@dataclass
class _BranchState:
    """What _make_branch changes on the request and its context for one branch, to put
    back afterwards (at once, or after a branch route that waited)."""

    ctx: MsgContext
    req: SipRequest
    mark: int
    saved: tuple[Any, ...]

    @classmethod
    def begin(cls, tx: Any, ctx: MsgContext, uri: str, dst: str | None,
              bflags: int | None) -> _BranchState:
        req = tx.request
        state = cls(ctx, req, req.edit_mark(),
                    (req.new_uri, req.dst_uri, ctx.record_route, ctx.rr_params, ctx.drop,
                     ctx.branch_index, ctx.bflags))
        req.new_uri = None if uri == req.ruri_text else uri
        req.dst_uri = dst
        ctx.branch_index = len(tx.branches)
        if bflags is not None:
            ctx.bflags = bflags
        return state

    def restore(self) -> None:
        ctx, req, saved = self.ctx, self.req, self.saved
        req.rollback(self.mark)
        req.new_uri, req.dst_uri = saved[0], saved[1]
        ctx.record_route, ctx.rr_params, ctx.drop = saved[2], saved[3], saved[4]
        ctx.branch_index, ctx.bflags = saved[5], saved[6]


@dataclass
class _WaitingBranch:
    state: _BranchState
    step: Step


@dataclass
class _PendingDns:
    """A branch whose destination is a host name not in the DNS cache: the request as it
    goes out (start line, then our Via and Record-Route, then ``tail``), kept to build
    the branch once the name is resolved, and again for each DNS failover."""

    uri: URI  # what is resolved ($du or the R-URI)
    target: str
    ruri: str
    head: bytes
    tail: bytes
    record_route: bool
    rr_params: str
    bflags: int
    branch_reply: str | None
    no_failover: bool


class RelayOp(AsyncOp):
    """t_relay when a branch route waits: drive that branch route to its end, finish the
    branch, make the remaining ones (their branch routes may wait too), then resume the
    route that called t_relay with t_relay's result."""

    name = "t_relay"

    def __init__(self, layer: TransactionLayer, tx: ServerTx, waiting: _WaitingBranch | None,
                 rest: list[tuple[str, str | None, int]], sent: int, flags: int,
                 pending: list[_PendingDns] | None = None) -> None:
        self.layer, self.tx, self.waiting, self.rest = layer, tx, waiting, rest
        self.sent, self.flags = sent, flags
        #: branches waiting for DNS (their names are resolved concurrently at the end)
        self.pending = list(pending or ())

    async def run(self, ctx: MsgContext) -> Any:
        layer, tx = self.layer, self.tx
        sent = self.sent
        waiting: _WaitingBranch | None = self.waiting
        todo = list(self.rest)
        while waiting is not None:
            state = waiting.state
            outer = ctx.route_type
            ctx.route_type = RouteType.BRANCH
            try:
                step = await layer.core._drive(ctx, waiting.step)
                finished = layer._finish_branch(tx, ctx, step)
                if isinstance(finished, _PendingDns):
                    self.pending.append(finished)
                elif finished is not None:
                    sent += 1
            finally:
                ctx.route_type = outer
                state.restore()
            waiting = None
            while todo:
                uri, dst, bflags = todo.pop(0)
                made = layer._make_branch(tx, ctx, uri, dst, bflags)
                if isinstance(made, _WaitingBranch):
                    waiting = made
                    break
                if isinstance(made, _PendingDns):
                    self.pending.append(made)
                elif made is not None:
                    sent += 1
        if self.pending:
            sent += await self._resolve_pending(ctx)
        return layer._relay_result(tx, ctx, sent, self.flags)

    async def _resolve_pending(self, ctx: MsgContext) -> int:
        """Resolve every pending name concurrently (cancelled with the transaction), then
        make their branches in the order t_relay saw them."""
        layer, tx = self.layer, self.tx
        supported = supported_transports(layer.core.transports)
        results: dict[int, Resolution] = {}

        async def one(i: int, p: _PendingDns) -> None:
            results[i] = await layer.core.dns.resolve(p.uri, supported)

        async with trio.open_nursery() as nursery:
            for i, p in enumerate(self.pending):
                nursery.start_soon(one, i, p)
        sent = 0
        for i, p in enumerate(self.pending):
            if layer.branch_from_resolution(tx, ctx, p, results[i]) is not None:
                sent += 1
        return sent


class _ReplicaOwner:
    """Stands in for a server transaction above a t_replicate() branch: nothing goes
    upstream, the branch's replies are only counted."""

    def __init__(self, layer: TransactionLayer, request: SipRequest, settings: TxSettings) -> None:
        self.layer = layer
        self.request = request
        self.method = request.method
        self.settings = settings
        self.params = layer.params
        self.engine = layer.core.engine
        self.on_branch: str | None = None
        self.branches: list[Branch] = []
        #: no task of ours waits on the branch: a lingering one ends at once
        self.keeps_lingering_branches = False

    def fr_timeouts(self) -> tuple[float, float]:
        p = self.params
        return p.fr_timer / 1000, p.fr_inv_timer / 1000

    @property
    def restart_fr_on_each_reply(self) -> bool:
        return self.params.restart_fr_on_each_reply

    def cancel_reason_headers(self) -> tuple[str, ...]:
        return ()

    def add_branch(self, b: Branch) -> None:
        self.branches.append(b)
        self.layer.stats["UAC_transactions"] += 1
        if self.layer.nursery is not None:
            self.layer.nursery.start_soon(b.run)

    def post(self, event: object) -> None:
        if isinstance(event, BranchEvent) and event.kind == "reply":
            self.layer.stats["replicate_replies"] += 1


