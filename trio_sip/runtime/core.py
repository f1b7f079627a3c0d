"""The proxy core: from received bytes to route runs to bytes sent.

Data path of one request (DESIGN.md "Data flow")::

    transport ──bytes──▶ on_message ──parse──▶ SipRequest
                                      │ BadMessage: 4xx from the raw lines, counted
                                      ▼
                      received/rport edit on the top Via (§18.2.1, RFC 3581)
                                      ▼
                      ksr_request_route() in a Lua coroutine (script/engine.py)
                        KSR.sl.* / KSR.forward() queue bytes in ctx.outbox
                                      ▼
                      flush: every queued message goes to its transport

and of one response: ``ksr_reply_route()`` (if defined) may drop it; otherwise
our Via is removed and the response goes to the next Via (§16.7 step 3 for a
stateless proxy, §18.2.2 for the address).

Sends are queued in the context, not done inside exports, because exports are
synchronous Lua calls and sending is a Trio operation; the queue is flushed
after every coroutine step, so the order of a route's sends is kept.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import trio

from ..config import Config
from ..dns import Resolution, SipResolver
from ..dns.ops import ResolveOp
from ..dns.resolver import supported_transports
from ..log import current_call_id
from ..proxy.stateless import (
    NextHop,
    record_route_line,
    remove_top_via,
    reply_destination,
    response_next_hop,
    stateless_branch,
    target_of_uri,
    via_line,
    via_received_edit,
)
from ..script.context import MsgContext
from ..script.engine import ScriptEngine, Step
from ..script.exports import RouteType
from ..script.modparams import build_modparams
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.message import SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..sip.reply import build_reply, build_reply_from_lines, reason_phrase
from ..sip.uri import parse_uri_untrusted
from ..transaction.matching import server_key
from ..transport.base import Address, Transport, is_ip_literal
from ..transport.guard import LoopbackGuard
from .transactions import TransactionLayer

log = logging.getLogger("trio_sip.core")

# The forwarded Via goes above every other header we add (Record-Route included).
_VIA_SEQ = -1000


class ProxyCore:
    """Everything the routes and the transports share; one per server."""

    def __init__(self, config: Config, engine: ScriptEngine,
                 guard: LoopbackGuard | None = None) -> None:
        self.config = config
        self.engine = engine
        self.guard = guard if guard is not None else LoopbackGuard(config.core.loopback_only)
        self.transports: dict[str, Transport] = {}
        #: every socket we listen on, in the order added (``transports`` holds the one
        #: per protocol that sends; with workers, a worker's own UDP socket)
        self.sockets: list[Transport] = []
        #: this process's index among ``workers`` server processes (runtime/workers.py);
        #: 0 of 1 when not run with ``--workers``. Singletons (rtimer) run in worker 0.
        self.worker_index = 0
        self.workers = 1
        self.stats: Counter[str] = Counter()
        #: $shv(name): values shared by every message in this process
        self.shv: dict[str, Any] = {}
        self._secret = os.urandom(16)
        self._aliases: set[str] = set()
        for alias in config.core.aliases:
            host = alias.rsplit(":", 1)[0] if alias.count(":") == 1 else alias
            self._aliases.add(host.strip("[]").lower())
        self.request_route = config.lua.request_route
        self.reply_route = config.lua.reply_route
        #: RFC 3263 resolution, its cache and blocklist (trio_sip/dns/, docs/dns.md)
        self.dns = SipResolver(config.dns, loopback_only=config.core.loopback_only)
        self.tm = TransactionLayer(self, config.tm)
        #: each module's params instance (script/modparams.py), checked at start
        self.modparams: dict[str, Any] = build_modparams(engine.modules.values(),
                                                         config.modparams)
        #: the management interface context, set by the server when it starts one
        self.mi: Any = None

    # -- transports and addresses ---------------------------------------------

    def add_transport(self, transport: Transport) -> None:
        """Listen on ``transport``; the first of each protocol is the one that sends."""
        self.transports.setdefault(transport.proto, transport)
        if transport not in self.sockets:
            self.sockets.append(transport)

    def transport_for(self, proto: str) -> Transport | None:
        return self.transports.get(proto.lower())

    def advertised(self, transport: Transport) -> tuple[str, int]:
        """The host and port to put in Via and Record-Route for this transport."""
        adv = self.config.core.advertise
        if adv:
            if adv.startswith("["):
                host, _, rest = adv[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else transport.local.port
            elif adv.count(":") == 1:
                host, p = adv.split(":")
                port = int(p)
            else:
                host, port = adv, transport.local.port
            if getattr(transport, "listener", None) is not None:
                port = transport.local.port  # a worker's own port (runtime/workers.py)
            return host, port
        return transport.local.host, transport.local.port

    def record_route_address(self, transport: Transport) -> tuple[str, int]:
        """The host and port for a Record-Route added when sending with ``transport``: its
        own (``advertised``), except for a worker's own socket (``--workers``), whose
        Record-Route names the shared listener, so in-dialog requests come back through
        the SO_REUSEPORT group and any worker may take them (docs/workers.md)."""
        listener = getattr(transport, "listener", None)
        return self.advertised(listener if listener is not None else transport)

    def set_force_rport(self, ctx: MsgContext) -> None:
        """force_rport(): reply to the source port, and say so in the top Via (RFC 3581)."""
        ctx.force_rport = True
        req = ctx.msg
        if isinstance(req, SipRequest):
            req.top_via_edit = via_received_edit(req, ctx.source.host, ctx.source.port,
                                                 force_rport=True)

    def is_myself(self, host: str, port: int | None, proto: str = "") -> bool:
        """Kamailio's ``check_self``: the host is one of our addresses or aliases and
        the port (default 5060, 5061 for TLS) one we listen on; with ``proto`` (a URI's
        transport parameter) also a transport we listen on. "" means any transport."""
        if proto and proto.lower() not in self.transports:
            return False
        h = host.strip("[]").lower()
        ours = h in self._aliases
        ports = set()
        for t in self.sockets or self.transports.values():
            adv_host, adv_port = self.advertised(t)
            ports.add(t.local.port)
            ports.add(adv_port)
            if h in (t.local.host.lower(), adv_host.strip("[]").lower()):
                ours = True
            elif _is_unspecified(t.local.host) and _is_local_ip(h):
                ours = True
        if not ours:
            return False
        if port is None:
            port = 5061 if proto.lower() == "tls" else 5060
        return port in ports

    def is_my_ip(self, host: str) -> bool:
        h = host.strip("[]").lower()
        return any(h in (t.local.host.lower(), self.advertised(t)[0].lower())
                   for t in self.sockets or self.transports.values()) or h in self._aliases

    # -- receiving ----------------------------------------------------------------

    async def on_message(
        self, data: bytes, source: Address, transport: Transport, conn_id: int | None
    ) -> None:
        """The transports' MessageHandler: never raises for anything a peer sent."""
        try:
            msg = parse_message_untrusted(
                data, stream=transport.reliable, max_size=self.config.core.max_message_size
            )
        except BadMessage as exc:
            await self._bad_message(exc, data, source, transport, conn_id)
            return
        token = current_call_id.set(msg.call_id)
        try:
            if isinstance(msg, SipRequest):
                self.stats["rcv_requests"] += 1
                await self.handle_request(msg, source, transport, conn_id)
            else:
                assert isinstance(msg, SipResponse)
                self.stats["rcv_replies"] += 1
                await self.handle_response(msg, source, transport, conn_id)
        finally:
            current_call_id.reset(token)

    async def _bad_message(self, exc: BadMessage, data: bytes, source: Address,
                           transport: Transport, conn_id: int | None) -> None:
        self.stats["bad_msg"] += 1
        if log.isEnabledFor(logging.INFO):
            log.info("bad message from %s/%s: %s (%d bytes)", transport.proto, source,
                     exc.reason, len(data))
        if not exc.is_request or not exc.headers:
            return  # a broken response is dropped; so is a request we cannot even split
        keys = {h.key for h in exc.headers}
        if not {"via", "from", "to", "call-id", "cseq"} <= keys:
            return
        text = data.decode("latin-1")
        if any(h.key == "cseq" and "ACK" in h.value.upper().split() for h in exc.headers):
            return  # never answer an ACK
        reply = build_reply_from_lines(text, exc.headers, exc.status, None,
                                       server=self.config.core.server_header)
        dest = source
        self.stats["err_requests"] += 1
        await transport.send(reply, dest, conn_id=conn_id)

    async def handle_request(self, req: SipRequest, source: Address, transport: Transport,
                             conn_id: int | None) -> None:
        if self.tm.match_request(req):
            return  # a retransmission or a hop-by-hop ACK: its transaction answers it
        ctx = MsgContext(req, source, transport, conn_id, RouteType.REQUEST, self)
        req.top_via_edit = via_received_edit(req, source.host, source.port)
        fn = self.engine.function(self.request_route)
        if fn is None:
            log.error("no %s() in the routes: request dropped", self.request_route)
            return
        key = _server_key_or_none(req)
        if key is not None:
            self.tm.in_progress[key] += 1
        try:
            step = self.engine.start(fn, ctx)
            await self._finish(ctx, step)
        finally:
            if key is not None:
                self.tm.in_progress[key] -= 1
                if not self.tm.in_progress[key]:
                    del self.tm.in_progress[key]

    async def handle_response(self, resp: SipResponse, source: Address, transport: Transport,
                              conn_id: int | None) -> None:
        fn = self.engine.function(self.reply_route)
        ctx: MsgContext | None = None
        if fn is not None:
            ctx = MsgContext(resp, source, transport, conn_id, RouteType.CORE_REPLY, self)
            step = self.engine.start(fn, ctx)
            await self._finish(ctx, step)
            if ctx.drop or (step.done and step.value is not None and _is_zero(step.value)):
                self.stats["drop_replies"] += 1
                return
        if self.tm.match_response(resp):
            return  # its branch takes it from here
        if ctx is None:  # made only now: most responses match a branch and need none
            ctx = MsgContext(resp, source, transport, conn_id, RouteType.CORE_REPLY, self)
        self.forward_response(ctx)
        await self.flush(ctx)

    def engine_for(self, ctx: MsgContext) -> ScriptEngine:
        """The engine an armed route of ``ctx`` runs in: the one its transaction started
        in, else the one the message's request route started in (after an
        app_lua.reload, a transaction in flight keeps the functions it started with),
        else the current one."""
        engine = getattr(ctx.transaction, "engine", None)
        if not isinstance(engine, ScriptEngine):
            engine = ctx.engine
        return engine if isinstance(engine, ScriptEngine) else self.engine

    async def run_route(
        self, name: str, ctx: MsgContext, route_type: RouteType, *,
        while_waiting: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> Step | None:
        """Run an armed route (failure, onreply, branch-failure...) to its end, in the
        engine of its transaction (``engine_for``). Returns None when no such function
        exists (logged). If the route waits, the rest of it runs inside
        ``while_waiting()`` (a transaction serves its branches meanwhile)."""
        engine = self.engine_for(ctx)
        fn = engine.function(name)
        if fn is None:
            log.error("armed route %s() does not exist in the routes", name)
            self.stats["script_errors"] += 1
            return None
        saved = ctx.route_type
        ctx.route_type = route_type
        try:
            step = engine.start(fn, ctx)
            if step.yielded and while_waiting is not None:
                async with while_waiting():
                    await self._finish(ctx, step)
            else:
                await self._finish(ctx, step)
        finally:
            ctx.route_type = saved
        return step

    def start_route(self, name: str, ctx: MsgContext, route_type: RouteType) -> Step | None:
        """Start an armed route and run it until it ends or waits (branch routes start
        while t_relay builds the branches: if one waits, t_relay yields and the branch is
        finished when it is done). None when no such function exists (logged)."""
        engine = self.engine_for(ctx)
        fn = engine.function(name)
        if fn is None:
            log.error("armed route %s() does not exist in the routes", name)
            self.stats["script_errors"] += 1
            return None
        saved = ctx.route_type
        ctx.route_type = route_type
        try:
            return engine.start(fn, ctx)
        finally:
            ctx.route_type = saved

    async def _finish(self, ctx: MsgContext, step: Step) -> None:
        """Drive a route coroutine to its end, flushing sends after each step.

        A request route that waits (an async export yielded) gets a transaction if it has
        none (OpenSIPS async() does the same: retransmissions are absorbed meanwhile) and
        goes on as a task of that transaction, so the receive loop is free at once and the
        wait is cancelled with the transaction. Other routes wait where they run (a
        failure route inside its transaction's task, a launched task in its own)."""
        await self.flush(ctx)
        if step.yielded and ctx.route_type == RouteType.REQUEST and ctx.is_request:
            req = ctx.msg
            assert isinstance(req, SipRequest)
            if (ctx.transaction is None and getattr(step.value, "stateless", False)
                    and self.tm.nursery is not None):
                # a stateless wait (forward() resolving a name, dns/ops.py): no
                # transaction, whose fr would answer 408 to a request forwarded
                # statelessly; the route goes on as a task of the server
                self.tm.nursery.start_soon(self._continue, ctx, step)
                return
            if req.method != "ACK":
                tx = ctx.transaction or self.tm.new_server_tx(ctx)
                tx.spawn(self._continue, ctx, step)
                return
        if step.yielded and ctx.route_type == RouteType.CORE_REPLY:
            # ksr_reply_route runs in the receive loop for every reply: it may not wait
            self.engine.abandon(step.co_id)
            log.error("ksr_reply_route may not wait (it yielded %r); use an onreply route",
                      step.value)
            step = Step(-1, "wait in the core reply route", "", step.co_id)
        if step.yielded:
            step = await self._drive(ctx, step)
        await self._after(ctx, step)

    async def _continue(self, ctx: MsgContext, step: Step) -> None:
        step = await self._drive(ctx, step)
        await self._after(ctx, step)

    async def _drive(self, ctx: MsgContext, step: Step) -> Step:
        """Await what the coroutine yields and resume it with the result, until it ends.
        Cancelled (transaction over, shutdown): the coroutine is abandoned, never resumed."""
        engine = self.engine
        co_id = step.co_id
        try:
            while step.yielded:
                op = step.value
                result = await self._run_op(ctx, op)
                step = engine.resume(co_id, ctx, result)
                await self.flush(ctx)
        finally:
            if step.yielded:
                engine.abandon(co_id)
                self.stats["routes_abandoned"] += 1
                log.info("route abandoned while waiting for %r", step.value)
        return step

    async def _run_op(self, ctx: MsgContext, op: Any) -> Any:
        if not isinstance(op, AsyncOp):
            log.error("a route yielded %r, which is not an operation", op)
            return -1
        self.stats["async_ops"] += 1
        timeout = op.timeout if op.timeout is not None else math.inf
        if ctx.next_wait_timeout is not None:  # KSR.async.set_timeout(): this wait only
            timeout = min(timeout, ctx.next_wait_timeout)
            ctx.next_wait_timeout = None
        with trio.move_on_after(timeout) as scope:
            try:
                return await op.run(ctx)
            except trio.Cancelled:
                raise
            except Exception:
                log.exception("async operation %s failed", op.name)
                self.stats["async_op_errors"] += 1
                return -1
        if scope.cancelled_caught:
            self.stats["async_op_timeouts"] += 1
            log.info("async operation %s timed out after %s s", op.name, timeout)
        return op.timeout_result

    async def _after(self, ctx: MsgContext, step: Step) -> None:
        if step.failed:
            self.stats["script_errors"] += 1
            log.error("route error: %s", step.traceback or step.value)
            if (ctx.is_request and not ctx.replied and ctx.route_type == RouteType.REQUEST
                    and isinstance(ctx.msg, SipRequest) and ctx.msg.method != "ACK"):
                tx = ctx.transaction
                if tx is not None:
                    if not tx.final_status:
                        tx.reply_local(500, "Server Internal Error")
                else:
                    self.send_reply(ctx, 500, "Server Internal Error")
        await self.flush(ctx)

    def launch(self, ctx: MsgContext, fn: str, report_fn: str | None, param: str) -> bool:
        """KSR.async.launch: ``fn`` runs as a detached task of the server (OpenSIPS launch):
        on a copy of the message context with no transaction, so it outlives the request."""
        if self.tm.nursery is None:
            return False
        lctx = MsgContext(ctx.msg, ctx.source, ctx.transport, ctx.conn_id, RouteType.EVENT,
                          self, flags=ctx.flags)
        lctx.vars = dict(ctx.vars)
        self.tm.nursery.start_soon(self._launched, lctx, fn, report_fn, param)
        self.stats["launched"] += 1
        return True

    async def _launched(self, ctx: MsgContext, fn: str, report_fn: str | None,
                        param: str) -> None:
        f = self.engine.function(fn)
        if f is None:
            return
        step = await self._drive(ctx, self.engine.start(f, ctx))
        await self.flush(ctx)
        if step.failed:
            self.stats["script_errors"] += 1
            log.error("launched route error: %s", step.traceback or step.value)
        if report_fn is not None:
            r = self.engine.function(report_fn)
            if r is not None:
                rstep = await self._drive(ctx, self.engine.start(r, ctx, step.value, param))
                await self.flush(ctx)
                if rstep.failed:
                    log.error("launch report route error: %s", rstep.traceback or rstep.value)

    # -- sending ----------------------------------------------------------------

    async def flush(self, ctx: MsgContext) -> None:
        if not ctx.outbox:
            return
        out, ctx.outbox = ctx.outbox, []
        for proto, dest, data, conn_id in out:
            t = self.transport_for(proto) if isinstance(proto, str) else proto
            if t is None:
                log.warning("no %s transport to send to %s", proto, dest)
                self.stats["send_errors"] += 1
                continue
            if not await t.send(data, dest, conn_id=conn_id):
                self.stats["send_errors"] += 1

    def send_reply(self, ctx: MsgContext, code: int, reason: str | None = None,
                   headers: Iterable[str] = (), body: bytes = b"") -> bool:
        """A stateless reply to the request in ``ctx`` (§8.2.6, §18.2.2)."""
        req = ctx.msg
        if not isinstance(req, SipRequest):
            return False
        if req.method == "ACK":
            log.warning("refusing to reply to an ACK")
            return False
        data = build_reply(req, code, reason or reason_phrase(code), via_edit=req.top_via_edit,
                           headers=[*ctx.reply_headers, *headers], body=body,
                           server=self.config.core.server_header)
        if ctx.transport.reliable:
            dest = ctx.source
        else:
            host, port = reply_destination(req.via1, ctx.source.host, ctx.source.port,
                                           force_rport=ctx.force_rport)
            dest = Address(host, port)
        ctx.outbox.append((ctx.transport, dest, data, ctx.conn_id))
        ctx.replied = code
        self.stats["sent_replies"] += 1
        return True

    def forward(self, ctx: MsgContext, uri: str | None = None) -> int | AsyncOp:
        """Stateless forwarding (Kamailio ``forward()``): to ``uri``, else $du, else the R-URI.
        Returns 1, or -1 if the destination cannot be used. A host name is resolved
        (RFC 3263, docs/dns.md) and the first usable target is used: from the cache at
        once, else through a ResolveOp the route waits for (no transaction)."""
        req = ctx.msg
        if not isinstance(req, SipRequest):
            return -1
        target = uri or req.dst_uri or req.current_uri
        try:
            parsed = parse_uri_untrusted(target)
            hop = target_of_uri(parsed)
        except BadMessage as exc:
            log.warning("cannot forward to %r: %s", target, exc.reason)
            return -1
        if not is_ip_literal(hop.host):
            supported = supported_transports(self.transports)
            res = self.dns.cached(parsed, supported)
            if res is None:
                return ResolveOp(self.dns, parsed, supported,
                                 partial(self._forward_resolved, target=target),
                                 self.config.tm.max_noninv_lifetime / 1000)
            return self._forward_resolved(ctx, res, target)
        return self._send_request(ctx, req, hop, target)

    def usable_target(self, res: Resolution, start: int = 0
                      ) -> tuple[int, Transport | None, bool]:
        """The first target of ``res`` from index ``start`` that is not blocklisted, has
        a transport of ours and passes the loopback guard: ``(index, transport, guarded)``;
        transport None when there is none, ``guarded`` telling whether the guard refused
        one (477 rather than 478). forward() and TM's branches (and their DNS failover)
        pick targets with this."""
        guarded = False
        for i in range(start, len(res.targets)):
            t = res.targets[i]
            transport = self.transport_for(t.proto)
            if transport is None or self.dns.blocked(t):
                continue
            if not self.guard.allows(Address(t.host, t.port)):
                guarded = True
                continue
            return i, transport, guarded
        return -1, None, guarded

    @staticmethod
    def unusable_reason(res: Resolution, guarded: bool) -> str:
        """Why ``usable_target`` found nothing, for the log."""
        if guarded:
            return "every target refused by the loopback guard"
        if res.targets:
            return "no usable target"
        return f"unresolvable ({res.failure.value if res.failure else 'no transport'})"

    def _forward_resolved(self, ctx: MsgContext, res: Resolution, target: str) -> int:
        """forward() to the first usable target of a resolution (``usable_target``)."""
        req = ctx.msg
        assert isinstance(req, SipRequest)
        i, transport, guarded = self.usable_target(res)
        if transport is not None:
            t = res.targets[i]
            return self._send_request(ctx, req, NextHop(t.proto, t.host, t.port), target)
        log.warning("forward to %s: %s", target, self.unusable_reason(res, guarded))
        self.stats["fwd_errors"] += 1
        # Kamailio E_BAD_ADDRESS "Unresolvable destination"; 477 when only the guard refused
        ctx.last_error = 477 if guarded else 478
        return -1

    def _send_request(self, ctx: MsgContext, req: SipRequest, hop: NextHop, target: str) -> int:
        if not is_ip_literal(hop.host):  # forward() resolves names before it gets here
            log.warning("forward to %s: not an IP address", hop.host)
            self.stats["fwd_errors"] += 1
            ctx.last_error = 478  # Kamailio E_BAD_ADDRESS: "Unresolvable destination"
            return -1
        transport = self.transport_for(hop.proto)
        if transport is None:
            log.warning("forward to %s: no %s transport", target, hop.proto)
            ctx.last_error = 503
            return -1
        dest = Address(hop.host, hop.port)
        if not self.guard.allows(dest):
            self.stats["fwd_errors"] += 1
            ctx.last_error = 477  # Kamailio E_SEND: "Send failed"
            return -1
        host, port = self.advertised(transport)
        branch = stateless_branch(req, target, self._secret)
        extra: list[tuple[int, int, bytes, int]] = []
        first = req.headers[0].start if req.headers else req.headers_end
        via = via_line(transport.proto, host, port, branch) + "\r\n"
        extra.append((first, first, via.encode("latin-1"), _VIA_SEQ))
        if ctx.record_route:
            rr_host, rr_port = self.record_route_address(transport)
            rr = record_route_line(transport.proto, rr_host, rr_port, ctx.rr_params) + "\r\n"
            extra.append((first, first, rr.encode("latin-1"), _VIA_SEQ + 1))
        data = req.to_bytes(extra)
        ctx.outbox.append((transport.proto, dest, data, None))
        self.stats["fwd_requests"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("forwarded %s to %s:%s", req.method, transport.proto, dest)
        return 1

    def forward_response(self, ctx: MsgContext) -> None:
        """§16.7 for a stateless proxy: remove our Via, send to the next one."""
        resp = ctx.msg
        assert isinstance(resp, SipResponse)
        via = resp.via1
        if via is None or not self.is_myself(via.host_bare, via.port, via.transport):
            self.stats["drop_replies"] += 1
            log.info("reply %d not for us (top Via %s): dropped", resp.status,
                     via.sent_by if via else "-")
            return
        hop = response_next_hop(resp)
        if hop is None:
            # we were the last hop: a reply to a request we originated statelessly
            self.stats["drop_replies"] += 1
            return
        remove_top_via(resp)
        ctx.outbox.append((hop.proto, Address(hop.host, hop.port), resp.to_bytes(), None))
        self.stats["fwd_replies"] += 1

    def statistics(self) -> Mapping[str, int]:
        return dict(self.stats)


def _server_key_or_none(req: SipRequest) -> Any:
    try:
        return server_key(req)
    except BadMessage:
        return None


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_local_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

