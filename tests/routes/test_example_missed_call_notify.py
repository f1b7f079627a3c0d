"""examples/missed-call-notify (routes.lua + lua/notify.lua, the example's own
trio-sip.toml) in virtual time: a missed call is queued by the failure route and
POSTed by the timer route at its next tick, to a scripted HTTP target
(trio_sip/testing/http.py) found in the SQLite targets table; the call itself never
waits for the web. tests/e2e/test_missed_call_notify.py runs the same example with
SIPp and a real HTTP server.

What this shows a route author: the example's config used as it is (only the data
directory and the MI listener changed), a table of the example prepared in
``tmp_path``, ``ScriptedHttp`` standing in for the notify target, and exact times: the
480 reaches the caller at once, the POST goes out at the rtimer's first tick (1 s
after the server started).

Retries: notify.lua's due times follow the server's clock (``KSR.async.now_ms``,
Trio's: virtual here), anchored at the wall clock when first read, so the retries of a
failing target come at exact times: the first attempt at the first tick, then
``backoff_s`` * 2^(n-1) after each failed attempt (capped at ``max_backoff_s``), and
the give-up after ``max_attempts``. tests/e2e/test_missed_call_notify.py covers them
in real time, across a restart of the proxy.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_sip.config import load_config
from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimUA
from trio_sip.testing.http import ScriptedHttp
from trio_sip.transport.base import Address

from .conftest import REPO

EXAMPLE = Path(REPO) / "examples" / "missed-call-notify"
TARGET = "http://127.0.0.1:8088/notify/bob"


def example_config(data_dir: Path, *overrides: str) -> Any:
    """The example's trio-sip.toml, its files under ``data_dir``, no MI listener (and
    ``overrides``, as ``trio-sip run --set`` takes them)."""
    db = sqlite3.connect(data_dir / "notify.sqlite")
    with db:
        db.execute("CREATE TABLE notify_targets (user TEXT PRIMARY KEY, url TEXT NOT NULL)")
        db.execute("INSERT INTO notify_targets VALUES ('bob', ?)", (TARGET,))
    db.close()
    return load_config(EXAMPLE / "trio-sip.toml",
                       [f"core.data_dir={data_dir}", "mi.listen=", *overrides])


def unavailable(callee: SimUA) -> None:
    """The callee answers every INVITE 480 at once."""
    callee.on_request = lambda ua, req, src: (
        ua.send_soon(src, ua.response_to(req, 480)) if req.method == "INVITE" else None)


def ringing_forever(callee: SimUA) -> None:
    """The callee rings (180) and never answers; a CANCEL gets 200, then 487."""
    invites: list[SipRequest] = []

    def on_request(ua: SimUA, req: SipRequest, src: Address) -> None:
        if req.method == "INVITE":
            invites.append(req)
            ua.send_soon(src, ua.response_to(req, 180))
        elif req.method == "CANCEL":
            ua.send_soon(src, ua.response_to(req, 200),
                         *[ua.response_to(i, 487) for i in invites])

    callee.on_request = on_request


def queued(data_dir: Path) -> list[tuple[str, list[str]]]:
    """The notify queue as kept in its SQLite file (dbmode=1): (callee, the record's
    fields "attempts|due|time|code|call-id|caller" of lua/notify.lua)."""
    db = sqlite3.connect(data_dir / "mqueue.sqlite")
    try:
        return [(key, val.split("|")) for key, val in
                db.execute('SELECT "key", val FROM notify ORDER BY id')]
    finally:
        db.close()


async def test_a_480_is_notified_at_the_next_tick(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    server = await sip_server(config=example_config(tmp_path))
    target = ScriptedHttp(status=200)
    target.install(server.core)
    started = trio.current_time()  # the rtimer ticks at started + 1, + 2 ...
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    unavailable(bob)
    await trio.sleep(0.25)
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-1"),
                     server.address())
    await alice.expect_response(480, at=t0)  # the caller never waits for the notification
    post = await target.wait_for_request()
    assert post.at == started + 1.0  # the first tick of [modparams.rtimer] interval=1
    assert (post.method, post.url) == ("POST", TARGET)
    assert post.headers["content-type"] == "application/json"
    note = post.json()
    assert abs(note.pop("time") - time.time()) < 5  # os.time(): wall clock
    assert note == {"type": "missed_call", "from": "sip:ua@127.0.0.2:5060", "to": "bob",
                    "code": 480, "attempt": 1, "call-id": "missed-1"}
    # sent once: later ticks find the queue empty
    await trio.sleep(5)
    assert len(target.requests) == 1
    assert server.core.shv.get("notify:sent") == 1
    assert queued(tmp_path) == []


async def test_a_call_nobody_answers_is_notified_after_fr_inv_timer(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    # bob rings for 4.5 s, then tm gives up (408)
    server = await sip_server(config=example_config(tmp_path, "tm.fr_inv_timer=4500"))
    target = ScriptedHttp(status=204)
    target.install(server.core)
    started = trio.current_time()
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    ringing_forever(bob)
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-2"),
                     server.address())
    await alice.expect_response(180, at=t0)
    await alice.expect_response(408, at=t0 + 4.5)
    post = await target.wait_for_request()
    assert post.at == started + 5.0  # the first tick after the 408
    assert (post.json()["code"], post.json()["call-id"]) == (408, "missed-2")
    await trio.testing.wait_all_tasks_blocked()  # the route goes on after the answer
    assert server.core.shv.get("notify:sent") == 1


async def test_a_failing_target_keeps_the_notification_queued(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    server = await sip_server(config=example_config(tmp_path))
    target = ScriptedHttp(status=503)
    target.install(server.core)
    started = trio.current_time()
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    unavailable(bob)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-3"),
                     server.address())
    await alice.expect_response(480)
    post = await target.wait_for_request()
    await trio.testing.wait_all_tasks_blocked()  # the route goes on after the answer
    assert (post.at, post.answered_at, post.status) == (started + 1.0, started + 1.0, 503)
    assert server.core.shv.get("notify:retried") == 1
    assert server.core.shv.get("notify:sent") is None
    # back in the queue, on disk: attempt 1 counted, due backoff_s (1 s) after the
    # attempt, in ms since the epoch on notify.lua's clock
    [(callee, record)] = queued(tmp_path)
    attempts, due, _, code, call_id, caller = record
    assert (callee, attempts, code, call_id, caller) == (
        "bob", "1", "480", "missed-3", "sip:ua@127.0.0.2:5060")
    assert int(due) == lua_clock(server, post.at) + 1000


def lua_clock(server: Any, at: float) -> int:
    """notify.lua's clock (ms since the epoch) at the server's time ``at``: its anchor is
    the wall clock and KSR.async.now_ms when it was first read."""
    wall, mono = server.core.engine.lua.globals().package.loaded["notify"].clock_anchor()
    assert wall is not None, "notify.lua's clock was never read"
    assert abs(wall / 1000 - time.time()) < 60  # the wall clock, read in this test
    return int(wall) + int(at * 1000) - int(mono)


async def test_a_failing_target_is_retried_with_backoff_then_given_up(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    """The example's routes, with a cap and a limit on the retries (notify.setup merges
    them into the example's options: backoff_s = 1): a target that always answers 503
    gets attempt 1 at the first tick, then the retries 1, 2, 4 s after each failed
    attempt, then every 4 s (max_backoff_s), and nothing after the 6th attempt."""
    routes = tmp_path / "routes.lua"
    routes.write_text(f'dofile("{EXAMPLE / "routes.lua"}")\n'
                      'require("notify").setup { max_backoff_s = 4, max_attempts = 6 }\n')
    server = await sip_server(config=example_config(tmp_path, f"lua.routes={routes}"))
    target = ScriptedHttp(status=503)
    target.install(server.core)
    started = trio.current_time()
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    unavailable(bob)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-6"),
                     server.address())
    await alice.expect_response(480)
    dues = []
    for n in range(1, 7):
        post = await target.wait_for_request(n)
        await trio.testing.wait_all_tasks_blocked()
        if n < 6:  # back in the queue, due exactly the backoff after this attempt
            [(_, record)] = queued(tmp_path)
            assert record[0] == str(n)
            dues.append(int(record[1]) - lua_clock(server, post.at))
    assert [(r.at - started, r.json()["attempt"], r.status) for r in target.requests] == [
        (1.0, 1, 503), (2.0, 2, 503), (4.0, 3, 503), (8.0, 4, 503), (12.0, 5, 503),
        (16.0, 6, 503)]
    assert dues == [1000, 2000, 4000, 4000, 4000]
    # the 6th failure gives up: dropped, out of the queue, never tried again
    assert server.core.shv.get("notify:retried") == 5
    assert server.core.shv.get("notify:dropped") == 1
    assert server.core.shv.get("notify:sent") is None
    assert queued(tmp_path) == []
    await trio.sleep(120)
    assert len(target.requests) == 6


async def test_a_hung_target_is_bounded_by_timeout_ms(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    server = await sip_server(config=example_config(tmp_path))
    target = ScriptedHttp(delay=math.inf)  # accepts the POST, never answers
    target.install(server.core)
    started = trio.current_time()
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    unavailable(bob)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-4"),
                     server.address())
    await alice.expect_response(480)
    post = await target.wait_for_request()
    assert post.at == started + 1.0
    # notify.setup{timeout_ms = 2000}: the POST is given up at tick + 2 s. Meanwhile
    # SIP is served as usual: another missed call gets its 480 at once, and is queued
    await trio.sleep_until(started + 1.5)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="missed-5"),
                     server.address())
    await alice.expect_response(480, at=started + 1.5, start=len(alice.received))
    await trio.sleep_until(started + 2.999)
    assert (post.status, server.core.shv.get("notify:retried")) == (0, None)
    await trio.sleep_until(started + 3.0)
    await trio.testing.wait_all_tasks_blocked()
    assert server.core.shv.get("notify:retried") == 1  # the first one goes back
    assert server.core.http_client.statistics()["timeouts"] == 1
    # the run overran the tick at started + 2 (skipped); the next run, at + 3, takes
    # the queue in order: the second notification first, and waits on it
    assert server.core.rtimer.statistics()["notify:skipped"] == 1
    assert [(r.at - started, r.json()["call-id"]) for r in target.requests] == [
        (1.0, "missed-4"), (3.0, "missed-5")]
