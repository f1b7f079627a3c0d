"""SQLite as the embedded default store (registrations, htables).

Theory of operation
-------------------
The in-memory tables (usrloc domains, htables) are authoritative while the server
runs; SQLite holds a copy so they survive a restart. Reads happen once, at start
(:meth:`SqliteWriter.query`, before the writer task runs); every later change is an
SQL statement queued with :meth:`SqliteWriter.submit`.

Why one writer task with a queue, not ``trio.to_thread.run_sync`` per write:

* **order**: two REGISTERs for one AoR in a row must reach the file in that order;
  a single task draining a FIFO guarantees it without locks (CONVENTIONS.md 6: a task
  owns its state; here the connection);
* **group commit**: under load, every statement queued while a commit runs goes into
  the next transaction, so 1000 REGISTERs/s cost a few commits/s, not 1000;
* **the event loop never blocks**: each commit runs in a worker thread
  (``trio.to_thread.run_sync``, not abandoned on cancel, so a commit is never torn);
  the loop only appends to a list;
* **waiting is opt-in**: :meth:`flush` waits until everything queued so far is
  committed. The registrar awaits it before answering a REGISTER (write-through);
  htable writes do not wait (a route must not stall on a counter), they are committed
  within one writer cycle.

::

    route / MI                     writer task                     worker thread
    ──────────                     ───────────                     ─────────────
    submit(sql) ─▶ _pending ──────▶ batch = _pending ─────────────▶ BEGIN; ...; COMMIT
    await flush() ◀── _committed ◀─ _committed = seq ◀───────────── (returns)

Before the task runs (first use, or a test without a server) and after it stopped,
:meth:`flush` commits in the calling thread (:meth:`flush_sync`); a cancelled writer
commits what is left the same way before closing the file.

Durability: WAL journal, ``synchronous=NORMAL``: a commit survives a crash of the
process; an OS crash or power loss may lose the last commits. A failed commit
(disk full, read-only file) is logged and counted (``db_errors``); the in-memory
state stays, as Kamailio's usrloc does in write-through mode.

Bounded: at most ``max_pending`` statements wait; more are dropped and counted
(``db_dropped``), which only happens if the disk stalls for a long time.

Virtual time: under trio's MockClock with autojump, a task waiting for a worker thread
counts as blocked, so virtual time would jump to the next deadline (a SIP timer, a
sweep) while a commit runs, and a test would see a REGISTER time out that real time
would have answered. When the run's clock is a MockClock the writer therefore commits
in the event loop (``commit_in_thread=None``, the default); pass True or False to
choose.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing

log = logging.getLogger("trio_sip.storage")

Statement = tuple[str, tuple[Any, ...]]

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class DbUrlError(ValueError):
    """A ``db_url`` this build cannot use; the message says what is accepted."""


def resolve_db_url(url: str, data_dir: str) -> str | None:
    """The SQLite file named by ``url``, or None for memory only.

    ``""`` and ``"none"`` mean memory only. ``sqlite:///PATH`` is a file, relative to
    the current directory unless absolute (``sqlite:////var/lib/x.sqlite``, as
    SQLAlchemy writes it). ``{data_dir}`` in the URL is replaced by ``core.data_dir``.
    """
    text = url.strip()
    if text.lower() in ("", "none"):
        return None
    text = text.replace("{data_dir}", data_dir)
    if not text.startswith("sqlite:///"):
        raise DbUrlError(f"unsupported db_url {url!r}: use sqlite:///PATH, or \"none\" "
                         "for memory only")
    path = text[len("sqlite:///"):]
    if not path:
        raise DbUrlError(f"db_url {url!r} names no file")
    return path


def check_identifier(name: str) -> str:
    """A table name safe to put in SQL (``[A-Za-z_][A-Za-z0-9_]*``, at most 64)."""
    if _IDENT_RE.fullmatch(name) is None:
        raise ValueError(f"bad table name {name!r}: letters, digits and _ only")
    return name


class Clock:
    """In memory, deadlines are on trio's clock (virtual under MockClock, immune to wall
    clock steps); on disk they are epoch seconds. ``wall`` is injectable so tests can
    move both clocks together."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall

    @staticmethod
    def now() -> float:
        try:
            return trio.current_time()
        except RuntimeError:  # outside trio (a tool reading the file)
            return time.monotonic()

    def to_epoch(self, deadline: float) -> float:
        """Epoch seconds of a deadline; ``inf`` (never) is stored as 0, as Kamailio does."""
        if math.isinf(deadline):
            return 0.0
        return self.wall() + (deadline - self.now())

    def from_epoch(self, epoch: float) -> float:
        """The deadline of stored epoch seconds (0: never)."""
        if not epoch:
            return math.inf
        return self.now() + (epoch - self.wall())


class SqliteWriter:
    """One SQLite file: synchronous reads at start, then ordered queued writes."""

    def __init__(self, path: str, *, max_pending: int = 100_000, name: str = "db",
                 commit_in_thread: bool | None = None) -> None:
        self.path = path
        self.commit_in_thread = commit_in_thread
        self.name = name
        self.max_pending = max_pending
        parent = Path(path).parent
        parent.mkdir(parents=True, exist_ok=True)
        # The connection is used by one thread at a time: the event loop before the writer
        # runs and after it stopped, a worker thread (one commit at a time) meanwhile.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._pending: list[Statement] = []
        self._queued = 0  # sequence number of the last statement queued
        self._committed = 0  # ... and of the last one committed (or failed)
        self._wake = trio.Event()
        self._progress = trio.Event()
        self.running = False
        self.stats: Counter[str] = Counter()

    # -- reads (start-up only) ----------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement now, in this thread, and return its rows. Only while the
        writer task is not running (loading at start)."""
        if self.running:
            raise RuntimeError("SqliteWriter.query while the writer runs")
        conn = self._require()
        return list(conn.execute(sql, tuple(params)).fetchall())

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.name}: the database is closed")
        return self._conn

    # -- writes -------------------------------------------------------------------

    def submit(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a statement; it is committed, in order, by the writer."""
        if self._conn is None:
            self.stats["db_dropped"] += 1
            return
        if len(self._pending) >= self.max_pending:
            self.stats["db_dropped"] += 1
            if self.stats["db_dropped"] == 1 or self.stats["db_dropped"] % 10_000 == 0:
                log.error("%s: %d writes waiting, dropping (disk stalled?)", self.name,
                          len(self._pending))
            return
        self._pending.append((sql, tuple(params)))
        self._queued += 1
        self._wake.set()

    @property
    def dirty(self) -> bool:
        """Statements are queued or being committed."""
        return self._committed < self._queued

    async def flush(self) -> None:
        """Return once every statement queued before the call is committed (or failed)."""
        target = self._queued
        while self._committed < target:
            if not self.running:
                self.flush_sync()
                return
            await self._progress.wait()

    def flush_sync(self) -> None:
        """Commit what is queued, in this thread (no writer task running)."""
        if self.running:
            raise RuntimeError("SqliteWriter.flush_sync while the writer runs")
        batch, self._pending = self._pending, []
        upto = self._queued
        if batch and self._conn is not None:
            self._commit(batch)
        self._committed = upto
        self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _commit(self, batch: list[Statement]) -> None:
        conn = self._require()
        try:
            conn.execute("BEGIN")
            for sql, params in batch:
                conn.execute(sql, params)
            conn.execute("COMMIT")
            self.stats["db_commits"] += 1
            self.stats["db_writes"] += len(batch)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.stats["db_errors"] += len(batch)
            log.error("%s: cannot write %d change(s) to %s: %s", self.name, len(batch),
                      self.path, exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer task; cancel it to stop (what is queued is committed, then the file
        is closed)."""
        self.running = True
        task_status.started()
        try:
            while True:
                if not self._pending:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                batch, self._pending = self._pending, []
                upto = self._queued
                if self._in_thread():
                    await trio.to_thread.run_sync(self._commit, batch)
                else:
                    self._commit(batch)
                    await trio.lowlevel.checkpoint()
                self._committed = upto
                self._notify()
        finally:
            self.running = False
            self.flush_sync()
            self.close()

    def _in_thread(self) -> bool:
        if self.commit_in_thread is not None:
            return self.commit_in_thread
        return not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    def close(self) -> None:
        """Close the file (queued statements not yet committed are lost)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._notify()
