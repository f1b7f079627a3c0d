"""One client transaction of a proxied request, driven by its server transaction's task.

Theory of operation
-------------------
A :class:`Branch` owns a sans-IO client machine (ICT for INVITE, NICT
otherwise) and three deadlines:

* the machine's own timer (A/B/D/E/F/K/M, RFC 3261 §17.1),
* Kamailio's final-response timer: ``fr`` until the first provisional, then
  ``fr_inv`` for an INVITE (restarted on each provisional when
  ``restart_fr_on_each_reply``, else on the first one and on increasing codes
  >= 180, as Kamailio does); a non-INVITE keeps its ``fr`` whatever comes,
* after we sent a CANCEL, 64*T1 for the final response (§9.1), after which the
  branch counts as terminated with a local 487.

It is a set of event handlers (``begin``, ``prepare``, ``deadline``, ``receive``,
``timeout``, ``end``) called by one driver task. A server transaction drives its
branches in its own task: it waits for the earliest deadline of itself and its
branches, and the dispatcher hands it the responses it matched (§17.1.3) through
its inbox. Other owners (t_replicate, the local UAC of runtime/uac.py) run
``Branch.run``, which drives the branch in a task of its own with its own inbox.
What the machine passes up goes to the owner as a :class:`BranchEvent`; the owner
makes every routing decision. When the fr timer expires the branch reports a local
408 and, for an INVITE that had a provisional, CANCELs itself (§16.8); the CANCEL is
its own NICT, driven with the branch.

Once the branch has a *local* final (408 on fr or on the transaction's lifetime,
487 after an unanswered CANCEL) and no CANCEL in flight, it is *lingering*: it
sends nothing more on its own (no more INVITE retransmissions: Kamailio stops them
when fr fires) but stays matchable until its server transaction ends, so that
stragglers are handled as §16.7 wants while the response context exists: a late
1xx is CANCELled (Kamailio ``cancel_b_method`` 1), a late final is ACKed by the
machine and absorbed, a late 2xx is passed up and forwarded. The server
transaction does not wait for lingering branches; it ends them when it ends.

Timer B and F are not the limit of a proxied branch: fr/fr_inv are (Kamailio has
no B/F for branches), so the transaction layer gives the machines a B/F beyond
every fr and lifetime (``TransactionLayer.timers``); the CANCEL's own NICT keeps
the RFC's 64*T1.

::

    server transaction task (drives its branches)
    ─────────────────────────────────────────────
    branch.begin(): machine.start(): INVITE out
    dispatcher: 180 ──▶ tx inbox ──▶ branch.receive() ──▶ PassUp: BranchEvent ──▶ tx
                                     fr_inv armed
    tx decides "cancel": branch.cancel(); branch.prepare(): CANCEL NICT (if a 1xx came)
    dispatcher: 487 ──▶ tx inbox ──▶ branch.receive(): ACK out, BranchEvent ──▶ tx
    branch.timeout(): Timer D, then Terminated: branch.end()
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..sip.message import SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ICTState,
    PassUp,
    RemoteProtocolError,
    Terminated,
    TimedOut,
    TimerConfig,
    Transmit,
    TransportFailed,
)
from ..transaction.actions import Action
from ..transaction.matching import ClientKey, client_key_for_request
from ..transport.base import Address, Transport
from .mailbox import Mailbox

if TYPE_CHECKING:
    from ..dns import Resolution, Target
    from .transactions import ServerTx

log = logging.getLogger("trio_sip.tm")


@dataclass(frozen=True, slots=True)
class BranchResponse:
    """A response for a branch its server transaction drives (``Branch.deliver``)."""

    branch: Branch
    response: SipResponse


@dataclass(frozen=True, slots=True)
class BranchEvent:
    """What a branch tells its server transaction."""

    branch: Branch
    kind: str  # "reply" | "timeout" | "failed" | "settled" (now lingering) | "done"
    response: SipResponse | None = None


class Branch:
    """A forwarded copy of the request and the client transaction that sends it."""

    def __init__(
        self,
        tx: ServerTx,
        index: int,
        uri: str,
        dest: Address,
        transport: Transport,
        data: bytes,
        branch_id: str,
        timers: TimerConfig,
        now: float,
    ) -> None:
        self.tx = tx
        self.index = index
        self.uri = uri
        self.dest = dest
        self.transport = transport
        self.data = data
        self.branch_id = branch_id
        # The machine keeps the request for what it is (method, identity); the bytes it sends
        # and builds ACK/CANCEL from are ``data``, parsed by it only if it ever needs them.
        # Parsing ``data`` here again for every branch cost a whole parse per branch.
        req = tx.request
        self.method = tx.method
        self.machine: ClientInviteTransaction | ClientNonInviteTransaction
        if self.method == "INVITE":
            self.machine = ClientInviteTransaction(req, data, transport.reliable, timers, now)
        else:
            self.machine = ClientNonInviteTransaction(req, data, transport.reliable, timers, now)
        self.key: ClientKey = client_key_for_request(branch_id, self.method)
        #: responses, when the branch runs as its own task (``run``); a branch of a server
        #: transaction is driven by that transaction's task and has none
        self._mailbox: Mailbox[SipResponse] | None = None
        # a send on a reliable transport may wait (a TCP connect): such a branch runs in
        # a task of its own, so that it never holds up its transaction's other work
        self._owner_drives: bool = getattr(tx, "drives_branches", False)
        self._driven = self._owner_drives and not transport.reliable
        #: highest status received (0: none), and the final response once there is one
        self.last_status = 0
        self.final: SipResponse | None = None
        #: a local final status (408 on timeout, 487 after an unanswered CANCEL, 477/503)
        self.local_status = 0
        self.provisional = False
        self.cancel_requested = False
        self.cancel_sent = False
        self.timed_out = False
        #: armed onreply route for this branch (t_on_reply in a branch route)
        self.on_reply: str | None = None
        #: DNS (docs/dns.md): the resolution this branch's destination came from, the
        #: index of its target there and the target, and what builds a failover branch
        self.resolution: Resolution | None = None
        self.target_index = 0
        self.target: Target | None = None
        self.dns: Any = None
        self.flags = 0
        self.fr_deadline = math.inf
        self.cancel_deadline = math.inf
        #: the machine was started (``begin``), and the branch ended (``end``)
        self.started = False
        self.ended = False
        self._cancel_nict: ClientNonInviteTransaction | None = None
        self._cancel_key: ClientKey | None = None
        #: new timer values (t_set_retr) for the task to apply: the machine's actions
        #: are this task's to carry out
        self._new_timers: TimerConfig | None = None

    # -- status the server transaction reads ----------------------------------------

    @property
    def final_status(self) -> int:
        """The final status of this branch (local or received), 0 while pending."""
        if self.final is not None:
            return self.final.status
        return self.local_status

    @property
    def pending(self) -> bool:
        return self.final_status == 0

    @property
    def lingering(self) -> bool:
        """Settled locally (408/487) with no CANCEL in flight or due: the branch only
        absorbs stragglers now, and its server transaction need not wait for it."""
        if self.local_status == 0 or self.ended or self.machine.terminated:
            return False
        if self.cancel_sent:
            return self.cancel_deadline == math.inf  # the CANCEL got its final, or gave up
        if self.cancel_requested and isinstance(self.machine, ClientInviteTransaction):
            return not self.machine.cancel_allowed  # a CANCEL is about to go out
        return True

    @property
    def driven(self) -> bool:
        """Driven by its server transaction's task (else by ``run``, a task of its own)."""
        return self._driven

    def deliver(self, resp: SipResponse) -> bool:
        """Called by the dispatcher (any task): queue a matched response for whichever
        task drives this branch (its server transaction's, or its own)."""
        if self._driven:
            ok = self.tx.post(BranchResponse(self, resp), count=False)
        else:
            ok = self._mailbox is not None and self._mailbox.put(resp)
        if not ok:
            self.tx.layer.stats["rpl_dropped"] += 1
        return ok

    def cancel(self) -> None:
        """Ask for this branch to be cancelled (§16.10): at once if a provisional came,
        else as soon as one comes (Kamailio ``cancel_b_method`` 1)."""
        if self.cancel_requested or not self.pending:
            return
        self.cancel_requested = True
        self._wake()

    def expire(self) -> None:
        """The server transaction's lifetime ran out: a local 408 for this branch, and
        (INVITE) a CANCEL now if it rang, or when it does."""
        if not self.pending:
            return
        self.timed_out = True
        self.local_status = 408
        self.tx.layer.stats["timeouts"] += 1
        if self.method == "INVITE":
            self.cancel_requested = True
        self._wake()

    def retime(self, timers: TimerConfig) -> None:
        """New T1/T2 (t_set_retr on a live transaction), applied by the branch's task."""
        self._new_timers = timers
        self._wake()

    # -- driving ------------------------------------------------------------------------
    #
    # A branch is a set of event handlers around its machine: ``begin`` (send the
    # request), ``prepare`` (what is due before waiting: new timers, a CANCEL),
    # ``deadline``, ``receive`` (a matched response), ``timeout`` (a deadline passed) and
    # ``end``. The task that calls them is its driver: a server transaction drives its
    # branches in its own task (ServerTx.run: no task, inbox or cancel scope per branch,
    # and a response costs one task hop instead of two); other owners (t_replicate, the
    # local UAC) run ``run``, which drives the branch in a task of its own.

    async def run(self) -> None:
        """Drive the branch in a task of its own until it ends."""
        mailbox = self._mailbox = Mailbox[SipResponse](64)
        try:
            await self.begin()
            while await self.prepare():
                resp = await mailbox.get(self.deadline())
                now = trio.current_time()
                if resp is not None:
                    await self.receive(resp, now)
                else:
                    await self.timeout(now)
        except Exception:
            # a bug in a handler ends this branch (a local 500), not its owner's nursery
            # (t_replicate and the local UAC run branches in the layer's: the server's)
            self.crashed()
        finally:
            mailbox.close()
            self.end()
            self._report("done")

    def crashed(self) -> None:
        """A handler of this branch raised (called from the ``except`` block): log and
        count it; a pending branch ends with a local 500, reported to its owner."""
        log.exception("branch %d to %s failed", self.index, self.uri)
        self.tx.layer.stats["tx_errors"] += 1
        if self.pending:
            self.local_status = 500
            self._report("failed")

    async def begin(self) -> None:
        """Register for responses, arm fr, send the request."""
        self.started = True
        self.tx.layer.clients[self.key] = self
        now = trio.current_time()
        self._arm_fr(now)
        await self._execute(self.machine.start(now))

    async def prepare(self) -> bool:
        """Carry out what is due before waiting (new timers from t_set_retr, a CANCEL
        asked for). False when there is nothing left to wait for: the machine ended, or
        the branch lingers and its owner does not keep lingering branches."""
        while not self.machine.terminated:
            # Everything that sends happens here or in receive/timeout, between waits:
            # a wake-up (cancel(), retime()) never cuts a send in half.
            if self._new_timers is not None:
                timers, self._new_timers = self._new_timers, None
                await self._execute(self.machine.set_timers(timers, trio.current_time()))
                continue
            if self._cancel_due:
                await self._maybe_send_cancel()
            return not (self.lingering and not self.tx.keeps_lingering_branches)
        return False

    def has_work(self) -> bool:
        """Whether ``prepare`` has more to do than check that the branch goes on: for an
        owner that keeps lingering branches (a server transaction), ``prepare()`` is
        ``not self.machine.terminated`` when this is False."""
        return self._new_timers is not None or self._cancel_due

    def deadline(self) -> float:
        """When ``timeout`` has something to do."""
        deadline = min(self._machine_deadline(), self.fr_deadline, self.cancel_deadline)
        if self._cancel_nict is not None:
            deadline = min(deadline, self._cancel_nict.next_deadline())
        return deadline

    async def receive(self, resp: SipResponse, now: float) -> None:
        if resp.cseq_method == "CANCEL":
            await self._on_cancel_response(resp, now)
        else:
            await self._on_response(resp, now)

    async def timeout(self, now: float) -> None:
        """Act on what is due at ``now`` (one thing of fr/CANCEL deadline per call: the
        driver calls ``prepare`` and asks for the deadline again in between)."""
        if self._cancel_nict is not None and now >= self._cancel_nict.next_deadline():
            await self._execute_cancel(self._cancel_nict.handle_timer(now))
        if now >= self.cancel_deadline:
            # §9.1: no final response 64*T1 after the CANCEL: consider it
            # cancelled (a branch already settled by fr just stops waiting)
            self.cancel_deadline = math.inf
            if self.pending:
                self.local_status = 487
                self._report("timeout")
            else:
                # settled by fr before: now lingering, which the server
                # transaction may be waiting for to end
                self._report("settled")
            return
        if now >= self.fr_deadline:
            self.fr_deadline = math.inf
            await self._fr_expired()
            return
        if now >= self._machine_deadline():
            await self._execute(self.machine.handle_timer(now))

    def end(self) -> None:
        """The branch is over (its machine ended, or its driver stopped): unregister,
        and leave the record that late responses are matched against."""
        if self.ended:
            return
        self.ended = True
        layer = self.tx.layer
        layer.clients.pop(self.key, None)
        if self._cancel_key is not None:
            layer.clients.pop(self._cancel_key, None)
        layer.branch_ended(self)  # late responses: absorbed, not forwarded (non-2xx)

    def _wake(self) -> None:
        """State changed outside the driver (cancel(), retime(), expire()): have it look."""
        if self._driven:
            self.tx.wake()
        elif self._mailbox is not None:
            self._mailbox.wake()
        # else: its own task has not started; prepare() looks at the flags first thing

    def _machine_deadline(self) -> float:
        """The machine's next timer, except after a local final with no final received:
        then its only timers are request retransmissions and B/F, which we give up."""
        if self.local_status and self.last_status < 200:
            return math.inf
        return self.machine.next_deadline()

    def _arm_fr(self, now: float) -> None:
        fr, fr_inv = self.tx.fr_timeouts()
        if self.method == "INVITE" and self.provisional:
            self.fr_deadline = now + fr_inv
        else:
            self.fr_deadline = now + fr

    async def _on_response(self, resp: SipResponse, now: float) -> None:
        try:
            actions = self.machine.receive_response(resp, now)
        except RemoteProtocolError as exc:
            self.tx.layer.stats["rpl_absorbed"] += 1
            log.debug("branch %d: response %d ignored: %s", self.index, resp.status, exc)
            return
        # A 1xx the machine absorbed (it came after a final: reordering) changes nothing.
        passed_up = any(isinstance(a, PassUp) for a in actions)
        if resp.status < 200 and passed_up:
            previous = self.last_status
            self.provisional = True
            self.last_status = max(previous, resp.status)
            # Kamailio t_reply.c: fr_inv starts on the first 1xx and restarts on every
            # 1xx (restart_fr_on_each_reply) or else on increasing codes >= 180; the fr
            # of a non-INVITE is not touched by provisionals.
            if self.pending and self.method == "INVITE" and (
                    self.tx.restart_fr_on_each_reply
                    or (previous < resp.status and (resp.status >= 180 or previous == 0))):
                self._arm_fr(now)
        await self._execute(actions)

    async def _fr_expired(self) -> None:
        """fr/fr_inv expired without a final response: a local 408 for this branch; an
        INVITE that had a provisional is CANCELled (§16.8, Kamailio fr_inv_timer), one
        that had none is CANCELled if a provisional still comes (cancel_b_method 1)."""
        if not self.pending:
            return
        self.timed_out = True
        self.local_status = 408
        self.tx.layer.stats["timeouts"] += 1
        if self.method == "INVITE":
            self.cancel_requested = True
            await self._maybe_send_cancel()
        self._report("timeout")

    @property
    def _cancel_due(self) -> bool:
        """A CANCEL was asked for and not sent yet (INVITE branches only)."""
        return self.cancel_requested and not self.cancel_sent and self.method == "INVITE"

    async def _maybe_send_cancel(self) -> None:
        if not self._cancel_due:
            return
        machine = self.machine
        assert isinstance(machine, ClientInviteTransaction)
        if not machine.cancel_allowed:
            if machine.state in (ICTState.ACCEPTED, ICTState.COMPLETED, ICTState.TERMINATED):
                self.cancel_requested = False  # a final came: nothing left to cancel
            return
        self.cancel_sent = True
        data = machine.build_cancel(self.tx.cancel_reason_headers())
        now = trio.current_time()
        nict = cancel_transaction(data, self.transport.reliable, machine.timers, now)
        self._cancel_nict = nict
        self._cancel_key = client_key_for_request(self.branch_id, "CANCEL")
        self.tx.layer.clients[self._cancel_key] = _CancelSink(self)
        self.cancel_deadline = now + 64 * machine.timers.t1
        await self._execute_cancel(nict.start(now))

    async def _on_cancel_response(self, resp: SipResponse, now: float) -> None:
        if self._cancel_nict is None or self._cancel_nict.terminated:
            return
        try:
            actions = self._cancel_nict.receive_response(resp, now)
        except RemoteProtocolError:
            return
        await self._execute_cancel(actions)

    async def _execute_cancel(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                await self._send(a.data, a.retransmission)
            elif isinstance(a, Terminated) and self._cancel_key is not None:
                self.tx.layer.clients.pop(self._cancel_key, None)

    async def _execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Transmit):
                if not await self._send(a.data, a.retransmission):
                    now = trio.current_time()
                    if not self.machine.terminated:
                        try:
                            await self._execute(self.machine.transport_error(now))
                        except Exception:  # state without a transport-error entry
                            log.debug("branch %d: send failed", self.index)
                    return
            elif isinstance(a, PassUp):
                msg = a.message
                assert isinstance(msg, SipResponse)
                if msg.status >= 200 and self.final is None and self.local_status == 0:
                    self.final = msg
                self.last_status = max(self.last_status, msg.status)
                if msg.status >= 200:
                    self.fr_deadline = math.inf
                    self.cancel_deadline = math.inf
                self._tell(BranchEvent(self, "reply", msg))
            elif isinstance(a, TimedOut):
                if self.pending:
                    self.timed_out = True
                    self.local_status = 408
                    self.tx.layer.stats["timeouts"] += 1
                    self._report("timeout")
            elif isinstance(a, TransportFailed):
                if self.pending:
                    self.local_status = 477
                    self._report("failed")
            elif isinstance(a, Terminated):
                pass

    async def _send(self, data: bytes, retransmission: bool) -> bool:
        return await send_counted(self.tx.layer.stats, self.transport, self.dest, data,
                                  retransmission)

    def _report(self, kind: str) -> None:
        self._tell(BranchEvent(self, kind))

    def _tell(self, event: BranchEvent) -> None:
        """Tell the owner. A server transaction keeps its branches' events on its own
        unbounded queue (``ServerTx.report``), never in its bounded inbox, which a flood
        from outside could fill: a driven branch's are its task's own making, one in a
        task of its own (reliable transport) wakes it. Other owners take them through
        ``post``."""
        if self._owner_drives:
            self.tx.report(event)
            if not self._driven:
                self.tx.wake()
        else:
            self.tx.post(event)


def cancel_transaction(data: bytes, reliable: bool, invite_timers: TimerConfig,
                       now: float) -> ClientNonInviteTransaction:
    """The non-INVITE client transaction of a CANCEL (``data``, as built from the INVITE
    as sent), for a branch and for a late 1xx to an ended one (transactions.py
    _LateCancel). An ordinary NICT: RFC Timer F (64*T1), not the branch's fr-sized F."""
    req = parse_message_untrusted(data, stream=reliable)
    assert isinstance(req, SipRequest)
    return ClientNonInviteTransaction(req, data, reliable, invite_timers.with_(f=None), now)


async def send_counted(stats: Counter[str], transport: Transport, dest: Address,
                       data: bytes, retransmission: bool) -> bool:
    """Send what a client transaction asks for, counting retransmissions and failures
    in tm's statistics."""
    if retransmission:
        stats["retransmissions"] += 1
    ok = await transport.send(data, dest)
    if not ok:
        stats["send_errors"] += 1
    return ok


class _CancelSink:
    """Stands in the client table for a branch's CANCEL transaction (§17.1.3: the
    CANCEL has the INVITE's branch but its own method, so its own key)."""

    def __init__(self, branch: Branch) -> None:
        self.branch = branch

    def deliver(self, resp: SipResponse) -> bool:
        return self.branch.deliver(resp)
