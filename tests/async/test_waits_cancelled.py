"""The async bridge under cancellation, in virtual time: a CANCEL while an rtpengine offer
is pending cancels the offer and the route never resumes; a server shut down with 1000
routes waiting ends promptly with every coroutine abandoned."""

from __future__ import annotations

import trio

from tests.rtpengine.fake_ng import FakeNg
from trio_sip.modules.rtpengine import RtpengineParams
from trio_sip.rtpengine.client import RtpengineClient
from trio_sip.rtpengine.endpoints import sim_endpoints
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
NG = Address("127.0.0.9", 2223)

OFFER_ROUTE = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.is_ACK() then return end\n"
    "  local r = KSR.rtpengine.rtpengine_offer('replace-origin trust-address')\n"
    "  KSR.pv.sets('$shv(resumed)', tostring(r))\n"
    "  KSR.tm.t_relay()\n"
    "end\n"
)


async def test_cancel_while_an_offer_is_pending(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(OFFER_ROUTE))
        ng = FakeNg(net, NG, mode="silent")  # rtpengine hangs: the offer waits tout*retr
        params = RtpengineParams.from_modparams({"rtpengine_sock": ng.sock})
        client = RtpengineClient(params.client_config(), guard=server.core.guard,
                                 open_endpoint=sim_endpoints(net))
        await nursery.start(client.run)
        server.core.rtpengine = client  # type: ignore[attr-defined]
        uac, uas = SimUA(net, UAC), SimUA(net, UAS)
        sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n" \
              b"m=audio 4000 RTP/AVP 0\r\n"
        await uac.send(uac.request("INVITE", f"sip:bob@{UAS}", branch="z9hG4bKo1",
                                   call_id="off1", body=sdp,
                                   headers=[("Content-Type", "application/sdp")]), PROXY)
        await uac.expect_response(100)
        await trio.sleep(0.7)  # the offer is out and unanswered (one retransmission)
        assert len(ng.commands("offer")) >= 1
        await uac.send(uac.request("CANCEL", f"sip:bob@{UAS}", branch="z9hG4bKo1",
                                   call_id="off1"), PROXY)
        await uac.expect_response(200, method="CANCEL")
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        sent_before = len(ng.commands("offer"))
        await trio.sleep(20)  # beyond tout*retr (5 s) and wt
        assert "resumed" not in server.core.shv  # the route never ran past the offer
        assert len(ng.commands("offer")) == sent_before  # the offer's retries stopped too
        assert uas.requests() == []
        assert server.engine.pending_coroutines == 0
        nursery.cancel_scope.cancel()


async def test_shutdown_with_1000_waiting_routes_is_prompt_and_clean(autojump_clock,
                                                                     write_routes) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then return end\n"
        "  KSR.async.sleep(100)\n"
        "  KSR.pv.sets('$shv(resumed)', 'yes')\n"
        "end\n")
    async with SimNetwork(seed=2) as net:
        async with trio.open_nursery() as outer:
            server_scope = trio.CancelScope()

            async def server_task(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
                                  ) -> None:
                with server_scope:
                    async with trio.open_nursery() as n:
                        s = await start_server(n, net, routes=routes,
                                               config={"tm": {"fr_timer": 120000,
                                                              "max_noninv_lifetime": 120000}})
                        task_status.started(s)
                        await trio.sleep_forever()

            server = await outer.start(server_task)
            uac = SimUA(net, UAC)
            for i in range(1000):
                await uac.send(uac.request("OPTIONS", f"sip:bob@{UAS}", call_id=f"w{i}"), PROXY)
            await trio.sleep(1)
            assert server.engine.pending_coroutines == 1000  # type: ignore[attr-defined]
            assert server.core.tm.statistics()["inuse_transactions"] == 1000  # type: ignore[attr-defined]
            stopped_at = trio.current_time()
            server_scope.cancel()  # shutdown
        assert trio.current_time() == stopped_at  # no virtual time passed: prompt
        assert server.engine.pending_coroutines == 0  # type: ignore[attr-defined]
        assert "resumed" not in server.core.shv  # type: ignore[attr-defined]
