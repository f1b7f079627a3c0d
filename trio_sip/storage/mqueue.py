"""Message queues (Kamailio ``mqueue``): named FIFO queues of (key, value) strings,
shared by every route, optionally kept in SQLite so queued items survive a restart.

Theory of operation
-------------------
A queue is a ``collections.deque`` of :class:`Item`, bounded by ``size`` (0: no bound).
All access happens on the Trio thread, so there are no locks: a route adds with
:meth:`MQueue.add` and a timer route drains with :meth:`MQueue.fetch`.

``addmode`` decides what an add does when an item with the same key is queued
(Kamailio ``mq_item_add``):

* 0: add anyway (duplicates allowed);
* 1: keep the oldest: the add is ignored (still a success);
* 2: keep the newest: the old item is removed and the new one goes to the tail.

When an add makes the queue longer than ``size``, the oldest item is dropped (and
counted in ``dropped``), as Kamailio does.

Persistence (``dbmode``), in one SQLite file shared by every queue, one table per
queue named like the queue, with Kamailio's columns ``id, key, val``:

* 0: memory only;
* 1: loaded at start, and every add, fetch and drop is written to the file as it
  happens (write-through, through storage/sqlite.py ``SqliteWriter``: ordered,
  group-committed, never blocking the event loop). Kamailio saves a dbmode 1 queue
  only at a clean shutdown; here a crash loses at most the last writer cycle;
* 2: loaded at start (the rows are then deleted, as Kamailio does), never saved;
* 3: written through as in 1, not loaded at start (Kamailio: saved at shutdown).

A fetched item is gone from the queue (and from the file): delivery is at most once.
A route that cannot process an item adds it again.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from .spec import SpecError, parse_attrs
from .sqlite import SqliteWriter, check_identifier

log = logging.getLogger("trio_sip.mqueue")

ADD_ALWAYS = 0
ADD_KEEP_OLDEST = 1
ADD_KEEP_NEWEST = 2


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One ``mqueue`` definition: ``"name=myq;size=20;addmode=0;dbmode=1"``."""

    name: str
    #: the most items kept (0: no bound); beyond it the oldest is dropped
    size: int = 0
    #: 0 add, 1 keep the oldest of a key, 2 keep the newest of a key
    addmode: int = ADD_ALWAYS
    #: 0 memory only, 1 load + write-through, 2 load only, 3 write-through only
    dbmode: int = 0

    @property
    def loads(self) -> bool:
        return self.dbmode in (1, 2)

    @property
    def saves(self) -> bool:
        return self.dbmode in (1, 3)

    def describe(self) -> str:
        return f"name={self.name};size={self.size};addmode={self.addmode};dbmode={self.dbmode}"


def parse_queue_spec(text: str) -> QueueSpec:
    """Parse Kamailio's ``attr=value;...`` definition (a trailing ``;`` is allowed;
    attribute names are case-insensitive)."""
    attrs = parse_attrs(text, ("name", "size", "addmode", "dbmode"), "mqueue")
    qname = attrs.get("name", "")
    if not qname:
        raise SpecError(f"mqueue {text!r}: no name (name=... is mandatory)")
    nums: dict[str, int] = {}
    for key in ("size", "addmode", "dbmode"):
        raw = attrs.get(key, "0")
        try:
            nums[key] = int(raw)
        except ValueError:
            raise SpecError(f"mqueue {text!r}: {key} must be an integer, not {raw!r}") from None
    if nums["size"] < 0:
        raise SpecError(f"mqueue {text!r}: size must be >= 0 (0: no bound)")
    if nums["addmode"] not in (0, 1, 2):
        raise SpecError(f"mqueue {text!r}: addmode must be 0 (add), 1 (keep oldest) or "
                        "2 (keep newest)")
    if nums["dbmode"] not in (0, 1, 2, 3):
        raise SpecError(f"mqueue {text!r}: dbmode must be 0 (memory), 1 (load and write "
                        "through), 2 (load only) or 3 (write through only)")
    if nums["dbmode"]:
        try:
            check_identifier(qname)
        except ValueError:
            raise SpecError(f"mqueue {text!r}: a queue with a dbmode is a table: its name "
                            "must be letters, digits and _ (at most 64)") from None
    return QueueSpec(qname, nums["size"], nums["addmode"], nums["dbmode"])


@dataclass(frozen=True, slots=True)
class Item:
    """One queued (key, value); ``id`` is its row in the file (increasing)."""

    id: int
    key: str
    value: str


class MQueue:
    """One queue. Every method is synchronous and runs on the Trio thread."""

    def __init__(self, spec: QueueSpec, writer: SqliteWriter | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self._items: deque[Item] = deque()
        self._next_id = 1
        self._writer = writer if spec.saves else None
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(tuple(self._items))

    def _load(self, rows: list[tuple[int, str, str]]) -> None:
        for rid, key, val in rows:
            self._append(Item(int(rid), str(key), str(val)), persist=False)
            self._next_id = max(self._next_id, int(rid) + 1)

    def add(self, key: str, value: str) -> None:
        """Queue (key, value) according to ``addmode``; drop the oldest beyond ``size``."""
        mode = self.spec.addmode
        if mode != ADD_ALWAYS:
            for old in self._items:
                if old.key == key:
                    if mode == ADD_KEEP_OLDEST:
                        self.stats["kept_oldest"] += 1
                        return
                    self._items.remove(old)
                    self._delete(old)
                    self.stats["replaced"] += 1
                    break
        item = Item(self._next_id, key, value)
        self._next_id += 1
        self._append(item, persist=True)
        self.stats["added"] += 1

    def _append(self, item: Item, *, persist: bool) -> None:
        self._items.append(item)
        if persist and self._writer is not None:
            self._writer.submit(
                f'INSERT OR REPLACE INTO "{self.name}" (id, "key", val) VALUES (?, ?, ?)',
                (item.id, item.key, item.value))
        if self.spec.size and len(self._items) > self.spec.size:
            dropped = self._items.popleft()
            self._delete(dropped)
            self.stats["dropped"] += 1

    def _delete(self, item: Item) -> None:
        if self._writer is not None:
            self._writer.submit(f'DELETE FROM "{self.name}" WHERE id = ?', (item.id,))

    def fetch(self) -> Item | None:
        """Take the oldest item, or None when the queue is empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        self._delete(item)
        self.stats["fetched"] += 1
        return item


class MQueues:
    """Every queue of the server, and the SQLite file of those with a ``dbmode``."""

    def __init__(self, specs: list[QueueSpec], db_path: str | None = None) -> None:
        self.specs = specs
        self.db_path = db_path if any(s.dbmode for s in specs) else None
        self.writer: SqliteWriter | None = None
        self.queues: dict[str, MQueue] = {}
        names: set[str] = set()
        for s in specs:
            if s.name in names:
                raise SpecError(f"mqueue {s.name} is defined twice")
            names.add(s.name)

    def open(self) -> None:
        """Open the file (if a queue needs one) and load the queues from it. An error
        opening or reading the file raises (OSError, sqlite3.Error)."""
        if self.db_path is not None:
            self.writer = SqliteWriter(self.db_path, name="mqueue")
        for spec in self.specs:
            q = MQueue(spec, self.writer)
            if self.writer is not None and spec.dbmode:
                self.writer.query(
                    f'CREATE TABLE IF NOT EXISTS "{spec.name}" (id INTEGER PRIMARY KEY '
                    "AUTOINCREMENT, \"key\" VARCHAR(64) NOT NULL DEFAULT '', val VARCHAR(4096) "
                    "NOT NULL DEFAULT '')")
                if spec.loads:
                    rows = self.writer.query(f'SELECT id, "key", val FROM "{spec.name}" '
                                             "ORDER BY id")
                    q._load([(r[0], r[1], r[2]) for r in rows])
                    if rows:
                        log.info("mqueue %s: %d item(s) loaded from %s", spec.name,
                                 len(rows), self.db_path)
                    if not spec.saves:  # dbmode 2: consumed from the file once loaded
                        self.writer.query(f'DELETE FROM "{spec.name}"')
                else:  # dbmode 3: a fresh queue each start, the file follows it
                    self.writer.query(f'DELETE FROM "{spec.name}"')
            self.queues[spec.name] = q

    def get(self, name: str) -> MQueue | None:
        return self.queues.get(name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer task of the file; cancel it to stop (what is queued is committed
        first). Without a file (no queue has a dbmode) it returns at once."""
        if self.writer is None:
            task_status.started()
            return
        await self.writer.run(task_status=task_status)

    async def flush(self) -> None:
        """Wait until every change so far is in the file."""
        if self.writer is not None:
            await self.writer.flush()

    def statistics(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in self.queues.values():
            out[f"{q.name}:size"] = len(q)
            for k, v in sorted(q.stats.items()):
                out[f"{q.name}:{k}"] = v
        if self.writer is not None:
            out.update(self.writer.stats)
        return out


__all__ = [
    "ADD_ALWAYS",
    "ADD_KEEP_NEWEST",
    "ADD_KEEP_OLDEST",
    "Item",
    "MQueue",
    "MQueues",
    "QueueSpec",
    "SpecError",
    "parse_queue_spec",
]

