"""Hash tables shared by every route (Kamailio ``htable``): definitions, items with
expiry, and their SQLite image.

A table is declared in the config with Kamailio's syntax::

    [modparams.htable]
    htable = ["a=>size=8;autoexpire=120;initval=0;updateexpire=1", "b=>size=4;dbtable=b"]

* ``size``: accepted for Kamailio configs (2^size buckets there); a Python dict here;
* ``autoexpire``: seconds an item lives after it was set (0: forever); with
  ``updateexpire=1`` (default) every update restarts that time, with 0 it does not;
* ``initval``: the integer a missing item reads as, and the start of sht_inc/sht_dec;
* ``dbtable``: the SQL table the items are loaded from at start; with ``dbmode=1`` (the
  default here; Kamailio's 0 writes back only at shutdown, if at all) every change is
  written to it too (queued, not awaited: see sqlite.py);
* ``dmqreplicate``, ``cols``, ``coldelim``, ``colnull``, ``reloadat``: not supported.

Expiry is exact: an item set with ``autoexpire=120`` at t reads as missing from t+120
(Kamailio compares whole seconds with ``<``, so there it lingers up to a second more).
Reads drop expired items; a sweep every ``timer_interval`` frees the rest.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio
import trio.lowlevel

from .spec import SpecError as SpecError  # re-exported: the modules catch it from here
from .sqlite import Clock, SqliteWriter, check_identifier

log = logging.getLogger("trio_sip.htable")

Value = int | str


@dataclass(frozen=True)
class TableSpec:
    name: str
    size: int = 4
    autoexpire: int = 0
    dbtable: str = ""
    dbmode: int = 1
    initval: int | None = None
    updateexpire: bool = True


_INT_KEYS = {"size", "autoexpire", "dbmode", "updateexpire", "dmqreplicate", "reloadat"}
_UNSUPPORTED = {"dmqreplicate", "cols", "coldelim", "colnull", "reloadat"}


def parse_table_spec(text: str) -> TableSpec:
    """``name=>size=8;autoexpire=120;...`` (Kamailio ht_table_spec)."""
    name, sep, rest = text.partition("=>")
    name = name.strip()
    if not sep or not name:
        raise SpecError(f"expected NAME=>param=value;... in {text!r}")
    if any(c.isspace() for c in name):
        raise SpecError(f"bad table name {name!r}")
    values: dict[str, Any] = {}
    for part in rest.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if key in _UNSUPPORTED:
            if key == "dmqreplicate" and value in ("", "0"):
                continue
            raise SpecError(f"htable {name}: {key} is not supported")
        if key in _INT_KEYS:
            if not value.lstrip("-").isdigit():
                raise SpecError(f"htable {name}: {key} must be an integer, not {value!r}")
            values[key] = int(value)
        elif key == "initval":
            if not value.lstrip("-").isdigit():
                raise SpecError(f"htable {name}: initval must be an integer, not {value!r}")
            values["initval"] = int(value)
        elif key == "dbtable":
            if value:
                try:
                    check_identifier(value)
                except ValueError as exc:
                    raise SpecError(f"htable {name}: {exc}") from None
            values["dbtable"] = value
        else:
            raise SpecError(f"htable {name}: unknown attribute {key!r} (known: size, "
                            "autoexpire, dbtable, dbmode, initval, updateexpire)")
    if values.get("autoexpire", 0) < 0:
        raise SpecError(f"htable {name}: autoexpire must be >= 0")
    if values.get("dbmode", 1) not in (0, 1):
        raise SpecError(f"htable {name}: dbmode must be 0 or 1")
    if "updateexpire" in values:
        values["updateexpire"] = bool(values["updateexpire"])
    return TableSpec(name, **values)


@dataclass(slots=True)
class Item:
    value: Value
    #: deadline on the clock (trio time); inf: never
    expires: float


class HashTable:
    """One table: items by name, with Kamailio's get/set/inc semantics."""

    def __init__(self, spec: TableSpec, clock: Clock,
                 on_change: Callable[[str, Item | None], None] | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.clock = clock
        self._items: dict[str, Item] = {}
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._items)

    def _changed(self, key: str, item: Item | None) -> None:
        if self._on_change is not None:
            self._on_change(key, item)

    def _default_expiry(self, now: float) -> float:
        return now + self.spec.autoexpire if self.spec.autoexpire > 0 else math.inf

    def _live(self, key: str, now: float) -> Item | None:
        item = self._items.get(key)
        if item is not None and item.expires <= now:
            del self._items[key]
            self._changed(key, None)
            return None
        return item

    # -- reads --------------------------------------------------------------------

    def get(self, key: str) -> Value | None:
        """The value, or ``initval``, or None."""
        item = self._live(key, self.clock.now())
        if item is None:
            return self.spec.initval
        return item.value

    def exists(self, key: str) -> bool:
        return self._live(key, self.clock.now()) is not None

    def expires_in(self, key: str) -> int:
        """Seconds until the item expires (0: never, or no such item)."""
        now = self.clock.now()
        item = self._live(key, now)
        if item is None or math.isinf(item.expires):
            return 0
        return max(0, math.ceil(item.expires - now))

    def items(self) -> Iterator[tuple[str, Item]]:
        """The live items (a snapshot: changing the table meanwhile is safe)."""
        now = self.clock.now()
        for key, item in list(self._items.items()):
            if item.expires > now:
                yield key, item

    # -- writes -------------------------------------------------------------------

    def set(self, key: str, value: Value, expire: int = 0) -> None:
        """Set a value; ``expire`` > 0 seconds overrides autoexpire/updateexpire (Kamailio
        ht_set_cell_ex)."""
        now = self.clock.now()
        old = self._live(key, now)
        if expire > 0:
            deadline = now + expire
        elif old is not None and not self.spec.updateexpire:
            deadline = old.expires
        else:
            deadline = self._default_expiry(now)
        item = Item(value, deadline)
        self._items[key] = item
        self._changed(key, item)

    def rm(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        self._changed(key, None)
        return True

    def add(self, key: str, delta: int) -> int | None:
        """Add to an integer item (created from ``initval`` if missing); the new value,
        or None if the item is a string or missing without initval."""
        now = self.clock.now()
        item = self._live(key, now)
        if item is None:
            if self.spec.initval is None:
                return None
            item = Item(self.spec.initval + delta, self._default_expiry(now))
            self._items[key] = item
        elif isinstance(item.value, str):
            return None
        else:
            item.value += delta
            if self.spec.updateexpire:
                item.expires = self._default_expiry(now)
        self._changed(key, item)
        return int(item.value)

    def set_expire(self, key: str, seconds: int) -> bool:
        """Expire the item ``seconds`` from now (0: never). False if there is none."""
        now = self.clock.now()
        item = self._live(key, now)
        if item is None:
            return False
        item.expires = now + seconds if seconds > 0 else math.inf
        self._changed(key, item)
        return True

    def reset(self) -> None:
        for key in list(self._items):
            self.rm(key)

    def rm_where(self, pred: Callable[[str, Item], bool]) -> int:
        gone = [k for k, it in self._items.items() if pred(k, it)]
        for k in gone:
            self.rm(k)
        return len(gone)

    def load(self, key: str, item: Item) -> None:
        """An item read from the file (no write back)."""
        self._items[key] = item

    # -- expiry -------------------------------------------------------------------

    def expire(self, keys: list[str], now: float) -> int:
        n = 0
        for k in keys:
            item = self._items.get(k)
            if item is not None and item.expires <= now:
                del self._items[k]
                self._changed(k, None)
                n += 1
        return n

    def keys(self) -> list[str]:
        return list(self._items)


# -- matching (sht_match_name, sht_rm_name, $shtcn ...) --------------------------------


def matcher(op: str, value: str) -> Callable[[str], bool] | None:
    """Kamailio's string operators: eq, ne, re (case-insensitive), sw, ew, in.
    None for an unknown operator or a bad regular expression."""
    if op == "eq":
        return lambda s: s == value
    if op == "ne":
        return lambda s: s != value
    if op == "sw":
        return lambda s: s.startswith(value)
    if op == "ew":
        return lambda s: s.endswith(value)
    if op == "in":
        return lambda s: value in s
    if op == "re":
        try:
            rx = re.compile(value, re.IGNORECASE)
        except re.error:
            return None
        return lambda s: rx.search(s) is not None
    return None


def count_matching(table: HashTable, expr: str, by_value: bool) -> int:
    """$shtcn / $shtcv: ``~~re``, ``~%`` ends with, ``%~`` starts with, ``==`` equal,
    ``eq`` integer value equal, ``**`` every item; anything else is a regexp."""
    prefix, rest = expr[:2], expr[2:]
    items = list(table.items())
    if prefix == "**":
        return len(items)
    if prefix == "eq":
        if not by_value or not rest.lstrip("-").isdigit():
            return 0
        n = int(rest)
        return sum(1 for _, it in items if isinstance(it.value, int) and it.value == n)
    ops = {"~~": "re", "~%": "ew", "%~": "sw", "==": "eq"}
    op, val = (ops[prefix], rest) if prefix in ops else ("re", expr)
    test = matcher(op, val)
    if test is None:
        return 0
    if by_value:
        return sum(1 for _, it in items if isinstance(it.value, str) and test(it.value))
    return sum(1 for k, _ in items if test(k))


# -- sht_lock / sht_unlock ----------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    owner: object
    event: trio.Event
    granted: bool = False


@dataclass(eq=False)
class _Lock:
    owner: object
    depth: int
    since: float
    waiters: deque[_Waiter]


class KeyLocks:
    """Per-key locks owned by a route (its message context), re-entrant for that route.

    In Kamailio sht_lock() locks the key's bucket for the worker process. Here every
    route runs on one event loop: statements between two waits are already atomic, so a
    lock only matters to a route that waits (KSR.async.sleep, an rtpengine command, a
    save() writing to disk...) while holding it. Such a route really holds the key:
    another route's sht_lock() on it waits (FIFO) until sht_unlock(). A route that ends
    or is abandoned without unlocking would block the key forever, so a lock is a lease:
    after ``max_hold`` seconds a waiter takes it over (logged).
    """

    def __init__(self, max_hold: float = 10.0) -> None:
        self.max_hold = max_hold
        self._locks: dict[tuple[str, str], _Lock] = {}
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._locks)

    def holder(self, key: tuple[str, str]) -> object | None:
        lk = self._locks.get(key)
        return lk.owner if lk is not None else None

    def try_acquire(self, key: tuple[str, str], owner: object) -> bool:
        """Take the lock if it is free, ours, or its lease is over; False if it is held."""
        now = Clock.now()
        lk = self._locks.get(key)
        if lk is None:
            self._locks[key] = _Lock(owner, 1, now, deque())
            return True
        if lk.owner is owner:
            lk.depth += 1
            return True
        if now >= lk.since + self.max_hold:
            log.warning("htable: lock %s=>%s held for more than %s s: taken over", key[0],
                        key[1], self.max_hold)
            self.stats["locks_taken_over"] += 1
            lk.owner, lk.depth, lk.since = owner, 1, now
            return True
        return False

    async def acquire(self, key: tuple[str, str], owner: object) -> None:
        """Wait for the lock (FIFO; at most until the holder's lease is over)."""
        while not self.try_acquire(key, owner):
            lk = self._locks[key]
            w = _Waiter(owner, trio.Event())
            lk.waiters.append(w)
            self.stats["lock_waits"] += 1
            try:
                with trio.move_on_at(lk.since + self.max_hold):
                    await w.event.wait()
            except BaseException:
                if w.granted:  # handed over just as we were cancelled: pass it on
                    self.release(key, owner)
                elif w in lk.waiters:
                    lk.waiters.remove(w)
                raise
            if w.granted:
                return
            if w in lk.waiters:
                lk.waiters.remove(w)

    def release(self, key: tuple[str, str], owner: object) -> bool:
        """Unlock (one level); False if ``owner`` does not hold it."""
        lk = self._locks.get(key)
        if lk is None or lk.owner is not owner:
            return False
        lk.depth -= 1
        if lk.depth > 0:
            return True
        if lk.waiters:
            w = lk.waiters.popleft()
            lk.owner, lk.depth, lk.since = w.owner, 1, Clock.now()
            w.granted = True
            w.event.set()
        else:
            del self._locks[key]
        return True


# -- the service ----------------------------------------------------------------------


class Htables:
    """Every table of a server, the SQLite image of those with a ``dbtable``, the sweep."""

    def __init__(self, specs: list[TableSpec], *, db_path: str | None = None,
                 clock: Clock | None = None, timer_interval: int = 20,
                 sweep_batch: int = 1000, lock_max_hold: float = 10.0) -> None:
        self.clock = clock if clock is not None else Clock()
        self.locks = KeyLocks(lock_max_hold)
        self.timer_interval = timer_interval
        self.sweep_batch = sweep_batch
        self.writer: SqliteWriter | None = None
        persisted = [s for s in specs if s.dbtable]
        if db_path is not None and persisted:
            self.writer = SqliteWriter(db_path, name="htable")
        self.tables: dict[str, HashTable] = {}
        for spec in specs:
            sink = None
            if self.writer is not None and spec.dbtable and spec.dbmode:
                sink = self._sink(spec)
            self.tables[spec.name] = HashTable(spec, self.clock, sink)
        self.stats: Counter[str] = Counter()

    def get(self, name: str) -> HashTable | None:
        return self.tables.get(name)

    # -- file ---------------------------------------------------------------------

    def _sink(self, spec: TableSpec) -> Callable[[str, Item | None], None]:
        table = spec.dbtable
        writer = self.writer
        assert writer is not None

        def write(key: str, item: Item | None) -> None:
            writer.submit(f'DELETE FROM "{table}" WHERE key_name = ?', (key,))
            if item is not None:
                vtype = 1 if isinstance(item.value, int) else 0
                writer.submit(
                    f'INSERT INTO "{table}" (key_name, key_type, value_type, key_value, '
                    "expires) VALUES (?, 0, ?, ?, ?)",
                    (key, vtype, str(item.value), self.clock.to_epoch(item.expires)))

        return write

    def open(self) -> None:
        """Create the SQL tables if needed and load the items (expired ones dropped)."""
        if self.writer is None:
            return
        epoch = self.clock.wall()
        for ht in self.tables.values():
            name = ht.spec.dbtable
            if not name:
                continue
            self.writer.query(
                f'CREATE TABLE IF NOT EXISTS "{name}" (id INTEGER PRIMARY KEY, '
                "key_name TEXT NOT NULL, key_type INTEGER NOT NULL DEFAULT 0, "
                "value_type INTEGER NOT NULL DEFAULT 0, key_value TEXT NOT NULL DEFAULT '', "
                "expires REAL NOT NULL DEFAULT 0)")
            self.writer.query(f'DELETE FROM "{name}" WHERE expires != 0 AND expires <= ?',
                              (epoch,))
            rows = self.writer.query(
                f'SELECT key_name, key_type, value_type, key_value, expires FROM "{name}" '
                "ORDER BY id")
            self._load_rows(ht, rows)

    def _load_rows(self, ht: HashTable, rows: list[tuple[Any, ...]]) -> None:
        arrays: Counter[str] = Counter()
        for key, ktype, vtype, value, expires in rows:
            try:
                v: Value = int(value) if int(vtype) == 1 else str(value)
            except (TypeError, ValueError):
                log.warning("htable %s: bad value for %r skipped", ht.name, key)
                continue
            deadline = self.clock.from_epoch(float(expires or 0))
            if not expires and ht.spec.autoexpire:
                deadline = self.clock.now() + ht.spec.autoexpire
            name = str(key)
            if int(ktype) == 1:  # Kamailio array key: name[0], name[1] ..., name::size
                idx = arrays[name]
                arrays[name] += 1
                ht.load(f"{name}[{idx}]", Item(v, deadline))
                ht.load(f"{name}::size", Item(arrays[name], math.inf))
            else:
                ht.load(name, Item(v, deadline))
            self.stats["loaded"] += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer of the file and the expiry sweep. Cancel to stop."""
        async with trio.open_nursery() as nursery:
            if self.writer is not None:
                await nursery.start(self.writer.run)
            nursery.start_soon(self._sweeper)
            task_status.started()

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.timer_interval)
            await self.sweep()

    async def sweep(self) -> int:
        removed = 0
        for ht in list(self.tables.values()):
            keys = ht.keys()
            for i in range(0, len(keys), self.sweep_batch):
                removed += ht.expire(keys[i:i + self.sweep_batch], self.clock.now())
                await trio.lowlevel.checkpoint()
        self.stats["expired"] += removed
        return removed

    async def flush(self) -> None:
        if self.writer is not None:
            await self.writer.flush()

    def close(self) -> None:
        if self.writer is not None and not self.writer.running:
            self.writer.flush_sync()
            self.writer.close()

    # -- the MI API (Kamailio htable.* RPC) -------------------------------------------

    def dump(self, name: str) -> list[dict[str, Any]] | None:
        """``htable.dump``: every live item, None for an unknown table."""
        ht = self.tables.get(name)
        if ht is None:
            return None
        return [{"name": k, "value": it.value,
                 "type": "int" if isinstance(it.value, int) else "str",
                 "expires": ht.expires_in(k)} for k, it in ht.items()]

    def list_tables(self) -> list[dict[str, Any]]:
        """``htable.listTables``."""
        return [{"name": s.name, "dbtable": s.dbtable, "dbmode": s.dbmode,
                 "expire": s.autoexpire, "updateexpire": int(s.updateexpire),
                 "size": 1 << max(3, min(s.size, 14)), "dmqreplicate": 0}
                for s in (ht.spec for ht in self.tables.values())]

    def statistics(self) -> list[dict[str, Any]]:
        """``htable.stats``: items per table."""
        return [{"name": n, "items": sum(1 for _ in ht.items())}
                for n, ht in self.tables.items()]

    def counters(self) -> dict[str, int]:
        """Flat counters for a statistics group: items, loaded, expired, lock waits,
        locks taken over, and the file's writes, commits, errors and drops."""
        out = {"items": sum(len(ht) for ht in self.tables.values())}
        out.update(self.stats)
        out.update(self.locks.stats)
        if self.writer is not None:
            out.update(self.writer.stats)
        return out
