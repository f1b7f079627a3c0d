"""KSR.rr: Record-Route with its params, loose routing, route params and direction.

The Record-Route values and the return codes were checked against Kamailio 5.6.3 with
the rr module's defaults (append_fromtag=1): ``<sip:IP:PORT;lr;ftag=T;before=1;after=2>``.
"""

from __future__ import annotations

from typing import Any

import pytest
from module_helpers import PROXY, relayed, serving

from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

RR_ROUTES = (
    "function ksr_request_route()\n"
    "  local u = KSR.pv.get('$rU')\n"
    "  local r = {}\n"
    "  if u == 'both' then\n"
    "    r[1] = KSR.rr.add_rr_param(';before=1')\n"
    "    r[2] = KSR.rr.record_route()\n"
    "    r[3] = KSR.rr.add_rr_param('after=2')\n"
    "  elseif u == 'params' then r[1] = KSR.rr.record_route_params(';p=1')\n"
    "  elseif u == 'removed' then KSR.rr.record_route() r[1] = KSR.rr.remove_record_route()\n"
    "  elseif u == 'bad' then r[1] = KSR.rr.add_rr_param('a b') r[2] = KSR.rr.add_rr_param('')\n"
    "    r[3] = KSR.rr.record_route()\n"
    "  elseif u == 'twice' then r[1] = KSR.rr.record_route() r[2] = KSR.rr.record_route()\n"
    "  end\n"
    "  KSR.hdr.append('X-R: ' .. table.concat(r, ',') .. '\\r\\n')\n"
    "  KSR.forward()\n"
    "end\n"
)


@pytest.mark.parametrize(("user", "rr", "codes"), [
    ("both", "<sip:127.0.0.1:5060;lr;ftag=ft1;before=1;after=2>", "1,1,1"),
    ("params", "<sip:127.0.0.1:5060;lr;ftag=ft1;p=1>", "1"),
    ("removed", None, "1"),
    ("bad", "<sip:127.0.0.1:5060;lr;ftag=ft1>", "-1,-1,1"),
    ("twice", "<sip:127.0.0.1:5060;lr;ftag=ft1>", "1,1"),
])
async def test_record_route_and_its_params(autojump_clock: Any, write_routes: Any,
                                           user: str, rr: str | None, codes: str) -> None:
    async with serving(write_routes(RR_ROUTES)) as env:
        got = await relayed(env, env.uac.request("INVITE", f"sip:{user}@127.0.0.3"))
        assert got.get_all("Record-Route") == ([rr] if rr else [])
        assert got.get("X-R") == codes
        # ours goes right under our Via
        if rr:
            assert got.headers[1].name == "Record-Route"


async def test_record_route_on_tcp_names_the_transport(autojump_clock: Any,
                                                       write_routes: Any) -> None:
    async with serving(write_routes(RR_ROUTES), protos=("udp", "tcp")) as env:
        uac = SimUA(env.net, Address("127.0.0.5", 5060), proto="tcp")
        uas = SimUA(env.net, Address("127.0.0.3", 5060), proto="tcp")
        await uac.send(uac.request("INVITE", "sip:both@127.0.0.3;transport=tcp"), PROXY)
        got = await uas.expect_request("INVITE")
        assert got.msg.get("Record-Route") == (
            "<sip:127.0.0.1:5060;transport=tcp;lr;ftag=ft1;before=1;after=2>")


DIALOG_ROUTES = (
    "function ksr_request_route()\n"
    "  local pre = KSR.rr.check_route_param('nat=yes') .. ',' .. KSR.rr.is_direction('upstream')\n"
    "  if KSR.siputils.has_totag() > 0 then\n"
    "    local lr = KSR.rr.loose_route()\n"
    "    KSR.hdr.append('X-R: ' .. pre .. ',' .. lr .. ',' .. KSR.rr.check_route_param('nat=yes')\n"
    "      .. ',' .. KSR.rr.check_route_param('^;lr') .. ',' .. KSR.rr.check_route_param('nat=no')\n"
    "      .. ',' .. KSR.rr.check_route_param('[') .. ',' .. KSR.rr.is_direction('downstream')\n"
    "      .. ',' .. KSR.rr.is_direction('upstream') .. ',' .. KSR.rr.is_direction('UpStream')\n"
    "      .. '\\r\\n')\n"
    "  else\n"
    "    KSR.rr.record_route() KSR.rr.add_rr_param(';nat=yes')\n"
    "  end\n"
    "  KSR.forward()\n"
    "end\n"
)


async def test_dialog_direction_from_the_ftag_we_record_routed(autojump_clock: Any,
                                                               write_routes: Any) -> None:
    async with serving(write_routes(DIALOG_ROUTES)) as env:
        inv = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3", call_id="d1"))
        rr = inv.get("Record-Route")
        assert rr == "<sip:127.0.0.1:5060;lr;ftag=ft1;nat=yes>"
        # caller -> callee: the caller's From tag is the ftag: downstream
        bye = env.uac.request("BYE", "sip:bob@127.0.0.3", call_id="d1", cseq=2, to_tag="tt",
                              headers=[("Route", rr)])
        got = await relayed(env, bye)
        assert not got.has("Route")
        assert got.get("X-R") == "-1,-1,1,1,1,-1,-1,1,-1,-1"
        # callee -> caller: From/To swapped, the From tag is the callee's: upstream
        back = env.uas.request("BYE", "sip:ua@127.0.0.2", call_id="d1", cseq=1,
                               from_tag="tt", to="sip:ua@127.0.0.2", to_tag="ft1",
                               headers=[("Route", rr)])
        start = len(env.uac.received)
        await env.uas.send(back, PROXY)
        r = await env.uac.wait_for(lambda r: isinstance(r.msg, SipRequest), start=start)
        assert r.msg.get("X-R") == "-1,-1,1,1,1,-1,-1,-1,1,1"


async def test_without_ftag_or_route_the_request_counts_as_downstream(
        autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(DIALOG_ROUTES)) as env:
        bye = env.uac.request("BYE", "sip:bob@127.0.0.3", to_tag="tt",
                              headers=[("Route", "<sip:127.0.0.1:5060;lr;nat=yes>")])
        got = await relayed(env, bye)
        assert got.get("X-R") == "-1,-1,1,1,1,-1,-1,1,-1,-1"
        # no Route at all: loose_route is -1, no params
        got = await relayed(env, env.uac.request("BYE", "sip:bob@127.0.0.3", to_tag="tt"))
        assert got.get("X-R") == "-1,-1,-1,-1,-1,-1,-1,1,-1,-1"


async def test_loose_route_to_a_next_loose_router(autojump_clock: Any,
                                                  write_routes: Any) -> None:
    async with serving(write_routes(DIALOG_ROUTES)) as env:
        bye = env.uac.request("BYE", "sip:bob@127.0.0.3", to_tag="tt", headers=[
            ("Route", "<sip:127.0.0.1:5060;lr;ftag=ft1;nat=yes>, <sip:127.0.0.4;lr>")])
        got = await relayed(env, bye, env.hop)
        assert got.get("Route") == "<sip:127.0.0.4;lr>"
        assert got.ruri_text == "sip:bob@127.0.0.3"
        assert got.get("X-R") == "-1,-1,1,1,1,-1,-1,1,-1,-1"
