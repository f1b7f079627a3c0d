"""KSR.sqlops: SQL queries from routes (Kamailio ``sqlops``) that wait without blocking,
``$dbr(res=>...)``, ``$sqlrows(con)``, and ``$xavp(res=>col)`` for sql_xquery.

Connections are named in ``[modparams.sqlops] sqlcon = ["ca=>sqlite:///{data_dir}/a.sqlite",
"pg=>postgresql://user:password@127.0.0.1:5432/db"]`` (storage/sql.py: SQLite is built
in, PostgreSQL goes through psycopg). Every query runs in a worker thread: the route
waits at the call (its coroutine yields, like ``KSR.async.sleep``) and goes on at the
next line with its locals intact, while other calls are served; at most
``max_connections`` queries per connection run at once, each bounded by
``query_timeout`` seconds (then the statement is cancelled in the database and the call
returns -1).

Values go in as parameters, never spliced into the SQL text::

    local rc = KSR.sqlops.sql_query_params("ca",
        "SELECT target FROM notify WHERE user = ? AND domain = ?", "ra",
        KSR.pv.get("$tU"), KSR.pv.get("$td"))
    if rc == 1 then target = KSR.sqlops.sql_result_get("ra", 0, 0) end

``?`` is the placeholder for every database (turned into ``%s`` for PostgreSQL outside
string literals; a statement without values goes as written, so there a literal ``%`` or
PostgreSQL's jsonb ``?`` operator is fine). The values may also be one Lua table: ``{"a", 2}``; Lua drops a
trailing nil argument, so a NULL at the end needs the table form with its count:
``{n = 2, "a", nil}``. Kamailio's functions take only SQL text: with them, never build
SQL from message values.

Functions and return codes (Kamailio's):

* ``sql_query(con, sql[, res])``, ``sql_query_params(con, sql, res, ...)``,
  ``sql_xquery(con, sql, xavp)``, ``sql_pvquery(con, sql, "$var(a);$var(b)")``:
  1 rows returned, 2 no rows (or not a SELECT), 3 rows returned but no ``res`` given,
  -1 error (unknown connection, bad SQL, database down, timeout; logged);
* ``sql_query_async(con, sql)`` / ``sql_query_async_params(con, sql, ...)``: run the
  statement in the background (its result is not returned; for INSERT/UPDATE/DELETE);
  1 queued, -1 unknown connection or too many pending (``max_async``);
* ``sql_num_rows(res)``, ``sql_num_columns(res)``: the count, -1 no such result;
  ``sql_is_null(res, row, col)``: 1 NULL, 0 not, -1 out of range;
  ``sql_result_get(res, row, col)``: the value (integer, number or string), nil when
  NULL or out of range; ``sql_result_free(res)``: 1.

Pseudo-variables: ``$dbr(res=>rows)``, ``$dbr(res=>cols)``, ``$dbr(res=>[row,col])``
(row and col may be ``$var(i)``-style PVs), ``$dbr(res=>colname[N])``;
``$sqlrows(con)`` is the number of rows the last statement on ``con`` changed;
``$xavp(name=>col)``, ``$xavp(name[i]=>col)``, ``$xavp(name[i])`` read the rows of
``sql_xquery`` (and ``KSR.pv.unset("$xavp(name)")`` drops the first row), so
Kamailio's "destructive iteration" loop works.

Differences from Kamailio worth knowing: results (and xquery rows) belong to the route
run, not to the worker process (with many routes waiting at once in one process, a
process-wide result would change under a waiting route's feet); ``results_maxsize``
bounds the results per route run. ``sql_query_async`` needs no ``async_workers``.
Statistics (group ``sqlops``): per connection ``NAME:queries``, ``:errors``,
``:cancelled``, ``:connects``, ``:truncated``; ``async_pending``, ``async_dropped``.

Not implemented: other databases than SQLite and PostgreSQL, ``tr_buf_size`` and the
``{sql.val}`` transformations.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..mi.registry import add_module_stats
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, ParamType
from ..script.modparams import data_dir_of, modparams_of
from ..script.ops import AsyncOp
from ..storage.sql import Database, Result, SqlError, SqlUrlError, Value, parse_sql_url

log = logging.getLogger("trio_sip.sqlops")

#: how many bound values sql_query_params takes as separate arguments
MAX_PARAMS = 16

_RES_KEY = "\0sqlops:res"
_XAVP_KEY = "\0sqlops:xavp"
_ROWS_KEY = "\0sqlops:rows:"
_CON_RE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*=>\s*(\S.*?)\s*")


@dataclass(frozen=True)
class SqlopsParams:
    """``[modparams.sqlops]``."""

    #: connections: "name=>url" (sqlite:///PATH, postgresql://user:pw@host:port/db)
    sqlcon: tuple[str, ...] = ()
    #: Kamailio's result declarations: accepted for configs ported from Kamailio;
    #: results need no declaration here (a name is made on first use)
    sqlres: tuple[str, ...] = ()
    #: 0: refuse to start when a database cannot be reached at start; 1: go on
    connect_mode: int = 0
    #: the most named results one route run may hold
    results_maxsize: int = 32
    #: trio-sip: queries running at once per connection (one worker thread each)
    max_connections: int = 4
    #: trio-sip: seconds a query may take; then it is cancelled and returns -1
    query_timeout: float = 10.0
    #: trio-sip: rows kept from one query (more are dropped, with a warning)
    max_rows: int = 100_000
    #: trio-sip: sql_query_async statements pending at once (more return -1)
    max_async: int = 1000

    def validate(self) -> None:
        self.connections("var")
        if self.connect_mode not in (0, 1):
            raise ValueError("connect_mode must be 0 (stop) or 1 (continue)")
        for name in ("results_maxsize", "max_connections", "max_rows", "max_async"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.query_timeout <= 0:
            raise ValueError("query_timeout must be > 0")

    def connections(self, data_dir: str) -> dict[str, Any]:
        """``{name: SqlUrl}``; ValueError names the bad entry."""
        out: dict[str, Any] = {}
        for item in self.sqlcon:
            m = _CON_RE.fullmatch(item)
            if m is None:
                raise ValueError(f"sqlcon {item!r}: use \"name=>url\"")
            name, url = m.group(1), m.group(2)
            if name in out:
                raise ValueError(f"sqlcon {name} is defined twice")
            try:
                out[name] = parse_sql_url(url, data_dir)
            except SqlUrlError as exc:
                raise ValueError(f"sqlcon {name}: {exc}") from None
        return out


m = ModuleBuilder("sqlops", "SQL queries that wait without blocking: $dbr(res=>...).",
                  params=SqlopsParams)


class SqlDatabases:
    """The server's connections (``core.sqlops``)."""

    def __init__(self, params: SqlopsParams, data_dir: str) -> None:
        self.params = params
        self.databases = {
            # SQLite waits for a lock a little longer than a query may take, so the
            # timeout (which interrupts the wait) is what a route sees
            name: Database(name, url, max_connections=params.max_connections,
                           max_rows=params.max_rows, busy_timeout=params.query_timeout + 1)
            for name, url in params.connections(data_dir).items()}
        self.async_pending = 0
        self.stats: Counter[str] = Counter()

    def get(self, name: str) -> Database | None:
        return self.databases.get(name)

    def statistics(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for db in self.databases.values():
            for k in ("queries", "errors", "cancelled", "connects", "truncated"):
                out[f"{db.name}:{k}"] = db.stats[k]
        out["async_pending"] = self.async_pending
        out["async_dropped"] = self.stats["async_dropped"]
        return out

    def close(self) -> None:
        for db in self.databases.values():
            db.close()


def databases_for(core: Any) -> SqlDatabases:
    """The server's connections, made on first use from ``[modparams.sqlops]``."""
    dbs = getattr(core, "sqlops", None)
    if isinstance(dbs, SqlDatabases):
        return dbs
    params = modparams_of(core, "sqlops", SqlopsParams)
    dbs = SqlDatabases(params, data_dir_of(core))
    core.sqlops = dbs
    return dbs


@m.on_init
async def _init(core: Any) -> None:
    """Connect to every database once (Kamailio connect_mode 0: a database that cannot
    be reached refuses to start; 1: logged, the first query connects again)."""
    dbs = databases_for(core)
    add_module_stats(core, "sqlops", dbs.statistics, gauges=["async_pending"])
    for db in dbs.databases.values():
        try:
            if db._threaded():
                await trio.to_thread.run_sync(db.check)
            else:
                db.check()
        except SqlError as exc:
            if dbs.params.connect_mode == 0:
                raise
            log.error("%s (connect_mode 1: going on)", exc)
        else:
            log.info("sqlops: connection %s to %s", db.name, db.url.redacted())


@m.on_shutdown
def _shutdown(core: Any) -> None:
    databases_for(core).close()


def _db(ctx: MsgContext, con: str) -> Database | None:
    db = databases_for(ctx.core).get(con)
    if db is None:
        log.error("sqlops: no connection %r (declare it in [modparams.sqlops] sqlcon)", con)
    return db


def _results(ctx: MsgContext) -> dict[str, Result]:
    res = ctx.vars.get(_RES_KEY)
    if not isinstance(res, dict):
        res = ctx.vars[_RES_KEY] = {}
    return res


# -- the waiting queries ----------------------------------------------------------------------


class SqlOp(AsyncOp):
    """One statement, awaited by the route; stores what it returned by ``kind``."""

    name = "sqlops.sql_query"
    timeout_result = -1

    def __init__(self, db: Database, sql: str, params: Sequence[Value], kind: str,
                 target: str, timeout: float) -> None:
        self.db = db
        self.sql = sql
        self.params = params
        self.kind = kind  # "query", "xquery" or "pvquery"
        self.target = target
        self.timeout = timeout

    async def run(self, ctx: MsgContext) -> Any:
        try:
            result = await self.db.query(self.sql, self.params)
        except SqlError as exc:
            log.error("sqlops: %s: query failed: %s (SQL: %.200s)", self.db.name, exc,
                      self.sql)
            return -1
        ctx.vars[_ROWS_KEY + self.db.name] = result.rowcount
        if self.kind == "query":
            if self.target:
                store = _results(ctx)
                if self.target not in store and len(store) >= _maxsize(ctx):
                    log.error("sqlops: more than results_maxsize=%d results in one route",
                              _maxsize(ctx))
                    return -1
                store[self.target] = result
            elif result.rows:
                return 3
        elif self.kind == "xquery":
            xavps = ctx.vars.setdefault(_XAVP_KEY, {})
            xavps[self.target] = [dict(zip(result.columns, r, strict=True))
                                  for r in result.rows]
        else:
            _assign_pvs(ctx, self.target, result)
        return 1 if result.rows else 2


def _maxsize(ctx: MsgContext) -> int:
    return databases_for(ctx.core).params.results_maxsize


def _assign_pvs(ctx: MsgContext, names: str, result: Result) -> None:
    """sql_pvquery: the first row's columns into the PVs, in order (Kamailio assigns the
    last row first, so the first row is what remains)."""
    pvs = [p.strip() for p in re.split(r"[;,]", names) if p.strip()]
    if not result.rows:
        return
    row = result.rows[0]
    for name, value in zip(pvs, row, strict=False):
        try:
            pv.set_(ctx, name, value)
        except pv.PvError as exc:
            log.error("sqlops: sql_pvquery: cannot set %s: %s", name, exc)


def _query(ctx: MsgContext, con: str, sql: str, params: Sequence[Value], kind: str,
           target: str) -> Any:
    db = _db(ctx, con)
    if db is None:
        return -1
    return SqlOp(db, sql, params, kind, target, databases_for(ctx.core).params.query_timeout)


@m.export(("str", "str", "str"), min_args=2, is_async=True)
def sql_query(ctx: MsgContext, con: str, sql: str, res: str | None = None) -> Any:
    """Run ``sql`` on connection ``con`` and keep the rows as result ``res``. Waits
    without blocking. 1 rows, 2 no rows, 3 rows but no ``res``, -1 error."""
    return _query(ctx, con, sql, (), "query", res or "")


def _values(qual: str, args: tuple[Any, ...]) -> list[Value] | None:
    """The bound values: the arguments, or the one Lua table given (1..n)."""
    if len(args) == 1 and type(args[0]).__name__ == "_LuaTable":
        table = args[0]
        n = table["n"]
        count = int(n) if isinstance(n, (int, float)) else len(table)
        args = tuple(table[i] for i in range(1, count + 1))
    out: list[Value] = []
    for i, v in enumerate(args):
        if isinstance(v, float) and v.is_integer():
            out.append(int(v))  # LuaJIT and Lua 5.1 have only floats: 2 means 2
        elif v is None or isinstance(v, (bool, int, float, str)):
            out.append(v)
        elif isinstance(v, bytes):
            out.append(v.decode("latin-1"))
        else:
            log.error("%s: value %d is a %s; only nil, booleans, numbers and strings "
                      "can be bound", qual, i + 1, type(v).__name__.removeprefix("_Lua"))
            return None
    return out


_ANY: ParamType = "any"
_PARAMS: tuple[ParamType, ...] = (_ANY,) * MAX_PARAMS


@m.export(("str", "str", "str", *_PARAMS), min_args=3, is_async=True)
def sql_query_params(ctx: MsgContext, con: str, sql: str, res: str, *values: Any) -> Any:
    """trio-sip: like sql_query, with the values of the ``?`` placeholders bound as
    parameters (never spliced into the text): up to 16 arguments, or one Lua table
    (``{n = 2, "a", nil}`` to end with NULL). ``res`` "" keeps no result. Same codes."""
    vals = _values("KSR.sqlops.sql_query_params", values)
    if vals is None:
        return -1
    return _query(ctx, con, sql, vals, "query", res)


@m.export(("str", "str", "str"), is_async=True)
def sql_xquery(ctx: MsgContext, con: str, sql: str, xavp: str) -> Any:
    """Run ``sql`` and keep each row as ``$xavp(xavp[i]=>column)``. Same codes (3 is
    never returned)."""
    return _query(ctx, con, sql, (), "xquery", xavp)


@m.export(("str", "str", "str"), is_async=True)
def sql_pvquery(ctx: MsgContext, con: str, sql: str, res: str) -> Any:
    """Run ``sql`` and set the PVs listed in ``res`` ("$var(a);$var(b)") from the
    columns of the first row. Same codes."""
    return _query(ctx, con, sql, (), "pvquery", res)


async def _background(dbs: SqlDatabases, db: Database, sql: str,
                      params: Sequence[Value]) -> None:
    try:
        with trio.move_on_after(dbs.params.query_timeout) as scope:
            await db.query(sql, params)
        if scope.cancelled_caught:
            log.error("sqlops: %s: async query timed out (SQL: %.200s)", db.name, sql)
    except SqlError as exc:
        log.error("sqlops: %s: async query failed: %s (SQL: %.200s)", db.name, exc, sql)
    finally:
        dbs.async_pending -= 1


def _query_async(ctx: MsgContext, con: str, sql: str, params: Sequence[Value]) -> int:
    db = _db(ctx, con)
    if db is None:
        return -1
    dbs = databases_for(ctx.core)
    nursery = getattr(getattr(ctx.core, "tm", None), "nursery", None)
    if nursery is None:
        log.error("sqlops: sql_query_async needs a running server")
        return -1
    if dbs.async_pending >= dbs.params.max_async:
        dbs.stats["async_dropped"] += 1
        log.error("sqlops: %d async queries pending (max_async): dropped", dbs.async_pending)
        return -1
    dbs.async_pending += 1
    nursery.start_soon(_background, dbs, db, sql, params)
    return 1


@m.export(("str", "str"))
def sql_query_async(ctx: MsgContext, con: str, sql: str) -> int:
    """Run ``sql`` in the background; the route goes on at once and gets no result (for
    INSERT, UPDATE, DELETE; errors are logged). 1 queued, -1 unknown connection or too
    many pending."""
    return _query_async(ctx, con, sql, ())


@m.export(("str", "str", *_PARAMS), min_args=2)
def sql_query_async_params(ctx: MsgContext, con: str, sql: str, *values: Any) -> int:
    """trio-sip: sql_query_async with the ``?`` values bound as parameters (as
    sql_query_params)."""
    vals = _values("KSR.sqlops.sql_query_async_params", values)
    if vals is None:
        return -1
    return _query_async(ctx, con, sql, vals)


# -- results ------------------------------------------------------------------------------


def _result(ctx: MsgContext, res: str) -> Result | None:
    return _results(ctx).get(res)


@m.export(("str",))
def sql_result_free(ctx: MsgContext, res: str) -> int:
    """Forget result ``res``. 1."""
    _results(ctx).pop(res, None)
    return 1


@m.export(("str",))
def sql_num_rows(ctx: MsgContext, res: str) -> int:
    """The number of rows of result ``res``, -1 if there is no such result."""
    r = _result(ctx, res)
    return -1 if r is None else len(r.rows)


@m.export(("str",))
def sql_num_columns(ctx: MsgContext, res: str) -> int:
    """The number of columns of result ``res``, -1 if there is no such result."""
    r = _result(ctx, res)
    return -1 if r is None else len(r.columns)


def _cell(ctx: MsgContext, res: str, row: int, col: int) -> tuple[bool, Value]:
    r = _result(ctx, res)
    if r is None or not 0 <= row < len(r.rows) or not 0 <= col < len(r.columns):
        return False, None
    return True, r.rows[row][col]


@m.export(("str", "int", "int"))
def sql_is_null(ctx: MsgContext, res: str, row: int, col: int) -> int:
    """1 if the value at (row, col) (from 0) is NULL, 0 if not, -1 out of range or no
    such result."""
    found, value = _cell(ctx, res, row, col)
    if not found:
        return -1
    return 1 if value is None else 0


@m.export(("str", "int", "int"), ret="xval")
def sql_result_get(ctx: MsgContext, res: str, row: int, col: int) -> Any:
    """The value at (row, col), counted from 0: an integer, a number or a string; nil
    for NULL, out of range or no such result."""
    return _cell(ctx, res, row, col)[1]


MODULE = m.build()


# -- pseudo-variables -----------------------------------------------------------------------

_CELL_RE = re.compile(r"\[\s*([^,\]]+?)\s*,\s*([^\]]+?)\s*\]")
_COLNAME_RE = re.compile(r"colname\[\s*([^\]]+?)\s*\]")


def _index(ctx: MsgContext, text: str) -> int:
    value = pv.get(ctx, text) if text.startswith("$") else text
    try:
        return int(value)
    except (TypeError, ValueError):
        raise pv.PvError(f"$dbr: {text!r} is not an index") from None


def _dbr_get(ctx: MsgContext, arg: str) -> Any:
    name, sep, key = arg.partition("=>")
    if not sep:
        raise pv.PvError(f"$dbr: expected result=>key, not {arg!r}")
    r = _result(ctx, name.strip())
    key = key.strip()
    if r is None:
        return None
    if key == "rows":
        return len(r.rows)
    if key == "cols":
        return len(r.columns)
    m_cell = _CELL_RE.fullmatch(key)
    if m_cell is not None:
        row, col = _index(ctx, m_cell.group(1)), _index(ctx, m_cell.group(2))
        if 0 <= row < len(r.rows) and 0 <= col < len(r.columns):
            return r.rows[row][col]
        return None
    m_col = _COLNAME_RE.fullmatch(key)
    if m_col is not None:
        i = _index(ctx, m_col.group(1))
        return r.columns[i] if 0 <= i < len(r.columns) else None
    raise pv.PvError(f"$dbr: unknown key {key!r} (rows, cols, [row,col], colname[N])")


def _sqlrows_get(ctx: MsgContext, con: str) -> Any:
    return ctx.vars.get(_ROWS_KEY + con.strip())


_XAVP_RE = re.compile(r"\s*([A-Za-z0-9_]+)\s*(?:\[\s*(\d+)\s*\])?\s*(?:=>\s*(\S+?))?\s*")


def _xavp_rows(ctx: MsgContext, arg: str) -> tuple[list[dict[str, Value]], int, str | None]:
    m_x = _XAVP_RE.fullmatch(arg)
    if m_x is None:
        raise pv.PvError(f"$xavp: bad name {arg!r} (name, name[i], name=>key, "
                         "name[i]=>key)")
    xavps = ctx.vars.get(_XAVP_KEY) or {}
    rows = xavps.get(m_x.group(1), [])
    return rows, int(m_x.group(2) or 0), m_x.group(3)


def _xavp_get(ctx: MsgContext, arg: str) -> Any:
    rows, i, key = _xavp_rows(ctx, arg)
    if not 0 <= i < len(rows):
        return None
    if key is None:
        return f"<<xavp:{arg.split('[')[0].strip()}>>"
    return rows[i].get(key)


def _xavp_set(ctx: MsgContext, arg: str, value: Any) -> None:
    rows, i, key = _xavp_rows(ctx, arg)
    if value is not None or key is not None:
        raise pv.PvError("$xavp here holds sql_xquery rows: only unsetting a row is "
                         "supported")
    if 0 <= i < len(rows):
        del rows[i]


pv.register("dbr", _dbr_get, needs_arg=True)
pv.register("sqlrows", _sqlrows_get, needs_arg=True)
try:
    pv.spec("$xavp(x)")
except pv.PvError:  # nobody else provides $xavp: serve sql_xquery's rows
    pv.register("xavp", _xavp_get, _xavp_set, needs_arg=True)

__all__ = ["MODULE", "SqlDatabases", "SqlOp", "SqlopsParams", "databases_for"]
