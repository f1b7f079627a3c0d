"""The async bridge end to end in virtual time: a route that waits resumes in place with
its locals, inside its transaction; cancelling the transaction cancels the wait and the
route never runs again."""

from __future__ import annotations

import logging

import trio

from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)

WAIT_THEN_RELAY = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
    "  KSR.pv.seti('$shv(runs)', KSR.pv.geti('$shv(runs)') + 1)\n"
    "  local n = 0\n"
    "  for i = 1, 3 do\n"
    "    KSR.async.ms_sleep(500)\n"
    "    n = n + 1\n"
    "  end\n"
    "  KSR.hdr.append('X-Waited: ' .. n .. '\\r\\n')\n"
    "  KSR.pv.sets('$shv(resumed)', 'yes')\n"
    "  KSR.tm.t_relay()\n"
    "end\n"
)


async def test_route_waits_and_resumes_in_place_with_its_locals(autojump_clock,
                                                                 write_routes) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(WAIT_THEN_RELAY))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        start = trio.current_time()
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        trying = await uac.expect_response(100)
        assert trying is not None  # the wait created the transaction: 100 Trying at once
        got = await uas.expect_request("INVITE")
        assert got.at - start == 1.5  # three 500 ms waits, in virtual time
        assert isinstance(got.msg, SipRequest)
        assert got.msg.get("X-Waited") == "3"  # the loop counter survived every wait
        assert server.core.shv["resumed"] == "yes"
        assert server.engine.pending_coroutines == 0
        nursery.cancel_scope.cancel()


async def test_retransmissions_are_absorbed_while_the_route_waits(autojump_clock,
                                                                   write_routes) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(WAIT_THEN_RELAY))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        invite = uac.request("INVITE", f"sip:bob@{UAS}")
        await uac.send(invite, PROXY)
        await trio.sleep(0.5)
        await uac.send(invite, PROXY)  # the caller's Timer A
        await uas.expect_request("INVITE")
        await trio.sleep(1)
        assert server.core.shv["runs"] == 1  # the route ran once
        assert server.core.stats["rcv_requests"] == 2
        assert sum(1 for r in uac.responses() if r.status == 100) == 2  # retransmitted 100
        nursery.cancel_scope.cancel()


async def test_cancel_during_the_wait_stops_the_route_for_good(autojump_clock, write_routes,
                                                               caplog) -> None:
    caplog.set_level(logging.INFO, logger="trio_sip")
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
        "  if KSR.is_ACK() then return end\n"
        "  KSR.tm.t_newtran()\n"
        "  KSR.async.sleep(10)\n"
        "  KSR.pv.sets('$shv(after)', 'ran')\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", branch="z9hG4bKc1",
                                   call_id="cx"), PROXY)
        await uac.expect_response(100)
        await trio.sleep(1)
        await uac.send(uac.request("CANCEL", f"sip:bob@{UAS}", branch="z9hG4bKc1",
                                   call_id="cx"), PROXY)
        await uac.expect_response(200, method="CANCEL")
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        await uac.send(uac.request("ACK", f"sip:bob@{UAS}", branch="z9hG4bKc1", call_id="cx",
                                   to_tag=final.to_tag), PROXY)
        await trio.sleep(30)  # far beyond the sleep and wt
        assert "after" not in server.core.shv  # the route never ran past its wait
        assert uas.requests() == []
        assert server.engine.pending_coroutines == 0
        assert server.core.tm.statistics()["inuse_transactions"] == 0
        nursery.cancel_scope.cancel()


async def test_fr_bounds_a_route_that_waits_too_long(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then return end\n"
        "  KSR.tm.t_set_fr(0, 2000)\n"
        "  KSR.async.sleep(60)\n"
        "  KSR.pv.sets('$shv(after)', 'ran')\n"
        "end\n")
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac = SimUA(net, UAC)
        start = trio.current_time()
        await uac.send(uac.request("OPTIONS", f"sip:bob@{UAS}"), PROXY)
        final = await uac.expect_response(final=True)
        assert final.status == 408
        got = next(r for r in uac.received if r.msg is final)
        assert got.at - start == 2.0
        await trio.sleep(70)
        assert "after" not in server.core.shv
        assert server.engine.pending_coroutines == 0
        nursery.cancel_scope.cancel()


async def test_launch_runs_detached_and_reports(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.async.launch('side_job', 'side_report', 'p1')\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
        "function side_job()\n"
        "  KSR.async.sleep(5)\n"
        "  return 42\n"
        "end\n"
        "function side_report(result, param)\n"
        "  KSR.pv.sets('$shv(report)', tostring(result) .. ':' .. param)\n"
        "end\n")
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", f"sip:bob@{UAS}"), PROXY)
        await uac.expect_response(200)  # the route did not wait for the job
        assert "report" not in server.core.shv
        await trio.sleep(6)
        assert server.core.shv["report"] == "42:p1"
        nursery.cancel_scope.cancel()


async def test_async_route_runs_the_named_function_after_the_delay(autojump_clock,
                                                                    write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then return end\n"
        "  KSR.async.ms_route('later', 1500)\n"
        "  KSR.pv.sets('$shv(not)', 'reached')\n"
        "end\n"
        "function later()\n"
        "  KSR.tm.t_reply(486, 'Busy Later')\n"
        "end\n")
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac = SimUA(net, UAC)
        start = trio.current_time()
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        final = await uac.expect_response(486)
        got = next(r for r in uac.received if r.msg is final)
        assert got.at - start == 1.5
        assert "not" not in server.core.shv
        nursery.cancel_scope.cancel()


async def test_set_timeout_bounds_the_next_wait_only(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then return end\n"
        "  KSR.async.set_timeout(300)\n"
        "  local first = KSR.async.sleep(5)\n"
        "  local second = KSR.async.ms_sleep(400)\n"
        "  KSR.tm.t_reply(200, 'first ' .. first .. ' second ' .. second)\n"
        "end\n")
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        uac = SimUA(net, UAC)
        start = trio.current_time()
        await uac.send(uac.request("OPTIONS", f"sip:bob@{UAS}"), PROXY)
        final = await uac.expect_response(200)
        assert final.reason == "first -2 second 1"  # the first wait gave up, not the second
        got = next(r for r in uac.received if r.msg is final)
        assert got.at - start == 0.7
        nursery.cancel_scope.cancel()


async def test_branch_routes_may_wait(autojump_clock, write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        "  local mark = 'm' .. KSR.pv.get('$cs')\n"
        "  KSR.corex.append_branch_uri('sip:alice@127.0.0.4:5060')\n"
        "  KSR.tm.t_on_branch('per_branch')\n"
        "  local r = KSR.tm.t_relay()\n"
        "  KSR.pv.sets('$shv(after_relay)', mark .. ':' .. r)\n"
        "end\n"
        "function per_branch()\n"
        "  local idx = KSR.pv.get('$T_branch_idx')\n"
        "  KSR.async.ms_sleep(300)\n"
        "  KSR.hdr.append('X-Branch: ' .. idx .. '\\r\\n')\n"
        "end\n")
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        uac, uas, uas2 = SimUA(net, UAC), SimUA(net, UAS), SimUA(net, Address("127.0.0.4", 5060))
        start = trio.current_time()
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}"), PROXY)
        first = await uas.expect_request("INVITE")
        second = await uas2.expect_request("INVITE")
        assert first.msg.get("X-Branch") == "0"
        assert second.msg.get("X-Branch") == "1"
        assert first.at - start == 0.3 and second.at - start == 0.6  # each branch route waited
        await trio.sleep(0.1)
        assert server.core.shv["after_relay"] == "m1:1"  # the request route resumed after
        assert server.engine.pending_coroutines == 0
        nursery.cancel_scope.cancel()
