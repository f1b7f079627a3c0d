"""tm.t_reply / tm.reply: an operator (or a service) answers a suspended or pending
server transaction through the management interface, in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from mi_helpers import PROXY, sim_server

from trio_sip.mi.registry import COMMAND_FAILED, INVALID_PARAMS, MiError
from trio_sip.sip.message import SipResponse
from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

UAS = Address("127.0.0.3", 5060)

ROUTES = """
function ksr_request_route()
  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end return end
  if KSR.is_ACK() then KSR.tm.t_relay() return end
  if KSR.pv.get("$rU") == "hold" then
    KSR.tmx.t_suspend()
  else
    KSR.tm.t_relay()
  end
  KSR.pv.sets("$shv(id_" .. KSR.pv.get("$rU") .. ")",
              KSR.pv.get("$T(id_index)") .. ":" .. KSR.pv.get("$T(id_label)"))
end
function resume()
  KSR.tm.t_reply(200, "resumed")
end
"""


def _ids(env: Any, user: str) -> tuple[int, int]:
    index, label = env.server.core.shv[f"id_{user}"].split(":")
    return int(index), int(label)


def _finals(ua: SimUA) -> list[SipResponse]:
    return [r for r in ua.responses() if r.status >= 200]


async def test_reply_to_a_suspended_transaction(autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        await env.uac.send(env.uac.request("INVITE", f"sip:hold@{UAS}"), PROXY)
        await env.uac.expect_response(100)
        await trio.sleep(1)
        index, label = _ids(env, "hold")
        tx = env.server.core.tm.by_index[index]
        assert tx.suspended

        # a provisional first: the transaction goes on, still suspended
        got = await env.call("tm.t_reply", [183, "Queued", index, label, "",
                                            "X-Queue: 3\r\nContent-Type: text/plain",
                                            "position 3"])
        assert got == {"index": index, "label": label, "code": 183, "cancelled_branches": 0}
        ringing = await env.uac.expect_response(183)
        assert ringing.reason == "Queued" and ringing.get("X-Queue") == "3"
        assert ringing.body == b"position 3"
        assert tx.suspended

        # then the final, with a To tag of our choosing
        await env.call("tm.t_reply", {"code": 486, "reason": "Busy Here", "tindex": index,
                                      "tlabel": label, "to_tag": "op-1"})
        final = await env.uac.expect_response(486)
        assert final.reason == "Busy Here" and final.to_tag == "op-1"
        assert not tx.suspended
        # the transaction's ACK (hop by hop) is absorbed; nothing else goes up
        await env.uac.send(env.uac.request("ACK", f"sip:hold@{UAS}", call_id=final.call_id,
                                           branch=final.via1.branch, to_tag="op-1"), PROXY)
        await trio.sleep(10)
        assert [r.status for r in _finals(env.uac)] == [486]
        assert env.mi.stats["tm_replies"] == 2
        assert tx.finished.is_set()

        # it is gone: 481
        with pytest.raises(MiError) as exc:
            await env.call("tm.t_reply", [200, "OK", index, label])
        assert exc.value.code == COMMAND_FAILED
        assert exc.value.message == f"481 No such transaction {index}:{label}"


async def test_reply_to_a_relayed_transaction_cancels_its_branch(
        autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        callee = SimUA(env.net, UAS)
        callee.answer(200, ringing=0.1, after=1000)  # rings and never answers
        await env.uac.send(env.uac.request("INVITE", f"sip:ring@{UAS}"), PROXY)
        await env.uac.expect_response(180)
        index, label = _ids(env, "ring")
        got = await env.call("tm.reply", [480, "Not Now", f"{index}:{label}", "."])
        assert got["cancelled_branches"] == 1
        final = await env.uac.expect_response(480)
        assert final.reason == "Not Now"
        await env.uac.send(env.uac.request("ACK", f"sip:ring@{UAS}", call_id=final.call_id,
                                           branch=final.via1.branch, to_tag=final.to_tag),
                           PROXY)
        await callee.expect_request("CANCEL")
        await trio.sleep(10)
        # the callee's 487 is absorbed: one final upstream
        assert [r.status for r in _finals(env.uac)] == [480]
        with pytest.raises(MiError) as exc:
            await env.call("tm.reply", [200, "OK", f"{index}:{label}", "."])
        assert "481 No such transaction" in exc.value.message or "already answered" in \
            exc.value.message


async def test_bad_replies_are_refused_before_anything_is_sent(
        autojump_clock: Any, write_routes: Any) -> None:
    async with sim_server(write_routes(ROUTES)) as env:
        await env.uac.send(env.uac.request("INVITE", f"sip:hold@{UAS}"), PROXY)
        await env.uac.expect_response(100)
        index, label = _ids(env, "hold")
        bad: list[tuple[str, Any, int, str]] = [
            ("tm.t_reply", [99, "x", index, label], INVALID_PARAMS, "code must be 100..699"),
            ("tm.t_reply", [700, "x", index, label], INVALID_PARAMS, "code must be 100..699"),
            ("tm.t_reply", [200, "a\r\nX-Evil: 1", index, label], INVALID_PARAMS,
             "control characters"),
            ("tm.t_reply", [200, "OK", index, label, "", "no colon here"], INVALID_PARAMS,
             "is not a 'Name: value' header line"),
            ("tm.t_reply", [200, "OK", index, label, "", "Via: SIP/2.0/UDP x"],
             INVALID_PARAMS, "written by the reply itself"),
            ("tm.t_reply", [200, "OK", index, label, "", "", "a body"], INVALID_PARAMS,
             "needs a Content-Type"),
            ("tm.t_reply", [200, "OK", index, label, "bad tag;x=1"], INVALID_PARAMS,
             "not a token"),
            ("tm.t_reply", [200, "OK", index, label + 1], COMMAND_FAILED,
             "481 No such transaction"),
            ("tm.t_reply", [200, "OK", "one", label], INVALID_PARAMS, "must be an integer"),
            ("tm.reply", [200, "OK", f"{index}-{label}", "."], INVALID_PARAMS,
             "trans_id must be INDEX:LABEL"),
            ("tm.reply", [200, "OK", f"{index}:{label}"], INVALID_PARAMS, "needs to_tag"),
        ]
        for method, params, code, text in bad:
            with pytest.raises(MiError) as exc:
                await env.call(method, params)
            assert exc.value.code == code and text in exc.value.message, (params, exc.value)
        assert [r.status for r in env.uac.responses()] == [100]
        # after the refusals, a good final goes through; a second one is refused
        await env.call("tm.t_reply", [603, "Decline", index, label])
        assert (await env.uac.expect_response(603)).reason == "Decline"
        with pytest.raises(MiError, match="already answered"):
            await env.call("tm.t_reply", [200, "OK", index, label])


async def test_header_lines_follow_the_shared_rules(autojump_clock: Any,
                                                    write_routes: Any) -> None:
    """HEADERS go through parse_header_lines_untrusted: each bad line is refused with
    -32602 naming it and why, before anything is sent; blank lines and a trailing CRLF
    are harmless, folded lines are joined, compact forms are the headers they stand for."""
    async with sim_server(write_routes(ROUTES)) as env:
        await env.uac.send(env.uac.request("INVITE", f"sip:hold@{UAS}"), PROXY)
        await env.uac.expect_response(100)
        index, label = _ids(env, "hold")
        bad = [
            # injection attempts: a bare CR, a NUL, a blank line then a "body"
            ("X-A: 1\rX-Evil: 2", "headers: header line 1 'X-A: 1\\rX-Evil: 2': '\\r' in "
             "the line (CR, LF and NUL are refused: header injection)"),
            ("X-A: 1\x00", "header injection"),
            ("X-A: 1\r\n\r\nv=0", "headers: header line 3 'v=0': no colon: it is not a "
             "'Name: value' header line"),
            ("X-A: \x1b[2J", "control character '\\x1b'"),
            # names
            ("X Evil: 1", "headers: header line 1 'X Evil: 1': header name 'X Evil' is not "
             "a token (RFC 3261 §25.1)"),
            ("X|A: 1", "is not a token"),  # an HTTP tchar, not a SIP token character
            (": 1", "empty header name"),
            (" X-A: 1", "no header line before it"),
            ("i: other-call-id", "headers: i is written by the reply itself"),
        ]
        for headers, text in bad:
            with pytest.raises(MiError) as exc:
                await env.call("tm.t_reply", [200, "OK", index, label, "", headers])
            assert exc.value.code == INVALID_PARAMS and text in exc.value.message, (
                headers, exc.value)
        assert [r.status for r in env.uac.responses()] == [100]

        await env.call("tm.t_reply", [
            486, "Busy Here", index, label, "",
            "X-A: 1\r\n\r\nSubject: a\r\n  folded\r\nc: text/plain\r\n", "busy"])
        final = await env.uac.expect_response(486)
        assert (final.get("X-A"), final.get("Subject"), final.body) == ("1", "a folded",
                                                                        b"busy")
