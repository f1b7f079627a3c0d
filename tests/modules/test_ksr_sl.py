"""KSR.sl: stateless replies and their return codes, end to end."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from module_helpers import PROXY, ask, outs, serving


async def test_sl_send_reply_builds_the_reply_from_the_request(autojump_clock: Any,
                                                               write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.hdr.append_to_reply('X-Rc: ' .. KSR.sl.sl_send_reply(404, 'Nobody Here') .. '\\r\\n')\n"
        "end\n"
    )
    async with serving(routes) as env:
        req = env.uac.request("INVITE", "sip:bob@127.0.0.1", call_id="sl-1", cseq=5)
        resp = await ask(env, req, 404)
        assert resp.raw.startswith(b"SIP/2.0 404 Nobody Here\r\n")
        assert resp.call_id == "sl-1" and resp.cseq_num == 5 and resp.cseq_method == "INVITE"
        assert resp.to_tag  # generated
        assert resp.from_tag == "ft1"
        via = resp.via1
        assert via is not None and via.received == "127.0.0.2" and via.rport == "5060"
        # the headers appended after the reply was built are not in it
        assert not resp.has("X-Rc")


@pytest.mark.parametrize(("code", "rc"), [(99, -1), (700, -1), (100, 1), (699, 1)])
async def test_sl_send_reply_code_range(autojump_clock: Any, write_routes: Any,
                                        code: int, rc: int) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        f"  local rc = KSR.sl.sl_send_reply({code}, 'X')\n"
        "  KSR.hdr.append_to_reply('X-Rc: ' .. rc .. '\\r\\n')\n"
        "  KSR.sl.sl_send_reply(499, 'Report')\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1"), 499)
        assert resp.get("X-Rc") == str(rc)
        statuses = [r.status for r in env.uac.responses()]
        assert statuses == ([code, 499] if rc > 0 else [499])


async def test_no_reply_to_an_ack(autojump_clock: Any, write_routes: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then KSR.pv.seti('$shv(ack)', KSR.sl.sl_send_reply(200, 'OK'))\n"
        "  else KSR.sl.sl_send_reply(200, tostring(KSR.pv.get('$shv(ack)'))) end\n"
        "end\n"
    )
    async with serving(routes) as env:
        await env.uac.send(env.uac.request("ACK", "sip:bob@127.0.0.1", to_tag="x"), PROXY)
        await trio.sleep(1)
        assert env.uac.responses() == []
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1"))
        assert resp.reason == "-1"


async def test_send_reply_without_a_transaction_is_stateless(autojump_clock: Any,
                                                             write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.sl.send_reply(486, 'Busy Here')\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("INVITE", "sip:bob@127.0.0.1"))
        assert resp.status == 486 and resp.reason == "Busy Here"


@pytest.mark.parametrize(("ruri", "status", "reason"), [
    ("sip:bob@192.0.2.10", 477, "Unfortunately error on sending to next hop occurred"),
    ("sip:bob@example.invalid", 478, "Unresolvable destination"),
    ("sip:bob@127.0.0.1", 500, "Server Internal Error"),
])
async def test_sl_reply_error_answers_the_last_internal_error(
        autojump_clock: Any, write_routes: Any, caplog: pytest.LogCaptureFixture,
        ruri: str, status: int, reason: str) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.pv.get('$rd') ~= '127.0.0.1' and KSR.forward() > 0 then return end\n"
        "  KSR.sl.sl_reply_error()\n"
        "end\n"
    )
    caplog.set_level(logging.CRITICAL)
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("MESSAGE", ruri))
        assert (resp.status, resp.reason) == (status, reason)


async def test_sl_is_not_allowed_in_the_reply_route(autojump_clock: Any, write_routes: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(
        "function ksr_request_route() KSR.forward() end\n"
        # through an alias, which the static check does not follow (it would refuse to start)
        "function ksr_reply_route() local sl = KSR.sl; sl.sl_send_reply(500, 'No') end\n"
    )
    caplog.set_level(logging.ERROR, logger="trio_sip")
    async with serving(routes) as env:
        await env.uac.send(env.uac.request("OPTIONS", "sip:bob@127.0.0.3"), PROXY)
        got = await env.uas.expect_request("OPTIONS")
        await env.uas.send(env.uas.response_to(got.msg, 200, "OK"), PROXY)  # type: ignore[arg-type]
        resp = await env.uac.expect_response()
        assert resp.status == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "KSR.sl.sl_send_reply: not allowed in reply_route" in text


async def test_reply_codes_are_reported(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(
        "function out(n, v) KSR.hdr.append_to_reply('X-' .. n .. ': ' .. tostring(v) .. '\\r\\n') end\n"
        "function ksr_request_route()\n"
        "  out('T', type(KSR.sl.sl_send_reply(180, 'Ringing')))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("INVITE", "sip:bob@127.0.0.1"), 200)
        assert outs(resp) == {"T": "number"}
        assert [r.status for r in env.uac.responses()] == [180, 200]
