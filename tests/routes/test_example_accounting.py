"""examples/accounting in virtual time: both servers of the example on one SimNetwork,
each with its own config file as it is (proxy.toml: proxy.lua on 127.0.0.1:5060;
acc.toml: acc.lua on 127.0.0.1:5070, SQLite in ``tmp_path``), only the MI listeners
turned off. tests/e2e/test_accounting.py runs the same pair with SIPp.

What this shows a route author: two servers started with ``sip_server(config=...,
address=...)`` on the same network, the local requests one sends to the other
(``KSR.uac.uac_req_send``) found in the network's log with their exact send times
(``sip_log``), and the result read where the routes put it (the SQLite file); a dead
peer stood in for by a silent :class:`SimUA`, to pin down tm's retransmissions of a
local request and show that the calls never wait for it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.config import load_config
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, assert_sent_at, sip_log
from trio_sip.transport.base import Address

from .conftest import REPO

EXAMPLE = Path(REPO) / "examples" / "accounting"
PROXY = Address("127.0.0.1", 5060)
ACC = Address("127.0.0.1", 5070)  # proxy.lua's default $ACC_SERVER


def config(name: str, *overrides: str) -> Any:
    """One of the example's config files, without its MI listener."""
    return load_config(EXAMPLE / name, ["mi.listen=", *overrides])


async def answered_call(alice: SimUA, call_id: str, *, hold: float) -> SipResponse:
    """alice calls bob (127.0.0.3) through the proxy, ACKs the 200, hangs up after
    ``hold`` s and waits for the BYE's 200; the INVITE's 200."""
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id=call_id), PROXY)
    ok = await alice.expect_response(200, method="INVITE")
    route = [("Route", ok.get("Record-Route") or "")]
    await alice.send(alice.request("ACK", "sip:bob@127.0.0.3", call_id=call_id,
                                   to_tag=ok.to_tag, headers=route), PROXY)
    await trio.sleep(hold)
    await alice.send(alice.request("BYE", "sip:bob@127.0.0.3", call_id=call_id, cseq=2,
                                   to_tag=ok.to_tag, headers=route), PROXY)
    await alice.expect_response(200, method="BYE", start=len(alice.received))
    return ok


def rows(data_dir: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(data_dir / "acc.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM acc ORDER BY id")]
    finally:
        db.close()


async def test_an_answered_call_is_recorded_at_start_and_end(
        autojump_clock: trio.testing.MockClock, sip_server: Any, sip_net: SimNetwork,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    await sip_server(config=config("acc.toml", f"core.data_dir={tmp_path}"), address=ACC)
    await sip_server(config=config("proxy.toml"), address=PROXY)
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob.answer(200, ringing=0.0, after=2.0)  # 180 at once: no INVITE retransmission
    wall_before = int(time.time())
    t0 = trio.current_time()
    ok = await answered_call(alice, "acc-call-1", hold=5.0)
    await trio.testing.wait_all_tasks_blocked()
    wall_after = int(time.time())
    # an ACCOUNTING request at the 200 of the INVITE (t0 + 2) and of the BYE (t0 + 7),
    # each answered "200 Stored" at once
    sent = assert_sent_at(sip_net, [2.0, 7.0], relative_to=t0, src=PROXY, dst=ACC,
                          method="ACCOUNTING", requests=True)
    assert [s.msg.ruri_text for s in sent if isinstance(s.msg, SipRequest)] == [
        "sip:acc@127.0.0.1:5070"] * 2
    assert [(x.sent_at - t0, x.msg.status, x.msg.reason) for x in sip_log(
        sip_net, src=ACC, dst=PROXY, method="ACCOUNTING") if isinstance(x.msg, SipResponse)
    ] == [(2.0, 200, "Stored"), (7.0, 200, "Stored")]
    start, end = rows(tmp_path)
    for row, method, cseq in ((start, "INVITE", 1), (end, "BYE", 2)):
        assert wall_before <= row.pop("time") <= wall_after  # os.time() of the proxy
        row.pop("id")
        assert row == {"method": method, "callid": "acc-call-1", "cseq": cseq,
                       "from_tag": "ft1", "to_tag": ok.to_tag, "src_user": "ua",
                       "dst_user": "bob", "sip_code": 200, "sip_reason": "OK"}


async def test_a_dead_accounting_server_never_delays_a_call(
        autojump_clock: trio.testing.MockClock, sip_server: Any, sip_net: SimNetwork,
        sip_ua: Callable[..., SimUA], caplog: pytest.LogCaptureFixture) -> None:
    """Nobody answers at 127.0.0.1:5070 (a silent SimUA records what comes): the call
    goes on as usual, while tm retransmits the ACCOUNTING request (Timer E: T1, 2*T1,
    ... capped at T2) until fr_timer ends it with a local 408, which the proxy's
    ksr_uac_event() gets."""
    await sip_server(config=config("proxy.toml", "tm.fr_timer=5000"), address=PROXY)
    dead = sip_ua(ACC.host, ACC.port)  # answers nothing
    alice, bob = sip_ua("127.0.0.2"), sip_ua("127.0.0.3")
    bob.answer(200, ringing=0.0, after=1.0)  # 180 at once: no INVITE retransmission
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3", call_id="acc-call-2"),
                     PROXY)
    await alice.expect_response(200, method="INVITE", at=t0 + 1.0)  # not delayed
    await trio.sleep_until(t0 + 1.0 + 4.999)
    assert not [r for r in caplog.records if "not stored" in r.getMessage()]
    await trio.sleep_until(t0 + 1.0 + 5.0)
    await trio.testing.wait_all_tasks_blocked()
    [logged] = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert logged.endswith(  # (the log line starts with proxy.lua:LINE)
        "accounting: record INVITE acc-call-2 not stored: 408 (local: no answer)")
    await trio.sleep(10)
    # Timer E from the 200 at t0 + 1: 0, 0.5, 1.5, 3.5 (T1 = 0.5 s, doubling, at most
    # T2 = 4 s), and nothing after fr_timer (5 s)
    assert_sent_at(sip_net, [0.0, 0.5, 1.5, 3.5], relative_to=t0 + 1.0, src=PROXY, dst=ACC,
                   method="ACCOUNTING", requests=True)
    assert len(dead.requests()) == 4
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [logged]
    assert dead.requests()[0].body.decode().startswith("method=INVITE\r\ncallid=acc-call-2\r\n")


async def test_the_accounting_server_refuses_bad_records(
        autojump_clock: trio.testing.MockClock, sip_server: Any,
        sip_ua: Callable[..., SimUA], tmp_path: Path) -> None:
    await sip_server(config=config("acc.toml", f"core.data_dir={tmp_path}"), address=ACC)
    client = sip_ua("127.0.0.9")
    t0 = trio.current_time()
    record = b"method=INVITE\r\ncallid=x1\r\ncseq=1\r\nsip_code=200\r\ntime=1764460800\r\n"
    cases = [
        ("ACCOUNTING", record, 200, "Stored"),
        ("ACCOUNTING", record, 200, "Stored"),  # the same record again: stored once
        ("ACCOUNTING", b"method=INVITE\r\ncseq=1\r\n", 400, "Bad Record (no callid)"),
        ("ACCOUNTING", record.replace(b"cseq=1", b"cseq=1; DROP TABLE acc"), 400,
         "Bad Record (bad cseq)"),
        ("OPTIONS", b"", 405, "Method Not Allowed"),
    ]
    for method, body, status, reason in cases:
        start = len(client.received)
        await client.send(client.request(method, "sip:acc@127.0.0.1:5070", body=body), ACC)
        got = await client.expect_response(status, at=t0, start=start)
        assert got.reason == reason
    assert got.get("Allow") == "ACCOUNTING"
    assert [(r["callid"], r["cseq"], r["time"]) for r in rows(tmp_path)] == [
        ("x1", 1, 1764460800)]
