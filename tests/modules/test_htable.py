"""KSR.htable and $sht: every function with Kamailio's return codes, autoexpire in virtual
time, persistence of dbtable tables across a restart, and sht_lock across waits."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, FakeCore, FakeTransport, outs, serving

from tests.usrloc.helpers import ensure_modules
from trio_sip.config import ConfigError
from trio_sip.modules import builtin_modules
from trio_sip.modules import htable as htmod
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptEngine
from trio_sip.script.exports import RouteType
from trio_sip.script.modparams import build_modparams
from trio_sip.sip.message import SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.storage.htable import (
    Htables,
    Item,
    KeyLocks,
    SpecError,
    TableSpec,
    parse_table_spec,
)
from trio_sip.storage.sqlite import Clock
from trio_sip.testing import build_message
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
BASE = 1_800_000_000.0

MESSAGE = build_message("MESSAGE sip:bob@127.0.0.3 SIP/2.0", [
    ("Via", "SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKht1;rport"),
    ("From", "<sip:alice@127.0.0.2>;tag=ft1"), ("To", "<sip:bob@127.0.0.3>"),
    ("Call-ID", "ht-1"), ("CSeq", "1 MESSAGE")])


def wall() -> float:
    return BASE + trio.current_time()


@pytest.fixture(autouse=True)
def _modules(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_modules(monkeypatch)


class Lua:
    """Lua snippets run as request routes on one engine, with the given tables."""

    def __init__(self, *specs: str, db_path: str | None = None) -> None:
        mods = builtin_modules()
        if not any(m.name == "htable" for m in mods):
            mods.append(htmod.MODULE)
        self.engine = ScriptEngine(mods)
        self.core = FakeCore()
        self.tables = Htables([parse_table_spec(s) for s in specs], db_path=db_path,
                              clock=Clock(wall))
        self.tables.open()
        self.core.htable = self.tables  # type: ignore[attr-defined]
        self.ctx = self.new_ctx()

    def new_ctx(self, route_type: RouteType = RouteType.REQUEST) -> MsgContext:
        return MsgContext(parse_message_untrusted(MESSAGE), Address("127.0.0.2", 5060),
                          FakeTransport(), None, route_type, self.core)  # type: ignore[arg-type]

    def __call__(self, expr: str, ctx: MsgContext | None = None) -> Any:
        self.engine.load_string(f"function t()\nreturn {expr}\nend\n", "=t.lua")
        step = self.engine.start(self.engine.function("t"), ctx or self.ctx)
        assert step.done, step.traceback or step.value
        return step.value

    def run(self, body: str, ctx: MsgContext | None = None) -> Any:
        self.engine.load_string(f"function t()\n{body}\nend\n", "=t.lua")
        step = self.engine.start(self.engine.function("t"), ctx or self.ctx)
        assert step.done, step.traceback or step.value
        return step.value


# -- table definitions ----------------------------------------------------------------


def test_table_specs_use_kamailio_syntax() -> None:
    s = parse_table_spec("a=>size=8;autoexpire=120;initval=0;updateexpire=0;dbtable=t_a;")
    assert s == TableSpec("a", size=8, autoexpire=120, dbtable="t_a", initval=0,
                          updateexpire=False)
    assert parse_table_spec("b=>size=4;dmqreplicate=0") == TableSpec("b")
    assert parse_table_spec("c=>initval=-3").initval == -3
    for bad, why in [("nope", "NAME=>"), ("d=>size=x", "integer"),
                     ("e=>colour=blue", "unknown attribute"),
                     ("f=>dmqreplicate=1", "not supported"), ("g=>cols='a,b'", "not supported"),
                     ("h=>dbtable=x;y", "unknown attribute"), ("i=>dbtable=a-b", "bad table"),
                     ("j=>autoexpire=-1", ">= 0")]:
        with pytest.raises(SpecError, match=why):
            parse_table_spec(bad)


def test_bad_definitions_refuse_to_start() -> None:
    with pytest.raises(ConfigError) as info:
        build_modparams([htmod.MODULE], {"htable": {"htable": ["a=>size=4", "a=>size=8"]}})
    assert "defined twice" in str(info.value)
    with pytest.raises(ConfigError):
        build_modparams([htmod.MODULE], {"htable": {"htable": ["a=>sise=4"]}})
    with pytest.raises(ConfigError):
        build_modparams([htmod.MODULE], {"htable": {"db_url": "redis://x"}})
    p = build_modparams([htmod.MODULE], {"htable": {"htable": "a=>size=4"}})["htable"]
    assert p.specs() == [TableSpec("a")]


# -- values ---------------------------------------------------------------------------


async def test_get_set_rm_and_their_codes(autojump_clock: Any) -> None:
    lua = Lua("a=>size=4", "n=>initval=0")
    assert lua('KSR.htable.sht_get("a", "x")') is None
    assert lua('KSR.htable.sht_gete("a", "x")') == ""
    assert lua('KSR.htable.sht_getw("a", "x")') == "<null>"
    assert lua('KSR.htable.sht_is_null("a", "x")') == 1
    assert lua('KSR.htable.sht_sets("a", "x", "hello")') == 1
    assert lua('KSR.htable.sht_get("a", "x")') == "hello"
    assert lua('KSR.htable.sht_is_null("a", "x")') == -1
    assert lua('KSR.htable.sht_seti("a", "y", 42)') == 1
    assert lua('math.type and math.type(KSR.htable.sht_get("a", "y")) or '
               'type(KSR.htable.sht_get("a", "y"))') in ("integer", "number")
    assert lua('KSR.htable.sht_get("a", "y")') == 42
    assert lua('KSR.htable.sht_rm("a", "x")') == 1
    assert lua('KSR.htable.sht_rm("a", "x")') == 1  # Kamailio: 1 also when absent
    assert lua('KSR.htable.sht_get("a", "x")') is None
    # no such table
    for call in ('sht_sets("z", "x", "v")', 'sht_seti("z", "x", 1)', 'sht_rm("z", "x")',
                 'sht_setex("z", "x", 1)', 'sht_reset("z")', 'sht_rm_name_re("z", ".")',
                 'sht_match_name("z", "eq", "x")'):
        assert lua(f"KSR.htable.{call}") == -1, call
    assert lua('KSR.htable.sht_get("z", "x")') is None
    assert lua('KSR.htable.sht_inc("z", "x")') == -255
    # initval: what a missing item reads as, and where sht_inc starts
    assert lua('KSR.htable.sht_get("n", "c")') == 0
    assert lua('KSR.htable.sht_inc("n", "c")') == 1
    assert lua('KSR.htable.sht_inc("n", "c")') == 2
    assert lua('KSR.htable.sht_dec("n", "d")') == -1
    # without initval a missing item cannot be incremented; a string never
    assert lua('KSR.htable.sht_inc("a", "c")') == -255
    lua('KSR.htable.sht_sets("n", "s", "text")')
    assert lua('KSR.htable.sht_inc("n", "s")') == -255
    assert lua('KSR.htable.sht_dec("a", "y")') == 41


async def test_sht_pseudo_variables(autojump_clock: Any) -> None:
    lua = Lua("a=>size=4", "n=>initval=5")
    lua.run('KSR.pv.sets("$sht(a=>k)", "v") KSR.pv.seti("$sht(a=>i)", 7)')
    assert lua('KSR.pv.get("$sht(a=>k)")') == "v"
    assert lua('KSR.pv.get("$sht(a=>i)")') == 7
    assert lua('KSR.pv.get("$sht(n=>missing)")') == 5
    assert lua('KSR.pv.get("$shtinc(n=>c)")') == 6
    lua.run('KSR.pv.unset("$sht(a=>k)")')  # $sht(a=>k) = $null deletes
    assert lua('KSR.htable.sht_is_null("a", "k")') == 1
    lua.run('KSR.pv.seti("$sht(a=>j)", 1) KSR.pv.sets("$sht(a=>user::1)", "alice") '
            'KSR.pv.sets("$sht(a=>user::2)", "bob")')
    assert lua('KSR.pv.get("$shtcn(a=>~~^user)")') == 2
    assert lua('KSR.pv.get("$shtcn(a=>%~user::)")') == 2
    assert lua('KSR.pv.get("$shtcn(a=>~%::2)")') == 1
    assert lua('KSR.pv.get("$shtcn(a=>==j)")') == 1
    assert lua('KSR.pv.get("$shtcn(a=>**)")') == 4
    assert lua('KSR.pv.get("$shtcv(a=>~~^b)")') == 1
    assert lua('KSR.pv.get("$shtcv(a=>eq7)")') == 1
    assert lua('KSR.pv.get("$shtcn(z=>**)")') is None


async def test_matching_and_removing_by_name_and_value(autojump_clock: Any) -> None:
    lua = Lua("a=>size=4")
    lua.run('KSR.htable.sht_sets("a", "ban::1.2.3.4", "yes") '
            'KSR.htable.sht_sets("a", "ban::5.6.7.8", "no") '
            'KSR.htable.sht_seti("a", "count::1", 3) '
            'KSR.htable.sht_sets("a", "Alice", "sip:alice@example.com")')
    assert lua('KSR.htable.sht_match_name("a", "eq", "Alice")') == 1
    assert lua('KSR.htable.sht_match_name("a", "eq", "alice")') == -1
    assert lua('KSR.htable.sht_match_name("a", "re", "^ALICE$")') == 1  # case-insensitive
    assert lua('KSR.htable.sht_match_name("a", "sw", "ban::")') == 1
    assert lua('KSR.htable.sht_match_name("a", "ne", "Alice")') == 1
    assert lua('KSR.htable.sht_match_name("a", "xx", "Alice")') == -1
    assert lua('KSR.htable.sht_match_str_value("a", "sw", "sip:")') == 1
    assert lua('KSR.htable.sht_match_str_value("a", "eq", "3")') == -1  # integers skipped
    assert lua('KSR.htable.sht_rm_value_re("a", "^no$")') == 1
    assert lua('KSR.htable.sht_is_null("a", "ban::5.6.7.8")') == 1
    assert lua('KSR.htable.sht_rm_name_re("a", "[")') == -1  # bad regexp
    assert lua('KSR.htable.sht_rm_name("a", "ew", "::1")') == 1
    assert lua('KSR.htable.sht_is_null("a", "count::1")') == 1
    assert lua('KSR.htable.sht_rm_name("a", "in", "n::1.2")') == 1
    assert lua('KSR.htable.sht_rm_name("a", "eq", "x")') == -1  # not a removal operator
    assert lua('KSR.htable.sht_rm_value("a", "sw", "sip:")') == 1
    assert len(lua.tables.tables["a"]) == 0
    lua.run('KSR.htable.sht_seti("a", "x", 1) KSR.htable.sht_seti("a", "y", 2)')
    assert lua('KSR.htable.sht_reset("a")') == 1
    assert len(lua.tables.tables["a"]) == 0


async def test_iterators(autojump_clock: Any) -> None:
    lua = Lua("a=>size=4")
    lua.run('KSR.htable.sht_seti("a", "one", 1) KSR.htable.sht_seti("a", "two", 2) '
            'KSR.htable.sht_sets("a", "three", "3")')
    got = lua.run(
        'local out = {} '
        'KSR.htable.sht_iterator_start("i", "a") '
        'while KSR.htable.sht_iterator_next("i") > 0 do '
        '  out[#out + 1] = KSR.pv.get("$shtitkey(i)") .. "=" .. KSR.pv.get("$shtitval(i)") '
        '  if KSR.pv.get("$shtitkey(i)") == "two" then KSR.htable.sht_iterator_rm("i") end '
        '  if KSR.pv.get("$shtitkey(i)") == "one" then KSR.htable.sht_iterator_seti("i", 10) end '
        '  if KSR.pv.get("$shtitkey(i)") == "three" then '
        '    KSR.htable.sht_iterator_sets("i", "x") KSR.htable.sht_iterator_setex("i", 30) end '
        'end '
        'KSR.htable.sht_iterator_end("i") '
        'return table.concat(out, ",")')
    assert got == "one=1,two=2,three=3"
    assert lua('KSR.htable.sht_get("a", "one")') == 10
    assert lua('KSR.htable.sht_get("a", "two")') is None
    assert lua('KSR.htable.sht_get("a", "three")') == "x"
    assert lua('KSR.pv.get("$shtex(a=>three)")') == 30
    assert lua('KSR.htable.sht_iterator_next("i")') == -1  # ended
    assert lua('KSR.htable.sht_iterator_end("i")') == -1
    assert lua('KSR.htable.sht_iterator_start("i", "nosuch")') == -1
    assert lua('KSR.htable.sht_iterator_rm("nosuch")') == -1


# -- expiry ----------------------------------------------------------------------------


async def test_autoexpire_is_exact_and_updateexpire_restarts_it(autojump_clock: Any) -> None:
    lua = Lua("a=>autoexpire=120", "b=>autoexpire=120;updateexpire=0", "p=>size=4")
    start = trio.current_time()
    lua.run('KSR.htable.sht_seti("a", "k", 1) KSR.htable.sht_seti("b", "k", 1) '
            'KSR.htable.sht_seti("a", "once", 1)')
    await trio.sleep_until(start + 60)
    lua.run('KSR.htable.sht_seti("a", "k", 2) KSR.htable.sht_seti("b", "k", 2)')
    assert lua('KSR.pv.get("$shtex(a=>k)")') == 120
    assert lua('KSR.pv.get("$shtex(b=>k)")') == 60
    await trio.sleep_until(start + 119.999)
    assert lua('KSR.htable.sht_get("b", "k")') == 2
    assert lua('KSR.htable.sht_get("a", "once")') == 1
    await trio.sleep_until(start + 120)
    assert lua('KSR.htable.sht_get("b", "k")') is None  # updateexpire=0: the first expiry
    assert lua('KSR.htable.sht_get("a", "once")') is None
    assert lua('KSR.htable.sht_get("a", "k")') == 2
    await trio.sleep_until(start + 180)
    assert lua('KSR.htable.sht_get("a", "k")') is None
    # per item: sht_setex (also in a table without autoexpire), sht_setxi/sht_setxs
    lua.run('KSR.htable.sht_seti("p", "k", 1) KSR.htable.sht_setex("p", "k", 10) '
            'KSR.htable.sht_setxs("p", "s", "v", 5) KSR.htable.sht_setxi("p", "i", 3, 0)')
    assert lua('KSR.pv.get("$shtex(p=>i)")') == 0  # never
    await trio.sleep(5)
    assert lua('KSR.htable.sht_get("p", "s")') is None
    assert lua('KSR.htable.sht_get("p", "k")') == 1
    await trio.sleep(5)
    assert lua('KSR.htable.sht_get("p", "k")') is None
    lua.run('KSR.pv.seti("$shtex(p=>i)", 7)')
    await trio.sleep(7)
    assert lua('KSR.htable.sht_get("p", "i")') is None


async def test_the_sweep_frees_expired_items(autojump_clock: Any) -> None:
    hts = Htables([parse_table_spec("a=>autoexpire=30")], timer_interval=20, sweep_batch=3)
    a = hts.tables["a"]
    for i in range(10):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        await nursery.start(hts.run)
        await trio.sleep(39)
        assert len(a) == 10  # expired at 30, swept at 40
        await trio.sleep(2)
        assert len(a) == 0 and hts.stats["expired"] == 10
        nursery.cancel_scope.cancel()


# -- persistence -------------------------------------------------------------------------


async def test_dbtable_tables_survive_a_restart(autojump_clock: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "ht.sqlite")
    specs = ["a=>dbtable=a_t;autoexpire=60", "b=>dbtable=b_t", "c=>dbtable=c_t;dbmode=0",
             "m=>size=4"]
    first = Lua(*specs, db_path=path)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.tables.run)
        first.run('KSR.htable.sht_seti("a", "short", 1) '
                  'KSR.htable.sht_setxi("a", "long", 2, 600) '
                  'KSR.htable.sht_sets("b", "name", "Alice") '
                  'KSR.htable.sht_seti("b", "n", -7) KSR.htable.sht_seti("b", "gone", 1) '
                  'KSR.htable.sht_rm("b", "gone") KSR.htable.sht_seti("c", "x", 1) '
                  'KSR.htable.sht_seti("m", "x", 1)')
        await first.tables.flush()
        with sqlite3.connect(path) as conn:
            assert sorted(conn.execute("SELECT key_name, value_type, key_value FROM b_t")) == [
                ("n", 1, "-7"), ("name", 0, "Alice")]
            assert list(conn.execute("SELECT key_name FROM c_t")) == []  # dbmode=0
            assert conn.execute("SELECT expires FROM a_t WHERE key_name='long'").fetchone() \
                == (BASE + 600,)
        nursery.cancel_scope.cancel()
    await trio.sleep(61)
    again = Lua(*specs, db_path=path)
    assert again('KSR.htable.sht_get("a", "short")') is None  # expired while down
    assert again('KSR.htable.sht_get("a", "long")') == 2
    assert again('KSR.pv.get("$shtex(a=>long)")') == 539
    assert again('KSR.htable.sht_get("b", "name")') == "Alice"
    assert again('KSR.htable.sht_get("b", "n")') == -7
    assert again('KSR.htable.sht_get("b", "gone")') is None
    assert again('KSR.htable.sht_get("m", "x")') is None
    again.tables.close()


async def test_provisioned_rows_and_array_keys_load(autojump_clock: Any, tmp_path: Path
                                                    ) -> None:
    path = tmp_path / "ht.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE prov (id INTEGER PRIMARY KEY, key_name TEXT, key_type "
                     "INTEGER, value_type INTEGER, key_value TEXT, expires REAL)")
        conn.executemany("INSERT INTO prov (key_name, key_type, value_type, key_value, "
                         "expires) VALUES (?, ?, ?, ?, 0)",
                         [("ip", 0, 0, "1.2.3.4"), ("course", 1, 0, "math"),
                          ("course", 1, 0, "art"), ("bad", 0, 1, "x")])
    lua = Lua("p=>dbtable=prov", db_path=str(path))
    assert lua('KSR.htable.sht_get("p", "ip")') == "1.2.3.4"
    assert lua('KSR.htable.sht_get("p", "course[0]")') == "math"
    assert lua('KSR.htable.sht_get("p", "course[1]")') == "art"
    assert lua('KSR.htable.sht_get("p", "course::size")') == 2
    assert lua('KSR.htable.sht_get("p", "bad")') is None
    lua.tables.close()


async def test_mi_api(autojump_clock: Any) -> None:
    lua = Lua("a=>autoexpire=60", "b=>size=6;dbtable=t")
    lua.run('KSR.htable.sht_seti("a", "x", 1) KSR.htable.sht_sets("a", "y", "v")')
    assert lua.tables.dump("a") == [
        {"name": "x", "value": 1, "type": "int", "expires": 60},
        {"name": "y", "value": "v", "type": "str", "expires": 60}]
    assert lua.tables.dump("zz") is None
    assert lua.tables.list_tables() == [
        {"name": "a", "dbtable": "", "dbmode": 1, "expire": 60, "updateexpire": 1,
         "size": 16, "dmqreplicate": 0},
        {"name": "b", "dbtable": "t", "dbmode": 1, "expire": 0, "updateexpire": 1,
         "size": 64, "dmqreplicate": 0}]
    assert lua.tables.statistics() == [{"name": "a", "items": 2}, {"name": "b", "items": 0}]
    assert lua.tables.counters()["items"] == 2


# -- locks ---------------------------------------------------------------------------------

LOCK_ROUTES = OUT_LUA + """
function ksr_request_route()
  local locked = KSR.hdr.is_present("X-Lock") > 0
  local hold = tonumber(KSR.hdr.get("X-Hold") or "2")
  if locked then out("lock", KSR.htable.sht_lock("c", "n")) end
  local v = KSR.htable.sht_get("c", "n")
  KSR.async.sleep(hold)
  KSR.htable.sht_seti("c", "n", v + 1)
  if locked and KSR.hdr.is_present("X-Keep") < 0 then
    out("unlock", KSR.htable.sht_unlock("c", "n"))
  end
  out("n", KSR.htable.sht_get("c", "n"))
  KSR.sl.send_reply(200, "OK")
end
"""


async def _concurrent(env: Any, *headers: list[tuple[str, str]]
                      ) -> list[tuple[float, SipResponse]]:
    """Send one MESSAGE per header list at once; (arrival time, 200) of each."""
    start, first = trio.current_time(), len(env.uac.received)
    ids = [f"m{first}-{i}" for i in range(len(headers))]
    for cid, hs in zip(ids, headers, strict=True):
        await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1", call_id=cid,
                                           headers=hs), PROXY)
    got: list[tuple[float, SipResponse]] = []
    for cid in ids:
        r = await env.uac.wait_for(lambda r, cid=cid: isinstance(r.msg, SipResponse)
                                   and r.msg.call_id == cid and r.msg.status == 200,
                                   within=60, start=first)
        assert isinstance(r.msg, SipResponse)
        got.append((r.at - start, r.msg))
    return got


async def test_sht_lock_serialises_routes_that_wait(autojump_clock: Any,
                                                    write_routes: Any) -> None:
    routes = write_routes(LOCK_ROUTES)
    config = {"modparams": {"htable": {"htable": ["c=>initval=0"]}}}
    async with serving(routes, config=config) as env:
        # without the lock, two routes that wait lose an update
        got = await _concurrent(env, [], [])
        assert [outs(r)["n"] for _, r in got] == ["number:1", "number:1"]
        env.server.core.htable.tables["c"].reset()
        # with it, the second waits for the first to unlock
        got = await _concurrent(env, [("X-Lock", "1")], [("X-Lock", "1")])
        assert [t for t, _ in got] == [2, 4]
        assert [outs(r)["n"] for _, r in got] == ["number:1", "number:2"]
        assert all(outs(r)["lock"] == "number:1" and outs(r)["unlock"] == "number:1"
                   for _, r in got)
        assert len(env.server.core.htable.locks) == 0


async def test_a_lock_never_released_is_taken_over_after_lock_max_hold(
        autojump_clock: Any, write_routes: Any, caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(LOCK_ROUTES)
    config = {"modparams": {"htable": {"htable": ["c=>initval=0"], "lock_max_hold": 10}}}
    async with serving(routes, config=config) as env:
        got = await _concurrent(env, [("X-Lock", "1"), ("X-Keep", "1"), ("X-Hold", "1")],
                                [("X-Lock", "1"), ("X-Hold", "1")])
        # the first route ended at t=1 without unlocking; the second got the key at t=10
        assert [t for t, _ in got] == [1, 11]
        assert outs(got[1][1])["n"] == "number:2"
        assert "taken over" in caplog.text


async def test_key_locks_are_reentrant_fifo_and_cancel_safe(autojump_clock: Any) -> None:
    locks = KeyLocks(max_hold=100)
    a, b, c, d = object(), object(), object(), object()
    k = ("t", "k")
    assert locks.try_acquire(k, a) and locks.try_acquire(k, a)  # re-entrant
    order: list[str] = []

    async def waiter(owner: object, name: str) -> None:
        await locks.acquire(k, owner)
        order.append(name)
        await trio.sleep(1)
        assert locks.release(k, owner)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, b, "b")
        await trio.sleep(0.1)
        nursery.start_soon(waiter, c, "c")
        await trio.sleep(0.1)
        with trio.move_on_after(0.1):  # a waiter that gives up leaves the queue
            await locks.acquire(k, d)
        assert not locks.release(k, b)  # b does not hold it
        assert locks.release(k, a) and locks.holder(k) is a  # one level down
        assert locks.release(k, a)
        await trio.sleep(0.5)
        assert order == ["b"] and locks.holder(k) is b
    assert order == ["b", "c"] and len(locks) == 0
    assert locks.stats["lock_waits"] == 3


async def test_sht_lock_in_a_branch_route_cannot_wait(autojump_clock: Any) -> None:
    lua = Lua("c=>size=4")
    other = lua.new_ctx()
    assert lua('KSR.htable.sht_lock("c", "k")', other) == 1
    branch = lua.new_ctx(RouteType.BRANCH)
    assert lua('KSR.htable.sht_lock("c", "k")', branch) == -1
    assert lua('KSR.htable.sht_lock("nosuch", "k")') == -1
    assert lua('KSR.htable.sht_unlock("c", "k")') == -1  # not ours
    assert lua('KSR.htable.sht_unlock("c", "k")', other) == 1
    assert lua('KSR.htable.sht_lock("c", "k")', branch) == 1


def test_item_values() -> None:
    assert Item(1, math.inf).expires == math.inf


# -- the export table -------------------------------------------------------------------------


def test_exports_follow_the_kemi_signatures() -> None:
    sigs = json.loads((REPO / "docs" / "kemi-signatures.json").read_text())["modules"]["htable"]
    exports = {e.name: e for e in htmod.MODULE.exports if not e.name.startswith("_")}
    assert set(exports) == set(sigs)
    for name, sig in sigs.items():
        assert list(exports[name].params) == sig["params"], name
        assert exports[name].ret == sig["ret"], name
        assert exports[name].doc, name
