"""KSR core functions (no module prefix) and KSR.x, end to end.

Kamailio 5.6.3 was the reference for the return values. One deliberate difference:
a URI without a port names this server only if it listens on 5060 (RFC 3261 default,
as Kamailio's native ``uri == myself`` and rr do); Kamailio's KEMI ``is_myself*``
ignore the port when the URI has none.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, ask, outs, relayed, serving

from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

MYSELF = OUT_LUA + (
    "function ksr_request_route()\n"
    "  for i = 1, 20 do\n"
    "    local u = KSR.hdr.get_idx('X-U', i - 1)\n"
    "    if u == nil then break end\n"
    "    if u == '-' then u = '' end\n"
    "    out('M' .. i, KSR.is_myself(u))\n"
    "  end\n"
    "  out('ruri', KSR.is_myself_ruri()) out('duri', KSR.is_myself_duri())\n"
    "  out('nhuri', KSR.is_myself_nhuri()) out('furi', KSR.is_myself_furi())\n"
    "  out('turi', KSR.is_myself_turi()) out('srcip', KSR.is_myself_srcip())\n"
    "  KSR.setdsturi('sip:127.0.0.9')\n"
    "  out('duri2', KSR.is_myself_duri()) out('nhuri2', KSR.is_myself_nhuri())\n"
    "  KSR.sl.sl_send_reply(200, 'OK')\n"
    "end\n"
)

URIS = [
    ("sip:127.0.0.1", True), ("sip:127.0.0.1:5060", True), ("sip:bob@127.0.0.1:5060", True),
    ("sip:127.0.0.1:5070", False), ("sips:127.0.0.1", True), ("SIP:127.0.0.1", True),
    ("127.0.0.1", True), ("sip:127.0.0.9", False), ("tel:+4930123", False),
    ("sip:[bad", False), ("-", False), ("sip:example.com", False), ("sip:127.0.0.2", False),
]


async def test_is_myself_against_the_server_address(autojump_clock: Any,
                                                    write_routes: Any) -> None:
    async with serving(write_routes(MYSELF)) as env:
        req = env.uac.request("OPTIONS", "sip:127.0.0.1", to="sip:bob@127.0.0.9",
                              headers=[("X-U", u) for u, _ in URIS])
        o = outs(await ask(env, req))
    assert [o[f"M{i + 1}"] for i in range(len(URIS))] == [
        f"boolean:{str(want).lower()}" for _, want in URIS]
    assert (o["ruri"], o["duri"], o["nhuri"], o["furi"], o["turi"], o["srcip"]) == (
        "boolean:true", "boolean:false", "boolean:true", "boolean:false", "boolean:false",
        "boolean:false")
    assert (o["duri2"], o["nhuri2"]) == ("boolean:false", "boolean:false")


async def test_is_myself_on_another_port_and_with_aliases(autojump_clock: Any,
                                                          write_routes: Any) -> None:
    server = Address("127.0.0.1", 5070)
    cfg = {"core": {"aliases": ["proxy.example.com", "proxy2.example.com:5070"]}}
    async with serving(write_routes(MYSELF), address=server, config=cfg) as env:
        req = env.uac.request("OPTIONS", "sip:127.0.0.1:5070", to="sip:x@proxy.example.com:5070",
                              headers=[("X-U", u) for u in (
                                  "sip:127.0.0.1:5070", "sip:127.0.0.1",
                                  "sip:proxy.example.com:5070", "sip:PROXY.example.com:5070",
                                  "sip:proxy2.example.com:5070", "sip:proxy.example.com")])
        start = len(env.uac.received)
        await env.uac.send(req, server)
        got = await env.uac.wait_for(lambda r: True, start=start)
        o = outs(got.msg)
    assert [o[f"M{i}"] for i in range(1, 7)] == [
        "boolean:true",
        "boolean:false",  # no port: 5060 (Kamailio's KEMI: any port)
        "boolean:true", "boolean:true", "boolean:true",
        "boolean:false",
    ]
    assert o["turi"] == "boolean:true" and o["ruri"] == "boolean:true"


async def test_myself_srcip(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(MYSELF)) as env:
        me = SimUA(env.net, Address("127.0.0.1", 5999))
        await me.send(me.request("OPTIONS", "sip:127.0.0.1"), PROXY)
        o = outs(await me.expect_response(200))
        assert o["srcip"] == "boolean:true"


FLAGS = OUT_LUA + (
    "function ksr_request_route()\n"
    "  out('set0', KSR.setflag(0)) out('set31', KSR.setflag(31)) out('set5', KSR.setflag(5))\n"
    "  out('is5', KSR.isflagset(5)) out('reset5', KSR.resetflag(5)) out('is5b', KSR.isflagset(5))\n"
    "  out('is31', KSR.isflagset(31)) out('is1', KSR.isflagset(1))\n"
    "  out('set32', KSR.setflag(32)) out('setm1', KSR.setflag(-1)) out('is32', KSR.isflagset(32))\n"
    "  out('reset32', KSR.resetflag(32))\n"
    "  out('bset', KSR.setbflag(7)) out('bis', KSR.isbflagset(7)) out('bis6', KSR.isbflagset(6))\n"
    "  out('breset', KSR.resetbflag(7)) out('bis2', KSR.isbflagset(7))\n"
    "  out('bset99', KSR.setbflag(99)) out('bis99', KSR.isbflagset(99))\n"
    "  out('mf', KSR.pv.get('$mf')) out('bf', KSR.pv.get('$bf'))\n"
    "  KSR.sl.sl_send_reply(200, 'OK')\n"
    "end\n"
)


async def test_flags(autojump_clock: Any, write_routes: Any,
                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sip.script")
    async with serving(write_routes(FLAGS)) as env:
        o = outs(await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1")))
    t, f = "boolean:true", "boolean:false"
    assert o == {
        "set0": t, "set31": t, "set5": t, "is5": t, "reset5": t, "is5b": f, "is31": t,
        "is1": f, "set32": f, "setm1": f, "is32": f, "reset32": f, "bset": t, "bis": t,
        "bis6": f, "breset": t, "bis2": f, "bset99": f, "bis99": f,
        "mf": f"number:{1 | 1 << 31}", "bf": "number:0",
    }
    assert "KSR.setflag: invalid flag 32 (0..31)" in caplog.text


URIS_ROUTES = (
    "function ksr_request_route()\n"
    "  local u = KSR.pv.get('$rU')\n"
    "  local r = {}\n"
    "  if u == 'seturi' then r[1] = KSR.seturi('sip:carol@127.0.0.4:5060;x=1')\n"
    "    r[2] = KSR.seturi('bad uri')\n"
    "  elseif u == 'setuser' then r[1] = KSR.setuser('dave')\n"
    "  elseif u == 'sethost' then r[1] = KSR.sethost('127.0.0.4') r[2] = KSR.sethost('')\n"
    "  elseif u == 'revert' then KSR.seturi('sip:x@127.0.0.4') r[1] = KSR.revert_uri()\n"
    "  elseif u == 'dst' then\n"
    "    r[1] = KSR.isdsturiset() r[2] = KSR.setdsturi('sip:127.0.0.4:5060')\n"
    "    r[3] = KSR.isdsturiset() r[4] = KSR.setdsturi('::bad')\n"
    "  elseif u == 'dstreset' then KSR.setdsturi('sip:127.0.0.4') r[1] = KSR.resetdsturi()\n"
    "    r[2] = KSR.isdsturiset()\n"
    "  elseif u == 'fwduri' then r[1] = KSR.forward_uri('sip:127.0.0.4') return\n"
    "  end\n"
    "  for i = 1, #r do r[i] = tostring(r[i]) end\n"
    "  KSR.hdr.append('X-R: ' .. table.concat(r, ',') .. '\\r\\n')\n"
    "  KSR.forward()\n"
    "end\n"
)


@pytest.mark.parametrize(("user", "dest", "ruri", "codes"), [
    ("seturi", "hop", "sip:carol@127.0.0.4:5060;x=1", "true,false"),
    ("setuser", "uas", "sip:dave@127.0.0.3:5060", "true"),
    ("sethost", "hop", "sip:sethost@127.0.0.4:5060", "true,false"),
    ("revert", "uas", "sip:revert@127.0.0.3:5060", "true"),
    ("dst", "hop", "sip:dst@127.0.0.3:5060", "false,true,true,false"),
    ("dstreset", "uas", "sip:dstreset@127.0.0.3:5060", "true,false"),
    ("fwduri", "hop", "sip:fwduri@127.0.0.3:5060", None),
])
async def test_request_uri_and_destination(autojump_clock: Any, write_routes: Any,
                                           user: str, dest: str, ruri: str,
                                           codes: str | None) -> None:
    async with serving(write_routes(URIS_ROUTES)) as env:
        to = env.hop if dest == "hop" else env.uas
        got = await relayed(env, env.uac.request("INVITE", f"sip:{user}@127.0.0.3:5060"), to)
        assert got.ruri_text == ruri
        assert got.get("X-R") == codes
        other = env.uas if dest == "hop" else env.hop
        assert other.received == []


METHODS = OUT_LUA + (
    "function ksr_request_route()\n"
    "  out('inv', KSR.is_INVITE()) out('bye', KSR.is_BYE()) out('put', KSR.is_PUT())\n"
    "  out('m', KSR.is_method('INVITE')) out('lower', KSR.is_method('invite'))\n"
    "  out('list', KSR.is_method('BYE|INVITE')) out('list2', KSR.is_method('BYE|CANCEL'))\n"
    "  out('in', KSR.is_method_in('IB')) out('in2', KSR.is_method_in('RO'))\n"
    "  out('inV', KSR.is_method_in('V')) out('inlow', KSR.is_method_in('bi'))\n"
    "  KSR.sl.sl_send_reply(200, 'OK')\n"
    "end\n"
)


async def test_methods(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(METHODS)) as env:
        o = outs(await ask(env, env.uac.request("INVITE", "sip:127.0.0.1")))
        p = outs(await ask(env, env.uac.request("PUT", "sip:127.0.0.1")))
    t, f = "boolean:true", "boolean:false"
    assert o == {"inv": t, "bye": f, "put": f, "m": t, "lower": t, "list": t, "list2": f,
                 "in": t, "in2": f, "inV": f, "inlow": t}
    assert (p["put"], p["inV"], p["in"]) == (t, t, f)


async def test_force_rport_answers_to_the_source_port(autojump_clock: Any,
                                                      write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.pv.get('$rU') == 'force' then KSR.force_rport() end\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    async with serving(routes) as env:
        uac = SimUA(env.net, Address("127.0.0.2", 5071))
        sent_by = SimUA(env.net, Address("127.0.0.2", 5080))
        for user in ("plain", "force"):
            req = uac.request("OPTIONS", f"sip:{user}@127.0.0.1").replace(
                b"127.0.0.2:5071;branch", b"127.0.0.2:5080;branch").replace(b";rport", b"")
            await uac.send(req, PROXY)
        await trio.sleep(1)
        assert [r.msg.to.uri.user for r in sent_by.received] == ["plain"]  # type: ignore[union-attr]
        assert [r.msg.to.uri.user for r in uac.received] == ["force"]  # type: ignore[union-attr]


async def test_drop_in_the_reply_route(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        "function ksr_reply_route()\n"
        "  local s = KSR.pv.get('$rs')\n"
        "  if s == 181 then KSR.x.drop() end\n"
        "  if s == 182 then KSR.drop() KSR.pv.seti('$shv(after)', 1) end\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3"))
        for code in (181, 182, 183):
            await env.uas.send(env.uas.response_to(got, code, "P"), PROXY)
        await env.uac.expect_response(183)
        await trio.sleep(1)
        assert [r.status for r in env.uac.responses()] == [183]
        assert env.server.core.shv == {"after": 1}
        assert env.server.core.stats["drop_replies"] == 2
