"""The ng client: one socket, many requests in flight, dead nodes skipped at once.

Theory of operation
-------------------
Kamailio's rtpengine module blocks its worker process for every command: send,
poll up to ``rtpengine_tout_ms``, resend, ... up to ``rtpengine_retr`` sends, so a
dead node stalls a worker for ~5 s per command. Here a command is a Trio task of
the transaction that asked; the server goes on meanwhile::

    request task (one per command)            receive task (one per socket)
    ──────────────────────────────            ─────────────────────────────
    select node (stickiness, weights)
    cookie = new_cookie()
    matcher.expect(cookie, node, waiter)
    send ─────────────▶ rtpengine ─────────▶  recvfrom(65535)
    wait ≤ tout_ms ◀─── waiter.event.set() ◀─ matcher.match_untrusted(data, src)
      no reply: resend the SAME datagram (rtpengine answers a repeated cookie from
      its cache, so nothing runs twice), up to ``retr`` sends in all
    after retr * tout_ms without a reply: the node is disabled for
      ``rtpengine_disable_tout`` seconds (requests in flight to it move on at once)
      and the next node of the set is tried (Kamailio's failover, up to
      ``queried_nodes_limit`` nodes)

* All nodes disabled: :class:`NoNodeAvailable` at once, no waiting (Kamailio's
  ``aggressive_redetection`` would ping every node inline first; here it only wakes
  the background prober, and it is off by default).
* A disabled node is probed again with ``ping`` by the client's own background task
  when its disable time is over (and every enabled node every ``ping_interval`` s,
  as Kamailio's ping timer does); a ``pong`` enables it. Requests never wait for a
  probe.
* A request that timed out while other replies came from the same node does not
  disable it: the node is alive and this reply was lost or too big for a datagram
  (rtpengine cannot send an ng reply over 65507 bytes over UDP; ours are read into a
  65535-byte buffer, so what arrives is never truncated). The request fails with
  :class:`NgTimeout` and is not sent elsewhere (its media state is on that node).
  The ng TCP listener (``--listen-tcp-ng``) is not used.
* ``result: "load limit"`` and the errors "Parallel session limit reached" and
  "Ran out of ports" make the request try the next node, as in Kamailio.

The client owns one UDP socket per address family of its nodes (normally one) and
one receive task per socket; no socket is made per request.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..transport.base import Address
from .endpoints import DEFAULT_RCVBUF, EndpointFactory, NgEndpoint, udp_endpoints
from .nodes import Node, NodeSpec, StickyTable, parse_rtpengine_sock, select_new_node
from .protocol import (
    MAX_COMMAND_SIZE,
    BadNgReply,
    NgError,
    ReplyMatcher,
    decode_reply_untrusted,
    encode_command,
    new_cookie,
)

__all__ = [
    "ClientClosed",
    "ClientConfig",
    "NgReplyError",
    "NgTimeout",
    "NoNodeAvailable",
    "RtpengineClient",
    "TooManyPending",
]

log = logging.getLogger("trio_sip.rtpengine")

#: counters always present in statistics() (0 until they count something)
STAT_NAMES = (
    "requests", "replies_ok", "replies_error", "retransmissions", "timeouts",
    "timeouts_node_alive", "failovers", "moved_on_node_down", "nodes_disabled",
    "nodes_enabled", "no_node_available", "load_limit", "bad_replies", "send_errors",
    "pings", "pings_failed", "pending_limit", "commands_too_large", "datagrams_sent",
    "datagrams_received", "replies_duplicate", "receive_errors",
)

#: rtpengine errors after which Kamailio tries the next node instead of failing
SOFT_ERRORS = ("Parallel session limit reached", "Ran out of ports")


class NoNodeAvailable(NgError):
    """No usable node in the set (all disabled, all tried, or the limit reached)."""


class NgTimeout(NgError):
    """No reply to a command from a node that answered other commands meanwhile."""


class NgReplyError(NgError):
    """rtpengine answered ``result: "error"``; ``reason`` is its ``error-reason``."""

    def __init__(self, reason: str, reply: Mapping[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = dict(reply)


class ClientClosed(NgError):
    """The client is not running (not started yet within the wait, or shut down)."""


class TooManyPending(NgError):
    """``max_pending`` commands are already waiting for replies."""


class Guard(Protocol):
    def allows(self, dest: Address) -> bool: ...


@dataclass(frozen=True)
class ClientConfig:
    """The client's settings, with Kamailio's names and defaults where it has them."""

    #: rtpengine_sock strings (node sets)
    sock: tuple[str, ...] = ()
    #: rtpengine_tout_ms: wait for a reply before re-sending
    tout_ms: int = 1000
    #: rtpengine_retr: sends per node in all (the first one included), as Kamailio counts
    retr: int = 5
    #: rtpengine_disable_tout: seconds a node that did not answer stays disabled
    disable_tout: float = 60.0
    #: hash_table_tout: seconds a call stays on its node
    hash_table_tout: float = 3600.0
    #: bound of the stickiness table (Kamailio's is unbounded); the oldest goes first
    hash_table_max: int = 100_000
    #: hash_algo: 0 byte sum (Kamailio's default), 1 SHA-1, 2 CRC32
    hash_algo: int = 0
    #: queried_nodes_limit: nodes tried per command at most
    queried_nodes_limit: int = 30
    #: setid_default: the set used when the route selected none
    setid_default: int = 0
    #: rtpengine_allow_op: 1 lets calls go on on a disabled node, 2 on a manually disabled one
    allow_op: int = 0
    #: ping_interval: seconds between pings of every enabled node (0: never)
    ping_interval: float = 60.0
    #: ping_mode: 1 pings every node when the client starts (in the background)
    ping_mode: int = 1
    #: aggressive_redetection: when every node is down, probe them all now (in the
    #: background: the command still fails at once). Kamailio's default is 1 and pings
    #: inline; here the default is 0.
    aggressive_redetection: int = 0
    #: commands waiting for a reply at most; more fail at once
    max_pending: int = 10_000
    #: SO_RCVBUF of the client socket
    rcvbuf: int = DEFAULT_RCVBUF
    #: largest command datagram
    max_command_size: int = MAX_COMMAND_SIZE

    def __post_init__(self) -> None:
        if self.tout_ms <= 0:
            raise ValueError(f"tout_ms must be > 0, got {self.tout_ms}")
        if self.retr < 1:
            raise ValueError(f"retr must be >= 1, got {self.retr}")
        if self.disable_tout < 0 or self.hash_table_tout <= 0:
            raise ValueError("disable_tout must be >= 0 and hash_table_tout > 0")
        if self.hash_algo not in (0, 1, 2):
            raise ValueError(f"hash_algo must be 0, 1 or 2, got {self.hash_algo}")
        if not 1 <= self.queried_nodes_limit <= 30:
            raise ValueError("queried_nodes_limit must be within 1..30")
        if self.allow_op not in (0, 1, 2):
            raise ValueError(f"allow_op must be 0, 1 or 2, got {self.allow_op}")
        if self.ping_interval < 0 or self.max_pending < 1 or self.hash_table_max < 1:
            raise ValueError("ping_interval >= 0, max_pending >= 1, hash_table_max >= 1")


@dataclass(eq=False)
class _Waiter:
    node: Node
    probe: bool = False
    event: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    #: woken because the node was disabled by another command's timeout
    node_down: bool = False
    closed: bool = False


class _NoReply(Exception):
    """No reply after every send; ``alive``: other replies came from the node meanwhile."""

    def __init__(self, alive: bool) -> None:
        super().__init__(alive)
        self.alive = alive


class _SendFailed(Exception):
    pass


class RtpengineClient:
    """Talks ng to a configuration of rtpengine node sets. Start :meth:`run` in a
    nursery (``await nursery.start(client.run)``); then :meth:`request` from any task."""

    def __init__(self, config: ClientConfig, *, guard: Guard | None = None,
                 open_endpoint: EndpointFactory | None = None) -> None:
        self.config = config
        self._open_endpoint: EndpointFactory = open_endpoint or udp_endpoints
        sets = parse_rtpengine_sock(config.sock) if config.sock else {}
        self.nodes: list[Node] = []
        self.sets: dict[int, list[Node]] = {}
        self._by_address: dict[Address, list[Node]] = {}
        for set_id, specs in sets.items():
            members = []
            for spec in specs:
                node = Node(spec, len(self.nodes))
                if guard is not None and not guard.allows(spec.address):
                    node.refused = True
                    log.error("rtpengine node %s refused by the loopback guard: not used",
                              spec.url)
                self.nodes.append(node)
                members.append(node)
                self._by_address.setdefault(spec.address, []).append(node)
            self.sets[set_id] = members
        self.sticky = StickyTable(config.hash_table_tout, config.hash_table_max)
        self.stats: Counter[str] = Counter()
        self._matcher: ReplyMatcher[_Waiter] = ReplyMatcher()
        self._endpoints: dict[int, NgEndpoint] = {}
        self._ready = trio.Event()
        self._wake = trio.Event()
        self._running = False
        self._closed = False
        self._nursery: trio.Nursery | None = None

    # -- lifetime ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, task_status: trio.TaskStatus[RtpengineClient]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Open the socket(s), receive replies and probe nodes until cancelled. Reports
        started once the sockets are bound."""
        if self._running or self._closed:
            raise RuntimeError("an RtpengineClient runs once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for family in sorted({n.spec.family for n in self.nodes if not n.refused}):
                    ep = await self._open_endpoint(family, self._bind_host(family))
                    self._endpoints[family] = ep
                    nursery.start_soon(self._receive_loop, ep)
                nursery.start_soon(self._prober)
                self._running = True
                self._ready.set()
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._shutdown()

    def _bind_host(self, family: int) -> str:
        hosts = [n.spec.address.host for n in self.nodes
                 if n.spec.family == family and not n.refused]
        loopback = all(ipaddress.ip_address(h).is_loopback for h in hosts)
        if family == 6:
            return "::1" if loopback else "::"
        return "127.0.0.1" if loopback else "0.0.0.0"

    def _shutdown(self) -> None:
        self._running = False
        self._closed = True
        self._nursery = None
        for ep in self._endpoints.values():
            ep.close()
        self._endpoints.clear()
        for w in self._matcher.tokens():
            w.closed = True
            w.event.set()
        self._ready.set()

    async def _wait_ready(self) -> None:
        if not self._running and not self._closed:
            with trio.move_on_after(self.config.tout_ms / 1000):
                await self._ready.wait()
        if not self._running:
            raise ClientClosed("the rtpengine client is not running")

    # -- receiving -------------------------------------------------------------------

    async def _receive_loop(self, ep: NgEndpoint) -> None:
        while True:
            try:
                data, source = await ep.receive()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                # nothing a peer sends may stop the loop (and with it the server)
                self.stats["receive_errors"] += 1
                log.warning("rtpengine client: receive failed: %s", exc)
                await trio.sleep(0.01)
                continue
            self.stats["datagrams_received"] += 1
            now = trio.current_time()
            for node in self._by_address.get(source, ()):
                node.last_reply_at = now
            matched = self._matcher.match_untrusted(data, source)
            if matched is None:
                continue
            waiter, data = matched
            if waiter.data is None:
                waiter.data = data
                waiter.event.set()
            else:  # a second copy before the waiter ran (a reply to a retransmission)
                self.stats["replies_duplicate"] += 1

    # -- requests --------------------------------------------------------------------

    async def request(self, command: Mapping[str, Any], *, call_id: str | None = None,
                      via_branch: str = "", set_id: int | None = None,
                      timeout_ms: int | None = None, retr: int | None = None
                      ) -> dict[str, Any]:
        """Send one ng command to a node of set ``set_id`` (``setid_default`` if None),
        chosen for ``call_id`` (default: the command's ``call-id``) as Kamailio does,
        retransmitting every ``timeout_ms`` up to ``retr`` sends and failing over to the
        next node. Returns the decoded reply (``result`` ok/pong, maybe a ``warning``).

        Raises NoNodeAvailable (at once when every node is down), NgReplyError
        (``result: error``), NgTimeout, BadNgReply, CommandTooLarge, TooManyPending,
        ClientClosed: all NgError."""
        op = command.get("command")
        if isinstance(op, bytes):
            op = op.decode("latin-1")
        if not isinstance(op, str):
            raise ValueError("an ng command needs a 'command' string")
        cfg = self.config
        tout = (timeout_ms if timeout_ms is not None else cfg.tout_ms) / 1000
        sends = retr if retr is not None else cfg.retr
        if tout <= 0 or sends < 1:
            raise ValueError("timeout_ms must be > 0 and retr >= 1")
        if call_id is None:
            raw = command.get("call-id", "")
            call_id = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
        set_id = cfg.setid_default if set_id is None else set_id
        members = self.sets.get(set_id)
        if members is None:
            raise NoNodeAvailable(f"no rtpengine set {set_id} (rtpengine_sock)")
        await self._wait_ready()
        self.stats["requests"] += 1
        self.stats[f"requests_{op.replace(' ', '_')}"] += 1
        tried: list[Node] = []
        last_error: NgReplyError | None = None
        while True:
            if len(tried) >= cfg.queried_nodes_limit:
                self.stats["no_node_available"] += 1
                raise NoNodeAvailable("queried nodes limit reached")
            node = self._select(members, set_id, call_id, via_branch, op, tried)
            if node is None:
                if last_error is not None:
                    raise last_error
                self.stats["no_node_available"] += 1
                raise NoNodeAvailable(
                    f"no rtpengine node available in set {set_id} for {op!r}"
                    + (f" (tried {', '.join(n.url for n in tried)})" if tried else ""))
            if tried:
                self.stats["failovers"] += 1
            tried.append(node)
            cookie = new_cookie()
            try:
                data = encode_command(cookie, command, max_size=cfg.max_command_size)
            except NgError:
                self.stats["commands_too_large"] += 1
                raise
            try:
                reply = await self._exchange(node, cookie, data, tout, sends)
            except _SendFailed:
                self._disable(node, "send failed")
                continue
            except _NoReply as exc:
                if exc.alive:
                    self.stats["timeouts_node_alive"] += 1
                    raise NgTimeout(f"no reply to {op!r} from {node.url} (which is "
                                    "answering other commands)") from None
                self._disable(node, f"no reply to {op!r} after {sends} sends")
                continue
            result = reply["result"]
            if result == "load limit":
                self.stats["load_limit"] += 1
                log.info("rtpengine %s has reached its load limit: trying the next one",
                         node.url)
                continue
            if result == "error":
                reason = str(reply.get("error-reason", "")) or "error without a reason"
                node.errors += 1
                self.stats["replies_error"] += 1
                error = NgReplyError(reason, reply)
                if reason in SOFT_ERRORS:
                    log.warning("rtpengine %s: %s: trying the next one", node.url, reason)
                    last_error = error
                    continue
                raise error
            self.stats["replies_ok"] += 1
            now = trio.current_time()
            if op == "delete":
                self.sticky.remove(call_id, via_branch, now)
            elif op != "ping" and call_id:
                self.sticky.insert(call_id, via_branch, node, now)
            return reply

    def _select(self, members: Sequence[Node], set_id: int, call_id: str, via_branch: str,
                op: str, tried: Sequence[Node]) -> Node | None:
        """Kamailio's select_rtpp_node (see nodes.py)."""
        now = trio.current_time()
        old = self.sticky.lookup(call_id, via_branch, now, any_branch=op == "delete")
        if old is not None and old in tried:
            return None  # the call's node did not answer: no other node has its state
        node = old
        if node is None or node.spec.set_id != set_id:
            node = select_new_node(members, call_id, tried, self.config.hash_algo)
            if node is None:
                if self.config.aggressive_redetection:
                    self._redetect(members)
                return None
        if node.usable:
            return node
        if node.refused:
            return None
        allow = self.config.allow_op
        if allow and (node.permanent or allow == 1):
            return node
        return None

    async def _exchange(self, node: Node, cookie: bytes, data: bytes, tout: float,
                        sends: int, *, probe: bool = False) -> dict[str, Any]:
        """Send ``data`` to ``node`` up to ``sends`` times, ``tout`` apart, until its
        reply comes; the reply decoded. _NoReply / _SendFailed when it does not."""
        if len(self._matcher) >= self.config.max_pending:
            self.stats["pending_limit"] += 1
            raise TooManyPending(f"{len(self._matcher)} commands are waiting for rtpengine")
        ep = self._endpoints.get(node.spec.family)
        if ep is None:
            raise ClientClosed("the rtpengine client is not running")
        waiter = _Waiter(node, probe)
        self._matcher.expect(cookie, node.spec.address, waiter)
        first = trio.current_time()
        try:
            for attempt in range(sends):
                try:
                    await ep.send(data, node.spec.address)
                except OSError as exc:
                    self.stats["send_errors"] += 1
                    node.errors += 1
                    log.warning("rtpengine %s: send failed: %s", node.url, exc)
                    raise _SendFailed from None
                node.sent += 1
                self.stats["datagrams_sent"] += 1
                if attempt:
                    node.retransmissions += 1
                    self.stats["retransmissions"] += 1
                with trio.move_on_after(tout):
                    await waiter.event.wait()
                if waiter.data is not None:
                    break
                if waiter.closed:
                    raise ClientClosed("the rtpengine client stopped")
                if waiter.node_down:
                    self.stats["moved_on_node_down"] += 1
                    raise _NoReply(alive=False)
            else:
                node.timeouts += 1
                self.stats["timeouts"] += 1
                raise _NoReply(alive=node.last_reply_at > first)
        finally:
            self._matcher.forget(cookie)
        node.replies += 1
        try:
            _, reply = decode_reply_untrusted(waiter.data)
        except BadNgReply as exc:
            self.stats["bad_replies"] += 1
            log.warning("rtpengine %s: bad reply: %s", node.url, exc)
            raise
        return reply

    # -- node state ------------------------------------------------------------------

    def _disable(self, node: Node, why: str) -> None:
        if node.disabled:
            return
        node.disabled = True
        node.disabled_count += 1
        node.recheck_at = trio.current_time() + self.config.disable_tout
        self.stats["nodes_disabled"] += 1
        log.warning("rtpengine %s disabled for %g s: %s", node.url, self.config.disable_tout,
                    why)
        # commands in flight to it move on now instead of waiting out their own timeouts
        for w in self._matcher.tokens():
            if w.node is node and not w.probe and w.data is None:
                w.node_down = True
                w.event.set()
        self._wake.set()

    def _enable(self, node: Node) -> None:
        if node.disabled:
            node.disabled = False
            node.permanent = False
            self.stats["nodes_enabled"] += 1
            log.info("rtpengine %s answers ping again: enabled", node.url)

    def _redetect(self, members: Sequence[Node]) -> None:
        now = trio.current_time()
        for n in members:
            if n.disabled and not n.permanent and not n.refused:
                n.recheck_at = min(n.recheck_at, now)
        self._wake.set()

    async def _prober(self) -> None:
        """Re-probe disabled nodes when their time is up; ping every enabled node every
        ``ping_interval`` (and all of them at start with ``ping_mode`` 1)."""
        assert self._nursery is not None
        nursery = self._nursery
        interval = self.config.ping_interval
        if self.config.ping_mode:
            for n in self.nodes:
                if not n.refused and not n.permanent:
                    n.probing = True
                    nursery.start_soon(self._probe, n)
        next_round = trio.current_time() + interval if interval > 0 else math.inf
        while True:
            now = trio.current_time()
            if now >= next_round:
                next_round = now + interval
                for n in self.nodes:
                    if n.usable and not n.probing:
                        n.probing = True
                        nursery.start_soon(self._probe, n)
            deadline = next_round
            for n in self.nodes:
                if not (n.disabled and not n.permanent and not n.refused and not n.probing):
                    continue
                if n.recheck_at <= now:
                    n.probing = True
                    nursery.start_soon(self._probe, n)
                else:
                    deadline = min(deadline, n.recheck_at)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()

    async def _probe(self, node: Node) -> None:
        try:
            ok = await self._ping(node)
        finally:
            node.probing = False
        if ok:
            if not node.permanent:
                self._enable(node)
        elif node.disabled:
            node.recheck_at = trio.current_time() + self.config.disable_tout
        else:
            self._disable(node, "no pong")
        self._wake.set()

    async def _ping(self, node: Node) -> bool:
        """One ping exchange (full retransmissions); True on ``pong``. A node that
        answered something else meanwhile counts as alive."""
        self.stats["pings"] += 1
        cookie = new_cookie()
        data = encode_command(cookie, {"command": "ping"})
        try:
            reply = await self._exchange(node, cookie, data, self.config.tout_ms / 1000,
                                         self.config.retr, probe=True)
        except _NoReply as exc:
            if exc.alive:
                return True
            self.stats["pings_failed"] += 1
            return False
        except (_SendFailed, NgError):
            self.stats["pings_failed"] += 1
            return False
        ok = reply.get("result") == "pong"
        if not ok:
            self.stats["pings_failed"] += 1
        return ok

    # -- management (Kamailio RPC rtpengine.show / .ping / .enable) ------------------------

    def _matching(self, url: str) -> list[Node]:
        return [n for n in self.nodes if url == "all" or n.url == url]

    def show(self, url: str = "all") -> list[dict[str, object]]:
        now = trio.current_time()
        return [n.show(now) for n in self._matching(url)]

    async def ping(self, url: str = "all") -> bool:
        """Ping the matching nodes now: a failing node is disabled, an answering one
        enabled (unless disabled by hand). True if every one answered."""
        nodes = [n for n in self._matching(url) if not n.refused]
        if not nodes:
            raise LookupError(f"no rtpengine node {url!r}")
        results: dict[Node, bool] = {}

        async def one(n: Node) -> None:
            results[n] = await self._ping(n)

        async with trio.open_nursery() as nursery:
            for n in nodes:
                nursery.start_soon(one, n)
        for n, ok in results.items():
            if ok:
                if not n.permanent:
                    self._enable(n)
            elif not n.permanent:
                self._disable(n, "no pong")
        return all(results.values())

    async def enable(self, url: str, on: bool) -> str:
        """``rtpengine.enable URL 0|1``: 1 pings and enables ("enable", or "fail" when
        no pong: disabled for disable_tout); 0 disables for good ("disable")."""
        nodes = [n for n in self._matching(url) if not n.refused]
        if not nodes:
            raise LookupError(f"no rtpengine node {url!r}")
        status = "enable" if on else "disable"
        for n in nodes:
            if not on:
                self._disable(n, "disabled by hand")
                n.permanent = True
                continue
            if await self._ping(n):
                n.permanent = False
                self._enable(n)
            else:
                n.permanent = False
                self._disable(n, "enable asked, no pong")
                n.recheck_at = trio.current_time() + self.config.disable_tout
                status = "fail"
        self._wake.set()
        return status

    def statistics(self) -> dict[str, int]:
        """Counters (STAT_NAMES, ``requests_<command>``, ``replies_no_cookie``,
        ``replies_unknown_cookie`` for late or stray replies, ``replies_wrong_source``,
        ``replies_duplicate``)
        and gauges (pending, sticky_calls, nodes, nodes_active)."""
        out = dict.fromkeys(STAT_NAMES, 0)
        out.update(self.stats)
        for k in ("no_cookie", "unknown_cookie", "wrong_source"):
            out[f"replies_{k}"] = self._matcher.stats[k]
        out["pending"] = len(self._matcher)
        out["sticky_calls"] = len(self.sticky)
        out["sticky_evicted"] = self.sticky.evicted
        out["nodes"] = len(self.nodes)
        out["nodes_active"] = sum(1 for n in self.nodes if n.usable)
        return out

    def node_specs(self) -> list[NodeSpec]:
        return [n.spec for n in self.nodes]
