"""KSR.siputils: options_reply, the message/text checks and the R-URI parameter helpers.

Return codes were checked against Kamailio 5.6.3 (is_numeric -2, is_alphanum -2/-3,
uri_param only for a parameter without value, cmp_aor's default port 5060, is_user
about authorized credentials). cmp_uri follows RFC 3261 §19.1.4 where Kamailio's
does not: see the differences marked below.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from module_helpers import OUT_LUA, PROXY, ask, outs, relayed, serving


async def test_options_reply_to_the_server(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.hdr.append_to_reply('X-Extra: 1\\r\\n')\n"
        "  local rc = KSR.siputils.options_reply()\n"
        "  if rc < 0 then KSR.sl.sl_send_reply(499, 'rc ' .. rc) end\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1:5060"))
        assert (resp.status, resp.reason) == (200, "OK")
        assert resp.get("X-Extra") == "1"
        assert resp.get("Accept") == "*/*"
        assert resp.get("Accept-Language") == "en"
        assert "INVITE" in (resp.get("Allow") or "")
        assert resp.get("Supported") is None  # nothing claimed that is not implemented
        assert [h.name for h in resp.headers].index("X-Extra") < [
            h.name for h in resp.headers].index("Allow")
        # a user in the R-URI, or another method: -1, no reply
        resp = await ask(env, env.uac.request("OPTIONS", "sip:bob@127.0.0.1"))
        assert (resp.status, resp.reason) == (499, "rc -1")
        resp = await ask(env, env.uac.request("MESSAGE", "sip:127.0.0.1"))
        assert (resp.status, resp.reason) == (499, "rc -1")


CHECKS = OUT_LUA + (
    "function ksr_request_route()\n"
    "  local su = KSR.siputils\n"
    "  out('totag', su.has_totag()) out('req', su.is_request()) out('rpl', su.is_reply())\n"
    "  out('fh', su.is_first_hop())\n"
    "  out('uri', su.is_uri('sip:a@b')) out('uri2', su.is_uri('nope'))\n"
    "  out('uri3', su.is_uri('tel:+123'))\n"
    "  out('num', su.is_numeric('123')) out('num2', su.is_numeric('12a'))\n"
    "  out('num3', su.is_numeric(''))\n"
    "  out('tel', su.is_tel_number('+4912')) out('tel2', su.is_tel_number('4912'))\n"
    "  out('tel3', su.is_tel_number('+0491')) out('tel4', su.is_tel_number('+'))\n"
    "  out('tel5', su.is_tel_number('49-12'))\n"
    "  out('an', su.is_alphanum('ab12')) out('an2', su.is_alphanum('ab-1'))\n"
    "  out('an3', su.is_alphanum(''))\n"
    "  out('user', su.is_user('bob'))\n"
    "  KSR.sl.sl_send_reply(200, 'OK')\n"
    "end\n"
)


async def test_checks_and_their_codes(autojump_clock: Any, write_routes: Any,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sip.script")
    async with serving(write_routes(CHECKS)) as env:
        o = outs(await ask(env, env.uac.request("INVITE", "sip:bob@127.0.0.1")))
        two_vias = env.uac.request("INVITE", "sip:bob@127.0.0.1", to_tag="t").replace(
            b"Max-Forwards", b"Via: SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKx\r\nMax-Forwards")
        o2 = outs(await ask(env, two_vias))
    want = {
        "totag": -1, "req": 1, "rpl": -1, "fh": 1, "uri": 1, "uri2": -1, "uri3": 1,
        "num": 1, "num2": -2, "num3": -2, "tel": 1, "tel2": 1, "tel3": -2, "tel4": -2,
        "tel5": -2, "an": 1, "an2": -3, "an3": -2, "user": -1,
    }
    assert o == {k: f"number:{v}" for k, v in want.items()}
    assert (o2["totag"], o2["fh"]) == ("number:1", "number:-1")
    assert "is_user: no authorized credentials" in caplog.text


async def test_is_reply_in_the_reply_route(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        "function ksr_reply_route()\n"
        "  local su = KSR.siputils\n"
        "  KSR.hdr.append('X-R: ' .. su.is_reply() .. ',' .. su.is_request() .. ','\n"
        "    .. su.has_totag() .. '\\r\\n')\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("INVITE", "sip:bob@127.0.0.3"))
        await env.uas.send(env.uas.response_to(got, 180, "Ringing"), PROXY)
        resp = await env.uac.expect_response(180)
        assert resp.get("X-R") == "1,-1,1"


PARAMS = (
    "function ksr_request_route()\n"
    "  local su = KSR.siputils\n"
    "  local r = { su.uri_param('lr'), su.uri_param('x'), su.uri_param('X'),\n"
    "    su.uri_param_value('x', '1'), su.uri_param_value('x', '2'),\n"
    "    su.uri_param_value('none', '1'), su.add_uri_param('n=2'), su.add_uri_param('flag'),\n"
    "    su.add_uri_param('bad;x'), su.uri_param_rm('x'), su.uri_param_rm('absent'),\n"
    "    su.uri_param('flag') }\n"
    "  KSR.hdr.append('X-R: ' .. table.concat(r, ',') .. '\\r\\n')\n"
    "  KSR.forward()\n"
    "end\n"
)


async def test_ruri_parameters(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(PARAMS)) as env:
        got = await relayed(env, env.uac.request("MESSAGE", "sip:bob@127.0.0.3;lr;x=1"))
        assert got.get("X-R") == "1,-1,-1,1,-1,-1,1,1,-1,1,1,1"
        assert got.ruri_text == "sip:bob@127.0.0.3;lr;n=2;flag"


@pytest.mark.parametrize(("a", "b", "uri", "aor"), [
    ("sip:a@b.com", "sip:a@b.com:5060", -1, 1),
    ("sip:A@b.com", "sip:a@b.com", -1, -1),
    ("sip:a@B.COM", "sip:a@b.com", 1, 1),
    ("sip:a@b.com;x=1", "sip:a@b.com;x=2", -1, 1),
    ("sip:a@b.com;x=1", "sip:a@b.com", 1, 1),
    ("sip:a@b.com;user=phone", "sip:a@b.com", -1, 1),
    ("sip:a@b.com:5070", "sip:a@b.com", -1, -1),
    ("sips:a@b.com", "sip:a@b.com", -1, 1),
    ("sip:a@b.com", "not a uri", -1, -1),
    # differences from Kamailio (which says 1, 1 and -1, -1): RFC 3261 §19.1.4 makes a
    # transport param present in one URI only a mismatch, and compares unescaped users
    ("sip:a@b.com;transport=tcp", "sip:a@b.com", -1, 1),
    ("sip:a%41@b.com", "sip:aA@b.com", 1, -1),
])
async def test_cmp_uri_and_cmp_aor(autojump_clock: Any, write_routes: Any, a: str, b: str,
                                   uri: int, aor: int) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local a, b = KSR.hdr.get('X-A'), KSR.hdr.get('X-B')\n"
        "  KSR.hdr.append_to_reply('X-R: ' .. KSR.siputils.cmp_uri(a, b) .. ','\n"
        "    .. KSR.siputils.cmp_aor(a, b) .. '\\r\\n')\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1",
                                              headers=[("X-A", a), ("X-B", b)]))
        assert resp.get("X-R") == f"{uri},{aor}"
