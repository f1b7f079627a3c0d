"""KSR.pv and the pseudo-variables of script/pv.py, end to end.

Values and types were checked against Kamailio 5.6.3 (app_lua) on the same message:
``$fn`` keeps its quotes, ``$ai``/``$di``/``$rt`` are URIs, ``$ct`` is the whole Contact
value, numbers come back as Lua numbers, absent values as nil. ``$var`` is per message
here (Kamailio: per worker process), see script/context.py.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from module_helpers import OUT_LUA, PROXY, ask, outs, relayed, serving

from trio_sip.script import pv
from trio_sip.testing import SimUA, build_message
from trio_sip.transport.base import Address

BODY = b"hello"


def _message() -> bytes:
    return build_message("MESSAGE sip:bob@127.0.0.3:5060;x=1 SIP/2.0", [
        ("Via", "SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKpv1;rport"),
        ("Max-Forwards", "70"),
        ("From", '"Alice A" <sip:alice@127.0.0.2>;tag=ft1'),
        ("To", "Bob <sip:bob@127.0.0.3>"),
        ("Call-ID", "pv-1@127.0.0.2"),
        ("CSeq", "12 MESSAGE"),
        ("Contact", "<sip:alice@127.0.0.2:5060>;expires=60"),
        ("User-Agent", "ua/1"),
        ("Content-Type", "text/plain"),
        ("P-Asserted-Identity", '"PAI" <sip:pai@127.0.0.9>'),
        ("Diversion", "<sip:div@127.0.0.9>;reason=busy"),
        ("Refer-To", "<sip:ref@127.0.0.9?Replaces=x>"),
        ("X-Multi", "a"),
        ("X-Multi", "b"),
    ], BODY)


#: PV -> expected "luatype:value" for _message() (None: checked separately)
EXPECTED: dict[str, str | None] = {
    "$ru": "string:sip:bob@127.0.0.3:5060;x=1",
    "$rU": "string:bob",
    "$rd": "string:127.0.0.3",
    "$rp": "number:5060",
    "$rz": "string:sip",
    "$ou": "string:sip:bob@127.0.0.3:5060;x=1",
    "$du": "nil:nil",
    "$fu": "string:sip:alice@127.0.0.2",
    "$fU": "string:alice",
    "$fd": "string:127.0.0.2",
    "$fn": 'string:"Alice A"',
    "$ft": "string:ft1",
    "$tu": "string:sip:bob@127.0.0.3",
    "$tU": "string:bob",
    "$td": "string:127.0.0.3",
    "$tn": "string:Bob",
    "$tt": "nil:nil",
    "$ci": "string:pv-1@127.0.0.2",
    "$cs": "number:12",
    "$rm": "string:MESSAGE",
    "$rs": "nil:nil",
    "$rr": "nil:nil",
    "$si": "string:127.0.0.2",
    "$sp": "number:5060",
    "$Ri": "string:127.0.0.1",
    "$Rp": "number:5060",
    "$pr": "string:udp",
    "$proto": "string:udp",
    "$ua": "string:ua/1",
    "$mb": None,
    "$ml": None,
    "$rb": "string:hello",
    "$cl": "number:5",
    "$cT": "string:text/plain",
    "$ct": "string:<sip:alice@127.0.0.2:5060>;expires=60",
    "$ai": "string:sip:pai@127.0.0.9",
    "$di": "string:sip:div@127.0.0.9",
    "$rt": "string:sip:ref@127.0.0.9?Replaces=x",
    "$hdr(X-Multi)": "string:a",
    "$hdr(f)": 'string:"Alice A" <sip:alice@127.0.0.2>;tag=ft1',
    "$hdrc(X-Multi)": "number:2",
    "$hdrc(X-None)": "number:0",
    "$var(unset)": "number:0",
    "$vz(unset)": "number:0",
    "$avp(unset)": "nil:nil",
    "$shv(unset)": "number:0",
    "$mf": "number:0",
    "$mF": "string:00000000",
    "$bf": "number:0",
    "$Ts": None,
    "$TS": None,
    "$env(HOME)": None,
    "$pp": None,
    "$null": "nil:nil",
}


def _class(name: str) -> str:
    body = name[1:]
    return body.split("(", 1)[0]


def test_expected_covers_every_pv_of_script_pv() -> None:
    # the PVs script/pv.py registers (modules add theirs, with getters of their own)
    core = {name for name, cls in pv._classes.items() if cls.getter.__module__ == pv.__name__}
    assert len(core) > 40
    assert {_class(n) for n in EXPECTED} == core


async def test_get_of_every_pv_against_the_message(autojump_clock: Any,
                                                   write_routes: Any) -> None:
    calls = "".join(f"  out('{i}', KSR.pv.get('{name}'))\n" for i, name in enumerate(EXPECTED)
                    if name != "$mb")
    calls += "  out('mb', (string.gsub(KSR.pv.get('$mb'), '\\r\\n', '|')))\n"
    routes = write_routes(OUT_LUA + "function ksr_request_route()\n" + calls
                          + "  KSR.sl.sl_send_reply(200, 'OK')\nend\n")
    data = _message()
    async with serving(routes) as env:
        o = outs(await ask(env, data, 200))
    got = {name: o[str(i)] for i, name in enumerate(EXPECTED) if name != "$mb"}
    for name, want in EXPECTED.items():
        if want is not None:
            assert got[name] == want, name
    # the message as received (before the received/rport edit of the top Via)
    assert o["mb"] == "string:" + data.decode("latin-1").replace("\r\n", "|")
    assert got["$ml"] == f"number:{len(data)}"
    assert got["$Ts"].startswith("number:") and int(got["$Ts"][7:]) > 1_600_000_000
    assert got["$TS"].startswith("number:") and int(got["$TS"][7:]) <= int(got["$Ts"][7:])
    assert got["$pp"] == f"number:{os.getpid()}"
    assert got["$env(HOME)"] == f"string:{os.environ['HOME']}" if "HOME" in os.environ \
        else got["$env(HOME)"] == "nil:nil"


async def test_reply_pvs_in_the_reply_route(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        "function ksr_reply_route()\n"
        "  KSR.hdr.append('X-R: ' .. KSR.pv.get('$rs') .. '|' .. KSR.pv.get('$rr') .. '|'\n"
        "    .. KSR.pv.get('$rm') .. '|' .. tostring(KSR.pv.get('$ru')) .. '|'\n"
        "    .. KSR.pv.get('$tt') .. '|' .. type(KSR.pv.get('$rs')) .. '\\r\\n')\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3"))
        await env.uas.send(env.uas.response_to(got, 180, "Ringing Now"), PROXY)
        resp = await env.uac.expect_response(180)
        assert resp.get("X-R") == "180|Ringing Now|INVITE|nil|uas1|number"


async def test_sets_on_ruri_parts_change_the_forwarded_request_line(
        autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local u = KSR.pv.get('$rU')\n"
        "  local ok\n"
        "  if u == 'ru' then ok = KSR.pv.sets('$ru', 'sip:carol@127.0.0.3:5062;p=1')\n"
        "  elseif u == 'parts' then\n"
        "    ok = KSR.pv.sets('$rU', 'dave') and KSR.pv.sets('$rd', '127.0.0.3')\n"
        "      and KSR.pv.seti('$rp', 5070)\n"
        "  elseif u == 'nouser' then ok = KSR.pv.sets('$rU', '')\n"
        "  elseif u == 'bad' then ok = KSR.pv.sets('$ru', 'not a uri')\n"
        "  end\n"
        "  KSR.hdr.append('X-Ok: ' .. tostring(ok) .. ' ' .. KSR.pv.get('$ru') .. ' '\n"
        "    .. KSR.pv.get('$ou') .. '\\r\\n')\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        other = SimUA(env.net, Address("127.0.0.3", 5070))
        got = await relayed(env, env.uac.request("INVITE", "sip:parts@127.0.0.9"), other)
        assert got.ruri_text == "sip:dave@127.0.0.3:5070"
        assert got.get("X-Ok") == "true sip:dave@127.0.0.3:5070 sip:parts@127.0.0.9"
        got = await relayed(env, env.uac.request("INVITE", "sip:bad@127.0.0.3"))
        assert got.ruri_text == "sip:bad@127.0.0.3"
        assert got.get("X-Ok") == "false sip:bad@127.0.0.3 sip:bad@127.0.0.3"
        got = await relayed(env, env.uac.request("INVITE", "sip:nouser@127.0.0.3"))
        assert got.ruri_text == "sip:127.0.0.3"


async def test_set_ru_sends_to_the_new_uri(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.pv.sets('$ru', 'sip:carol@127.0.0.4:5060;p=1')\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3"), env.hop)
        assert got.ruri_text == "sip:carol@127.0.0.4:5060;p=1"
        assert got.raw.startswith(b"INVITE sip:carol@127.0.0.4:5060;p=1 SIP/2.0\r\n")


async def test_du_changes_the_destination_not_the_ruri(autojump_clock: Any,
                                                       write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local ok = KSR.pv.sets('$du', 'sip:127.0.0.4:5060')\n"
        "  KSR.hdr.append('X-Du: ' .. tostring(ok) .. ' ' .. KSR.pv.get('$du') .. '\\r\\n')\n"
        "  if KSR.pv.get('$rU') == 'unset' then KSR.pv.unset('$du') end\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3"), env.hop)
        assert got.ruri_text == "sip:bob@127.0.0.3"
        assert got.get("X-Du") == "true sip:127.0.0.4:5060"
        assert env.uas.requests() == []
        # $du = $null: back to the R-URI
        got = await relayed(env, env.uac.request("INVITE", "sip:unset@127.0.0.3"))
        assert got.ruri_text == "sip:unset@127.0.0.3"


async def test_var_is_per_message_shv_is_shared(autojump_clock: Any,
                                                write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('V', KSR.pv.get('$var(n)'))\n"
        "  out('S', KSR.pv.get('$shv(n)'))\n"
        "  KSR.pv.seti('$var(n)', KSR.pv.get('$var(n)') + 1)\n"
        "  KSR.pv.seti('$shv(n)', KSR.pv.get('$shv(n)') + 1)\n"
        "  out('V2', KSR.pv.get('$var(n)'))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        first = outs(await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1")))
        second = outs(await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1")))
    assert (first["V"], first["S"], first["V2"]) == ("number:0", "number:0", "number:1")
    assert (second["V"], second["S"], second["V2"]) == ("number:0", "number:1", "number:1")


async def test_value_variants_and_nulls(autojump_clock: Any, write_routes: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('gete', KSR.pv.gete('$du'))\n"
        "  out('getw', KSR.pv.getw('$du'))\n"
        "  out('geti', KSR.pv.geti('$cs'))\n"
        "  out('getiS', KSR.pv.geti('$rU'))\n"
        "  out('getiN', KSR.pv.geti('$du'))\n"
        "  out('getvn', KSR.pv.getvn('$du', 7))\n"
        "  out('getvs', KSR.pv.getvs('$du', 'd'))\n"
        "  out('getvs2', KSR.pv.getvs('$rU', 'd'))\n"
        "  out('isnull', KSR.pv.is_null('$du'))\n"
        "  out('isnull2', KSR.pv.is_null('$rU'))\n"
        "  out('seti', KSR.pv.seti('$var(i)', 5))\n"
        "  out('vi', KSR.pv.get('$var(i)'))\n"
        "  out('sets', KSR.pv.sets('$var(s)', 'str'))\n"
        "  out('unset', KSR.pv.unset('$var(s)'))\n"
        "  out('vs', KSR.pv.get('$var(s)'))\n"
        "  KSR.pv.sets('$avp(a)', '1') KSR.pv.sets('$avp(a)', '2')\n"
        "  out('avp', KSR.pv.get('$avp(a)'))\n"
        "  KSR.pv.unset('$avp(a)')\n"
        "  out('avp2', KSR.pv.get('$avp(a)'))\n"
        "  KSR.pv.unset('$avp(a)')\n"
        "  out('avp3', KSR.pv.get('$avp(a)'))\n"
        "  out('unknown', KSR.pv.get('$nosuch'))\n"
        "  out('ro', KSR.pv.sets('$ci', 'x'))\n"
        "  out('null', KSR.pv.get('$null'))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    caplog.set_level(logging.ERROR, logger="trio_sip.script")
    async with serving(routes) as env:
        o = outs(await ask(env, env.uac.request("OPTIONS", "sip:9abc@127.0.0.1", cseq=3)))
    assert o == {
        "gete": "string:", "getw": "string:<null>", "geti": "number:3", "getiS": "number:0",
        "getiN": "number:0", "getvn": "number:7", "getvs": "string:d",
        "getvs2": "string:9abc", "isnull": "boolean:true", "isnull2": "boolean:false",
        "seti": "boolean:true", "vi": "number:5", "sets": "boolean:true",
        "unset": "boolean:true", "vs": "number:0", "avp": "string:2", "avp2": "string:1",
        "avp3": "nil:nil", "unknown": "nil:nil", "ro": "boolean:false", "null": "nil:nil",
    }
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unknown pseudo-variable: '$nosuch'" in text
    assert "'$ci' is read-only" in text


async def test_flags_pvs(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  KSR.setflag(3) KSR.setbflag(2)\n"
        "  out('mf', KSR.pv.get('$mf')) out('mF', KSR.pv.get('$mF')) out('bf', KSR.pv.get('$bf'))\n"
        "  KSR.pv.seti('$mf', 1)\n"
        "  out('is0', KSR.isflagset(0)) out('is3', KSR.isflagset(3))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        o = outs(await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1")))
    assert o == {"mf": "number:8", "mF": "string:00000008", "bf": "number:4",
                 "is0": "boolean:true", "is3": "boolean:false"}
