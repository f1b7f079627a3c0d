"""SQL databases for routes (sqlops): named connections to SQLite or PostgreSQL, queries
run in worker threads so the event loop never blocks.

Theory of operation
-------------------
A :class:`Database` is one named connection of ``[modparams.sqlops] sqlcon``. It owns a
small pool of DB-API connections (``max_connections`` each), opened lazily, each used by
one thread at a time. A query::

    route (Trio thread)                        worker thread
    ───────────────────                        ─────────────
    await db.query(sql, params) ──to_thread──▶ conn = pool.take() (or connect)
      (the route's coroutine is suspended;     cursor.execute(sql, params)
       other routes run)                       rows = fetchmany(max_rows + 1)
    ◀── Result(columns, rows, rowcount) ────── pool.give(conn)

* **never blocking**: every driver call runs in a worker thread
  (``trio.to_thread.run_sync``); at most ``max_connections`` threads per database run
  at once (a ``trio.CapacityLimiter``); more queries wait for a turn;
* **cancellable**: a cancelled query (route timeout, transaction ended, server
  stopping) stops waiting at once (``abandon_on_cancel``) and asks the database to stop
  the statement (sqlite3 ``interrupt()``; psycopg ``Connection.cancel()`` from a helper
  thread, since it is a network round trip); the worker gives its connection back when
  the driver returns and holds its limiter slot until then, so the bound stays true;
* **parameters, never splicing**: :meth:`Database.query` takes the values apart from the
  SQL text. Routes write ``?`` placeholders (SQLite's qmark style) for every driver;
  with values to bind, :func:`to_format_style` turns them into psycopg's ``%s`` outside
  string literals, quoted identifiers, dollar-quoted bodies and comments (and doubles a
  literal ``%``); a statement without values goes to the database as written (so
  PostgreSQL's jsonb ``?`` operators work there; with values, use ``jsonb_exists()``);
* **bounded results**: at most ``max_rows`` rows are kept (the result says
  ``truncated``); values are ``int``, ``float``, ``str`` or None (bytes are decoded as
  latin-1; anything else, dates or decimals, becomes its text, as Kamailio's sqlops
  turns them into strings).

Each connection runs in autocommit mode: one statement is one transaction, as with
Kamailio's DB layer. A connection that fails with a connection-level error (server
restarted, network gone) is closed, not put back: the next query connects again.

Virtual time: under trio's MockClock with autojump a task waiting for a thread counts
as blocked, so virtual time would jump ahead while a query runs (storage/sqlite.py
explains the same for its writer). When the run's clock is a MockClock, queries run in
the event loop instead (``in_thread=None``, the default); pass True or False to
choose. Real-time runs always use threads.

URLs: ``sqlite:///relative/path.sqlite``, ``sqlite:////abs/path.sqlite`` (``{data_dir}``
is replaced), ``sqlite://:memory:``; ``postgresql://user:password@host:port/dbname``
(``postgres://`` too, as Kamailio writes it; libpq parameters in the query string).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio
import trio.lowlevel
import trio.testing

from .sqlite import DbUrlError, resolve_db_url

log = logging.getLogger("trio_sip.sql")

#: a SQL value as routes see it
Value = int | float | str | None

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


class SqlUrlError(ValueError):
    """A database URL this build cannot use; the message says what is accepted."""


class SqlError(Exception):
    """A query failed (bad SQL, constraint, lost connection); the message says why."""


@dataclass(frozen=True, slots=True)
class SqlUrl:
    """A parsed connection URL: ``kind`` is "sqlite" or "postgresql"."""

    kind: str
    #: the SQLite file (":memory:" for memory) or the libpq connection URL
    target: str

    def redacted(self) -> str:
        """For logs: the URL without its password."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()


def parse_sql_url(url: str, data_dir: str = "var") -> SqlUrl:
    """Parse a connection URL (see the module docstring)."""
    text = url.strip()
    low = text.lower()
    if low.startswith("sqlite://"):
        if text[len("sqlite://"):] == ":memory:":
            return SqlUrl("sqlite", ":memory:")
        try:  # the same rule as every other db_url (usrloc, htable, mqueue)
            path = resolve_db_url(text, data_dir)
        except DbUrlError as exc:
            raise SqlUrlError(f"bad SQLite URL {url!r}: use sqlite:///relative/path, "
                              "sqlite:////absolute/path or sqlite://:memory:") from exc
        assert path is not None  # "" and "none" do not start with sqlite://
        return SqlUrl("sqlite", path)
    if low.startswith(("postgresql://", "postgres://")):
        target = "postgresql://" + text.split("://", 1)[1]
        parts = urlsplit(target)
        if not parts.hostname:
            raise SqlUrlError(f"bad PostgreSQL URL {url!r}: no host "
                              "(postgresql://user:password@host:port/dbname)")
        try:
            _ = parts.port
        except ValueError:
            raise SqlUrlError(f"bad PostgreSQL URL {url!r}: bad port") from None
        return SqlUrl("postgresql", target)
    raise SqlUrlError(f"unsupported database URL {url!r}: use sqlite:///PATH or "
                      "postgresql://user:password@host:port/dbname")


def _skip_quoted(sql: str, i: int) -> int:
    """The end (exclusive) of the '...' or "..." starting at ``i`` (doubled quotes stay
    inside)."""
    q, j, n = sql[i], i + 1, len(sql)
    while j < n:
        if sql[j] == q:
            if j + 1 < n and sql[j + 1] == q:
                j += 2
                continue
            return j + 1
        j += 1
    return n


def to_format_style(sql: str) -> str:
    """``?`` placeholders -> ``%s`` (psycopg), outside '...' strings, "..." identifiers,
    $tag$...$tag$ bodies and comments; every literal ``%`` becomes ``%%``."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        j = i + 1
        if c in ("'", '"'):
            j = _skip_quoted(sql, i)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)) is not None:
            end = sql.find(m.group(0), m.end())
            j = n if end < 0 else end + len(m.group(0))
        elif c == "?":
            out.append("%s")
            i = j
            continue
        out.append(sql[i:j].replace("%", "%%"))
        i = j
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Result:
    """What a query returned."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    #: rows changed by INSERT/UPDATE/DELETE (-1 when the driver does not say)
    rowcount: int = -1
    #: more rows than max_rows came back; the rest were dropped
    truncated: bool = False


class _Conn(Protocol):
    def cursor(self) -> Any: ...
    def close(self) -> None: ...


def _value(v: Any) -> Value:
    if isinstance(v, bool):
        return int(v)
    if v is None or isinstance(v, (int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("latin-1")
    return str(v)


class Database:
    """One named connection: a pool of driver connections and the queries' bounds."""

    def __init__(self, name: str, url: SqlUrl, *, max_connections: int = 4,
                 max_rows: int = 100_000, connect_timeout: float = 5.0,
                 busy_timeout: float = 10.0, in_thread: bool | None = None) -> None:
        self.name = name
        self.url = url
        self.max_rows = max_rows
        self.connect_timeout = connect_timeout
        #: SQLite: how long a statement waits for another writer's lock
        self.busy_timeout = busy_timeout
        self.in_thread = in_thread
        # SQLite in memory is one database per connection: keep exactly one
        self.max_connections = 1 if url.target == ":memory:" else max_connections
        self.limiter = trio.CapacityLimiter(self.max_connections)
        self._free: list[_Conn] = []
        self._lock = threading.Lock()  # the pool and the running set, shared by threads
        self._closed = False
        self.stats: Counter[str] = Counter()
        if url.kind == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise SqlUrlError(f"sqlcon {name}: PostgreSQL needs the psycopg package "
                                  "(pip install 'psycopg[binary]')") from None

    # -- connections (worker threads) -------------------------------------------------

    def _connect(self) -> _Conn:
        if self.url.kind == "sqlite":
            if self.url.target != ":memory:":
                Path(self.url.target).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.url.target, check_same_thread=False,
                                   isolation_level=None, timeout=self.busy_timeout)
            if self.url.target != ":memory:":
                # WAL: readers do not wait for the writer; NORMAL: a commit survives a
                # crash of the process (an OS crash may lose the last ones), as
                # storage/sqlite.py does, without an fsync per statement
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg

        return psycopg.connect(self.url.target, autocommit=True,
                               connect_timeout=max(1, int(self.connect_timeout)))

    def _take(self) -> _Conn:
        with self._lock:
            if self._free:
                return self._free.pop()
        self.stats["connects"] += 1
        return self._connect()

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self.max_connections:
                self._free.append(conn)
                return
        _close(self.name, conn)

    def _broken(self, exc: BaseException) -> bool:
        if self.url.kind == "postgresql":
            import psycopg

            return isinstance(exc, psycopg.OperationalError)
        return False

    def check(self) -> None:
        """Connect once (in this thread) and keep the connection in the pool; raises
        SqlError when the database cannot be reached."""
        try:
            conn = self._take()
        except Exception as exc:
            raise SqlError(f"sqlcon {self.name} ({self.url.redacted()}): cannot connect: "
                           f"{exc}".strip()) from exc
        self._give(conn)

    def _execute(self, sql: str, params: Sequence[Value], holder: list[_Conn]) -> Result:
        """In a worker thread (or the loop under MockClock): run one statement.
        ``holder`` shows the connection to :meth:`_interrupt` while the statement runs."""
        conn = self._take()
        with self._lock:
            holder.append(conn)
        broken = False
        try:
            cur = conn.cursor()
            try:
                if self.url.kind == "postgresql":
                    if params:
                        cur.execute(to_format_style(sql), tuple(params))
                    else:  # the text as written: no placeholder or % processing
                        cur.execute(sql)
                else:
                    cur.execute(sql, tuple(params))
                columns: tuple[str, ...] = ()
                rows: list[tuple[Value, ...]] = []
                truncated = False
                if cur.description is not None:
                    columns = tuple(str(d[0]) for d in cur.description)
                    got = cur.fetchmany(self.max_rows + 1)
                    truncated = len(got) > self.max_rows
                    rows = [tuple(_value(v) for v in r) for r in got[:self.max_rows]]
                rowcount = cur.rowcount if isinstance(cur.rowcount, int) else -1
            finally:
                cur.close()
            return Result(columns, tuple(rows), rowcount, truncated)
        except Exception as exc:
            broken = self._broken(exc)
            raise SqlError(str(exc).strip() or type(exc).__name__) from exc
        finally:
            with self._lock:
                holder.clear()
            if broken:
                _close(self.name, conn)
            else:
                self._give(conn)

    # -- queries (Trio) ------------------------------------------------------------------

    def _threaded(self) -> bool:
        if self.in_thread is not None:
            return self.in_thread
        return not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def query(self, sql: str, params: Sequence[Value] = ()) -> Result:
        """Run one statement with its parameters; raises SqlError. Cancellable."""
        self.stats["queries"] += 1
        holder: list[_Conn] = []
        try:
            if self._threaded():
                result = await trio.to_thread.run_sync(
                    self._execute, sql, params, holder, limiter=self.limiter,
                    abandon_on_cancel=True)
            else:
                async with self.limiter:
                    result = self._execute(sql, params, holder)
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.stats["cancelled"] += 1
            self._interrupt(holder)
            raise
        except SqlError:
            self.stats["errors"] += 1
            raise
        if result.truncated:
            self.stats["truncated"] += 1
            log.warning("sqlcon %s: more than %d rows: the rest were dropped", self.name,
                        self.max_rows)
        return result

    def _interrupt(self, holder: list[_Conn]) -> None:
        """Ask the database to stop the statement a cancelled query left running (the
        lock keeps its thread from handing the connection to another query meanwhile)."""
        with self._lock:
            conns = list(holder)
            for conn in conns:
                if isinstance(conn, sqlite3.Connection):
                    conn.interrupt()  # instant and thread-safe
        if conns and self.url.kind == "postgresql":
            # a cancel request is a network round trip: never on the event loop
            threading.Thread(target=self._pg_cancel, args=(holder, conns[0]), daemon=True,
                             name=f"sqlcon-{self.name}-cancel").start()

    def _pg_cancel(self, holder: list[_Conn], conn: _Conn) -> None:
        with self._lock:
            if conn not in holder:  # the statement ended meanwhile
                return
            try:
                conn.cancel()  # type: ignore[attr-defined]
            except Exception as exc:
                log.debug("sqlcon %s: cancel: %s", self.name, exc)

    def close(self) -> None:
        """Close the idle connections (busy ones are closed when their thread is done)."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for conn in free:
            _close(self.name, conn)


def _close(name: str, conn: _Conn) -> None:
    try:
        conn.close()
    except Exception as exc:
        log.debug("sqlcon %s: close: %s", name, exc)


__all__ = [
    "Database",
    "Result",
    "SqlError",
    "SqlUrl",
    "SqlUrlError",
    "Value",
    "parse_sql_url",
    "to_format_style",
]
