"""The DNS answer cache and the destination blocklist, sans-IO (``now`` is passed in).

Both are bounded: past ``size`` entries the least recently used one goes (the cache)
or the one expiring first goes (the blocklist), and evictions are counted.

Cache rules (what Kamailio's dns cache and RFC 2308 do, within bounds):

* a positive answer is kept for its TTL, clamped to ``[min_ttl, max_ttl]``;
* NXDOMAIN and NODATA are kept for ``negative_ttl`` (RFC 2308 negative caching; the
  SOA minimum the server sent is used when it is smaller);
* SERVFAIL, timeouts and refusals are not cached: the next call asks again.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass

from .rfc3263 import Answer, DnsFailure, Query, Target

__all__ = ["Blocklist", "DnsCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    answer: Answer


class DnsCache:
    """A bounded TTL cache of :class:`Answer` by :class:`Query`."""

    def __init__(self, size: int, *, min_ttl: float = 0.0, max_ttl: float = 86400.0,
                 negative_ttl: float = 60.0) -> None:
        self.size = size
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._entries: OrderedDict[Query, _Entry] = OrderedDict()
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, q: Query, now: float) -> Answer | None:
        e = self._entries.get(q)
        if e is None:
            self.stats["misses"] += 1
            return None
        if e.expires <= now:
            del self._entries[q]
            self.stats["expired"] += 1
            self.stats["misses"] += 1
            return None
        self._entries.move_to_end(q)
        self.stats["hits"] += 1
        # what is left of the TTL, as a downstream cache would see it
        return Answer(e.answer.records, e.expires - now, e.answer.failure)

    def put(self, q: Query, answer: Answer, now: float) -> None:
        if answer.failure in (DnsFailure.NXDOMAIN, DnsFailure.NODATA):
            ttl = min(answer.ttl, self.negative_ttl) if answer.ttl > 0 else self.negative_ttl
        elif answer.failure is None and answer.records:
            ttl = min(max(answer.ttl, self.min_ttl), self.max_ttl)
        else:
            return  # SERVFAIL, timeouts: asked again next time
        if ttl <= 0 or self.size <= 0:
            return
        self._entries[q] = _Entry(now + ttl, answer)
        self._entries.move_to_end(q)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
            self.stats["evicted"] += 1

    def clear(self) -> None:
        self._entries.clear()

    def dump(self, now: float) -> list[dict[str, object]]:
        """Live entries, for the management interface."""
        out: list[dict[str, object]] = []
        for q, e in self._entries.items():
            if e.expires <= now:
                continue
            out.append({"name": q.name, "type": q.rdtype, "ttl": round(e.expires - now, 3),
                        "failure": e.answer.failure.value if e.answer.failure else None,
                        "records": [str(r) for r in e.answer.records]})
        return out


class Blocklist:
    """Destinations that failed (send error, no reply, 503), skipped until they expire
    (Kamailio ``dst_blocklist``: ``use_dst_blocklist``, ``dst_blocklist_expire``)."""

    def __init__(self, size: int, expire: float) -> None:
        self.size = size
        self.expire = expire
        self._until: dict[tuple[str, str, int], float] = {}
        self._heap: list[tuple[float, tuple[str, str, int]]] = []
        self.stats: Counter[str] = Counter()

    @staticmethod
    def _key(t: Target) -> tuple[str, str, int]:
        return (t.proto, t.host, t.port)

    def add(self, t: Target, now: float, expire: float | None = None) -> None:
        until = now + (self.expire if expire is None else expire)
        key = self._key(t)
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        self.stats["added"] += 1
        self._prune(now)
        while len(self._until) > self.size and self._heap:
            _, k = heapq.heappop(self._heap)
            if self._until.pop(k, None) is not None:
                self.stats["evicted"] += 1

    def blocked(self, t: Target, now: float) -> bool:
        until = self._until.get(self._key(t))
        if until is None:
            return False
        if until <= now:
            del self._until[self._key(t)]
            return False
        return True

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, k = heapq.heappop(heap)
            if self._until.get(k) == until:
                del self._until[k]
        if len(heap) > 4 * max(self.size, 16):  # stale duplicates of re-added keys
            self._heap = [(u, k) for k, u in self._until.items()]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._until)

    def dump(self, now: float) -> list[dict[str, object]]:
        self._prune(now)
        return [{"proto": k[0], "host": k[1], "port": k[2], "expires_in": round(u - now, 3)}
                for k, u in sorted(self._until.items(), key=lambda kv: kv[1])]
