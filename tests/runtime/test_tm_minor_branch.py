"""OpenSIPS minor branches: a branch flagged with tm's minor_branch_flag is not waited
for; when every other branch has failed, it is cancelled and the best reply of the
others goes up at once."""

from __future__ import annotations

import trio

from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
MAIN = Address("127.0.0.3", 5060)
ANNOUNCE = Address("127.0.0.4", 5060)

ROUTES = (
    "function ksr_request_route()\n"
    "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end\n"
    "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
    "  KSR.tm.t_on_branch('mark_minor')\n"
    f"  KSR.corex.append_branch_uri('sip:announce@{ANNOUNCE}')\n"
    "  KSR.tm.t_relay()\n"
    "end\n"
    "function mark_minor()\n"
    "  if KSR.pv.get('$rU') == 'announce' then KSR.setbflag(7) end\n"
    "end\n"
)


def ringing(ua: SimUA, req: SipRequest, source: Address) -> None:
    if req.method == "INVITE":
        ua.invite = req  # type: ignore[attr-defined]
        ua.send_soon(source, ua.response_to(req, 183, "Session Progress"))
    elif req.method == "CANCEL":
        ua.send_soon(source, ua.response_to(req, 200, "OK"),
                     ua.response_to(ua.invite, 487, "Terminated"))  # type: ignore[attr-defined]


def busy(ua: SimUA, req: SipRequest, source: Address) -> None:
    if req.method == "INVITE":
        ua.send_soon(source, ua.response_to(req, 486, "Busy Here"))


async def test_minor_branch_is_cancelled_when_the_major_one_fails(autojump_clock,
                                                                  write_routes) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(ROUTES),
                           config={"tm": {"minor_branch_flag": 7}})
        uac, main, announce = SimUA(net, UAC), SimUA(net, MAIN), SimUA(net, ANNOUNCE)
        announce.on_request = ringing
        main.on_request = busy
        await uac.send(uac.request("INVITE", f"sip:bob@{MAIN}"), PROXY)
        await announce.expect_request("INVITE")
        await trio.sleep(1)  # the announcement "plays"; then the callee is busy
        final = await uac.expect_response(final=True, within=5)
        assert final.status == 486  # the major branch's reply, not the minor's 487
        await announce.expect_request("CANCEL")
        nursery.cancel_scope.cancel()


async def test_without_the_flag_every_branch_is_waited_for(autojump_clock,
                                                           write_routes) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(ROUTES))
        uac, main, announce = SimUA(net, UAC), SimUA(net, MAIN), SimUA(net, ANNOUNCE)
        announce.on_request = ringing
        main.on_request = busy
        await uac.send(uac.request("INVITE", f"sip:bob@{MAIN}"), PROXY)
        await announce.expect_request("INVITE")
        await trio.sleep(10)
        assert all(r.status < 200 for r in uac.responses())  # still waiting for announce
        nursery.cancel_scope.cancel()
