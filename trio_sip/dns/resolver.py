"""The server's DNS resolver: RFC 3263 plans (rfc3263.py) driven against the cache and
a backend, on Trio.

* :meth:`SipResolver.cached` runs a plan against the cache alone, synchronously: a
  name resolved recently costs no yield at all (``t_relay`` and ``forward`` go on at
  once); ``None`` when some answer is missing.
* :meth:`SipResolver.resolve` runs it against the network: each batch of questions
  the plan asks is sent concurrently (one task per question in a nursery of the
  caller, so it is cancelled with the transaction that waits for it), answers go
  into the cache.
* :meth:`SipResolver.lookup` is one question (``KSR.ipops.dns_query``, ``srv_query``).

A question already in flight is not asked again: a burst of calls to a name that just
left the cache sends one question, the others wait for its answer (each can still be
cancelled on its own; if the one that asked is cancelled, the next asks).

One resolver exists per server (``core.dns``); its cache and blocklist are shared by
every call. Lookups never block each other: a slow DNS server delays only the calls
waiting for that name.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import trio

from ..sip.uri import URI
from .backend import Backend, DnspythonBackend, parse_nameserver, system_nameservers
from .cache import Blocklist, DnsCache
from .rfc3263 import Answer, Plan, Query, Resolution, Target, locate

if TYPE_CHECKING:
    from ..config import DnsConfig

__all__ = ["SipResolver", "supported_transports"]

log = logging.getLogger("trio_sip.dns")


class _Miss(Exception):
    pass


class _Flight:
    """A question being asked: its answer once it comes (None if the asker was
    cancelled), and the event the other askers wait on."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.done = trio.Event()


class SipResolver:
    """RFC 3263 resolution with a TTL cache, a blocklist and a swappable backend."""

    def __init__(self, config: DnsConfig, *, backend: Backend | None = None,
                 loopback_only: bool = False, rng: random.Random | None = None) -> None:
        self.config = config
        if backend is None:
            if config.nameservers:
                servers = [parse_nameserver(s) for s in config.nameservers]
            elif loopback_only:
                # The system's resolver, even on loopback (127.0.0.53), forwards beyond
                # this machine: with the loopback guard on, only nameservers named in
                # dns.nameservers are asked (the backend says so at the first question).
                servers = []
            else:
                servers = system_nameservers()
            backend = DnspythonBackend(servers, timeout=config.timeout,
                                       attempts=config.attempts, loopback_only=loopback_only)
        #: what answers questions; tests swap in trio_sip.testing.dns.ScriptedDns
        self.backend: Backend = backend
        self.cache = DnsCache(config.cache_size, min_ttl=config.min_ttl,
                              max_ttl=config.max_ttl, negative_ttl=config.negative_ttl)
        self.blocklist = Blocklist(config.blocklist_size, config.blocklist_expire)
        self.rng = rng if rng is not None else random.Random()
        self.stats: Counter[str] = Counter()
        #: questions being asked now, shared by every call that needs them
        self._inflight: dict[Query, _Flight] = {}

    # -- plans ---------------------------------------------------------------------

    def plan(self, uri: URI, supported: Sequence[str]) -> Plan:
        host = uri.param("maddr") or uri.host
        c = self.config
        return locate(uri.scheme, host, uri.port, uri.transport, supported=supported,
                      prefer_ipv6=c.prefer_ipv6, ipv6=c.ipv6, rng=self.rng,
                      max_targets=c.max_targets)

    def cached(self, uri: URI, supported: Sequence[str]) -> Resolution | None:
        """The resolution from the cache alone, or None when an answer is missing."""
        now = trio.current_time()
        plan = self.plan(uri, supported)
        try:
            batch = next(plan)
            while True:
                answers: dict[Query, Answer] = {}
                for q in batch:
                    a = self.cache.get(q, now)
                    if a is None:
                        raise _Miss
                    answers[q] = a
                batch = plan.send(answers)
        except StopIteration as stop:
            self.stats["resolved_from_cache"] += 1
            res: Resolution = stop.value
            return res
        except _Miss:
            plan.close()
            return None

    async def resolve(self, uri: URI, supported: Sequence[str]) -> Resolution:
        """The resolution, asking the backend for what the cache does not hold."""
        plan = self.plan(uri, supported)
        self.stats["resolutions"] += 1
        try:
            batch = next(plan)
            while True:
                batch = plan.send(await self._answers(batch))
        except StopIteration as stop:
            res: Resolution = stop.value
            if not res.ok:
                self.stats["failures"] += 1
                log.info("dns: %s resolves to nothing (%s)", uri,
                         res.failure.value if res.failure else "no usable transport")
            return res
        finally:
            plan.close()

    async def lookup(self, q: Query) -> Answer:
        """One question, from the cache or the backend."""
        return (await self._answers([q]))[q]

    async def _answers(self, batch: list[Query]) -> dict[Query, Answer]:
        now = trio.current_time()
        out: dict[Query, Answer] = {}
        missing: list[Query] = []
        for q in batch:
            a = self.cache.get(q, now)
            if a is None:
                missing.append(q)
            else:
                out[q] = a
        if len(missing) == 1:
            out[missing[0]] = await self._ask(missing[0])
        elif missing:
            async with trio.open_nursery() as nursery:
                for q in missing:
                    nursery.start_soon(self._ask_into, q, out)
        return out

    async def _ask_into(self, q: Query, out: dict[Query, Answer]) -> None:
        out[q] = await self._ask(q)

    async def _ask(self, q: Query) -> Answer:
        """Ask the backend; a question already in flight (another call resolving the
        same name right now) is not asked twice: we wait for its answer. If the call
        that asked is cancelled first, we ask ourselves."""
        for _ in range(3):  # bounded: each round another asker was cancelled
            flight = self._inflight.get(q)
            if flight is None:
                break
            self.stats["coalesced"] += 1
            await flight.done.wait()
            if flight.answer is not None:
                return flight.answer
        flight = _Flight()
        self._inflight[q] = flight
        try:
            self.stats["queries"] += 1
            a = await self.backend.query(q)
            if a.failure is not None:
                self.stats[f"answers_{a.failure.value}"] += 1
            self.cache.put(q, a, trio.current_time())
            flight.answer = a
            return a
        finally:
            if self._inflight.get(q) is flight:
                del self._inflight[q]
            flight.done.set()

    # -- failover ---------------------------------------------------------------------

    def block(self, target: Target) -> None:
        """A target failed: skip it for ``blocklist_expire`` (when the blocklist is on)."""
        if self.config.use_blocklist:
            log.info("dns: %s (%s) blocklisted for %.0f s", target, target.name,
                     self.config.blocklist_expire)
            self.blocklist.add(target, trio.current_time())

    def blocked(self, target: Target) -> bool:
        return self.config.use_blocklist and self.blocklist.blocked(target, trio.current_time())

    def statistics(self) -> dict[str, int]:
        out = dict(self.stats)
        out.update({f"cache_{k}": v for k, v in self.cache.stats.items()})
        out["cache_entries"] = len(self.cache)
        out["blocklist_entries"] = len(self.blocklist)
        backend_stats = getattr(self.backend, "stats", None)
        if isinstance(backend_stats, Counter):
            out.update({f"backend_{k}": v for k, v in backend_stats.items()})
        return out


#: transports RFC 3263 may pick, in order of preference
_PREFERENCE = ("udp", "tcp", "tls")


def supported_transports(have: Iterable[str]) -> list[str]:
    """The transports we can send over, in RFC 3263 preference order."""
    got = {p.lower() for p in have}
    return [p for p in _PREFERENCE if p in got]
