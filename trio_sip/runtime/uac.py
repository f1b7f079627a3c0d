"""Local UAC transactions: requests the server itself originates (Kamailio ``t_uac``).

Theory of operation
-------------------
``KSR.uac.uac_req_send()``, the MI ``tm.t_uac_start`` and friends build a request
from a few fields (method, R-URI, From, To, Call-ID, CSeq, extra headers, body, an
optional outbound proxy) and hand it to :meth:`LocalUacLayer.send`. What sends it is
the machinery of a proxied branch, reused as it is: one
:class:`~trio_sip.runtime.branch.Branch` (an ICT or NICT sans-IO machine, RFC 3261
§17.1, run by its own task in the transaction layer's nursery) whose "server
transaction" is a :class:`LocalUac`. So a local request has exactly the retransmissions
(Timer A for an INVITE over UDP, doubling without a cap; Timer E for the others,
capped at T2), the timeouts and the response matching (§17.1.3, the branch's key in
``TransactionLayer.clients``) of a forwarded one:

* no final response within ``fr_timer`` (INVITE: ``fr_inv_timer`` once a provisional
  came; a per-request ``timeout`` overrides fr) gives a local **408**, and the
  retransmissions stop. That is Kamailio's behaviour for local transactions, where fr
  plays Timer B/F's role (its default, 30 s, is below 64*T1 = 32 s);
* a send that fails (no route, connection refused) gives a local **477**;
* the transaction's lifetime (``max_inv_lifetime``, ``max_noninv_lifetime``) bounds
  it whatever comes: a callee that keeps sending provisionals gets a CANCEL and the
  outcome is a local 408 then;
* ``cancel()`` of an INVITE sends a CANCEL (§9.1) once a provisional came (at once if
  one did; Kamailio ``cancel_b_method`` 1): the callee's 487 is the final, or a local
  487 64*T1 after the CANCEL when nothing answers. A non-INVITE cannot be cancelled.

Each 2xx to a local INVITE (the first and every retransmission, from every fork) is
acknowledged here (§13.2.2.4: the UAC core's job, not the transaction's), for RFC 6026's
Timer M (64*T1; a proxied branch keeps the shorter wt, as Kamailio): the ACK goes
to the first entry of the route set (the 2xx's Record-Route, reversed) or else to the
2xx's Contact, through the outbound proxy when one was given. Strict routers are not
supported (loose routing is assumed). No dialog is kept: sending the BYE is the
caller's business (Kamailio's t_uac does not keep one either).

With credentials (``auth_user``/``auth_password``, Kamailio ``$uac_req(auser/apasswd)``)
a 401/407 final is answered once: the request goes again with CSeq + 1 (Kamailio keeps
the CSeq, which servers may refuse), a new branch and an ``Authorization`` or
``Proxy-Authorization`` for the challenge (Digest, MD5 or SHA-256, qop "auth" or none);
the outcome is that of the second request.

A next hop named by a host name is resolved as ``t_relay`` does (RFC 3263 through
``core.dns``: the cache at once, else a lookup bounded by fr); the request goes to the
first usable target (no failover to the next one on a 503 or a timeout); none: a local
478.

What is not implemented: DNS failover between the targets of a name, choosing among
several sockets of one protocol, qop "auth-int" and the "-sess" digest algorithms.

::

    route / MI                     LocalUac                      Branch task
    ──────────                     ────────                      ───────────
    send(UacRequest) ──────────▶   build bytes, parse  ──start──▶ INVITE/MESSAGE out
                                                                  Timer A/E retransmits
    dispatcher: 200 (client key) ────────────────────────────────▶ PassUp
                                   post("reply") ◀───────────────┘
                                   final = 200, ACK (INVITE)
    await uac.wait() ◀──────────── done.set()
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..dns.resolver import supported_transports
from ..dns.rfc3263 import Resolution
from ..proxy.stateless import NextHop, target_of_uri, via_line
from ..script.modparams import modparams_of
from ..sip.digest import DigestError, digest_credentials
from ..sip.errors import BadMessage
from ..sip.headers import (
    header_key,
    is_token,
    parse_header_lines_untrusted,
    parse_name_addr_list_untrusted,
    split_commas,
)
from ..sip.message import SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..sip.reply import reason_phrase
from ..sip.uri import URI, parse_uri_untrusted
from ..transport.base import Address, Transport, is_ip_literal
from .branch import Branch, BranchEvent
from .transactions import TxSettings

if TYPE_CHECKING:
    from .core import ProxyCore
    from .transactions import TransactionLayer

log = logging.getLogger("trio_sip.tm")

#: Kamailio tm's CSeq of a request sent outside a dialog (``DEFAULT_CSEQ``)
DEFAULT_CSEQ = 10
#: headers the facility writes itself (keys: compact forms expanded); given in
#: ``headers`` they are refused
_OWN_HEADERS = frozenset({"via", "content-length", "cseq", "call-id", "from", "to",
                          "max-forwards"})


class UacError(Exception):
    """The request cannot be sent: bad fields, or no way to reach the next hop.
    ``status`` is the SIP status Kamailio would use for it (400, 477, 478, 503)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class UacRequest:
    """What a local request is made of (Kamailio ``$uac_req``, ``t_uac_start``).

    ``from_uri``/``to_uri`` default to the R-URI; each is a URI (put in ``<>``) or a
    whole name-addr with parameters (``"Alice" <sip:a@x>;tag=1``), used as written.
    A From without a tag gets one. ``headers`` are extra header lines (CRLF or LF
    separated; checked as :func:`~trio_sip.sip.headers.parse_header_lines_untrusted`
    says, a bad one refuses the request with 400 naming the line), ``outbound`` the next hop (Kamailio ``$uac_req(ouri)``, like $du:
    the R-URI is kept, the packet goes there)."""

    method: str
    ruri: str
    from_uri: str | None = None
    to_uri: str | None = None
    call_id: str | None = None
    cseq: int | None = None
    headers: str = ""
    body: bytes = b""
    outbound: str | None = None
    #: seconds without a final before the local 408 (None: tm's fr_timer)
    timeout: float | None = None
    #: the protocol to send with (a socket's, Kamailio ``$uac_req(sock)``); it must be
    #: the next hop's (None: the next hop's)
    transport: str | None = None
    #: digest credentials (Kamailio ``$uac_req(auser)``/``apasswd``): a 401/407 final is
    #: answered once with the request again, authenticated (RFC 3261 §22.2, RFC 2617)
    auth_user: str | None = None
    auth_password: str | None = None


@dataclass(frozen=True)
class UacResult:
    """The final outcome: the response received, or a local status (``reply`` None)."""

    code: int
    reason: str
    reply: SipResponse | None = None

    @property
    def local(self) -> bool:
        return self.reply is None

    @property
    def body(self) -> bytes:
        return self.reply.body if self.reply is not None else b""


class LocalUac:
    """One request the server sent as a UAC, and the owner of its client transaction.

    It stands where a server transaction stands above a proxied branch (the branch
    only needs what is below), so the branch code runs unchanged."""

    #: nothing waits for a branch settled locally (408): it ends at once
    keeps_lingering_branches = False

    def __init__(self, layer: TransactionLayer, owner: LocalUacLayer, spec: UacRequest,
                 request: SipRequest, dest: Address, transport: Transport,
                 settings: TxSettings) -> None:
        self.layer = layer
        #: tm's values when the request was sent (cfg.set changes later ones only)
        self.params = layer.params
        self.owner = owner
        #: how the request is made (From with its tag, Call-ID, CSeq), to send it again
        #: authenticated
        self.spec = spec
        #: the request as sent (before it is sent: as it would be, for the callback)
        self.request = request
        self.method = request.method
        self.call_id = request.call_id
        self.cseq = request.cseq_num
        self.settings = settings
        #: where it goes (before DNS resolved the next hop: its name and port)
        self.dest = dest
        self.transport = transport
        self._ack_dest: Address | None = None
        self.cancel_reason: str | None = None
        self.result: UacResult | None = None
        self.provisional: SipResponse | None = None
        self.done = trio.Event()
        #: called once with the result (in the branch's task: must not block)
        self.on_final: list[Callable[[LocalUac], None]] = []
        #: the ACK of each 2xx (by To tag: one per fork) and where it goes
        self._acks: dict[str, tuple[bytes, Address]] = {}
        self.auth_sent = False
        #: the client transaction, once the next hop is known (DNS may come first)
        self.branch: Branch | None = None

    def begin(self, request: SipRequest, data: bytes, dest: Address, transport: Transport,
              branch_id: str) -> None:
        """Send: the client transaction of ``data`` to ``dest``, as a task of tm."""
        assert self.layer.nursery is not None
        self.request, self.dest, self.transport = request, dest, transport
        self.cseq = request.cseq_num
        if self.spec.outbound:
            self._ack_dest = dest  # the outbound proxy takes the ACK of a 2xx too
        timers = self.layer.timers(self.settings, self.params)
        if self.method == "INVITE":
            # RFC 6026 Timer M, 64*T1, not the proxy's wt: the callee retransmits its
            # 2xx until it gets our ACK (§13.3.1.4), and we are the UA core that ACKs
            # each copy; with wt a copy after the first ACKs were lost went unanswered
            timers = timers.with_(m=None)
        self.branch = Branch(self, 0, request.ruri_text, dest, transport, data,  # type: ignore[arg-type]
                             branch_id, timers, trio.current_time())
        self.layer.stats["UAC_transactions"] += 1
        self.layer.nursery.start_soon(self.branch.run)

    # -- what Branch needs of its owner ------------------------------------------------

    def fr_timeouts(self) -> tuple[float, float]:
        p = self.params
        fr = self.settings.fr if self.settings.fr is not None else p.fr_timer / 1000
        fr_inv = self.settings.fr_inv if self.settings.fr_inv is not None \
            else p.fr_inv_timer / 1000
        return fr, fr_inv

    @property
    def restart_fr_on_each_reply(self) -> bool:
        return self.params.restart_fr_on_each_reply

    def cancel_reason_headers(self) -> tuple[str, ...]:
        return (f"Reason: {self.cancel_reason}",) if self.cancel_reason else ()

    def post(self, event: object) -> None:
        """Events from the branch, in its task."""
        if not isinstance(event, BranchEvent):
            return
        b = self.branch
        if b is None or event.branch is not b:
            return  # the branch of a challenged request, replaced by the authenticated one
        if event.kind == "reply" and event.response is not None:
            resp = event.response
            self.layer.stats["rpl_received"] += 1
            if resp.status < 200:
                self.provisional = resp
                return
            if 200 <= resp.status < 300 and self.method == "INVITE":
                self._ack_2xx(resp)
            if resp.status in (401, 407) and self._authenticate(resp):
                return
            self._settle(UacResult(resp.status, resp.reason, resp))
        elif event.kind in ("timeout", "failed"):
            code = b.local_status or 408
            self._settle(UacResult(code, _LOCAL_REASONS.get(code, reason_phrase(code))))
        elif event.kind == "done":
            if self.result is None:  # cannot happen: a branch ends with a final
                self._settle(UacResult(500, "Server Internal Error"))
            self.owner._forget(self)

    # -- digest authentication (Kamailio uac: $uac_req(auser), $uac_req(apasswd)) ---------

    def _authenticate(self, resp: SipResponse) -> bool:
        """Answer a 401/407 once: the same request again, CSeq + 1, a new branch and the
        credentials for the challenge. False (the challenge is the outcome) without
        credentials, after a first try, when cancelled, or for a challenge we cannot
        answer (not Digest, an algorithm other than MD5/SHA-256, no qop we know)."""
        spec = self.spec
        if (not spec.auth_user or spec.auth_password is None or self.auth_sent
                or self.cancel_reason is not None
                or (self.branch is not None and self.branch.cancel_requested)):
            return False
        self.auth_sent = True
        hname = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
        challenge = resp.get(hname)
        try:
            if challenge is None:
                raise UacError(f"a {resp.status} without {hname}")
            credentials = digest_credentials(challenge, self.method, self.request.ruri_text,
                                             spec.auth_user, spec.auth_password,
                                             os.urandom(8).hex())
        except (UacError, DigestError) as exc:
            log.warning("local %s %s: cannot authenticate: %s", self.method, self.call_id,
                        exc)
            self.owner.stats["auth_failed"] += 1
            return False
        header = ("Authorization" if resp.status == 401 else "Proxy-Authorization")
        again = UacRequest(**{**spec.__dict__, "cseq": (spec.cseq or DEFAULT_CSEQ) + 1,
                              "headers": f"{spec.headers}\r\n{header}: {credentials}"})
        try:
            self.owner._resend(self, again)
        except UacError as exc:
            log.warning("local %s %s: cannot send it authenticated: %s", self.method,
                        self.call_id, exc.message)
            return False
        self.owner.stats["auth_sent"] += 1
        return True

    # -- the outcome --------------------------------------------------------------------

    def _settle(self, result: UacResult) -> None:
        if self.result is not None:
            return  # a second 2xx from another fork: ACKed above, not a second outcome
        self.result = result
        if self.branch is None:
            self.owner._forget(self)  # never sent (DNS failed, cancelled before): no task
        self.layer.stats[f"{result.code // 100}xx_transactions"] += 1
        self.owner.stats["completed"] += 1
        if result.local:
            self.owner.stats[f"local_{result.code}"] += 1
        self.done.set()
        for cb in self.on_final:
            try:
                cb(self)
            except Exception:
                log.exception("local %s: a final-reply callback failed", self.method)

    async def wait(self) -> UacResult:
        """The final outcome (waits for it)."""
        await self.done.wait()
        assert self.result is not None
        return self.result

    def cancel(self, reason: str | None = None) -> bool:
        """CANCEL a pending INVITE (§9.1), at once if a provisional came, else when one
        does. False when there is nothing to cancel (not an INVITE, already final)."""
        if self.method != "INVITE" or self.result is not None:
            return False
        self.cancel_reason = reason
        self.owner.stats["cancelled"] += 1
        if self.branch is None:  # still resolving the next hop: nothing was sent
            self._settle(UacResult(487, "Request Terminated"))
        else:
            self.branch.cancel()
        return True

    async def bound_lifetime(self) -> None:
        """The transaction's lifetime (``max_inv_lifetime`` / ``max_noninv_lifetime``, or
        the per-request timeout when longer): a request still without a final then gets
        a local 408, and a ringing INVITE is CANCELled, as a server transaction's branches
        are. Without it a callee sending a 1xx now and then would keep fr_inv restarting
        for ever."""
        p = self.params
        life = (p.max_inv_lifetime if self.method == "INVITE" else p.max_noninv_lifetime) / 1000
        if self.settings.fr is not None:
            life = max(life, self.settings.fr)
        with trio.move_on_after(life):
            await self.done.wait()
            return
        if self.result is None:
            if self.branch is not None:
                self.branch.expire()
            self._settle(UacResult(408, "Request Timeout"))

    def abandon(self) -> None:
        """Whoever waited for the outcome is gone (its route was cancelled): a pending
        INVITE is CANCELled; a non-INVITE completes on its own, its outcome unread."""
        if self.method == "INVITE":
            self.cancel()

    # -- ACK of a 2xx (§13.2.2.4) -------------------------------------------------------

    def _ack_2xx(self, resp: SipResponse) -> None:
        nursery = self.layer.nursery
        if nursery is None:
            return
        key = resp.to_tag or ""
        ack = self._acks.get(key)
        if ack is None:
            try:
                ack = self._build_ack(resp)
            except (BadMessage, UacError, ValueError) as exc:
                log.warning("local INVITE %s: cannot ACK the %d: %s", self.call_id,
                            resp.status, exc)
                return
            self._acks[key] = ack
        self.owner.stats["acks_sent"] += 1
        nursery.start_soon(self.transport.send, ack[0], ack[1])

    def _build_ack(self, resp: SipResponse) -> tuple[bytes, Address]:
        # the route set: the Record-Route entries in reverse order (§12.1.2)
        routes: list[str] = []
        for h in reversed(resp.headers):
            if h.key == "record-route":
                routes.extend(h.value[a:b].strip() for a, b in reversed(split_commas(h.value)))
        contacts = resp.contacts()
        target = str(contacts[0].uri) if contacts and contacts[0].uri is not None \
            else self.request.ruri_text
        if self._ack_dest is not None:
            dest = self._ack_dest
        else:
            first = parse_name_addr_list_untrusted(routes[0])[0].uri if routes else None
            hop_uri = parse_uri_untrusted(str(first) if first is not None else target)
            hop = target_of_uri(hop_uri)
            if is_ip_literal(hop.host):
                dest = Address(hop.host, hop.port)
                if not self.owner.core.guard.allows(dest):
                    raise UacError(f"the ACK's next hop {dest} is not allowed", 477)
            else:
                # a name: from the DNS cache when it is there; else the INVITE's own
                # next hop, which reached the callee (the ACK may not wait for DNS)
                res = self.owner.core.dns.cached(
                    hop_uri, supported_transports(self.owner.core.transports))
                try:
                    dest = self.owner._pick(res, hop.host)[0] if res is not None \
                        else self.dest
                except UacError:
                    dest = self.dest
        host, port = self.owner.core.advertised(self.transport)
        lines = [
            f"ACK {target} SIP/2.0",
            via_line(self.transport.proto, host, port, self.owner.new_branch_id()),
            "Max-Forwards: 70",
            f"From: {_first(self.request, 'from')}",
            f"To: {_first(resp, 'to')}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} ACK",
        ]
        lines += [f"Route: {r}" for r in routes]
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), dest


_LOCAL_REASONS = {408: "Request Timeout", 477: "Send failed", 487: "Request Terminated"}


def _first(msg: SipRequest | SipResponse, key: str) -> str:
    for h in msg.headers:
        if h.key == key:
            return h.text
    raise ValueError(f"no {key} header")


class LocalUacLayer:
    """The local UAC transactions of one server: :meth:`send` and the table that
    ``t_uac_cancel`` looks them up in (by Call-ID and CSeq number)."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.pending: dict[tuple[str, int], LocalUac] = {}
        self.stats: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._secret = os.urandom(4).hex()

    def new_branch_id(self) -> str:
        return f"z9hG4bKuac{self._secret}.{next(self._ids)}"

    def send(self, req: UacRequest) -> LocalUac:
        """Build the request, start its client transaction, return its handle.
        Raises :class:`UacError` (nothing was sent) on bad fields or an unusable next
        hop; the server must be running (its transaction layer's nursery).

        A next hop named by a host name is resolved (RFC 3263, ``core.dns``): from the
        cache at once, else in a task of tm bounded by fr; the request goes to the first
        target that is not blocklisted, that a transport of ours serves and that the
        loopback guard allows. When none is found the outcome is a local 478."""
        core = self.core
        layer = core.tm
        if layer.nursery is None:
            raise UacError("the server is not running", 500)
        from ..modules.uac import UacParams  # that module builds on this one

        # at most this many local transactions at once (each is a task and a table
        # entry): [modparams.uac] max_pending, 10,000 by default
        limit = modparams_of(core, "uac", UacParams).max_pending
        if len(self.pending) >= limit:
            self.stats["refused"] += 1
            raise UacError(f"too many local transactions pending ({limit})", 503)
        method = req.method.strip().upper()
        if not is_token(method):
            raise UacError(f"bad method {req.method!r}")
        if method in ("ACK", "CANCEL"):
            raise UacError(f"{method} is not sent as a transaction of its own "
                           "(use t_uac_cancel for a CANCEL)")
        ruri = req.ruri.strip()
        try:
            parse_uri_untrusted(ruri)
            next_uri = parse_uri_untrusted(req.outbound.strip() if req.outbound else ruri)
            hop = target_of_uri(next_uri)
        except BadMessage as exc:
            raise UacError(f"bad URI: {exc.reason}") from exc
        if req.transport and req.transport.lower() != hop.proto:
            raise UacError(f"the socket is {req.transport.lower()} but the next hop "
                           f"needs {hop.proto}")
        dest: Address | None
        if is_ip_literal(hop.host):
            dest, transport = self._next_hop(hop)
        else:
            res = core.dns.cached(next_uri, supported_transports(core.transports))
            if res is not None:
                dest, transport = self._pick(res, hop.host)
            else:
                dest = None
                maybe = core.transport_for(hop.proto) or next(iter(core.transports.values()),
                                                              None)
                if maybe is None:
                    raise UacError("no transport to send with", 503)
                transport = maybe
        host, port = core.advertised(transport)
        spec = self._complete(req, method, ruri, host)
        key = (spec.call_id or "", spec.cseq or 0)
        if key in self.pending:
            raise UacError(f"a local transaction with Call-ID {key[0]} and CSeq {key[1]} "
                           "is pending")
        branch_id = self.new_branch_id()
        data = self._build(spec, transport, host, port, branch_id)
        parsed = self._parse(data, transport)
        settings = TxSettings(fr=req.timeout) if req.timeout is not None else TxSettings()
        uac = LocalUac(layer, self, spec, parsed, dest or Address(hop.host, hop.port),
                       transport, settings)
        self.pending[key] = uac
        self.stats["sent"] += 1
        if dest is not None:
            uac.begin(parsed, data, dest, transport, branch_id)
        else:
            self.stats["dns_waits"] += 1
            layer.nursery.start_soon(self._resolve_then_begin, uac, next_uri)
        layer.nursery.start_soon(uac.bound_lifetime)
        return uac

    async def _resolve_then_begin(self, uac: LocalUac, uri: URI) -> None:
        """The next hop's name resolved (bounded by fr: no final for that long is a 408
        as for any request), then the request sent to the first usable target."""
        core = self.core
        fr = uac.fr_timeouts()[0]
        res: Resolution | None = None
        with trio.move_on_after(fr):
            try:
                res = await core.dns.resolve(uri, supported_transports(core.transports))
            except Exception:  # the resolver's bug must not take tm's nursery down
                log.exception("local %s %s: DNS resolution failed", uac.method, uac.call_id)
                uac._settle(UacResult(478, "Unresolvable destination"))
                return
        if uac.result is not None:
            return  # cancelled, or its lifetime ended, meanwhile
        if res is None:
            uac._settle(UacResult(408, "Request Timeout"))
            return
        try:
            dest, transport = self._pick(res, uri.host)
        except UacError as exc:
            log.warning("local %s %s: %s", uac.method, uac.call_id, exc.message)
            uac._settle(UacResult(exc.status, _LOCAL_REASONS.get(exc.status,
                                                                  reason_phrase(exc.status))))
            return
        host, port = core.advertised(transport)
        branch_id = self.new_branch_id()
        data = self._build(uac.spec, transport, host, port, branch_id)
        uac.begin(self._parse(data, transport), data, dest, transport, branch_id)

    def _pick(self, res: Resolution, name: str) -> tuple[Address, Transport]:
        """The first target of a resolution we may and can send to (Kamailio: the first
        of the DNS failover list), or UacError 478."""
        core = self.core
        i, transport, guarded = core.usable_target(res)
        if transport is not None:
            t = res.targets[i]
            return Address(t.host, t.port), transport
        why = core.unusable_reason(res, guarded)
        raise UacError(f"{name}: {why}", 478)

    def _parse(self, data: bytes, transport: Transport) -> SipRequest:
        try:
            parsed = parse_message_untrusted(data, stream=transport.reliable,
                                             max_size=self.core.config.core.max_message_size)
        except BadMessage as exc:
            raise UacError(f"the request would be malformed: {exc.reason}") from exc
        assert isinstance(parsed, SipRequest)
        return parsed

    def _resend(self, uac: LocalUac, spec: UacRequest) -> None:
        """Send ``uac``'s request again as ``spec`` (authenticated, CSeq + 1) on a new
        branch that takes the old one's place; the old one finishes on its own (its
        machine ACKs a challenged INVITE and absorbs retransmissions)."""
        branch_id = self.new_branch_id()
        host, port = self.core.advertised(uac.transport)
        data = self._build(spec, uac.transport, host, port, branch_id)
        parsed = self._parse(data, uac.transport)
        old_key = (uac.call_id, uac.cseq)
        if self.pending.get(old_key) is uac:
            del self.pending[old_key]
        uac.spec = spec
        uac.provisional = None
        uac.begin(parsed, data, uac.dest, uac.transport, branch_id)
        self.pending[(uac.call_id, uac.cseq)] = uac

    def find(self, call_id: str, cseq: int) -> LocalUac | None:
        return self.pending.get((call_id, cseq))

    def _forget(self, uac: LocalUac) -> None:
        key = (uac.call_id, uac.cseq)
        if self.pending.get(key) is uac:
            del self.pending[key]

    def _next_hop(self, hop: NextHop) -> tuple[Address, Transport]:
        core = self.core
        transport = core.transport_for(hop.proto)
        if transport is None:
            raise UacError(f"no {hop.proto} transport to send with", 503)
        dest = Address(hop.host, hop.port)
        if not core.guard.allows(dest):
            raise UacError(f"sending to {dest} is not allowed (loopback-only guard)", 477)
        return dest, transport

    def _complete(self, req: UacRequest, method: str, ruri: str, host: str) -> UacRequest:
        """``req`` with every field it will be sent with: From with its tag, To, Call-ID,
        CSeq; checked."""
        from_value = _name_addr(req.from_uri or ruri, "From")
        if ";tag=" not in from_value.replace(" ", "").lower():
            from_value += f";tag={os.urandom(6).hex()}"
        to_value = _name_addr(req.to_uri or ruri, "To")
        call_id = (req.call_id or "").strip() or f"{os.urandom(8).hex()}@{host}"
        if any(c in call_id for c in " \t\r\n"):
            raise UacError(f"bad Call-ID {call_id!r}")
        cseq = DEFAULT_CSEQ if req.cseq is None else req.cseq
        if not 0 <= cseq < 2**31 - 1:
            raise UacError(f"bad CSeq number {cseq}")
        _header_lines(req.headers)  # checked now: nothing is sent if they are bad
        return UacRequest(**{**req.__dict__, "method": method, "ruri": ruri,
                             "from_uri": from_value, "to_uri": to_value, "call_id": call_id,
                             "cseq": cseq})

    def _build(self, spec: UacRequest, transport: Transport, host: str, port: int,
               branch_id: str) -> bytes:
        """The request's bytes, from a completed ``spec`` (see :meth:`_complete`)."""
        method = spec.method
        extra = _header_lines(spec.headers)
        lines = [
            f"{method} {spec.ruri} SIP/2.0",
            via_line(transport.proto, host, port, branch_id),
            "Max-Forwards: 70",
            f"From: {spec.from_uri}",
            f"To: {spec.to_uri}",
            f"Call-ID: {spec.call_id}",
            f"CSeq: {spec.cseq} {method}",
        ]
        if method == "INVITE" and not any(header_key(_name_of(x)) == "contact" for x in extra):
            h = f"[{host}]" if ":" in host and not host.startswith("[") else host
            tp = "" if transport.proto == "udp" else f";transport={transport.proto}"
            lines.append(f"Contact: <sip:{h}:{port}{tp}>")
        lines += extra
        lines.append(f"Content-Length: {len(spec.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + spec.body


def _name_of(line: str) -> str:
    return line.split(":", 1)[0]


def _header_lines(text: str) -> list[str]:
    """Extra header lines, checked by the shared rules for header lines given by a caller
    (:func:`~trio_sip.sip.headers.parse_header_lines_untrusted`: ``Name: value`` with a
    token name, folded lines joined, blank lines skipped so none can start a body, no
    CR/LF/NUL or other control character); our own headers (Via, From, To, Call-ID,
    CSeq, Max-Forwards, Content-Length, also in compact form) refused."""
    try:
        lines = parse_header_lines_untrusted(text)
    except BadMessage as exc:
        raise UacError(f"bad {exc.reason}") from None
    out: list[str] = []
    for name, value in lines:
        if header_key(name) in _OWN_HEADERS:
            raise UacError(f"header {name} is set by the request's own fields, not in headers")
        out.append(f"{name}: {value}")
    return out


def _name_addr(value: str, what: str) -> str:
    v = value.strip()
    if not v or any(c in v for c in "\r\n\0"):
        raise UacError(f"bad {what} {value!r}")
    try:
        if "<" in v:
            entries = parse_name_addr_list_untrusted(v)
            if len(entries) != 1:
                raise UacError(f"bad {what} {value!r}: one address expected")
            return v
        parse_uri_untrusted(v)
    except BadMessage as exc:
        raise UacError(f"bad {what} {value!r}: {exc.reason}") from exc
    return f"<{v}>"


def local_uacs(core: ProxyCore) -> LocalUacLayer:
    """The local UAC layer of a server (made on first use), kept on the core as the other
    per-server services are (``core.htable``, ``core.mqueue``...): it refers to its core,
    so a module-level WeakKeyDictionary keyed by the core kept every stopped server alive
    (found by the chaos kit's object counts)."""
    layer = getattr(core, "local_uac", None)
    if not isinstance(layer, LocalUacLayer):
        layer = LocalUacLayer(core)
        core.local_uac = layer  # type: ignore[attr-defined]
    return layer


__all__ = [
    "DEFAULT_CSEQ",
    "LocalUac",
    "LocalUacLayer",
    "UacError",
    "UacRequest",
    "UacResult",
    "local_uacs",
]
