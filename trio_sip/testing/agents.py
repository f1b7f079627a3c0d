"""Scripted SIP endpoints with behaviours: a UAC (:class:`Caller`) and a UAS
(:class:`Callee`) that follow RFC 3261 on a lossy :class:`~trio_sip.transport.sim.SimNetwork`,
in virtual time. Where :class:`~trio_sip.testing.ua.SimUA` sends exactly what a test
writes, these retransmit, ACK, CANCEL and hang up on their own, so a test states a
behaviour ("answers after 2 s", "rings forever", "crashes in the dialog") and then checks
what each side recorded::

    bob = Callee(net, Address("127.0.0.3", 5060), "bob", "answer", final_after=2.0)
    alice = Caller(net, Address("127.0.0.2", 5060), "alice", proxy, [bob.uri], hold=5)
    nursery.start_soon(bob.run)
    nursery.start_soon(alice.run)
    alice.dial()
    ...
    assert [s for _, s, _ in alice.finals] == [200]

They are built on the project's own sans-IO transaction machines (ring 1 tests them),
so what they do on the wire is the RFC's, and what they add is the transaction user:

* :class:`Caller` sends an INVITE (ICT: Timer A until a response, Timer B; the ACK of a
  non-2xx and its repeats), may CANCEL it at any moment (its own NICT: Timer E/F),
  ACKs every 2xx end to end along the route set and again for each 2xx
  retransmission (§13.2.2.4), sends BYE after a hold time (NICT), or crashes in the
  dialog. A second 2xx of another fork is ACKed and hung up at once (§13.2.2.4).
* :class:`Callee` answers per its behaviour: ``answer`` (180 then 200 after delays),
  ``ring`` (180, never a final), ``busy`` (486), ``decline`` (603; ``code=`` picks
  another final, e.g. 600 or 604, or a 4xx/5xx), ``never`` (silent: not even a CANCEL
  is answered), ``crash`` (200, then gone ``crash_after`` seconds later). An IST answers INVITE
  retransmissions and retransmits a non-2xx final (Timer G/H); the 2xx is retransmitted
  by the TU, T1 doubling to T2, until the ACK or 64*T1 (§13.3.1.4). A CANCEL gets 200
  and, while no final was sent, a 487 to the INVITE (§9.2); a BYE 200 (481 without a
  dialog).

Every agent is one task (:meth:`Endpoint.run`): the transport handler only queues
what arrives; the task waits for the next message or the earliest deadline (its
machines' timers and its own ``later`` callbacks) in one ``move_on_at``, like the
server's transactions. Everything an invariant needs is recorded as it happens.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..sip.errors import BadMessage
from ..sip.message import SipMessage, SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..sip.reply import reason_phrase
from ..transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ISTState,
    LocalProtocolError,
    PassUp,
    RemoteProtocolError,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    TimerConfig,
    Transmit,
)
from ..transaction.actions import Action
from ..transport.base import Address
from ..transport.sim import SimNetwork
from .ua import build_message

__all__ = ["BEHAVIOURS", "Callee", "Caller", "Dialog", "Endpoint", "Leg", "describe"]

Machine = (ClientInviteTransaction | ClientNonInviteTransaction | ServerInviteTransaction
           | ServerNonInviteTransaction)

_branches = itertools.count(1)


def new_branch(name: str) -> str:
    return f"z9hG4bK{name}.{next(_branches)}"


def request_bytes(method: str, ruri: str, *, local: Address, branch: str, from_uri: str,
                  from_tag: str, to_uri: str, to_tag: str = "", call_id: str, cseq: int,
                  contact: str | None = None, routes: list[str] | None = None,
                  extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    hdrs = [
        ("Via", f"SIP/2.0/UDP {local};branch={branch};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<{from_uri}>;tag={from_tag}"),
        ("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact:
        hdrs.append(("Contact", f"<{contact}>"))
    hdrs += [("Route", r) for r in routes or []]
    hdrs += extra or []
    return build_message(f"{method} {ruri} SIP/2.0", hdrs, body)


def response_bytes(req: SipRequest, code: int, reason: str, *, to_tag: str,
                   contact: str | None = None) -> bytes:
    """A response as a UAS builds it (§8.2.6): Vias, From, Call-ID, CSeq copied, a To tag
    added, Record-Route copied into 18x/2xx (§12.1.1)."""
    hdrs: list[tuple[str, str]] = []
    for h in req.headers:
        if h.key in ("via", "from", "call-id", "cseq") or (
                h.key == "record-route" and 100 < code < 300):
            hdrs.append((h.name, h.text))
        elif h.key == "to":
            value = h.text
            if code > 100 and "tag=" not in value:
                value += f";tag={to_tag}"
            hdrs.append(("To", value))
    if contact and 100 < code < 300:
        hdrs.append(("Contact", f"<{contact}>"))
    return build_message(f"SIP/2.0 {code} {reason}", hdrs)


@dataclass
class _Tx:
    machine: Machine
    peer: Address
    #: the transaction user's handlers for what the machine passes up / times out
    on_pass_up: Callable[[SipMessage], Awaitable[None]] | None = None
    on_timeout: Callable[[], Awaitable[None]] | None = None


class Endpoint:
    """A UA on the simulated network: one task, its machines, its deferred actions."""

    def __init__(self, net: SimNetwork, local: Address, name: str,
                 timers: TimerConfig | None = None) -> None:
        self.net = net
        self.local = local
        self.name = name
        self.timers = timers or TimerConfig()
        self.transport = net.transport(local, self._on_message)
        # None is a wake-up: ``later`` from another task moves the deadline
        self._in_send, self._in_recv = trio.open_memory_channel[
            tuple[SipMessage, Address] | None](math.inf)
        self.txs: dict[tuple[str, str], _Tx] = {}
        self._later: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []
        self._seq = itertools.count()
        self.crashed = False
        self.bad_messages = 0
        self.errors: list[str] = []

    # -- plumbing -------------------------------------------------------------------

    async def _on_message(self, data: bytes, source: Address, transport: object,
                          conn_id: int | None) -> None:
        if self.crashed:
            return
        try:
            msg = parse_message_untrusted(data)
        except BadMessage:
            self.bad_messages += 1
            return
        self._in_send.send_nowait((msg, source))

    def later(self, delay: float, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in this agent's task ``delay`` seconds from now."""
        heapq.heappush(self._later, (trio.current_time() + delay, next(self._seq), fn))
        self._in_send.send_nowait(None)

    async def send(self, data: bytes, dest: Address) -> None:
        if not self.crashed:
            await self.transport.send(data, dest)

    def crash(self) -> None:
        """Gone at once: nothing is sent or received any more (the host died)."""
        self.crashed = True
        self.transport.close()

    def add_tx(self, key: tuple[str, str], tx: _Tx) -> _Tx:
        self.txs[key] = tx
        return tx

    async def drive(self, key: tuple[str, str], actions: list[Action]) -> None:
        """Carry out what a machine asked for."""
        tx = self.txs.get(key)
        if tx is None:
            return
        for a in actions:
            if isinstance(a, Transmit):
                await self.send(a.data, tx.peer)
            elif isinstance(a, PassUp):
                if tx.on_pass_up is not None:
                    await tx.on_pass_up(a.message)
            elif isinstance(a, TimedOut):
                if tx.on_timeout is not None:
                    await tx.on_timeout()
            elif isinstance(a, Terminated) and self.txs.get(key) is tx:
                del self.txs[key]

    async def run(self) -> None:
        try:
            while not self.crashed:
                now = trio.current_time()
                while self._later and self._later[0][0] <= now and not self.crashed:
                    _, _, fn = heapq.heappop(self._later)
                    await fn()
                for key, tx in list(self.txs.items()):
                    if tx.machine.next_deadline() <= now and not self.crashed:
                        await self.drive(key, tx.machine.handle_timer(now))
                deadline = min((tx.machine.next_deadline() for tx in self.txs.values()),
                               default=math.inf)
                if self._later:
                    deadline = min(deadline, self._later[0][0])
                if deadline <= trio.current_time():
                    continue
                item: tuple[SipMessage, Address] | None = None
                with trio.move_on_at(deadline):
                    item = await self._in_recv.receive()
                if item is not None and not self.crashed:
                    msg, source = item
                    if isinstance(msg, SipRequest):
                        await self.on_request(msg, source)
                    else:
                        assert isinstance(msg, SipResponse)
                        await self.on_response(msg, source)
        except (LocalProtocolError, AssertionError) as exc:  # a bug in the agent itself
            self.errors.append(f"{self.name}: {exc!r}")
            raise

    async def on_request(self, req: SipRequest, source: Address) -> None:
        raise NotImplementedError

    async def on_response(self, resp: SipResponse, source: Address) -> None:
        via = resp.via1
        key = (via.branch if via and via.branch else "", resp.cseq_method)
        tx = self.txs.get(key)
        if tx is None:
            await self.stray_response(resp)
            return
        try:
            actions = tx.machine.receive_response(resp, trio.current_time())  # type: ignore[union-attr]
        except RemoteProtocolError:
            return
        await self.drive(key, actions)

    async def stray_response(self, resp: SipResponse) -> None:
        """A response no client transaction of ours matches (a 2xx retransmission after
        the ICT ended, a late final)."""


# ---------------------------------------------------------------------------------------
# the caller
# ---------------------------------------------------------------------------------------


@dataclass
class Dialog:
    to_tag: str
    ack: bytes
    remote_target: str
    routes: list[str]
    established_at: float
    bye_status: int = 0  # 0: none sent/answered; 408: timed out
    bye_sent: bool = False


class Caller(Endpoint):
    """One call: INVITE to ``targets[0]`` through ``proxy`` (the other targets go in an
    ``X-Fork`` header, for routes that fork to them). ``cancel_after``: CANCEL that many
    seconds after :meth:`start` unless a final came; ``hold``: BYE that long after the
    2xx; ``crash_in_dialog``: gone that long after the 2xx instead. What happened is in
    ``finals``, ``dialogs``, ``cancel_status``, ``invite_timed_out``."""

    def __init__(self, net: SimNetwork, local: Address, name: str, proxy: Address,
                 targets: list[str], *, cancel_after: float | None = None, hold: float = 2.0,
                 crash_in_dialog: float | None = None, timers: TimerConfig | None = None,
                 headers: list[tuple[str, str]] | None = None, sdp: bytes | None = None
                 ) -> None:
        super().__init__(net, local, name, timers)
        #: extra headers of the INVITE, and its SDP offer (application/sdp)
        self.headers = list(headers or [])
        self.sdp = sdp if sdp is not None else (
            f"v=0\r\no={name} 1 1 IN IP4 {local.host}\r\ns=-\r\nc=IN IP4 {local.host}\r\n"
            f"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
        self.proxy = proxy
        self.targets = targets
        self.cancel_after = cancel_after
        self.hold = hold
        self.crash_in_dialog = crash_in_dialog
        self.call_id = f"{name}@chaos"
        self.from_tag = f"{name}-ft"
        self.uri = f"sip:{name}@{local}"
        self.branch = new_branch(name)
        self.started_at = math.nan
        #: every final response to the INVITE as it arrived: (time, status, To tag)
        self.finals: list[tuple[float, int, str]] = []
        self.provisional_at: float | None = None
        self.invite_timed_out = False  # Timer B: no response at all
        self.cancel_sent_at: float | None = None
        self.cancel_status = 0
        self.dialogs: dict[str, Dialog] = {}
        self._ict: ClientInviteTransaction | None = None

    def dial(self, delay: float = 0.0) -> None:
        """Place the call ``delay`` seconds from now (in the agent's task: :meth:`run`
        must be running)."""
        self.later(delay, self.start)

    async def start(self) -> None:
        """Send the INVITE now (from the agent's own task; see :meth:`dial`)."""
        now = trio.current_time()
        self.started_at = now
        extra = [("X-Fork", ",".join(self.targets[1:]))] if len(self.targets) > 1 else []
        extra += self.headers
        if self.sdp:
            extra.append(("Content-Type", "application/sdp"))
        data = request_bytes("INVITE", self.targets[0], local=self.local, branch=self.branch,
                             from_uri=self.uri, from_tag=self.from_tag, to_uri=self.targets[0],
                             call_id=self.call_id, cseq=1, contact=self.uri, extra=extra,
                             body=self.sdp)
        req = parse_message_untrusted(data)
        assert isinstance(req, SipRequest)
        self._ict = ClientInviteTransaction(req, data, False, self.timers, now)
        key = (self.branch, "INVITE")
        self.add_tx(key, _Tx(self._ict, self.proxy, self._invite_passed_up, self._invite_timeout))
        await self.drive(key, self._ict.start(now))
        if self.cancel_after is not None:
            self.later(self.cancel_after, self._cancel)

    @property
    def got_final(self) -> bool:
        return bool(self.finals)

    async def on_response(self, resp: SipResponse, source: Address) -> None:
        if resp.cseq_method == "INVITE" and resp.status >= 200 and resp.call_id == self.call_id:
            self.finals.append((trio.current_time(), resp.status, resp.to_tag))
        await super().on_response(resp, source)

    async def stray_response(self, resp: SipResponse) -> None:
        if resp.cseq_method == "INVITE" and 200 <= resp.status < 300:
            await self._on_2xx(resp)  # a 2xx after the ICT ended: ACK it again

    async def on_request(self, req: SipRequest, source: Address) -> None:
        if req.method == "BYE" or req.method == "CANCEL":
            # nobody hangs up on the caller in these scenarios: 481 (§15.1.2)
            await self.send(response_bytes(req, 481, "No Dialog", to_tag=self.from_tag), source)

    async def _invite_passed_up(self, msg: SipMessage) -> None:
        assert isinstance(msg, SipResponse)
        if msg.status < 200:
            if self.provisional_at is None:
                self.provisional_at = trio.current_time()
        elif msg.status < 300:
            await self._on_2xx(msg)
        # a 300-699: the ICT sent the ACK; nothing more to do

    async def _invite_timeout(self) -> None:
        self.invite_timed_out = True

    async def _on_2xx(self, resp: SipResponse) -> None:
        tag = resp.to_tag
        dialog = self.dialogs.get(tag)
        if dialog is not None:
            await self.send(dialog.ack, self.proxy)  # §13.2.2.4: ACK each retransmission
            return
        routes = list(reversed(resp.get_all("Record-Route")))
        contact = (resp.get("Contact") or "").strip()
        target = contact[1:contact.index(">")] if contact.startswith("<") else contact
        ack = request_bytes("ACK", target or self.targets[0], local=self.local,
                            branch=new_branch(self.name), from_uri=self.uri,
                            from_tag=self.from_tag, to_uri=self.targets[0], to_tag=tag,
                            call_id=self.call_id, cseq=1, routes=routes)
        first = not self.dialogs
        dialog = Dialog(tag, ack, target, routes, trio.current_time())
        self.dialogs[tag] = dialog
        await self.send(ack, self.proxy)
        if not first:
            await self._bye(dialog)  # a second fork answered too: hang it up
        elif self.crash_in_dialog is not None:
            self.later(self.crash_in_dialog, self._crash)
        else:
            self.later(self.hold, lambda: self._bye(dialog))

    async def _crash(self) -> None:
        self.crash()

    async def _bye(self, dialog: Dialog) -> None:
        if dialog.bye_sent or self.crashed:
            return
        dialog.bye_sent = True
        branch = new_branch(self.name)
        data = request_bytes("BYE", dialog.remote_target, local=self.local, branch=branch,
                             from_uri=self.uri, from_tag=self.from_tag, to_uri=self.targets[0],
                             to_tag=dialog.to_tag, call_id=self.call_id, cseq=2,
                             routes=dialog.routes)
        req = parse_message_untrusted(data)
        assert isinstance(req, SipRequest)
        now = trio.current_time()
        nict = ClientNonInviteTransaction(req, data, False, self.timers, now)

        async def answered(msg: SipMessage) -> None:
            assert isinstance(msg, SipResponse)
            if msg.status >= 200:
                dialog.bye_status = msg.status

        async def timed_out() -> None:
            dialog.bye_status = 408

        key = (branch, "BYE")
        self.add_tx(key, _Tx(nict, self.proxy, answered, timed_out))
        await self.drive(key, nict.start(now))

    async def _cancel(self) -> None:
        """CANCEL at a random moment: sent whatever the ICT state, as long as no final
        came (§9.1 says to wait for a provisional; callers in the wild do not)."""
        if self.got_final or self.crashed or self._ict is None:
            return
        data = self._ict.build_cancel()
        req = parse_message_untrusted(data)
        assert isinstance(req, SipRequest)
        now = trio.current_time()
        self.cancel_sent_at = now
        nict = ClientNonInviteTransaction(req, data, False, self.timers, now)

        async def answered(msg: SipMessage) -> None:
            assert isinstance(msg, SipResponse)
            if msg.status >= 200:
                self.cancel_status = msg.status

        async def timed_out() -> None:
            self.cancel_status = 408

        key = (self.branch, "CANCEL")
        self.add_tx(key, _Tx(nict, self.proxy, answered, timed_out))
        await self.drive(key, nict.start(now))


# ---------------------------------------------------------------------------------------
# the callee
# ---------------------------------------------------------------------------------------

BEHAVIOURS = ("answer", "ring", "busy", "decline", "never", "crash")
FINAL_OF = {"busy": (486, "Busy Here"), "decline": (603, "Decline")}


@dataclass
class Leg:
    """One INVITE transaction this callee received."""

    branch: str
    call_id: str
    invite: SipRequest
    source: Address
    to_tag: str
    received_at: float
    final: int = 0
    final_at: float = math.nan
    ok: bytes = b""
    acked_at: float | None = None
    cancelled: bool = False
    gave_up: bool = False  # no ACK for the 2xx within 64*T1
    byes: list[float] = field(default_factory=list)


class Callee(Endpoint):
    """A UAS with a behaviour (see the module doc): ``ring_after`` seconds after an INVITE
    it sends 180, ``final_after`` seconds after it its final; ``trying`` sends 100 at once;
    ``code`` replaces the final of ``busy``/``decline`` (300-699)."""

    def __init__(self, net: SimNetwork, local: Address, name: str, behaviour: str, *,
                 ring_after: float = 0.2, final_after: float = 1.0, crash_after: float = 0.5,
                 trying: bool = True, code: int | None = None,
                 timers: TimerConfig | None = None) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
        if code is not None and not (300 <= code <= 699 and behaviour in FINAL_OF):
            raise ValueError("code= is a 300-699 final for the 'busy'/'decline' behaviours")
        super().__init__(net, local, name, timers)
        self.behaviour = behaviour
        self.code = code
        self.ring_after = ring_after
        self.final_after = final_after
        self.crash_after = crash_after
        self.trying = trying
        self.uri = f"sip:{name}@{local}"
        self.legs: dict[str, Leg] = {}  # by the INVITE's branch
        self.merged = 0  # INVITEs of a call we already have, on another branch (482)
        self.crashed_at: float | None = None

    def crash(self) -> None:
        self.crashed_at = trio.current_time()
        super().crash()

    async def on_request(self, req: SipRequest, source: Address) -> None:
        if self.behaviour == "never":
            return
        via = req.via1
        branch = via.branch if via and via.branch else ""
        now = trio.current_time()
        if req.method == "INVITE":
            key = (branch, "INVITE")
            tx = self.txs.get(key)
            if tx is not None:
                try:
                    await self.drive(key, tx.machine.receive_request(now))  # type: ignore[union-attr]
                except RemoteProtocolError:
                    pass
                return
            if branch in self.legs:
                return  # its IST ended: a very late retransmission, ignored
            if any(leg.call_id == req.call_id for leg in self.legs.values()):
                # §8.2.2.2 merged request: the same call on another branch (the proxy
                # re-ran the script for a copy that arrived after its transaction ended)
                self.merged += 1
                await self.send(response_bytes(req, 482, "Loop Detected", to_tag="merged"),
                                source)
                return
            await self._new_invite(req, branch, source, now)
        elif req.method == "ACK":
            key = (branch, "INVITE")
            tx = self.txs.get(key)
            if tx is not None and isinstance(tx.machine, ServerInviteTransaction) and \
                    tx.machine.state in (ISTState.COMPLETED, ISTState.CONFIRMED):
                await self.drive(key, tx.machine.receive_ack(req, now))
                return
            for leg in self.legs.values():  # the ACK of our 2xx: a new branch (§13.2.2.4)
                if leg.call_id == req.call_id and leg.to_tag == req.to_tag and leg.ok:
                    if leg.acked_at is None:
                        leg.acked_at = now
        elif req.method in ("CANCEL", "BYE"):
            await self._non_invite(req, branch, source, now)
        else:
            await self.send(response_bytes(req, 405, "Method Not Allowed", to_tag="x"), source)

    async def _new_invite(self, req: SipRequest, branch: str, source: Address,
                          now: float) -> None:
        leg = Leg(branch, req.call_id, req, source, f"{self.name}-tt", now)
        self.legs[branch] = leg
        ist = ServerInviteTransaction(req, False, self.timers, now)
        self.add_tx((branch, "INVITE"), _Tx(ist, source))
        if self.trying:
            await self._respond(leg, 100, "Trying")
        if self.behaviour in ("answer", "ring", "crash"):
            self.later(self.ring_after, lambda: self._ring(leg))
        if self.behaviour in ("answer", "crash"):
            self.later(self.final_after, lambda: self._answer(leg))
        elif self.behaviour in FINAL_OF:
            code, reason = FINAL_OF[self.behaviour]
            if self.code is not None:
                code, reason = self.code, reason_phrase(self.code)
            self.later(self.final_after, lambda: self._final(leg, code, reason))

    async def _respond(self, leg: Leg, code: int, reason: str) -> bytes:
        data = response_bytes(leg.invite, code, reason, to_tag=leg.to_tag, contact=self.uri)
        if code < 200 and leg.final:
            return data  # no provisional after the final
        key = (leg.branch, "INVITE")
        tx = self.txs.get(key)
        if tx is None:
            return data
        try:
            actions = tx.machine.send_response(data, code, trio.current_time())  # type: ignore[union-attr]
        except LocalProtocolError:
            return data
        await self.drive(key, actions)
        return data

    async def _ring(self, leg: Leg) -> None:
        await self._respond(leg, 180, "Ringing")

    async def _final(self, leg: Leg, code: int, reason: str) -> None:
        if leg.final:
            return
        leg.final, leg.final_at = code, trio.current_time()
        await self._respond(leg, code, reason)

    async def _answer(self, leg: Leg) -> None:
        if leg.final:
            return
        leg.final, leg.final_at = 200, trio.current_time()
        leg.ok = await self._respond(leg, 200, "OK")
        self.later(self.timers.t1, lambda: self._retransmit_2xx(leg, self.timers.t1))
        if self.behaviour == "crash":
            self.later(self.crash_after, self._crash)

    async def _crash(self) -> None:
        self.crash()

    async def _retransmit_2xx(self, leg: Leg, interval: float) -> None:
        """§13.3.1.4: the UAS core retransmits the 2xx, T1 doubling to T2, until the ACK;
        after 64*T1 without one it gives up (and would BYE)."""
        if leg.acked_at is not None or self.crashed:
            return
        if trio.current_time() - leg.final_at >= 64 * self.timers.t1:
            leg.gave_up = True
            return
        await self.send(leg.ok, leg.source)
        nxt = min(2 * interval, self.timers.t2)
        self.later(nxt, lambda: self._retransmit_2xx(leg, nxt))

    async def _non_invite(self, req: SipRequest, branch: str, source: Address,
                          now: float) -> None:
        key = (branch, req.method)
        tx = self.txs.get(key)
        if tx is not None:
            try:
                await self.drive(key, tx.machine.receive_request(now))  # type: ignore[union-attr]
            except RemoteProtocolError:
                pass
            return
        nist = ServerNonInviteTransaction(req, False, self.timers, now)
        self.add_tx(key, _Tx(nist, source))
        if req.method == "CANCEL":
            leg = self.legs.get(branch)
            code = 200 if leg is not None else 481
            await self.drive(key, nist.send_response(
                response_bytes(req, code, "OK" if code == 200 else "No Transaction",
                               to_tag=leg.to_tag if leg else "x"), code, now))
            if leg is not None and not leg.final:
                leg.cancelled = True
                await self._final(leg, 487, "Request Terminated")
            return
        # BYE
        leg = next((g for g in self.legs.values()
                    if g.call_id == req.call_id and g.to_tag == req.to_tag and g.ok), None)
        code = 200 if leg is not None else 481
        if leg is not None:
            leg.byes.append(now)
        await self.drive(key, nist.send_response(
            response_bytes(req, code, "OK" if code == 200 else "No Dialog", to_tag="x"),
            code, now))


def describe(agent: Any) -> str:
    """A one-line summary of an agent's record, for failure messages."""
    if isinstance(agent, Caller):
        return (f"{agent.name}: finals={[(round(t, 3), s) for t, s, _ in agent.finals]} "
                f"cancel={agent.cancel_sent_at} timed_out={agent.invite_timed_out} "
                f"dialogs={[(d.to_tag, d.bye_status) for d in agent.dialogs.values()]}")
    if isinstance(agent, Callee):
        return (f"{agent.name}[{agent.behaviour}]: "
                + ", ".join(f"{leg.final}@{round(leg.final_at, 3)} acked={leg.acked_at}"
                            for leg in agent.legs.values()))
    return repr(agent)
