"""KSR.corex: branches appended to the destination set (recorded in the context:
forking them is the transaction layer's job), and the small checks."""

from __future__ import annotations

from typing import Any

import pytest
from module_helpers import OUT_LUA, Direct, ask, outs, serving

from trio_sip.script.context import Branch
from trio_sip.script.exports import RouteType

INVITE = (
    b"INVITE sip:bob@127.0.0.3 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKcx1\r\n"
    b"From: <sip:alice@127.0.0.2>;tag=ft1\r\n"
    b"To: <sip:bob@127.0.0.3>\r\n"
    b"Call-ID: cx-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"User-Agent: ua/1\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REPLY = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKcx1\r\n"
    b"From: <sip:alice@127.0.0.2>;tag=ft1\r\n"
    b"To: <sip:bob@127.0.0.3>;tag=t\r\n"
    b"Call-ID: cx-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.fixture(params=["luajit", "lua54"])
def lua(request: pytest.FixtureRequest) -> Direct:
    return Direct(request.param)


def test_append_branch_records_the_destination_set(lua: Direct) -> None:
    ctx = lua.ctx(INVITE)
    step = lua.run(ctx, (
        "local r = {}\n"
        "r[1] = KSR.corex.append_branch()\n"
        "KSR.seturi('sip:carol@127.0.0.4') KSR.setdsturi('sip:127.0.0.5:5070')\n"
        "KSR.setbflag(3)\n"
        "r[2] = KSR.corex.append_branch()\n"
        "r[3] = KSR.corex.append_branch_uri('sip:dave@127.0.0.6')\n"
        "r[4] = KSR.corex.append_branch_uri_q('sip:eve@127.0.0.7', '0.5')\n"
        "r[5] = KSR.corex.append_branch_uri_q('sip:eve@127.0.0.7', '1.5')\n"
        "r[6] = KSR.corex.append_branch_uri_q('sip:eve@127.0.0.7', 'x')\n"
        "r[7] = KSR.corex.append_branch_uri('not a uri')\n"
        "r[8] = KSR.corex.append_branch_uri_q('nope', '1')\n"
        "return table.concat(r, ',')"))
    assert step.done and step.value == "1,1,1,1,-1,-1,-1,-1"
    assert ctx.branches == [
        Branch("sip:bob@127.0.0.3"),
        Branch("sip:carol@127.0.0.4", "sip:127.0.0.5:5070", flags=1 << 3),
        Branch("sip:dave@127.0.0.6"),
        Branch("sip:eve@127.0.0.7", q=500),
    ]
    # the R-URI of branch 0 is not changed by appending branches
    assert ctx.request.current_uri == "sip:carol@127.0.0.4"


def test_branches_are_per_message(lua: Direct) -> None:
    a, b = lua.ctx(INVITE), lua.ctx(INVITE)
    lua.run(a, "KSR.corex.append_branch_uri('sip:x@127.0.0.9')")
    assert len(a.branches) == 1 and b.branches == []


def test_append_branch_is_refused_in_a_reply_route(lua: Direct) -> None:
    step = lua.run(lua.ctx(REPLY, RouteType.CORE_REPLY), "KSR.corex.append_branch()")
    assert step.failed
    assert str(step.value).startswith("KSR.corex.append_branch: not allowed in reply_route")


def test_append_branch_in_failure_route(lua: Direct) -> None:
    ctx = lua.ctx(INVITE, RouteType.FAILURE)
    assert lua.value(ctx, "KSR.corex.append_branch_uri('sip:f@127.0.0.8')") == 1
    assert ctx.branches == [Branch("sip:f@127.0.0.8")]


def test_checks(lua: Direct) -> None:
    ctx = lua.ctx(INVITE)
    assert lua.value(ctx, "KSR.corex.has_ruri_user()") == 1
    assert lua.value(ctx, "KSR.corex.has_user_agent()") == 1
    assert lua.value(ctx, "KSR.corex.is_faked_msg()") == -1
    assert lua.value(ctx, "KSR.setuser('') and KSR.corex.has_ruri_user()") == -1
    rpl = lua.ctx(REPLY, RouteType.CORE_REPLY)
    assert lua.value(rpl, "KSR.corex.has_ruri_user()") == -1
    assert lua.value(rpl, "KSR.corex.has_user_agent()") == -1


async def test_checks_end_to_end(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('user', KSR.corex.has_ruri_user())\n"
        "  out('ua', KSR.corex.has_user_agent())\n"
        "  out('branch', KSR.corex.append_branch_uri('sip:x@127.0.0.9'))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        o = outs(await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1",
                                                headers=[("User-Agent", "x")])))
        assert o == {"user": "number:-1", "ua": "number:1", "branch": "number:1"}
