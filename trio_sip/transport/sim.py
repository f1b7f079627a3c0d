"""An in-memory network in virtual time, for tests: loss, duplication, delay, reordering.

Theory of operation
-------------------
::

    async with SimNetwork(seed=7) as net:                 # owns a nursery
        a = net.transport(Address("10.0.0.1", 5060), handler_a)
        b = net.transport(Address("10.0.0.2", 5060), handler_b)
        net.set_default(LinkSpec(delay=(0.01, 0.05), loss=0.1))
        await a.send(b"OPTIONS ...", b.local)              # the fate is decided here

No sockets and no wall clock: every time is ``trio.current_time()``, so under
``trio.testing.MockClock(autojump_threshold=0)`` a test with seconds of
network delay runs in milliseconds and can assert exact arrival times.
Addresses are labels, not routes: ``10.0.0.1`` is as good as ``127.0.0.1``
because nothing leaves the process; a :class:`LoopbackGuard` is applied only
if one is given to :meth:`SimNetwork.transport`.

*  ``send()`` decides the fate of a message at once, from the link's
   :class:`LinkSpec` (the ``src -> dst`` spec if set, else the default):
   partition, then loss, then delay (+ reorder extra), then duplication with
   its own delay. Surviving copies go into one heap ordered by
   ``(arrival time, sequence)``.
*  One scheduler task waits in a cancel scope whose deadline is the heap's
   earliest arrival; ``send()`` moves that deadline earlier when needed. No
   task per packet, and copies due at the same instant arrive in send order,
   which per-packet ``sleep`` tasks would not guarantee (Trio shuffles tasks
   woken together).
*  On arrival the copy goes into the destination transport's bounded queue
   (full: lost, "queue-full"); one consumer task per transport calls its
   handler, one message at a time, like :class:`UdpTransport`. Handler
   exceptions are logged and counted and do not stop the consumer.
*  Randomness: every directed link has its own ``random.Random`` seeded from
   ``(seed, proto, src, dst)``. The fates on one link therefore depend only
   on the order of sends on that link, not on how Trio interleaves unrelated
   senders: same seed and same per-link traffic give the same trace. (One
   shared RNG would let two flows racing at the same virtual instant swap
   each other's fates.)
*  ``proto="tcp"`` transports get a reliable, ordered, lossless link with
   ``conn_id`` semantics: the delay applies, loss/duplication/reorder do not,
   and arrivals on a connection never overtake each other. Across a
   partition, a send fails (returns False) and the connection is dropped, as
   a real connection would be reset.
*  Every fate is appended to a bounded trace (:class:`TraceEntry`); the
   counters in :meth:`SimNetwork.statistics` are not bounded.

Partitions are checked when a message is sent; copies already in flight still
arrive. A partition may heal by itself (``partition(a, b, heal_after=30)``, a task of
the network removes it then) or be healed by hand (:meth:`SimNetwork.heal`, all or
one :class:`Partition`).

Delay distributions: ``LinkSpec.delay`` is a uniform range or any function of the
link's RNG; :func:`exponential_delay`, :func:`normal_delay` and
:func:`lognormal_delay` make the usual ones (bounded, so a test stays bounded). Sending to an address with no transport is a loss ("no-listener"),
decided on arrival, so a transport created while a message is in flight gets it.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import trio

from trio_sip.transport.base import Address, MessageHandler, TransportCounters, TransportStats
from trio_sip.transport.guard import LoopbackGuard

__all__ = [
    "LinkSpec",
    "Partition",
    "SimNetwork",
    "SimStats",
    "SimTransport",
    "TraceEntry",
    "exponential_delay",
    "lognormal_delay",
    "normal_delay",
]

logger = logging.getLogger("trio_sip.transport")

Fate = Literal["delivered", "duplicated", "lost"]
Proto = Literal["udp", "tcp"]
DelaySpec = tuple[float, float] | Callable[[random.Random], float]


def _check_range(name: str, value: tuple[float, float]) -> None:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"LinkSpec.{name} must satisfy 0 <= low <= high, got {value}")


def _bounded(name: str, draw: Callable[[random.Random], float], minimum: float,
             maximum: float) -> Callable[[random.Random], float]:
    if not 0.0 <= minimum <= maximum:
        raise ValueError(f"{name}: need 0 <= minimum <= maximum, got {minimum}, {maximum}")

    def delay(rng: random.Random) -> float:
        return min(max(draw(rng), minimum), maximum)

    delay.__qualname__ = delay.__name__ = name
    return delay


def exponential_delay(mean: float, *, minimum: float = 0.0,
                      maximum: float = math.inf) -> Callable[[random.Random], float]:
    """A delay of ``minimum`` plus an exponential part of mean ``mean`` (a queue's
    waiting time: mostly short, a long tail), capped at ``maximum``."""
    if not mean > 0:
        raise ValueError(f"exponential_delay: mean must be > 0, got {mean}")
    return _bounded(f"exponential_delay({mean})",
                    lambda rng: minimum + rng.expovariate(1.0 / mean), minimum, maximum)


def normal_delay(mean: float, stddev: float, *, minimum: float = 0.0,
                 maximum: float = math.inf) -> Callable[[random.Random], float]:
    """A normally distributed delay (jitter around ``mean``), clamped to
    ``[minimum, maximum]``."""
    if stddev < 0:
        raise ValueError(f"normal_delay: stddev must be >= 0, got {stddev}")
    return _bounded(f"normal_delay({mean}, {stddev})",
                    lambda rng: rng.gauss(mean, stddev), minimum, maximum)


def lognormal_delay(median: float, sigma: float, *, minimum: float = 0.0,
                    maximum: float = math.inf) -> Callable[[random.Random], float]:
    """A log-normal delay of median ``median`` (heavy-tailed, like real RTTs),
    clamped to ``[minimum, maximum]``."""
    if not median > 0 or sigma < 0:
        raise ValueError(f"lognormal_delay: need median > 0 and sigma >= 0, got "
                         f"{median}, {sigma}")
    return _bounded(f"lognormal_delay({median}, {sigma})",
                    lambda rng: rng.lognormvariate(math.log(median), sigma), minimum, maximum)


@dataclass(frozen=True, slots=True, eq=False)
class Partition:
    """A cut between two sets of addresses (both ways), from :meth:`SimNetwork.partition`."""

    side_a: frozenset[Address]
    side_b: frozenset[Address]
    #: when it was made, and when it heals by itself (inf: only by hand)
    since: float
    heals_at: float = math.inf

    def separates(self, a: Address, b: Address) -> bool:
        return (a in self.side_a and b in self.side_b) or (a in self.side_b and b in self.side_a)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """How one direction of a link treats messages. All probabilities are per message."""

    #: probability that a message is lost
    loss: float = 0.0
    #: probability that a delivered message arrives twice (the copy gets its own delay)
    duplicate: float = 0.0
    #: one-way delay in seconds: uniform in (low, high), or a function of the link's RNG
    delay: DelaySpec = (0.0, 0.0)
    #: probability that a message gets an extra delay drawn from ``reorder_delay``,
    #: which lets later messages overtake it
    reorder: float = 0.0
    #: the extra delay range for reordered messages
    reorder_delay: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"LinkSpec.{name} must be a probability in [0, 1], got {p}")
        if not callable(self.delay):
            _check_range("delay", self.delay)
        _check_range("reorder_delay", self.reorder_delay)

    def sample_delay(self, rng: random.Random) -> float:
        """One draw of the one-way delay (without the reorder extra)."""
        if callable(self.delay):
            value = float(self.delay(rng))
            if not value >= 0.0:  # also catches NaN
                raise ValueError(f"LinkSpec.delay function returned {value}")
            return value
        low, high = self.delay
        return low if low == high else rng.uniform(low, high)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """What happened to one copy of one message."""

    #: when the fate was sealed: the arrival for delivered/duplicated, the send
    #: (or, for "no-listener" and "queue-full", the would-be arrival) for lost
    time: float
    sent_at: float
    src: Address
    dst: Address
    proto: str
    data: bytes
    fate: Fate
    #: why it was lost: "loss", "partition", "no-listener", "queue-full",
    #: "reset" (tcp: the connection was dropped while the message was in flight)
    reason: str = ""
    conn_id: int | None = None


@dataclass(frozen=True, slots=True)
class SimStats:
    """Network-wide counters (the trace is bounded, these are not)."""

    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0


@dataclass(frozen=True, slots=True)
class _Packet:
    sent_at: float
    src: Address
    dst: Address
    proto: Proto
    data: bytes
    fate: Fate
    conn_id: int | None


_Inbound = tuple[bytes, Address, int | None]


class SimTransport:
    """One endpoint on a :class:`SimNetwork`; implements the Transport protocol."""

    def __init__(
        self,
        net: SimNetwork,
        local: Address,
        handler: MessageHandler,
        proto: Proto,
        guard: LoopbackGuard | None,
        queue_size: int,
        max_message_size: int,
    ) -> None:
        self.proto: str = proto
        self.local = local
        self.reliable = proto == "tcp"
        self._net = net
        self._handler = handler
        self._guard = guard
        self._max_message_size = max_message_size
        self._counters = TransportCounters()
        self._inbox, self._queue = trio.open_memory_channel[_Inbound](queue_size)
        self.closed = False

    def statistics(self) -> TransportStats:
        return self._counters.snapshot(open_connections=self._net._open_connections(self))

    def close(self) -> None:
        """Leave the network (a node going down): later arrivals are lost "no-listener"."""
        if not self.closed:
            self.closed = True
            self._net._unbind(self)
            self._inbox.close()

    async def send(self, data: bytes, dest: Address, *, conn_id: int | None = None) -> bool:
        """Hand one message to the network; False when refused, too large or (tcp) unreachable."""
        await trio.lowlevel.checkpoint()
        if self._guard is not None and not self._guard.allows(dest):
            self._counters.refused_by_guard += 1
            return False
        if self.closed or len(data) > self._max_message_size:
            self._counters.send_errors += 1
            return False
        ok = self._net._send(self, data, dest, conn_id)
        if ok:
            self._counters.sent += 1
        return ok

    def _accept(self, data: bytes, src: Address, conn_id: int | None) -> bool:
        """Arrival from the scheduler; False when the queue is full."""
        try:
            self._inbox.send_nowait((data, src, conn_id))
        except trio.WouldBlock:
            self._counters.dropped_queue_full += 1
            return False
        self._counters.received += 1
        return True

    async def _consume(self) -> None:
        async for data, src, conn_id in self._queue:
            if self.closed:
                continue
            try:
                await self._handler(data, src, self, conn_id)
            except Exception:
                self._counters.handler_errors += 1
                logger.exception(
                    "sim %s %s: handler failed on a message from %s", self.proto, self.local, src
                )


class SimNetwork:
    """The network: transports, link specs, partitions, the delivery schedule and the trace.

    Use it as ``async with SimNetwork(seed) as net:`` (leaving the block drops
    whatever is still in flight and stops the handlers), or start it in a
    nursery with ``net = await nursery.start(SimNetwork(seed).run)``.
    Transports are created with :meth:`transport` while it runs.
    """

    def __init__(
        self, seed: int = 0, *, default: LinkSpec | None = None, trace_size: int = 10_000
    ) -> None:
        self.seed = seed
        self._default = default if default is not None else LinkSpec()
        self._links: dict[tuple[Address, Address], LinkSpec] = {}
        self._rngs: dict[tuple[str, Address, Address], random.Random] = {}
        self._partitions: list[Partition] = []
        self._transports: dict[tuple[str, Address], SimTransport] = {}
        self._heap: list[tuple[float, int, _Packet]] = []
        self._seq = 0
        self._wakeup: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        #: every fate, oldest first, at most ``trace_size`` entries
        self.trace: deque[TraceEntry] = deque(maxlen=trace_size)
        self._stats = {"sent": 0, "delivered": 0, "duplicated": 0, "lost": 0}
        # tcp: conn_id -> (opener, acceptor); (low, high) endpoint pair -> conn_id
        self._conns: dict[int, tuple[Address, Address]] = {}
        self._conn_by_pair: dict[frozenset[Address], int] = {}
        self._next_conn_id = 1
        self._last_arrival: dict[int, float] = {}

    # -- lifetime -----------------------------------------------------------

    async def __aenter__(self) -> SimNetwork:
        if self._nursery_cm is not None:
            raise RuntimeError("SimNetwork is already running")
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._scheduler)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._nursery_cm is not None
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            self._nursery = None
            self._nursery_cm = None
            self._heap.clear()
            for t in list(self._transports.values()):
                t.close()

    async def run(
        self, *, task_status: trio.TaskStatus[SimNetwork] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve-style form: run until cancelled."""
        async with self:
            task_status.started(self)
            await trio.sleep_forever()

    # -- configuration ------------------------------------------------------

    def transport(
        self,
        local: Address,
        handler: MessageHandler,
        *,
        proto: Proto = "udp",
        guard: LoopbackGuard | None = None,
        queue_size: int = 1024,
        max_message_size: int = 65535,
    ) -> SimTransport:
        """Bind a transport at ``local``; one per (proto, address)."""
        if self._nursery is None:
            raise RuntimeError("create transports inside `async with SimNetwork(...)`")
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be 'udp' or 'tcp', got {proto!r}")
        key = (proto, local)
        if key in self._transports:
            raise ValueError(f"{proto} {local} is already bound")
        t = SimTransport(self, local, handler, proto, guard, queue_size, max_message_size)
        self._transports[key] = t
        self._nursery.start_soon(t._consume)
        return t

    def set_default(self, spec: LinkSpec) -> None:
        """The spec of every link without its own."""
        self._default = spec

    def set_link(
        self, src: Address, dst: Address, spec: LinkSpec, *, both_ways: bool = False
    ) -> None:
        """The spec of messages from ``src`` to ``dst`` (and back, with ``both_ways``)."""
        self._links[(src, dst)] = spec
        if both_ways:
            self._links[(dst, src)] = spec

    def link(self, src: Address, dst: Address) -> LinkSpec:
        """The spec in force from ``src`` to ``dst``."""
        return self._links.get((src, dst), self._default)

    def partition(
        self,
        side_a: Iterable[Address],
        side_b: Iterable[Address],
        *,
        heal_after: float | None = None,
    ) -> Partition:
        """Cut every path between an address of ``side_a`` and one of ``side_b`` (both ways).

        Partitions add up until healed: by :meth:`heal`, or by themselves
        ``heal_after`` seconds from now (a task of the network removes it then; a
        message sent at that very instant already passes).
        """
        if heal_after is not None and not heal_after >= 0:
            raise ValueError(f"heal_after must be >= 0, got {heal_after}")
        try:
            now = trio.current_time()
        except RuntimeError:  # configured before trio.run: only by-hand healing makes sense
            if heal_after is not None:
                raise
            now = 0.0
        heals_at = math.inf if heal_after is None else now + heal_after
        p = Partition(frozenset(side_a), frozenset(side_b), now, heals_at)
        self._partitions.append(p)
        if heal_after is not None:
            if self._nursery is None:
                raise RuntimeError("a partition that heals needs the network running")
            self._nursery.start_soon(self._heal_at, p)
        return p

    async def _heal_at(self, p: Partition) -> None:
        await trio.sleep_until(p.heals_at)
        self.heal(p)

    def heal(self, partition: Partition | None = None) -> None:
        """Remove ``partition``, or every partition."""
        if partition is None:
            self._partitions.clear()
        elif partition in self._partitions:
            self._partitions.remove(partition)

    @property
    def partitions(self) -> list[Partition]:
        """The partitions in force."""
        now = self._now()
        return [p for p in self._partitions if now < p.heals_at]

    def partitioned(self, a: Address, b: Address) -> bool:
        """Whether a partition in force separates ``a`` and ``b`` (one that heals at this
        very instant no longer does, whichever task runs first)."""
        if not self._partitions:
            return False
        now = self._now()
        return any(p.separates(a, b) and now < p.heals_at for p in self._partitions)

    @staticmethod
    def _now() -> float:
        try:
            return trio.current_time()
        except RuntimeError:
            return -math.inf

    def statistics(self) -> SimStats:
        return SimStats(**self._stats)

    def entries(
        self, *, src: Address | None = None, dst: Address | None = None, fate: Fate | None = None
    ) -> list[TraceEntry]:
        """The trace filtered by source, destination and fate."""
        return [
            e
            for e in self.trace
            if (src is None or e.src == src)
            and (dst is None or e.dst == dst)
            and (fate is None or e.fate == fate)
        ]

    # -- sending ------------------------------------------------------------

    def _rng(self, proto: str, src: Address, dst: Address) -> random.Random:
        key = (proto, src, dst)
        rng = self._rngs.get(key)
        if rng is None:
            # str seeds are hashed with SHA-512: stable across runs and PYTHONHASHSEED.
            rng = self._rngs[key] = random.Random(f"{self.seed}|{proto}|{src}|{dst}")
        return rng

    def _send(self, sender: SimTransport, data: bytes, dest: Address, conn_id: int | None) -> bool:
        now = trio.current_time()
        src = sender.local
        self._stats["sent"] += 1
        if sender.proto == "tcp":
            return self._send_stream(sender, data, dest, conn_id, now)
        if self.partitioned(src, dest):
            self._lost(now, now, src, dest, "udp", data, "partition", None)
            return True  # a datagram into a partition leaves without error
        spec = self.link(src, dest)
        rng = self._rng("udp", src, dest)
        if spec.loss and rng.random() < spec.loss:
            self._lost(now, now, src, dest, "udp", data, "loss", None)
            return True
        self._schedule(
            now + self._delay(spec, rng), _Packet(now, src, dest, "udp", data, "delivered", None)
        )
        if spec.duplicate and rng.random() < spec.duplicate:
            self._schedule(
                now + self._delay(spec, rng),
                _Packet(now, src, dest, "udp", data, "duplicated", None),
            )
        return True

    @staticmethod
    def _delay(spec: LinkSpec, rng: random.Random) -> float:
        delay = spec.sample_delay(rng)
        if spec.reorder and rng.random() < spec.reorder:
            delay += rng.uniform(*spec.reorder_delay)
        return delay

    def _send_stream(
        self, sender: SimTransport, data: bytes, dest: Address, conn_id: int | None, now: float
    ) -> bool:
        src = sender.local
        ends = self._conns.get(conn_id) if conn_id is not None else None
        if ends is not None and src in ends:
            dest = ends[1] if ends[0] == src else ends[0]
        else:
            conn_id = self._conn_by_pair.get(frozenset((src, dest)))
        if self.partitioned(src, dest):
            if conn_id is not None:  # the connection breaks, as a reset would
                self._drop_connection(conn_id)
            self._lost(now, now, src, dest, "tcp", data, "partition", conn_id)
            sender._counters.send_errors += 1
            return False
        if conn_id is None or conn_id not in self._conns:
            acceptor = self._transports.get(("tcp", dest))
            if acceptor is None:  # connection refused
                self._lost(now, now, src, dest, "tcp", data, "no-listener", None)
                sender._counters.connect_errors += 1
                return False
            conn_id = self._next_conn_id
            self._next_conn_id += 1
            self._conns[conn_id] = (src, dest)
            self._conn_by_pair[frozenset((src, dest))] = conn_id
            sender._counters.connected_out += 1
            acceptor._counters.accepted += 1
        spec = self.link(src, dest)
        # FIFO per connection: an arrival never precedes the previous one.
        arrival = max(
            now + spec.sample_delay(self._rng("tcp", src, dest)),
            self._last_arrival.get(conn_id, -math.inf),
        )
        self._last_arrival[conn_id] = arrival
        self._schedule(arrival, _Packet(now, src, dest, "tcp", data, "delivered", conn_id))
        return True

    def _drop_connection(self, conn_id: int) -> None:
        ends = self._conns.pop(conn_id, None)
        if ends is not None:
            self._conn_by_pair.pop(frozenset(ends), None)
        self._last_arrival.pop(conn_id, None)

    def _open_connections(self, t: SimTransport) -> int:
        if t.proto != "tcp":
            return 0
        return sum(1 for ends in self._conns.values() if t.local in ends)

    def _unbind(self, t: SimTransport) -> None:
        if self._transports.get((t.proto, t.local)) is t:
            del self._transports[(t.proto, t.local)]
        if t.proto == "tcp":
            for conn_id, ends in list(self._conns.items()):
                if t.local in ends:
                    self._drop_connection(conn_id)

    def _lost(
        self,
        time: float,
        sent_at: float,
        src: Address,
        dst: Address,
        proto: str,
        data: bytes,
        reason: str,
        conn_id: int | None,
    ) -> None:
        self._stats["lost"] += 1
        self.trace.append(TraceEntry(time, sent_at, src, dst, proto, data, "lost", reason, conn_id))

    # -- delivering ---------------------------------------------------------

    def _schedule(self, arrival: float, packet: _Packet) -> None:
        heapq.heappush(self._heap, (arrival, self._seq, packet))
        self._seq += 1
        if self._wakeup is not None and arrival < self._wakeup.deadline:
            self._wakeup.deadline = arrival

    async def _scheduler(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as scope:
                self._wakeup = scope
                await trio.sleep_forever()
            self._wakeup = None
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                arrival, _, packet = heapq.heappop(self._heap)
                self._arrive(arrival, packet)

    def _arrive(self, arrival: float, p: _Packet) -> None:
        target = self._transports.get((p.proto, p.dst))
        if target is None:
            self._lost(arrival, p.sent_at, p.src, p.dst, p.proto, p.data, "no-listener", p.conn_id)
            return
        if p.proto == "tcp" and (p.conn_id is None or p.conn_id not in self._conns):
            self._lost(arrival, p.sent_at, p.src, p.dst, p.proto, p.data, "reset", p.conn_id)
            return
        if not target._accept(p.data, p.src, p.conn_id):
            self._lost(arrival, p.sent_at, p.src, p.dst, p.proto, p.data, "queue-full", p.conn_id)
            return
        self._stats[p.fate] += 1
        self.trace.append(
            TraceEntry(arrival, p.sent_at, p.src, p.dst, p.proto, p.data, p.fate, "", p.conn_id)
        )
