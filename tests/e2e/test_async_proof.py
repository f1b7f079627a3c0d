"""Proof that waiting blocks nothing, with real peers: every INVITE's route sleeps 2 s
(``KSR.async.sleep``) and then relays statefully; SIPp sends 200 calls at 100 cps through
the in-process server. If the waits were serial the run would take 400 s; it takes about
4 s (2 s of sending + the last call's 2 s wait), so the waits overlap. The route checks
that its locals survive the wait (500 otherwise) and hands the value on as X-Before."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.test_stateless_sipp import requires_sipp, running_server
from tests.rtpengine.conftest import Rtpengine, rtpengine_binary, start_rtpengine, stop_rtpengine
from tests.support.ports import free_port_both
from tests.support.sipp import Sipp
from trio_sip.config import config_from_dict
from trio_sip.modules import rtpengine as rtpmod
from trio_sip.runtime.server import Server, serve

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ROUTES = str(REPO / "examples" / "rtpengine" / "routes.lua")

pytestmark = [requires_sipp, pytest.mark.sipp]

SLEEP_THEN_RELAY = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.siputils.has_totag() > 0 then\n"
    "    if KSR.rr.loose_route() > 0 or KSR.is_ACK() then KSR.tm.t_relay() end\n"
    "    return\n"
    "  end\n"
    "  KSR.rr.record_route()\n"
    "  local before = KSR.pv.get('$ci') .. '/' .. KSR.pv.get('$fU')\n"
    "  KSR.async.sleep(2)\n"
    "  if before ~= KSR.pv.get('$ci') .. '/' .. KSR.pv.get('$fU') then\n"
    "    KSR.pv.seti('$shv(changed)', KSR.pv.geti('$shv(changed)') + 1)\n"
    "    KSR.sl.sl_send_reply(500, 'Local Changed')\n"
    "    return\n"
    "  end\n"
    "  KSR.pv.seti('$shv(resumed)', KSR.pv.geti('$shv(resumed)') + 1)\n"
    "  KSR.hdr.append('X-Before: ' .. before .. '\\r\\n')\n"
    "  KSR.tm.t_relay()\n"
    "end\n"
)


async def test_200_calls_waiting_2s_each_overlap(write_routes: Any) -> None:
    calls = 200
    async with running_server(write_routes(SLEEP_THEN_RELAY)) as server:
        proxy = server.address("udp").port
        async with Sipp("uas.xml", calls=calls, timeout=60).running() as uas:
            start = time.monotonic()
            result = await Sipp("uac.xml", remote=uas.port, via=proxy, rate=100, calls=calls,
                                limit=400, timeout=60).run_async()
            elapsed = time.monotonic() - start
        print(f"\n{calls} calls at 100 cps, each INVITE route waiting 2 s: "
              f"SIPp run took {elapsed:.2f} s (serial waits would take {2 * calls} s)")
        assert result.ok, result.describe()
        assert result.successful == calls
        assert result.failed == 0
        assert server.core.shv["resumed"] == calls
        assert server.core.shv.get("changed") in (None, 0)
        assert server.core.stats["script_errors"] == 0
        assert elapsed < 10, f"the waits did not overlap: {elapsed:.2f} s"
        assert elapsed >= 2  # every call really waited


# -- media anchoring on the real rtpengine, with the routes of examples/rtpengine ------------


@pytest.fixture(scope="module")
def rtpengine_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    """The real daemon, started with tests/rtpengine/conftest.py's helpers (its fixtures
    are not visible from here)."""
    if rtpengine_binary() is None:
        pytest.skip("no rtpengine binary (Debian package rtpengine-daemon)")
    r = start_rtpengine(tmp_path_factory.mktemp("rtpengine") / "rtpengine.log")
    try:
        yield r
    finally:
        status = stop_rtpengine(r)
        assert status == 0, f"rtpengine exited with {status}; log:\n{r.log_tail()}"


@asynccontextmanager
async def running_server_with_rtpengine(routes: str, r: Rtpengine) -> AsyncIterator[Server]:
    port = free_port_both()
    data: dict[str, dict[str, object]] = {
        "mi": {"listen": ""},
        "core": {"listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
                 "log_level": "warning"},
        "lua": {"routes": routes},
        "modparams": {"rtpengine": {"rtpengine_sock": r.sock}},
    }
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config_from_dict(data))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def test_sipp_calls_anchored_on_rtpengine(rtpengine_daemon: Rtpengine) -> None:
    calls = 100
    async with running_server_with_rtpengine(EXAMPLE_ROUTES, rtpengine_daemon) as server:
        proxy = server.address("udp").port
        async with Sipp("uas.xml", calls=calls, timeout=60, trace_msg=True).running() as uas:
            start = time.monotonic()
            result = await Sipp("uac.xml", remote=uas.port, via=proxy, rate=50, calls=calls,
                                limit=200, timeout=60, trace_msg=True).run_async()
            elapsed = time.monotonic() - start
            uas_result = await uas.wait()
        print(f"\n{calls} calls at 50 cps through rtpengine: {elapsed:.2f} s")
        assert result.ok, result.describe()
        assert result.successful == calls
        assert server.core.stats["script_errors"] == 0
        stats = rtpmod.client_for(server.core).statistics()
        print(f"rtpengine client statistics: {stats}")
        assert stats["requests_offer"] == calls
        assert stats["requests_answer"] == calls
        assert stats["requests_delete"] == calls
        # the callee saw rtpengine's media ports in every offer, not the caller's
        ports = [int(m) for m in re.findall(r"^m=audio (\d+) ", uas_result.messages, re.M)]
        anchored = [p for p in ports
                    if rtpengine_daemon.port_min <= p <= rtpengine_daemon.port_max]
        assert len(anchored) >= calls, (len(anchored), ports[:10])
        # the caller saw rtpengine's ports in every answer too
        answer_ports = [int(m) for m in re.findall(r"^m=audio (\d+) ", result.messages, re.M)]
        rewritten = [p for p in answer_ports
                     if rtpengine_daemon.port_min <= p <= rtpengine_daemon.port_max]
        assert len(rewritten) >= calls, (len(rewritten), answer_ports[:10])
        # and no session is left in rtpengine after the BYEs
        client = rtpmod.client_for(server.core)
        listed = await client.request({"command": "list"})
        assert listed.get("calls") in ([], None), listed
