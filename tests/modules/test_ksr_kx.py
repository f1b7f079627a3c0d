"""KSR.kx getters, end to end: values and Lua types as Kamailio 5.6.3's kemix gives them
(ports and lengths are numbers, absent values nil, gete_ "" and getw_ "<null>")."""

from __future__ import annotations

import os
import time
from typing import Any

from module_helpers import OUT_LUA, PROXY, ask, outs, serving

from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

GETTERS = [
    "get_ruri", "get_ruser", "get_rhost", "get_ouri", "get_duri", "get_nhuri",
    "get_furi", "get_fuser", "get_fhost", "get_turi", "get_tuser", "get_thost",
    "get_method", "get_callid", "get_ua", "get_srcip", "get_srcport", "get_srcuri",
    "get_rcvip", "get_rcvport", "get_rcvadvip", "get_rcvadvport", "get_proto", "get_body",
    "get_cturi", "get_au", "get_status", "gets_status", "get_msgtype", "get_bodylen",
    "get_protoid", "get_conid",
    "gete_duri", "getw_duri", "gete_au", "getw_au", "gete_ruser", "getw_ruser",
    "gete_body", "getw_body", "gete_ua", "getw_ua", "gete_cturi", "gete_fuser", "gete_tuser",
    "gete_fhost", "gete_thost", "gete_rhost",
]

ROUTES = OUT_LUA + (
    "function ksr_request_route()\n"
    + "".join(f"  out('{g}', KSR.kx.{g}())\n" for g in GETTERS)
    + "  out('msglen', KSR.kx.get_msglen() == #KSR.kx.get_msgbuf())\n"
    "  out('ts', KSR.kx.get_timestamp())\n"
    "  out('env', KSR.kx.get_env('KX_TEST_VAR')) out('envn', KSR.kx.get_envn('KX_TEST_NUM'))\n"
    "  out('envx', KSR.kx.get_env('KX_TEST_NONE')) out('envnx', KSR.kx.get_envn('KX_TEST_VAR'))\n"
    "  KSR.setdsturi('sip:127.0.0.4:5070') KSR.setuser('carol')\n"
    "  out('duri2', KSR.kx.get_duri()) out('nhuri2', KSR.kx.get_nhuri())\n"
    "  out('ruri2', KSR.kx.get_ruri()) out('ouri2', KSR.kx.get_ouri())\n"
    "  KSR.sl.sl_send_reply(200, 'OK')\n"
    "end\n"
)


async def test_getters_on_udp(autojump_clock: Any, write_routes: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("KX_TEST_VAR", "v1")
    monkeypatch.setenv("KX_TEST_NUM", "42")
    monkeypatch.delenv("KX_TEST_NONE", raising=False)
    async with serving(write_routes(ROUTES)) as env:
        req = env.uac.request("MESSAGE", "sip:bob@127.0.0.1", call_id="kx-1",
                              headers=[("User-Agent", "ua/2"), ("Content-Type", "text/plain")],
                              body=b"hi")
        before = int(time.time())
        o = outs(await ask(env, req))
    assert {k: o[k] for k in GETTERS} == {
        "get_ruri": "string:sip:bob@127.0.0.1", "get_ruser": "string:bob",
        "get_rhost": "string:127.0.0.1", "get_ouri": "string:sip:bob@127.0.0.1",
        "get_duri": "nil:nil", "get_nhuri": "string:sip:bob@127.0.0.1",
        "get_furi": "string:sip:ua@127.0.0.2:5060", "get_fuser": "string:ua",
        "get_fhost": "string:127.0.0.2", "get_turi": "string:sip:bob@127.0.0.1",
        "get_tuser": "string:bob", "get_thost": "string:127.0.0.1",
        "get_method": "string:MESSAGE", "get_callid": "string:kx-1", "get_ua": "string:ua/2",
        "get_srcip": "string:127.0.0.2", "get_srcport": "number:5060",
        "get_srcuri": "string:sip:127.0.0.2:5060", "get_rcvip": "string:127.0.0.1",
        "get_rcvport": "number:5060", "get_rcvadvip": "string:127.0.0.1",
        "get_rcvadvport": "number:5060", "get_proto": "string:udp", "get_body": "string:hi",
        "get_cturi": "string:sip:ua@127.0.0.2:5060", "get_au": "nil:nil",
        "get_status": "number:-1", "gets_status": "nil:nil", "get_msgtype": "number:1",
        "get_bodylen": "number:2", "get_protoid": "number:1", "get_conid": "number:-1",
        "gete_duri": "string:", "getw_duri": "string:<null>", "gete_au": "string:",
        "getw_au": "string:<null>", "gete_ruser": "string:bob", "getw_ruser": "string:bob",
        "gete_body": "string:hi", "getw_body": "string:hi", "gete_ua": "string:ua/2",
        "getw_ua": "string:ua/2", "gete_cturi": "string:sip:ua@127.0.0.2:5060",
        "gete_fuser": "string:ua", "gete_tuser": "string:bob", "gete_fhost": "string:127.0.0.2",
        "gete_thost": "string:127.0.0.1", "gete_rhost": "string:127.0.0.1",
    }
    assert o["msglen"] == "boolean:true"
    assert o["ts"].startswith("number:") and int(o["ts"][7:]) >= before
    assert (o["env"], o["envn"], o["envx"], o["envnx"]) == (
        "string:v1", "number:42", "nil:nil", "number:0")
    assert (o["duri2"], o["nhuri2"], o["ruri2"], o["ouri2"]) == (
        "string:sip:127.0.0.4:5070", "string:sip:127.0.0.4:5070",
        "string:sip:carol@127.0.0.1", "string:sip:bob@127.0.0.1")
    assert "KX_TEST_VAR" in os.environ


async def test_getters_on_tcp(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(ROUTES), protos=("udp", "tcp")) as env:
        uac = SimUA(env.net, Address("127.0.0.5", 5090), proto="tcp")
        await uac.send(uac.request("OPTIONS", "sip:127.0.0.1;transport=tcp"), PROXY)
        o = outs(await uac.expect_response(200))
    assert o["get_proto"] == "string:tcp"
    assert o["get_protoid"] == "number:2"
    assert o["get_srcuri"] == "string:sip:127.0.0.5:5090;transport=tcp"
    assert o["get_srcport"] == "number:5090"
    assert o["get_conid"].startswith("number:") and o["get_conid"] != "number:-1"
    assert o["get_ruser"] == "nil:nil"
    assert o["getw_ruser"] == "string:<null>"


async def test_status_getters_in_the_reply_route(autojump_clock: Any,
                                                 write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        "function ksr_reply_route()\n"
        "  local kx = KSR.kx\n"
        "  KSR.hdr.append('X-R: ' .. kx.get_status() .. ',' .. type(kx.gets_status()) .. ','\n"
        "    .. kx.gets_status() .. ',' .. kx.get_msgtype() .. ',' .. tostring(kx.get_ruri())\n"
        "    .. ',' .. kx.get_method() .. '\\r\\n')\n"
        "end\n"
    )
    async with serving(routes) as env:
        await env.uac.send(env.uac.request("INVITE", "sip:bob@127.0.0.3"), PROXY)
        got = await env.uas.expect_request("INVITE")
        await env.uas.send(env.uas.response_to(got.msg, 183, "Progress"), PROXY)  # type: ignore[arg-type]
        resp = await env.uac.expect_response(183)
        assert resp.get("X-R") == "183,string,183,2,nil,INVITE"
