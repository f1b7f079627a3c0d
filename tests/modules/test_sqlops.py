"""KSR.sqlops: Kamailio's return codes and result access ($dbr, $sqlrows, $xavp,
sql_pvquery), values bound as parameters (never spliced), queries that wait in worker
threads without blocking other calls, timeouts that cancel the statement, background
statements; on SQLite (embedded) and on a real PostgreSQL server started by the tests."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, outs, serving

from tests.support.postgres import Postgres, postgres_missing
from trio_sip.config import ConfigError
from trio_sip.modules import sqlops as sqlmod
from trio_sip.script.modparams import build_modparams
from trio_sip.sip.message import SipResponse
from trio_sip.storage.sql import parse_sql_url, to_format_style

# Each request runs the snippet named by its X-Lua header and reports with out().
ROUTES = OUT_LUA + """
local S = KSR.sqlops
local snippets = {}
snippets.setup = function()
  out("create", S.sql_query("db", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT,"
      .. " target TEXT, n INTEGER)"))
  out("ins1", S.sql_query_params("db", "INSERT INTO users (id, name, target, n) "
      .. "VALUES (?, ?, ?, ?)", "", 1, "alice", "http://127.0.0.1/a", 7))
  out("rows_changed", KSR.pv.get("$sqlrows(db)"))
  -- a value that would break out of a spliced string is stored as it is
  out("ins2", S.sql_query_params("db", "INSERT INTO users (id, name, target, n) "
      .. "VALUES (?, ?, ?, ?)", "", 2, "bob'); DROP TABLE users; --", "50% ?", nil))
  -- a NULL at the end needs the table form with n
  out("ins3", S.sql_query_params("db", "INSERT INTO users (id, name, target, n) "
      .. "VALUES (?, ?, ?, ?)", "", {n = 4, 3, "carol", "c", nil}))
end
snippets.select = function()
  out("sel", S.sql_query("db", "SELECT id, name, target, n FROM users ORDER BY id", "ra"))
  out("rows", S.sql_num_rows("ra"))
  out("cols", S.sql_num_columns("ra"))
  out("name1", S.sql_result_get("ra", 1, 1))
  out("n0", S.sql_result_get("ra", 0, 3))
  out("null", S.sql_is_null("ra", 1, 3))
  out("notnull", S.sql_is_null("ra", 0, 3))
  out("outside", S.sql_is_null("ra", 9, 0))
  out("get_outside", S.sql_result_get("ra", 9, 0))
  out("dbr_rows", KSR.pv.get("$dbr(ra=>rows)"))
  out("dbr_cols", KSR.pv.get("$dbr(ra=>cols)"))
  KSR.pv.seti("$var(i)", 2)
  out("dbr_cell", KSR.pv.get("$dbr(ra=>[$var(i),1])"))
  out("dbr_col", KSR.pv.get("$dbr(ra=>colname[2])"))
  out("none", S.sql_query("db", "SELECT id FROM users WHERE id = ?", "rb"))
  out("bound", S.sql_query_params("db", "SELECT target FROM users WHERE name = ? AND id = ?",
      "rb", "bob'); DROP TABLE users; --", 2))
  out("bound_val", S.sql_result_get("rb", 0, 0))
  out("empty", S.sql_query_params("db", "SELECT id FROM users WHERE name = ?", "rc", "nobody"))
  out("empty_rows", S.sql_num_rows("rc"))
  out("nores", S.sql_query("db", "SELECT id FROM users"))
  out("free", S.sql_result_free("ra"))
  out("freed", S.sql_num_rows("ra"))
  out("badsql", S.sql_query("db", "SELEKT 1", "rd"))
  out("nocon", S.sql_query("nope", "SELECT 1", "rd"))
  out("badval", S.sql_query_params("db", "SELECT ?, ?", "rd", "a", {}))
end
snippets.xquery = function()
  out("x", S.sql_xquery("db", "SELECT id, name FROM users ORDER BY id", "xr"))
  out("x0", KSR.pv.get("$xavp(xr=>name)"))
  out("x2", KSR.pv.get("$xavp(xr[2]=>name)"))
  local seen = {}
  while KSR.pv.get("$xavp(xr)") ~= nil do
    seen[#seen + 1] = KSR.pv.get("$xavp(xr=>id)")
    KSR.pv.unset("$xavp(xr)")
  end
  out("iter", table.concat(seen, ","))
  out("pvq", S.sql_pvquery("db", "SELECT name, n FROM users WHERE id = 1",
      "$var(nm);$var(num)"))
  out("pv_name", KSR.pv.get("$var(nm)"))
  out("pv_n", KSR.pv.get("$var(num)"))
end
snippets.async = function()
  out("async", S.sql_query_async_params("db", "UPDATE users SET n = ? WHERE id = ?", 99, 1))
  out("async_nocon", S.sql_query_async("nope", "DELETE FROM users"))
end
snippets.slow = function()
  -- a write: it waits while another connection holds the write lock
  out("slow", S.sql_query_params("db", "INSERT INTO users (id) VALUES (?)", "", 5))
  S.sql_query("db", "SELECT count(*) FROM users", "rs")
  out("slow_n", S.sql_result_get("rs", 0, 0))
end
snippets.sleep_pg = function()
  out("sleep", S.sql_query("db", "SELECT pg_sleep(30)", "rs"))
  out("after", S.sql_query("db", "SELECT 1 AS one", "rs"))
end
snippets.ping = function() out("pong", 1) end
snippets.literal = function()
  -- no values: the text goes as written (a literal % and ? stay)
  out("lit", S.sql_query("db", "SELECT '50% ?' AS p", "rl"))
  out("lit_val", S.sql_result_get("rl", 0, 0))
end
function ksr_request_route()
  snippets[KSR.hdr.get("X-Lua")]()
  KSR.sl.send_reply(200, "OK")
end
"""


def _config(url: str, **extra: Any) -> dict[str, Any]:
    return {"modparams": {"sqlops": {"sqlcon": [f"db=>{url}"], **extra}}}


async def _send(env: Any, snippet: str) -> str:
    call_id = f"sql-{snippet}-{len(env.uac.received)}-{trio.current_time()}"
    await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1", call_id=call_id,
                                       headers=[("X-Lua", snippet)]), PROXY)
    return call_id


async def _reply(env: Any, call_id: str, within: float = 40) -> dict[str, str]:
    got = await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse)
                                 and r.msg.call_id == call_id, within=within)
    assert isinstance(got.msg, SipResponse) and got.msg.status == 200, got.msg
    return outs(got.msg)


async def _run(env: Any, snippet: str) -> dict[str, str]:
    return await _reply(env, await _send(env, snippet))


# -- definitions ----------------------------------------------------------------------------


def test_connection_definitions() -> None:
    p = build_modparams([sqlmod.MODULE], {"sqlops": {"sqlcon": [
        "ca=>sqlite:///{data_dir}/a.sqlite", "pg => postgres://u:pw@127.0.0.1:5433/db"]}}
    )["sqlops"]
    cons = p.connections("/d")
    assert cons["ca"].target == "/d/a.sqlite"
    assert cons["pg"].target == "postgresql://u:pw@127.0.0.1:5433/db"
    assert cons["pg"].redacted() == "postgresql://u:***@127.0.0.1:5433/db"
    assert parse_sql_url("sqlite:////abs/x.db").target == "/abs/x.db"
    assert parse_sql_url("sqlite://:memory:").target == ":memory:"
    cases = [
        ({"sqlcon": ["ca sqlite:///x"]}, "name=>url"),
        ({"sqlcon": ["ca=>mysql://x/y"]}, "unsupported database URL"),
        ({"sqlcon": ["ca=>sqlite:///a", "ca=>sqlite:///b"]}, "defined twice"),
        ({"sqlcon": ["ca=>postgresql:///db"]}, "no host"),
        ({"sqlcon": ["ca=>sqlite://relative"]}, "bad SQLite URL"),
        ({"connect_mode": 2}, "connect_mode"),
        ({"query_timeout": 0}, "query_timeout"),
        ({"sql_con": []}, "unknown param"),
    ]
    for raw, why in cases:
        with pytest.raises(ConfigError, match=r"modparams\.sqlops") as info:
            build_modparams([sqlmod.MODULE], {"sqlops": raw})
        assert why in str(info.value)


def test_placeholders_become_format_style_outside_literals() -> None:
    assert to_format_style("SELECT ? , '?', \"a?\", ?") == "SELECT %s , '?', \"a?\", %s"
    assert to_format_style("SELECT 'it''s ?' || ?") == "SELECT 'it''s ?' || %s"
    assert to_format_style("SELECT 5 % ?, '50%' -- ? %\n") == \
        "SELECT 5 %% %s, '50%%' -- ? %%\n"
    assert to_format_style("SELECT /* ? */ $$ ? $$, $x$ ?'$x$, ?") == \
        "SELECT /* ? */ $$ ? $$, $x$ ?'$x$, %s"
    assert to_format_style("SELECT $1") == "SELECT $1"


# -- SQLite, in virtual time (queries run in the event loop under MockClock) -----------


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
async def test_sqlite_codes_results_and_bound_values(autojump_clock: Any, write_routes: Any,
                                                     tmp_path: Path, engine: str) -> None:
    db = tmp_path / "a.sqlite"
    config = {**_config(f"sqlite:///{db}"), "lua": {"engine": engine}}
    async with serving(write_routes(ROUTES), config=config) as env:
        got = await _run(env, "setup")
        assert got == {"create": "number:2", "ins1": "number:2", "rows_changed": "number:1",
                       "ins2": "number:2", "ins3": "number:2"}
        got = await _run(env, "select")
        assert got["sel"] == "number:1" and got["rows"] == "number:3"
        assert got["cols"] == "number:4"
        assert got["name1"] == "string:bob'); DROP TABLE users; --"
        assert got["n0"] == "number:7"
        assert (got["null"], got["notnull"], got["outside"]) == (
            "number:1", "number:0", "number:-1")
        assert got["get_outside"] == "nil:nil"
        assert (got["dbr_rows"], got["dbr_cols"]) == ("number:3", "number:4")
        assert got["dbr_cell"] == "string:carol" and got["dbr_col"] == "string:target"
        # a "?" without a value: the driver refuses, the route gets -1
        assert got["none"] == "number:-1"
        assert got["bound"] == "number:1" and got["bound_val"] == "string:50% ?"
        assert got["empty"] == "number:2" and got["empty_rows"] == "number:0"
        assert got["nores"] == "number:3"
        assert got["free"] == "number:1" and got["freed"] == "number:-1"
        assert got["badsql"] == "number:-1" and got["nocon"] == "number:-1"
        assert got["badval"] == "number:-1"
        got = await _run(env, "xquery")
        assert got["x"] == "number:1" and got["x0"] == "string:alice"
        assert got["x2"] == "string:carol" and got["iter"] == "string:1,2,3"
        assert got == got | {"pvq": "number:1", "pv_name": "string:alice",
                             "pv_n": "number:7"}
        assert (await _run(env, "literal"))["lit_val"] == "string:50% ?"
        got = await _run(env, "async")
        assert got == {"async": "number:1", "async_nocon": "number:-1"}
        await trio.sleep(1)
        stats = env.server.core.sqlops.statistics()
        assert stats["db:errors"] == 2 and stats["async_pending"] == 0
        assert env.server.registry.stats_gauges()["sqlops"] == frozenset({"async_pending"})
    with sqlite3.connect(db) as conn:  # the file holds what the routes wrote
        assert list(conn.execute("SELECT id, name, n FROM users ORDER BY id")) == [
            (1, "alice", 99), (2, "bob'); DROP TABLE users; --", None), (3, "carol", None)]


async def test_an_unreachable_database_refuses_to_start_unless_connect_mode_1(
        autojump_clock: Any, write_routes: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = f"sqlite:///{blocker}/sub/db.sqlite"
    with pytest.RaisesGroup(pytest.RaisesGroup(pytest.RaisesExc(
            Exception, match=r"module 'sqlops': init failed: .*cannot connect"))):
        async with serving(write_routes(ROUTES), config=_config(url)):
            pass
    async with serving(write_routes(ROUTES), config=_config(url, connect_mode=1)) as env:
        assert (await _run(env, "slow"))["slow"] == "number:-1"  # logged, no crash
        assert (await _run(env, "ping"))["pong"] == "number:1"


# -- SQLite, in real time: threads ------------------------------------------------------------


async def test_a_waiting_query_blocks_no_other_call(write_routes: Any, tmp_path: Path) -> None:
    """A query waits for a lock the test holds (no timing involved): meanwhile another
    request is answered; when the lock goes, the query finishes and its route answers."""
    db = tmp_path / "a.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.execute("INSERT INTO users VALUES (1)")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        async with serving(write_routes(ROUTES), config=_config(f"sqlite:///{db}")) as env:
            holder.execute("BEGIN IMMEDIATE")  # other writers wait until COMMIT
            slow = await _send(env, "slow")
            await trio.sleep(0.2)
            assert (await _run(env, "ping"))["pong"] == "number:1"
            assert not any(isinstance(r.msg, SipResponse) and r.msg.call_id == slow
                           for r in env.uac.received)
            holder.execute("COMMIT")
            got = await _reply(env, slow, within=10)
            assert got == {"slow": "number:2", "slow_n": "number:2"}
    finally:
        holder.close()


async def test_at_most_max_connections_queries_run_at_once(write_routes: Any,
                                                           tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        config = _config(f"sqlite:///{db}", max_connections=2)
        async with serving(write_routes(ROUTES), config=config) as env:
            holder.execute("BEGIN IMMEDIATE")
            calls = [await _send(env, "slow") for _ in range(5)]
            database = env.server.core.sqlops.get("db")
            for _ in range(500):  # bounded: until every route waits for the database
                st = database.limiter.statistics()
                if st.tasks_waiting == 3:
                    break
                await trio.sleep(0.01)
            # two statements wait for the lock in two threads; three wait for a turn
            assert (st.borrowed_tokens, st.tasks_waiting) == (2, 3)
            assert (await _run(env, "ping"))["pong"] == "number:1"
            holder.execute("COMMIT")
            for call in calls:
                assert (await _reply(env, call, within=20))["slow"] == "number:2"
            assert database.stats["connects"] <= 2
    finally:
        holder.close()


async def test_a_query_past_query_timeout_returns_minus_1(write_routes: Any,
                                                          tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        config = _config(f"sqlite:///{db}", query_timeout=0.3)
        async with serving(write_routes(ROUTES), config=config) as env:
            holder.execute("BEGIN IMMEDIATE")
            assert (await _run(env, "slow"))["slow"] == "number:-1"
            holder.execute("COMMIT")
            assert (await _run(env, "slow"))["slow"] == "number:2"
            assert env.server.core.sqlops.statistics()["db:cancelled"] == 1
    finally:
        holder.close()


# -- PostgreSQL: a real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    why = postgres_missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed in CI: {why}")
        pytest.skip(why)
    with Postgres() as pg:
        yield pg




async def test_postgresql_codes_results_and_bound_values(postgres: Postgres,
                                                         write_routes: Any) -> None:
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
    async with serving(write_routes(ROUTES), config=_config(postgres.url)) as env:
        got = await _run(env, "setup")
        assert got == {"create": "number:2", "ins1": "number:2", "rows_changed": "number:1",
                       "ins2": "number:2", "ins3": "number:2"}
        got = await _run(env, "select")
        assert (got["sel"], got["rows"], got["cols"]) == ("number:1", "number:3", "number:4")
        assert got["name1"] == "string:bob'); DROP TABLE users; --"
        assert got["n0"] == "number:7" and got["null"] == "number:1"
        assert got["dbr_cell"] == "string:carol" and got["dbr_col"] == "string:target"
        assert got["bound"] == "number:1" and got["bound_val"] == "string:50% ?"
        assert got["none"] == "number:-1" and got["badsql"] == "number:-1"
        assert got["empty"] == "number:2" and got["nores"] == "number:3"
        got = await _run(env, "xquery")
        assert got["iter"] == "string:1,2,3" and got["pv_name"] == "string:alice"
        assert (await _run(env, "literal"))["lit_val"] == "string:50% ?"
        assert (await _run(env, "async"))["async"] == "number:1"
        for _ in range(100):  # the background UPDATE lands (bounded wait, no timing)
            with psycopg.connect(postgres.url, autocommit=True) as conn:
                row = conn.execute("SELECT n FROM users WHERE id = 1").fetchone()
            if row == (99,):
                break
            await trio.sleep(0.05)
        assert row == (99,)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM users WHERE id = 2").fetchone() == (
            "bob'); DROP TABLE users; --",)


async def test_postgresql_timeout_cancels_the_statement(postgres: Postgres,
                                                        write_routes: Any) -> None:
    import psycopg

    config = _config(postgres.url, query_timeout=0.5)
    async with serving(write_routes(ROUTES), config=config) as env:
        call = await _send(env, "sleep_pg")
        await trio.sleep(0.1)
        assert (await _run(env, "ping"))["pong"] == "number:1"  # served meanwhile
        got = await _reply(env, call, within=20)
        assert got == {"sleep": "number:-1", "after": "number:1"}
        # the server stopped the statement: no pg_sleep left running
        for _ in range(100):
            with psycopg.connect(postgres.url, autocommit=True) as conn:
                (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query "
                                    "LIKE 'SELECT pg_sleep(30)%'").fetchone()  # type: ignore[misc]
            if n == 0:
                break
            await trio.sleep(0.05)
        assert n == 0
