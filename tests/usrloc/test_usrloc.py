"""usrloc: bindings in memory, exact expiry in virtual time, the SQLite image, restarts,
the sweep, and the MI API."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sip.storage.sqlite import Clock, DbUrlError, SqliteWriter, resolve_db_url
from trio_sip.usrloc import FL_MEM, Contact, Usrloc, UsrlocParams, normalize_aor
from trio_sip.usrloc.contact import best_first, q_text

BASE = 1_800_000_000.0


def wall() -> float:
    """A wall clock that moves with virtual time, so restarts can be tested."""
    return BASE + trio.current_time()


def binding(ul: Usrloc, aor: str, uri: str, expires: float, **kw: Any) -> Contact:
    now = ul.clock.now()
    c = Contact(aor=aor, uri=uri, expires=now + expires, ruid=ul.new_ruid(),
                last_modified=now, callid=kw.pop("callid", "c1"), cseq=kw.pop("cseq", 1),
                **kw)
    ul.domain("location").insert(c)
    return c


def rows(path: Path, table: str = "location") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(f'SELECT aor, contact, expires FROM "{table}" ORDER BY aor, '
                                 "contact"))


async def test_a_binding_is_gone_at_exactly_its_expiry(autojump_clock: Any) -> None:
    ul = Usrloc(UsrlocParams(db_url="none"))
    start = trio.current_time()
    binding(ul, "alice", "sip:alice@127.0.0.2", 60)
    d = ul.domain("location")
    await trio.sleep(59.999)
    assert [c.uri for c in d.valid("alice", ul.clock.now())] == ["sip:alice@127.0.0.2"]
    assert ul.lookup("location", "alice") is not None
    await trio.sleep_until(start + 60)
    assert trio.current_time() - start == 60
    assert d.valid("alice", ul.clock.now()) == []
    assert ul.lookup("location", "alice") is None
    assert ul.dump()["Domains"][0]["AoRs"] == []
    # still in memory until a sweep frees it
    assert len(d.all("alice")) == 1
    assert await ul.sweep() == 1
    assert d.all("alice") == [] and len(d) == 0


async def test_the_sweep_runs_every_timer_interval_in_bounded_steps(autojump_clock: Any
                                                                    ) -> None:
    ul = Usrloc(UsrlocParams(db_url="none", timer_interval=30, sweep_batch=7))
    for i in range(50):
        binding(ul, f"u{i}", f"sip:u{i}@127.0.0.2", 10 if i % 2 else 100)
    async with trio.open_nursery() as nursery:
        await nursery.start(ul.run)
        await trio.sleep(29)
        assert len(ul.domain("location")) == 50  # expired, but not swept yet
        await trio.sleep(2)
        assert len(ul.domain("location")) == 25
        assert ul.stats["expired"] == 25
        nursery.cancel_scope.cancel()


async def test_bindings_survive_a_restart_and_expired_ones_do_not(autojump_clock: Any,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "loc.sqlite"
    ul = Usrloc(UsrlocParams(), db_path=str(path), clock=Clock(wall))
    ul.open()
    binding(ul, "alice", "sip:alice@127.0.0.2", 60)
    binding(ul, "alice", "sip:alice@127.0.0.3", 3600, q=500, received="sip:10.0.0.1:5060",
            path="<sip:edge;lr>", instance="<urn:uuid:1>", reg_id=1, user_agent="ua/1",
            socket="udp:127.0.0.1:5060", methods="INVITE,BYE", cflags=4)
    binding(ul, "bob", "sip:bob@127.0.0.4", math.inf)
    binding(ul, "carol", "sip:carol@127.0.0.5", 3600, flags=FL_MEM)
    await ul.flush()
    assert [r[:2] for r in rows(path)] == [("alice", "sip:alice@127.0.0.2"),
                                           ("alice", "sip:alice@127.0.0.3"),
                                           ("bob", "sip:bob@127.0.0.4")]
    assert [r[2] for r in rows(path)] == [BASE + 60, BASE + 3600, 0]  # epoch; 0 permanent
    ul.close()

    await trio.sleep(60)  # the server was down for a minute
    again = Usrloc(UsrlocParams(), db_path=str(path), clock=Clock(wall))
    again.open()
    d = again.domain("location")
    assert [c.uri for c in d.valid("alice", again.clock.now())] == ["sip:alice@127.0.0.3"]
    c = d.valid("alice", again.clock.now())[0]
    assert c.remaining(again.clock.now()) == 3540
    assert (c.q, c.received, c.path, c.instance, c.reg_id, c.user_agent, c.socket,
            c.methods, c.cflags) == (500, "sip:10.0.0.1:5060", "<sip:edge;lr>",
                                     "<urn:uuid:1>", 1, "ua/1", "udp:127.0.0.1:5060",
                                     "INVITE,BYE", 4)
    assert math.isinf(d.valid("bob", again.clock.now())[0].expires)
    assert d.valid("carol", again.clock.now()) == []  # memory only
    assert again.stats["loaded"] == 2
    # the expired row was deleted from the file at load
    assert [r[1] for r in rows(path)] == ["sip:alice@127.0.0.3", "sip:bob@127.0.0.4"]
    again.close()


async def test_changes_go_to_the_file_in_order_through_the_writer(autojump_clock: Any,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "loc.sqlite"
    ul = Usrloc(UsrlocParams(), db_path=str(path), clock=Clock(wall))
    ul.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(ul.run)
        assert ul.writer is not None and ul.writer.running
        c = binding(ul, "alice", "sip:alice@127.0.0.2", 60)
        c.expires += 100
        ul.domain("location").update(c)
        other = binding(ul, "alice", "sip:alice@127.0.0.9", 60)
        ul.domain("location").delete(other)
        assert ul.dirty
        await ul.flush()
        assert not ul.dirty
        assert rows(path) == [("alice", "sip:alice@127.0.0.2", BASE + 160)]
        # one commit for the whole burst (group commit)
        assert ul.writer.stats["db_commits"] == 1
        ul.rm("location", "alice")
        nursery.cancel_scope.cancel()
    # cancelled: what was queued is committed, the file is closed
    assert rows(path) == []
    assert not ul.writer.running


async def test_a_memory_only_binding_that_was_on_disk_leaves_it(autojump_clock: Any,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "loc.sqlite"
    ul = Usrloc(UsrlocParams(), db_path=str(path))
    ul.open()
    c = binding(ul, "alice", "sip:alice@127.0.0.2", 60)
    await ul.flush()
    assert len(rows(path)) == 1
    c.flags |= FL_MEM
    ul.domain("location").update(c)
    await ul.flush()
    assert rows(path) == []
    ul.close()


async def test_mi_api_dump_lookup_add_rm(autojump_clock: Any) -> None:
    ul = Usrloc(UsrlocParams(db_url="none"), clock=Clock(wall))
    added = ul.add("location", "sip:Alice@example.com", "sip:alice@127.0.0.2", 60, q=0.5,
                   path="<sip:p;lr>", flags=0, cflags=2, methods="INVITE")
    assert added.aor == "alice" and added.q == 500
    ul.add("location", "alice", "sip:alice@127.0.0.3", 0)  # permanent
    looked = ul.lookup("location", "alice@example.com")
    assert looked is not None
    assert [c["Address"] for c in looked] == ["sip:alice@127.0.0.2", "sip:alice@127.0.0.3"]
    first = looked[0]
    assert first["Expires"] == 60 and first["Q"] == "0.5" and first["Path"] == "<sip:p;lr>"
    assert first["Methods"] == "INVITE" and first["CFlags"] == 2
    assert first["Last-Modified"] == int(BASE)
    assert looked[1]["Expires"] == "permanent" and looked[1]["Q"] == -1
    # ul.add of an existing contact replaces it
    ul.add("location", "alice", "sip:alice@127.0.0.2", 120)
    assert [(c["Address"], c["Expires"]) for c in ul.lookup("location", "alice") or []] == [
        ("sip:alice@127.0.0.2", 120), ("sip:alice@127.0.0.3", "permanent")]
    dump = ul.dump()
    assert dump["Domains"][0]["Domain"] == "location"
    assert dump["Domains"][0]["AoRs"][0]["AoR"] == "alice"
    assert ul.dump(brief=True)["Domains"][0]["AoRs"][0]["Contacts"] == [
        {"Address": "sip:alice@127.0.0.2"}, {"Address": "sip:alice@127.0.0.3"}]
    assert ul.rm("location", "alice", "sip:alice@127.0.0.3") == 1
    assert ul.rm("location", "alice", "sip:nobody@x") == 0
    assert ul.rm("location", "alice") == 1
    assert ul.lookup("location", "alice") is None
    assert ul.rm("nosuch", "alice") == 0 and ul.lookup("nosuch", "alice") is None
    assert ul.statistics()["records"] == 0


def test_table_names_must_be_sql_identifiers() -> None:
    ul = Usrloc(UsrlocParams(db_url="none"))
    ul.domain("location_2")
    with pytest.raises(ValueError, match="bad table name"):
        ul.domain('loc"; DROP TABLE x; --')


def test_best_first_orders_by_q_then_most_recent() -> None:
    def c(uri: str, q: int, t: float) -> Contact:
        return Contact("a", uri, 100.0, q=q, last_modified=t)

    cs = [c("old-q1", 1000, 1), c("new-q1", 1000, 2), c("noq", -1, 9), c("q0", 0, 5)]
    assert [x.uri for x in best_first(cs)] == ["new-q1", "old-q1", "q0", "noq"]
    assert [x.uri for x in best_first(cs, desc_time_order=True)] == [
        "noq", "q0", "new-q1", "old-q1"]
    assert [q_text(q) for q in (1000, 500, 50, 5, 0)] == ["1", "0.5", "0.05", "0.005", "0"]


def test_normalize_aor() -> None:
    assert normalize_aor("Alice@Example.COM", use_domain=False) == "alice"
    assert normalize_aor("Alice@Example.COM", use_domain=True) == "alice@example.com"
    assert normalize_aor("sip:Al%69ce@Example.com;x=1", use_domain=True) == "alice@example.com"


def test_db_url() -> None:
    assert resolve_db_url("", "var") is None
    assert resolve_db_url("none", "var") is None
    assert resolve_db_url("sqlite:///{data_dir}/location.sqlite", "var") == \
        "var/location.sqlite"
    assert resolve_db_url("sqlite:///{data_dir}/l.sqlite", "/srv/x") == "/srv/x/l.sqlite"
    assert resolve_db_url("sqlite:////abs/l.sqlite", "var") == "/abs/l.sqlite"
    with pytest.raises(DbUrlError):
        resolve_db_url("mysql://kamailio@localhost/kamailio", "var")
    with pytest.raises(ValueError):
        UsrlocParams(db_url="postgres://x").validate()
    with pytest.raises(ValueError):
        UsrlocParams(db_mode=3).validate()


async def test_writer_counts_failed_commits_and_keeps_going(autojump_clock: Any,
                                                            tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    w = SqliteWriter(str(tmp_path / "w.sqlite"), max_pending=3)
    w.query("CREATE TABLE t (x INTEGER)")
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        w.submit("INSERT INTO t VALUES (1)")
        w.submit("INSERT INTO nosuch VALUES (1)")
        await w.flush()
        assert w.stats["db_errors"] == 2  # the whole batch was rolled back
        w.submit("INSERT INTO t VALUES (2)")
        await w.flush()
        for i in range(5):
            w.submit("INSERT INTO t VALUES (?)", (i,))
        assert w.stats["db_dropped"] == 2  # more than max_pending waiting
        await w.flush()
        with pytest.raises(RuntimeError):
            w.query("SELECT 1")  # reads only before the writer runs
        nursery.cancel_scope.cancel()
    assert "cannot write 2 change(s)" in caplog.text
    with sqlite3.connect(tmp_path / "w.sqlite") as conn:
        assert [r[0] for r in conn.execute("SELECT x FROM t")] == [2, 0, 1, 2]
    w.submit("INSERT INTO t VALUES (9)")  # closed: dropped, counted
    assert w.stats["db_dropped"] == 3


async def test_in_real_time_commits_run_in_a_worker_thread(tmp_path: Path) -> None:
    import threading

    w = SqliteWriter(str(tmp_path / "w.sqlite"))
    w.query("CREATE TABLE t (x INTEGER)")
    threads: list[int] = []
    commit = w._commit

    def spy(batch: list[Any]) -> None:
        threads.append(threading.get_ident())
        commit(batch)

    w._commit = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run)
        for i in range(100):
            w.submit("INSERT INTO t VALUES (?)", (i,))
        await w.flush()
        nursery.cancel_scope.cancel()
    assert threads and threading.get_ident() not in threads
    with sqlite3.connect(tmp_path / "w.sqlite") as conn:
        assert [r[0] for r in conn.execute("SELECT x FROM t")] == list(range(100))
