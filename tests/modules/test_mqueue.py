"""KSR.mqueue, $mqk/$mqv/$mq_size and the mqueue.* MI commands: Kamailio's return codes,
size and addmode rules, per-route fetched items, and queues that survive a restart
(dbmode) through the real server on the simulated network, in virtual time."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, outs, serving

from trio_sip.config import ConfigError
from trio_sip.mi.metrics import exposition
from trio_sip.mi.registry import MiError
from trio_sip.modules import mqueue as mqmod
from trio_sip.script.engine import ScriptError
from trio_sip.script.modparams import build_modparams
from trio_sip.sip.message import SipResponse
from trio_sip.storage.mqueue import QueueSpec, SpecError, parse_queue_spec

# A route that runs the Lua in the X-Lua header's named snippet and reports results.
ROUTES = OUT_LUA + """
local steps = {}
steps.add = function()
  out("a1", KSR.mqueue.mq_add("q", "k1", "v1"))
  out("a2", KSR.mqueue.mq_add("q", "k2", "v2"))
  out("a3", KSR.mqueue.mq_add("nope", "k", "v"))
  out("size", KSR.mqueue.mq_size("q"))
  out("size_pv", KSR.pv.get("$mq_size(q)"))
  out("size_none", KSR.mqueue.mq_size("nope"))
end
steps.drain = function()
  local got = {}
  while KSR.mqueue.mq_fetch("q") == 1 do
    got[#got + 1] = KSR.mqueue.mqk_get("q") .. "=" .. KSR.pv.get("$mqv(q)")
  end
  out("got", table.concat(got, ","))
  out("last", KSR.mqueue.mq_fetch("q"))
  out("none", KSR.mqueue.mq_fetch("nope"))
  out("k", KSR.mqueue.mqk_get("q"))
  out("ke", KSR.mqueue.mqk_gete("q"))
  out("kw", KSR.mqueue.mqk_getw("q"))
  out("vw", KSR.mqueue.mqv_getw("q"))
  out("empty", KSR.mqueue.mq_size("q"))
end
steps.keep = function()
  KSR.mqueue.mq_add("q", "a", "1")
  KSR.mqueue.mq_fetch("q")
  out("before", KSR.mqueue.mqv_get("q"))
  out("free", KSR.mqueue.mq_pv_free("q"))
  out("after", KSR.mqueue.mqv_get("q"))
  out("pv_after", KSR.pv.get("$mqk(q)"))
end
function ksr_request_route()
  steps[KSR.hdr.get("X-Lua")]()
  KSR.sl.send_reply(200, "OK")
end
"""


async def _run(env: Any, step: str) -> dict[str, str]:
    start = len(env.uac.received)
    await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1",
                                       call_id=f"mq-{step}-{start}",
                                       headers=[("X-Lua", step)]), PROXY)
    got = await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse), start=start)
    assert isinstance(got.msg, SipResponse) and got.msg.status == 200, got.msg
    return outs(got.msg)


def _config(*queues: str, **extra: Any) -> dict[str, Any]:
    return {"modparams": {"mqueue": {"mqueue": list(queues), **extra}}}


# -- definitions ------------------------------------------------------------------------


def test_queue_specs_use_kamailio_syntax() -> None:
    assert parse_queue_spec("name=myq;size=20;") == QueueSpec("myq", size=20)
    assert parse_queue_spec("NAME=q;addmode=2;dbmode=1") == QueueSpec("q", 0, 2, 1)
    for bad, why in [("size=3", "no name"), ("name=q;size=x", "integer"),
                     ("name=q;colour=blue", "unknown attribute"), ("name=q;size=-1", ">= 0"),
                     ("name=q;addmode=3", "addmode"), ("name=q;dbmode=4", "dbmode"),
                     ("name=a-b;dbmode=1", "letters"), ("name=q;junk", "attr=value"),
                     ("name=q;name=r", "twice")]:
        with pytest.raises(SpecError, match=why):
            parse_queue_spec(bad)
    assert parse_queue_spec("name=a-b").name == "a-b"  # memory only: any name


def test_bad_definitions_refuse_to_start() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mqueue": ["name=q", "name=q;size=3"]}, "defined twice"),
        ({"mqueue": ["name=q;sise=3"]}, "unknown attribute"),
        ({"mqueue": ["name=q;dbmode=1"], "db_url": "redis://x"}, "unsupported db_url"),
        ({"mqueue": ["name=q;dbmode=1"], "db_url": "none"}, "db_url is \"none\""),
        ({"queue": ["name=q"]}, "unknown param"),
    ]
    for raw, why in cases:
        with pytest.raises(ConfigError, match=r"modparams\.mqueue") as info:
            build_modparams([mqmod.MODULE], {"mqueue": raw})
        assert why in str(info.value)
    p = build_modparams([mqmod.MODULE], {"mqueue": {"mqueue_name": ["x", "y"],
                                                    "mqueue_size": 5,
                                                    "mqueue_addmode": 1}})["mqueue"]
    assert p.specs() == [QueueSpec("x", 5, 1), QueueSpec("y", 5, 1)]


# -- the KEMI functions -----------------------------------------------------------------


async def test_add_fetch_size_and_their_codes(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(ROUTES), config=_config("name=q")) as env:
        got = await _run(env, "add")
        assert got == {"a1": "number:1", "a2": "number:1", "a3": "number:-1",
                       "size": "number:2", "size_pv": "number:2", "size_none": "number:-1"}
        got = await _run(env, "drain")
        assert got["got"] == "string:k1=v1,k2=v2"  # oldest first
        assert got["last"] == "number:-2" and got["none"] == "number:-1"
        # a failed fetch forgets the previous item
        assert got["k"] == "nil:nil" and got["ke"] == "string:" and got["kw"] == "string:<null>"
        assert got["vw"] == "string:<null>" and got["empty"] == "number:0"
        got = await _run(env, "keep")
        assert got == {"before": "string:1", "free": "number:1", "after": "nil:nil",
                       "pv_after": "nil:nil"}
        stats = env.server.core.mqueue.statistics()
        assert stats["q:added"] == 3 and stats["q:fetched"] == 3 and stats["q:size"] == 0


ADDMODE_ROUTES = OUT_LUA + """
function ksr_request_route()
  local q = KSR.hdr.get("X-Q")
  for _, kv in ipairs({"a=1", "b=2", "a=3", "c=4", "a=5"}) do
    local k, v = kv:match("(%w)=(%w)")
    KSR.mqueue.mq_add(q, k, v)
  end
  local got = {}
  while KSR.mqueue.mq_fetch(q) > 0 do
    got[#got + 1] = KSR.mqueue.mqk_get(q) .. KSR.mqueue.mqv_get(q)
  end
  out("got", table.concat(got, " "))
  KSR.sl.send_reply(200, "OK")
end
"""


async def test_size_and_addmode(autojump_clock: Any, write_routes: Any) -> None:
    config = _config("name=all", "name=oldest;addmode=1", "name=newest;addmode=2",
                     "name=small;size=3", "name=small_newest;size=2;addmode=2")
    expected = {"all": "a1 b2 a3 c4 a5", "oldest": "a1 b2 c4", "newest": "b2 c4 a5",
                "small": "a3 c4 a5", "small_newest": "c4 a5"}
    async with serving(write_routes(ADDMODE_ROUTES), config=config) as env:
        for q, want in expected.items():
            start = len(env.uac.received)
            await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1",
                                               call_id=f"am-{q}", headers=[("X-Q", q)]), PROXY)
            r = await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse), start=start)
            assert outs(r.msg)["got"] == f"string:{want}", q
        stats = env.server.core.mqueue.statistics()
        assert stats["small:dropped"] == 2 and stats["oldest:kept_oldest"] == 2
        assert stats["newest:replaced"] == 2


WAITING_ROUTES = OUT_LUA + """
function ksr_request_route()
  if KSR.hdr.is_present("X-Add") > 0 then
    KSR.mqueue.mq_add("q", "k", KSR.hdr.get("X-Add"))
    KSR.sl.send_reply(200, "OK")
    return
  end
  KSR.mqueue.mq_fetch("q")
  KSR.async.sleep(5)  -- another route fetches meanwhile
  out("mine", KSR.mqueue.mqv_get("q"))
  KSR.sl.send_reply(200, "OK")
end
"""


async def test_the_fetched_item_belongs_to_the_route(autojump_clock: Any,
                                                      write_routes: Any) -> None:
    async with serving(write_routes(WAITING_ROUTES), config=_config("name=q")) as env:
        for v in ("one", "two"):
            await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1",
                                               call_id=f"add-{v}", headers=[("X-Add", v)]),
                               PROXY)
        await trio.sleep(1)
        start = len(env.uac.received)
        for i in range(2):
            await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1",
                                               call_id=f"fetch-{i}"), PROXY)
            await trio.sleep(1)
        got = []
        for i in range(2):
            r = await env.uac.wait_for(
                lambda r, i=i: isinstance(r.msg, SipResponse) and r.msg.call_id == f"fetch-{i}",
                start=start)
            got.append(outs(r.msg)["mine"])
        assert got == ["string:one", "string:two"]


# -- MI ----------------------------------------------------------------------------------


async def test_mi_commands(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(ROUTES), config=_config("name=q", "name=r")) as env:
        await _run(env, "add")
        reg, mi = env.server.registry, env.server.mi
        assert await reg.call("mqueue.get_size", ["q"], mi) == {"name": "q", "size": 2}
        assert await reg.call("mqueue.get_size", {"name": "r"}, mi) == {"name": "r", "size": 0}
        assert await reg.call("mqueue.get_sizes", [], mi) == [{"name": "q", "size": 2},
                                                              {"name": "r", "size": 0}]
        assert await reg.call("mqueue.fetch", ["q"], mi) == {"key": "k1", "val": "v1"}
        assert await reg.call("mqueue.get_size", ["q"], mi) == {"name": "q", "size": 1}
        with pytest.raises(MiError, match="No such queue"):
            await reg.call("mqueue.get_size", ["zz"], mi)
        with pytest.raises(MiError, match="Empty queue") as info:
            await reg.call("mqueue.fetch", ["r"], mi)
        assert info.value.code == 404
        with pytest.raises(MiError, match="Invalid params"):
            await reg.call("mqueue.fetch", [], mi)
        stats = await reg.call("stats.get_statistics", ["mqueue:"], mi)
        assert "mqueue:q:size = 1" in stats and "mqueue:q:fetched = 1" in stats
        text = exposition(mi)
        assert "# TYPE trio_sip_mqueue_q_size gauge\ntrio_sip_mqueue_q_size 1\n" in text
        assert "trio_sip_mqueue_q_added_total 2\n" in text


# -- persistence ----------------------------------------------------------------------------


async def _add_then_stop(write_routes: Any, config: dict[str, Any], values: list[str]) -> None:
    async with serving(write_routes(WAITING_ROUTES), config=config) as env:
        for v in values:
            start = len(env.uac.received)
            await env.uac.send(env.uac.request("MESSAGE", "sip:x@127.0.0.1",
                                               call_id=f"p-{v}", headers=[("X-Add", v)]),
                               PROXY)
            await env.uac.wait_for(lambda r: isinstance(r.msg, SipResponse), start=start)


async def test_queued_items_survive_a_restart(autojump_clock: Any, write_routes: Any,
                                              tmp_path: Path) -> None:
    db = tmp_path / "mq.sqlite"
    config = _config("name=q;size=3;dbmode=1", db_url=f"sqlite:///{db}")
    await _add_then_stop(write_routes, config, ["a", "b", "c", "d"])  # "a" dropped (size)
    with sqlite3.connect(db) as conn:  # Kamailio's table layout: id, key, val
        assert list(conn.execute('SELECT "key", val FROM q ORDER BY id')) == [
            ("k", "b"), ("k", "c"), ("k", "d")]
    async with serving(write_routes(ROUTES), config=config) as env:
        reg, mi = env.server.registry, env.server.mi
        assert await reg.call("mqueue.get_size", ["q"], mi) == {"name": "q", "size": 3}
        got = await _run(env, "drain")
        assert got["got"] == "string:k=b,k=c,k=d"
        await _run(env, "add")  # k1, k2 after the loaded ones, with new ids
        await env.server.core.mqueue.flush()
        with sqlite3.connect(db) as conn:
            rows = list(conn.execute('SELECT id, "key" FROM q ORDER BY id'))
        assert [k for _, k in rows] == ["k1", "k2"] and rows[0][0] > 4
    async with serving(write_routes(ROUTES), config=config) as env:
        assert (await _run(env, "drain"))["got"] == "string:k1=v1,k2=v2"


async def test_dbmode_2_loads_once_and_dbmode_3_only_saves(
        autojump_clock: Any, write_routes: Any, tmp_path: Path) -> None:
    db = tmp_path / "mq.sqlite"
    url = f"sqlite:///{db}"
    await _add_then_stop(write_routes, _config("name=q;dbmode=3", db_url=url), ["x", "y"])
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT val FROM q ORDER BY id")] == ["x", "y"]
    # dbmode 3 does not load: a fresh queue, and the file follows it
    async with serving(write_routes(ROUTES), config=_config("name=q;dbmode=3", db_url=url)
                       ) as env:
        assert (await _run(env, "drain"))["got"] == "string:"
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO q (\"key\", val) VALUES (?, ?)", [("p", "1"), ("p", "2")])
    # dbmode 2 loads what is there, then the rows are gone and nothing is saved: a second
    # start has only what its own route added
    for loaded in ("p=1,p=2,", ""):
        async with serving(write_routes(ROUTES),
                           config=_config("name=q;dbmode=2", db_url=url)) as env:
            await _run(env, "add")
            assert (await _run(env, "drain"))["got"] == f"string:{loaded}k1=v1,k2=v2"
        with sqlite3.connect(db) as conn:
            assert list(conn.execute("SELECT val FROM q")) == []


async def test_an_unusable_file_refuses_to_start(autojump_clock: Any, write_routes: Any,
                                                  tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = _config("name=q;dbmode=1", db_url=f"sqlite:///{blocker}/sub/mq.sqlite")
    with pytest.RaisesGroup(pytest.RaisesGroup(pytest.RaisesExc(
            ScriptError, match=r"module 'mqueue': init failed: .*Not a directory"))):
        async with serving(write_routes(ROUTES), config=config):
            pass


def test_exports_follow_the_kemi_signatures() -> None:
    got = {e.name: (e.params, e.ret) for e in mqmod.MODULE.exports}
    assert got == {
        "mq_add": (("str", "str", "str"), "int"), "mq_fetch": (("str",), "int"),
        "mq_size": (("str",), "int"), "mq_pv_free": (("str",), "int"),
        **{f"mq{kv}_get{s}": (("str",), "xval") for kv in "kv" for s in ("", "e", "w")},
    }
    assert {c.name for c in mqmod.MODULE.mi_commands} == {
        "mqueue.get_size", "mqueue.get_sizes", "mqueue.fetch"}
