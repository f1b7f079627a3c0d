"""rtpengine nodes and sets, node selection and per-call stickiness (sans-IO).

Kamailio's ``rtpengine_sock`` syntax (rtpengine README §5.1)::

    "udp:127.0.0.1:2223"                                  one node, set 0
    "udp:127.0.0.1:2223=2 udp:127.0.0.1:2224=1"           weights 2 and 1, set 0
    "1 == udp:127.0.0.1:2225 udp6:[::1]:2226"             set 1

Several strings (a TOML array, or Kamailio's repeated modparam lines) add up; nodes
of the same set id accumulate in order. Only ``udp:`` and ``udp6:`` with IP literals
(or ``localhost``) are accepted here: no DNS, no ``unix:``/``ws:`` nodes.

Selection follows ``select_rtpp_node()`` of Kamailio's rtpengine.c:

1. a call already handled (by call-id and via-branch) goes to the same node, unless
   that node is not in the active set (then a new one is chosen), or was already
   tried by this request, or is disabled (then the request fails at once; with
   ``rtpengine_allow_op`` 1 a disabled node is used anyway, with 2 only a manually
   disabled one);
2. otherwise the call-id is hashed (``hash_algo`` 0: byte sum & 0xff, 1: SHA-1, 2:
   CRC32) and mapped onto the cumulated weights of the enabled nodes not tried yet.

Times are plain floats given by the caller (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..transport.base import Address

__all__ = [
    "Node",
    "NodeSpec",
    "SockError",
    "StickyTable",
    "call_hash",
    "parse_rtpengine_sock",
    "select_new_node",
]


class SockError(ValueError):
    """An ``rtpengine_sock`` value that cannot be used; says which word and why."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One configured rtpengine: its URL as written (without the weight), address,
    weight and set."""

    url: str
    address: Address
    weight: int = 1
    set_id: int = 0

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.address.host).version


@dataclass(eq=False)
class Node:
    """A node's run-time state (one per NodeSpec; shared by every request)."""

    spec: NodeSpec
    index: int
    disabled: bool = False
    #: disabled by hand (MI rtpengine.enable 0): never re-probed
    permanent: bool = False
    #: refused by the loopback guard: never used
    refused: bool = False
    #: when a disabled node may be probed again (seconds, the caller's clock)
    recheck_at: float = 0.0
    #: a background ping is in flight
    probing: bool = False
    #: the last time any reply came from this node
    last_reply_at: float = float("-inf")
    sent: int = 0
    retransmissions: int = 0
    replies: int = 0
    timeouts: int = 0
    errors: int = 0
    disabled_count: int = 0

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def usable(self) -> bool:
        return not self.disabled and not self.refused

    def show(self, now: float) -> dict[str, object]:
        """Kamailio's ``rtpengine.show`` fields, plus counters."""
        if self.permanent:
            recheck = -1
        elif self.disabled:
            recheck = max(0, round(self.recheck_at - now))
        else:
            recheck = 0
        return {
            "url": self.spec.url, "set": self.spec.set_id, "index": self.index,
            "weight": self.spec.weight, "disabled": self.permanent or self.refused,
            "active": self.usable, "recheck_ticks": recheck, "refused_by_guard": self.refused,
            "sent": self.sent, "retransmissions": self.retransmissions,
            "replies": self.replies, "timeouts": self.timeouts, "errors": self.errors,
        }


def _parse_address(url: str, family: str, rest: str) -> Address:
    """``host:port`` (``[v6]:port`` or bare v6 with the port after the last colon)."""
    if rest.startswith("["):
        host, sep, port_s = rest[1:].partition("]:")
        if not sep:
            raise SockError(f"{url!r}: expected [ADDRESS]:PORT")
    else:
        host, sep, port_s = rest.rpartition(":")
        if not sep:
            raise SockError(f"{url!r}: expected HOST:PORT")
    if host == "localhost":
        host = "::1" if family == "udp6" else "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise SockError(f"{url!r}: {host!r} is not an IP address (host names are not "
                        "resolved)") from None
    if (family == "udp6") != (ip.version == 6):
        raise SockError(f"{url!r}: {family} needs an IPv{6 if family == 'udp6' else 4} address")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise SockError(f"{url!r}: bad port {port_s!r}")
    return Address(str(ip), int(port_s))


def _parse_node(word: str, set_id: int) -> NodeSpec:
    url, eq, weight_s = word.partition("=")
    weight = 1
    if eq:
        if not weight_s.isdigit() or int(weight_s) < 1:
            raise SockError(f"{word!r}: the weight after '=' is a positive integer")
        weight = int(weight_s)
    scheme, colon, rest = url.partition(":")
    if not colon:
        raise SockError(f"{word!r}: expected udp:HOST:PORT or udp6:HOST:PORT")
    scheme = scheme.lower()
    if scheme not in ("udp", "udp6"):
        raise SockError(f"{word!r}: only udp: and udp6: nodes are supported")
    return NodeSpec(url, _parse_address(url, scheme, rest), weight, set_id)


def parse_rtpengine_sock(values: str | Iterable[str]) -> dict[int, list[NodeSpec]]:
    """Node sets from one or more ``rtpengine_sock`` strings, in order of appearance."""
    if isinstance(values, str):
        values = [values]
    sets: dict[int, list[NodeSpec]] = {}
    for value in values:
        if not isinstance(value, str):
            raise SockError(f"{value!r}: expected a string")
        set_id = 0
        text = value.strip()
        if "==" in text:
            head, _, text = text.partition("==")
            head = head.strip()
            if not head.isdigit():
                raise SockError(f"{value!r}: the set id before '==' is a number")
            set_id = int(head)
        words = text.split()
        if not words:
            raise SockError(f"{value!r}: no node")
        for word in words:
            spec = _parse_node(word, set_id)
            nodes = sets.setdefault(set_id, [])
            if any(n.url == spec.url for n in nodes):
                raise SockError(f"{value!r}: {spec.url} appears twice in set {set_id}")
            nodes.append(spec)
    return sets


def call_hash(call_id: str, algo: int) -> int:
    """The number Kamailio maps onto the weights (``select_rtpp_node_new``)."""
    data = call_id.encode("latin-1", "replace")
    if algo == 0:
        return sum(data) & 0xFF
    if algo == 1:
        return sum(hashlib.sha1(data).hexdigest().encode("ascii"))
    if algo == 2:
        return zlib.crc32(data)
    raise ValueError(f"unknown hash_algo {algo} (0: byte sum, 1: SHA-1, 2: CRC32)")


def select_new_node(nodes: Sequence[Node], call_id: str, tried: Iterable[Node],
                    algo: int = 0) -> Node | None:
    """The weighted choice among usable nodes not tried yet; None when there is none."""
    tried_set = set(tried)
    candidates = [n for n in nodes if n.usable and n not in tried_set]
    total = sum(n.spec.weight for n in candidates)
    if total == 0:
        return None
    cut = call_hash(call_id, algo) % total
    for n in candidates:
        if cut < n.spec.weight:
            return n
        cut -= n.spec.weight
    return None  # pragma: no cover - cut < total


@dataclass
class _Entry:
    node: Node
    expires: float


@dataclass
class StickyTable:
    """call-id (+ via-branch) -> node, for ``hash_table_tout`` seconds after the first
    success (Kamailio's hash table; the expiry is not renewed by later commands), at
    most ``max_entries`` (the oldest insertion goes first; Kamailio's is unbounded).

    A delete with an empty via-branch matches (and removes) every entry of the call.
    Every operation is O(1) amortised: entries are kept in insertion order, which is
    expiry order since all share one timeout, and indexed by call-id.
    """

    timeout: float = 3600.0
    max_entries: int = 100_000
    _entries: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict)
    _by_call: dict[str, set[str]] = field(default_factory=dict)
    evicted: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: tuple[str, str]) -> None:
        del self._entries[key]
        branches = self._by_call.get(key[0])
        if branches is not None:
            branches.discard(key[1])
            if not branches:
                del self._by_call[key[0]]

    def _purge(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self._drop(key)

    def lookup(self, call_id: str, via_branch: str, now: float, *,
               any_branch: bool = False) -> Node | None:
        self._purge(now)
        entry = self._entries.get((call_id, via_branch))
        if entry is not None:
            return entry.node
        if any_branch and not via_branch:
            for vb in self._by_call.get(call_id, ()):
                return self._entries[(call_id, vb)].node
        return None

    def insert(self, call_id: str, via_branch: str, node: Node, now: float) -> None:
        """Remember the node of a call. An existing entry for another node (its node left
        the active set) is replaced; one for the same node keeps its expiry."""
        self._purge(now)
        key = (call_id, via_branch)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.node is node:
                return
            self._drop(key)
        while len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self._entries[key] = _Entry(node, now + self.timeout)
        self._by_call.setdefault(call_id, set()).add(via_branch)

    def remove(self, call_id: str, via_branch: str, now: float) -> int:
        """Forget a call (after a delete); an empty via-branch forgets all its branches."""
        self._purge(now)
        if via_branch:
            if (call_id, via_branch) in self._entries:
                self._drop((call_id, via_branch))
                return 1
            return 0
        keys = [(call_id, vb) for vb in self._by_call.get(call_id, ())]
        for k in keys:
            self._drop(k)
        return len(keys)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._entries)
