"""KSR.uac (uac_req_send with the event callback, uac_req_wait in place, $uac_req) and the
tm.t_uac_start / t_uac_wait / t_uac_cancel management commands: in virtual time on the
simulated network, and once against a real SIPp UAS on loopback."""

from __future__ import annotations

import json
import shutil

import pytest
import trio
import trio.testing

from tests.support.ports import free_port
from tests.support.sipp import Sipp
from trio_sip.config import config_from_dict
from trio_sip.mi.registry import MiError
from trio_sip.runtime.server import serve
from trio_sip.script.engine import ScriptError
from trio_sip.sip.message import SipRequest
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

SERVER = Address("127.0.0.1", 5060)
CALLER = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)


def answer(uas: SimUA, *codes: int, body: bytes = b"", delay: float = 0.0) -> None:
    """Answer the first copy of each request with ``codes``; CANCEL: 200 + 487."""
    seen: set[str] = set()
    invites: dict[str, SipRequest] = {}

    def handler(ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "CANCEL":
            ua.send_soon(source, ua.response_to(req, 200, "OK"),
                         ua.response_to(invites[req.call_id], 487, "Terminated"))
            return
        key = f"{req.call_id}/{req.cseq_num}"
        if req.method == "ACK" or key in seen:
            return
        seen.add(key)
        invites[req.call_id] = req
        msgs = [ua.response_to(req, c, "OK" if c == 200 else "Busy Here" if c == 486
                               else "R", body=body if c >= 200 else b"",
                               headers=[("Content-Type", "text/plain")] if body and c >= 200
                               else None) for c in codes]

        async def send() -> None:
            await trio.sleep(delay)
            for m in msgs:
                await ua.send(m, source)
        ua._net._nursery.start_soon(send)  # type: ignore[union-attr]

    uas.on_request = handler


SEND_FIELDS = f"""
  KSR.pv.sets("$uac_req(method)", "MESSAGE")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  KSR.pv.sets("$uac_req(furi)", "sip:server@trio.test")
  KSR.pv.sets("$uac_req(hdrs)", "Content-Type: text/plain\\r\\nX-Caller: " .. KSR.pv.get("$fU") .. "\\r\\n")
  KSR.pv.sets("$uac_req(body)", "missed call")
"""


async def test_uac_req_send_delivers_the_reply_to_the_event_callback(
        autojump_clock, write_routes) -> None:
    routes = write_routes(f"""
function ksr_request_route()
{SEND_FIELDS}
  KSR.pv.seti("$uac_req(evroute)", 1)
  KSR.pv.sets("$uac_req(evparam)", "p-" .. KSR.pv.get("$ci"))
  KSR.pv.seti("$shv(sent)", KSR.uac.uac_req_send())
  KSR.sl.sl_send_reply(202, "Queued")
end
function ksr_uac_event(evname)
  KSR.async.sleep(1)  -- the callback may wait
  KSR.pv.sets("$shv(ev)", evname .. " " .. KSR.pv.get("$uac_req(evcode)") .. " "
    .. KSR.pv.get("$uac_req(evtype)") .. " " .. KSR.pv.get("$uac_req(evparam)") .. " "
    .. KSR.pv.get("$rs") .. " " .. KSR.pv.get("$rr") .. " " .. KSR.pv.get("$rb") .. " "
    .. KSR.pv.get("$uac_req(method)"))
end
""")
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, config={
            "lua": {"routes": routes}, "modparams": {"uac": {"event_callback": "ksr_uac_event"}}})
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 200, body=b"got it", delay=2.0)
        await caller.send(caller.request("OPTIONS", f"sip:server@{SERVER}", call_id="c1"),
                          SERVER)
        assert (await caller.expect_response()).status == 202  # the route did not wait
        msg = (await uas.expect_request("MESSAGE")).msg
        assert isinstance(msg, SipRequest)
        assert msg.get("x-caller") == "ua" and msg.body == b"missed call"
        assert str(msg.from_.uri) == "sip:server@trio.test"
        t0 = trio.current_time()
        # the 200 at 2 s, then the callback's 1 s sleep: done at 3 s exactly
        await trio.sleep_until(t0 + 2.999)
        assert "ev" not in server.core.shv
        await trio.sleep_until(t0 + 3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert server.core.shv["sent"] == 1
        assert server.core.shv["ev"] == "uac:reply 200 1 p-c1 200 OK got it MESSAGE"
        stats = await server.registry.call("stats.get_statistics", ["uac:"], server.mi)  # type: ignore[union-attr]
        assert "uac:callbacks = 1" in stats and "uac:sent = 1" in stats
        assert server.registry.stats_gauges()["uac"] == frozenset({"pending"})  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_event_callback_for_a_local_408_and_evroute_by_name(
        autojump_clock, write_routes) -> None:
    routes = write_routes(f"""
function ksr_request_route()
  KSR.pv.sets("$uac_req(method)", "OPTIONS")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  KSR.pv.sets("$uac_req(evroute)", "on_uac_reply")  -- trio-sip: the function by name
  KSR.uac.uac_req_send()
  KSR.sl.sl_send_reply(200, "OK")
end
function on_uac_reply(evname)
  KSR.pv.sets("$shv(ev)", KSR.pv.get("$uac_req(evcode)") .. "/" .. KSR.pv.get("$uac_req(evtype)")
    .. "/" .. tostring(KSR.pv.get("$rs")) .. "/" .. KSR.pv.get("$rm"))
end
""")
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        caller = SimUA(net, CALLER)
        SimUA(net, UAS)  # silent
        t0 = trio.current_time()
        await caller.send(caller.request("OPTIONS", f"sip:server@{SERVER}"), SERVER)
        await trio.sleep_until(t0 + 29.999)
        assert "ev" not in server.core.shv
        await trio.sleep_until(t0 + 30.0)  # fr_timer
        await trio.testing.wait_all_tasks_blocked()
        # a local outcome: evtype 2, no reply ($rs nil), the message is the request sent
        assert server.core.shv["ev"] == "408/2/nil/OPTIONS"
        nursery.cancel_scope.cancel()


async def test_uac_req_wait_returns_the_reply_in_place(autojump_clock, write_routes) -> None:
    routes = write_routes(f"""
function ksr_request_route()
  local before = "kept"
{SEND_FIELDS}
  local code, reason, body = KSR.uac.uac_req_wait()
  KSR.sl.sl_send_reply(code == 486 and 480 or 500, before .. " " .. code .. " " .. reason
    .. " [" .. body .. "]")
end
""")
    async with SimNetwork(seed=3) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 486, body=b"busy", delay=1.5)
        t0 = trio.current_time()
        await caller.send(caller.request("MESSAGE", f"sip:server@{SERVER}"), SERVER)
        final = await caller.expect_response(final=True)
        assert (final.status, final.reason) == (480, "kept 486 Busy Here [busy]")
        assert trio.current_time() - t0 == 1.5
        nursery.cancel_scope.cancel()


async def test_uac_req_wait_errors_and_the_pv(autojump_clock, write_routes) -> None:
    routes = write_routes("""
function ksr_request_route()
  local code, reason, body = KSR.uac.uac_req_wait()   -- no method/ruri: nothing sent
  local out = code .. "|" .. reason .. "|" .. body
  KSR.pv.sets("$uac_req(method)", "OPTIONS")
  KSR.pv.sets("$uac_req(ruri)", "sip:a@192.0.2.1") -- the loopback guard refuses
  out = out .. "|" .. KSR.uac.uac_req_send()
  out = out .. "|" .. KSR.pv.get("$uac_req(method)") .. "|" .. KSR.pv.get("$uac_req(evroute)")
  KSR.pv.unset("$uac_req(all)")
  out = out .. "|" .. tostring(KSR.pv.get("$uac_req(method)"))
  out = out .. "|" .. tostring(KSR.pv.sets("$uac_req(flags)", "1"))  -- not implemented
  out = out .. "|" .. tostring(KSR.pv.sets("$uac_req(callid)", string.rep("x", 200)))
  out = out .. "|" .. tostring(KSR.pv.sets("$uac_req(callid)", "ok"))
  KSR.sl.sl_send_reply(200, out)
end
""")
    async with SimNetwork(seed=4) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller = SimUA(net, CALLER)
        await caller.send(caller.request("OPTIONS", f"sip:server@{SERVER}"), SERVER)
        final = await caller.expect_response(final=True)
        assert final.reason == "-1|||-1|OPTIONS|0|nil|false|false|true"
        nursery.cancel_scope.cancel()


async def test_waiting_route_cancelled_cancels_its_invite(autojump_clock, write_routes) -> None:
    """The caller CANCELs while the route waits for a local INVITE: the route is
    abandoned and the local INVITE is CANCELled too."""
    routes = write_routes(f"""
function ksr_request_route()
  if KSR.is_CANCEL() then KSR.tm.t_relay() return end
  KSR.pv.sets("$uac_req(method)", "INVITE")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  local code = KSR.uac.uac_req_wait()
  KSR.pv.seti("$shv(after)", code)  -- never runs
end
""")
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 180)
        inv = caller.request("INVITE", f"sip:server@{SERVER}", branch="z9hG4bKc1",
                             call_id="c1")
        await caller.send(inv, SERVER)
        await uas.expect_request("INVITE")
        await trio.sleep(1)
        await caller.send(caller.request("CANCEL", f"sip:server@{SERVER}", branch="z9hG4bKc1",
                                         call_id="c1"), SERVER)
        assert (await caller.expect_response(487)).status == 487
        await uas.expect_request("CANCEL", within=1)
        await trio.sleep(5)
        assert "after" not in server.core.shv
        nursery.cancel_scope.cancel()


# -- management commands --------------------------------------------------------------


async def test_mi_t_uac_start_wait_and_cancel(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=6) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(
            "function ksr_request_route() end\n"))
        reg, mi = server.registry, server.mi
        assert reg is not None and mi is not None
        uas = SimUA(net, UAS)
        answer(uas, 180)
        headers = ("From: <sip:op@trio.test>;tag=op1\r\nTo: <sip:bob@trio.test>\r\n"
                   "Call-ID: mi-1\r\nCSeq: 5 INVITE\r\nContent-Type: application/sdp\r\n")
        started = await reg.call("tm.t_uac_start",
                                 ["INVITE", f"sip:bob@{UAS}", ".", ".", headers, "v=0\r\n"], mi)
        assert started["callid"] == "mi-1" and started["cseq"] == 5
        inv = (await uas.expect_request("INVITE")).msg
        assert isinstance(inv, SipRequest)
        assert inv.from_tag == "op1" and inv.get("to") == "<sip:bob@trio.test>"
        assert inv.body == b"v=0\r\n" and inv.get("content-type") == "application/sdp"
        await trio.sleep(1)
        cancelled = await reg.call("tm.t_uac_cancel", {"callid": "mi-1", "cseq": "5"}, mi)
        assert cancelled["status"] == "cancelling"
        await uas.expect_request("CANCEL", within=1)
        with pytest.raises(MiError, match="481"):
            await reg.call("tm.t_uac_cancel", ["nope", "5"], mi)
        # t_uac_wait: the reply comes back as data
        answer(uas, 404)
        got = await reg.call("tm.t_uac_wait", {"method": "OPTIONS", "ruri": f"sip:x@{UAS}"},
                             mi)
        assert (got["code"], got["reason"], got["local"]) == (404, "R", False)
        assert any(h.startswith("CSeq: 10 OPTIONS") for h in got["headers"])
        json.dumps(got)  # JSON-able
        # a non-INVITE cannot be cancelled; bad params are -32602; an unusable hop fails
        SimUA(net, Address("127.0.0.9", 5060))  # silent
        s2 = await reg.call("tm.t_uac_start", ["OPTIONS", "sip:y@127.0.0.9"], mi)
        with pytest.raises(MiError, match="cannot be cancelled"):
            await reg.call("tm.t_uac_cancel", [s2["callid"], s2["cseq"]], mi)
        with pytest.raises(MiError) as info:
            await reg.call("tm.t_uac_start", ["OPTIONS"], mi)
        assert info.value.code == -32602
        with pytest.raises(MiError, match="477"):
            await reg.call("tm.t_uac_start", ["OPTIONS", "sip:a@192.0.2.1"], mi)
        with pytest.raises(MiError, match="bad From"):
            await reg.call("tm.t_uac_start", ["OPTIONS", f"sip:a@{UAS}", ".", ".",
                                              "From: <sip:broken"], mi)
        nursery.cancel_scope.cancel()


async def test_mi_t_uac_start_header_lines(autojump_clock, write_routes) -> None:
    """tm.t_uac_start's headers follow the shared rules for caller-given header lines:
    compact names, a folded line joined to its header, our own headers dropped; a bad
    line is refused (400, naming it) and nothing is sent."""
    async with SimNetwork(seed=16) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(
            "function ksr_request_route() end\n"))
        reg, mi = server.registry, server.mi
        assert reg is not None and mi is not None
        uas = SimUA(net, UAS)
        answer(uas, 200)
        headers = ("f: <sip:op@trio.test>;tag=op2\nt: <sip:bob@trio.test>\ni: mi-fold\n"
                   "Subject: a\r\n\tfolded line\r\nv: SIP/2.0/UDP 192.0.2.1\r\nl: 99\r\n")
        started = await reg.call("tm.t_uac_start",
                                 ["MESSAGE", f"sip:bob@{UAS}", ".", ".", headers], mi)
        assert started["callid"] == "mi-fold"
        req = (await uas.expect_request("MESSAGE")).msg
        assert isinstance(req, SipRequest)
        assert (req.from_tag, req.get("to"), req.get("subject")) == (
            "op2", "<sip:bob@trio.test>", "a folded line")
        assert "192.0.2.1" not in (req.get("via") or "") and req.get("content-length") == "0"
        with pytest.raises(MiError) as info:
            await reg.call("tm.t_uac_start", ["MESSAGE", f"sip:bob@{UAS}", ".", ".",
                                              "X-A: 1\n folded\nno colon here"], mi)
        assert info.value.code == -32602  # invalid params, as tm.reply answers them
        assert info.value.message == ("Invalid params: bad header line 3 'no colon here': "
                                      "no colon: it is not a 'Name: value' header line")
        with pytest.raises(MiError, match="Invalid params: bad header line 1 ' X-A: 1'"):
            await reg.call("tm.t_uac_start", ["MESSAGE", f"sip:bob@{UAS}", ".", ".",
                                              " X-A: 1"], mi)
        await trio.sleep(5)
        assert len(uas.requests()) == 1
        nursery.cancel_scope.cancel()


async def test_mi_t_uac_wait_timeout_gives_local_408(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(
            "function ksr_request_route() end\n"), config={
            "lua": {"routes": write_routes("function ksr_request_route() end\n")},
            "tm": {"fr_timer": 3000}})
        SimUA(net, UAS)
        t0 = trio.current_time()
        got = await server.registry.call("tm.t_uac_wait",  # type: ignore[union-attr]
                                         ["OPTIONS", f"sip:x@{UAS}"], server.mi)
        assert (got["code"], got["local"], trio.current_time() - t0) == (408, True, 3.0)
        nursery.cancel_scope.cancel()


async def test_unknown_event_callback_refuses_to_start(autojump_clock, write_routes) -> None:
    routes = write_routes("function ksr_request_route() end\n")
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        with pytest.raises(ScriptError, match=r"(?s)event_callback.*nope"):
            await start_server(nursery, net, config={
                "lua": {"routes": routes}, "modparams": {"uac": {"event_callback": "nope"}}})
        nursery.cancel_scope.cancel()


# -- a real peer ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed")
async def test_local_invite_to_a_real_sipp_uas(write_routes) -> None:
    """A local INVITE (tm.t_uac_wait) to SIPp's UAS scenario over real UDP: 180, 200 with
    SDP; SIPp retransmits the 200 until our ACK comes, then waits for a BYE, which we
    send as another local request in the dialog (To tag from the 200)."""
    port = free_port()
    routes = write_routes("function ksr_request_route() KSR.sl.sl_send_reply(200, 'OK') end\n")
    cfg = config_from_dict({"core": {"listen": [f"udp:127.0.0.1:{port}"]},
                            "lua": {"routes": routes}, "mi": {"listen": ""}})
    async with Sipp("uas.xml", calls=1, timeout=15).running() as peer, \
            trio.open_nursery() as nursery:
        sipp_port = peer.port
        server = await nursery.start(serve, cfg)
        reg, mi = server.registry, server.mi
        headers = (f"From: <sip:op@127.0.0.1:{port}>;tag=t1\r\nTo: <sip:svc@127.0.0.1>\r\n"
                   "Call-ID: real-1\r\nContent-Type: application/sdp\r\n")
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 9 RTP/AVP 0\r\n")
        got = await reg.call("tm.t_uac_wait", [
            "INVITE", f"sip:svc@127.0.0.1:{sipp_port}", ".", ".", headers, sdp], mi)
        assert got["code"] == 200 and "v=0" in got["body"]
        to = next(h for h in got["headers"] if h.lower().startswith("to:"))
        bye = await reg.call("tm.t_uac_wait", [
            "BYE", f"sip:svc@127.0.0.1:{sipp_port}", ".", ".",
            f"From: <sip:op@127.0.0.1:{port}>;tag=t1\r\n{to}\r\nCall-ID: real-1\r\n"
            "CSeq: 11 BYE\r\n"], mi)
        assert bye["code"] == 200
        result = await peer.wait(kill_after=10)
        assert result.ok, result.describe()
        assert result.successful == 1
        nursery.cancel_scope.cancel()


async def test_auser_apasswd_answer_a_challenge(autojump_clock, write_routes) -> None:
    from tests.runtime.test_local_uac import challenger

    routes = write_routes(f"""
function ksr_request_route()
  KSR.pv.sets("$uac_req(method)", "MESSAGE")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  KSR.pv.sets("$uac_req(auser)", "alice")
  KSR.pv.sets("$uac_req(apasswd)", "secret")
  local code = KSR.uac.uac_req_wait()
  KSR.sl.sl_send_reply(200, "got " .. code)
end
""")
    async with SimNetwork(seed=9) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        seen = challenger(uas, 407)
        await caller.send(caller.request("MESSAGE", f"sip:server@{SERVER}"), SERVER)
        final = await caller.expect_response(final=True)
        assert final.reason == "got 200" and len(seen) == 2
        assert (seen[1].get("proxy-authorization") or "").startswith('Digest username="alice"')
        nursery.cancel_scope.cancel()


async def test_tm_t_uac_send(autojump_clock, write_routes) -> None:
    """Kamailio's KSR.tm.t_uac_send: fields as tm.t_uac_start's; fire and forget."""
    routes = write_routes(f"""
function ksr_request_route()
  local a = KSR.tm.t_uac_send("NOTIFY", "sip:bob@{UAS}", "", ".",
    "From: <sip:srv@trio.test>;tag=f1\\r\\nTo: <sip:bob@trio.test>\\r\\nEvent: test\\r\\n"
    .. "Content-Type: text/plain\\r\\n", "body")
  local b = KSR.tm.t_uac_send("NOTIFY", "sip:bob@192.0.2.1", "", "", "")
  KSR.sl.sl_send_reply(200, a .. " " .. b)
end
""")
    async with SimNetwork(seed=10) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 200)
        await caller.send(caller.request("OPTIONS", f"sip:server@{SERVER}"), SERVER)
        assert (await caller.expect_response(final=True)).reason == "1 -1"
        req = (await uas.expect_request("NOTIFY")).msg
        assert isinstance(req, SipRequest)
        assert req.from_tag == "f1" and req.get("event") == "test" and req.body == b"body"
        nursery.cancel_scope.cancel()


async def test_uac_req_wait_cut_by_set_timeout(autojump_clock, write_routes) -> None:
    routes = write_routes(f"""
function ksr_request_route()
  KSR.pv.sets("$uac_req(method)", "INVITE")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  KSR.async.set_timeout(2000)
  local code, reason = KSR.uac.uac_req_wait()
  KSR.sl.sl_send_reply(500, "cut " .. code .. " [" .. reason .. "]")
end
""")
    async with SimNetwork(seed=11) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 180)
        t0 = trio.current_time()
        await caller.send(caller.request("MESSAGE", f"sip:server@{SERVER}"), SERVER)
        final = await caller.expect_response(final=True)
        assert final.reason == "cut -2 []" and trio.current_time() - t0 == 2.0
        cancel = await uas.expect_request("CANCEL", within=1)
        assert cancel.at - t0 == 2.0  # the abandoned INVITE is CANCELled
        nursery.cancel_scope.cancel()


async def test_bad_header_lines_return_minus_one_with_a_log_line(
        autojump_clock, write_routes, caplog) -> None:
    """$uac_req(hdrs) and t_uac_send's headers follow the shared rules for header lines
    (tests/sip/test_header_lines.py): a bad line makes the function return -1, logs the
    line and why, and sends nothing; a trailing CRLF and a blank line are harmless."""
    routes = write_routes(f"""
local function send(hdrs)
  KSR.pv.unset("$uac_req(all)")
  KSR.pv.sets("$uac_req(method)", "MESSAGE")
  KSR.pv.sets("$uac_req(ruri)", "sip:bob@{UAS}")
  KSR.pv.sets("$uac_req(hdrs)", hdrs)
  return KSR.uac.uac_req_send()
end
function ksr_request_route()
  local out = {{
    send("X-A: 1\\rX-Evil: 2\\r\\n"),        -- a bare CR: injection
    send("X-A: 1\\0"),                       -- a NUL
    send("X Evil: 1\\r\\n"),                 -- a name with a space
    send("X-A: 1\\r\\n\\r\\nv=0\\r\\n"),     -- a blank line, then a would-be body
    send(" X-A: 1\\r\\n"),                   -- a continuation with nothing before it
    KSR.tm.t_uac_send("NOTIFY", "sip:bob@{UAS}", "", "", "Event: x\\r\\nX-A: 1\\rX-Evil: 2"),
    send("X-Good: 1\\r\\n\\r\\nSubject: a\\r\\n folded\\r\\n"),
  }}
  KSR.sl.sl_send_reply(200, table.concat(out, " "))
end
""")
    async with SimNetwork(seed=12) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes)
        caller, uas = SimUA(net, CALLER), SimUA(net, UAS)
        answer(uas, 200)
        await caller.send(caller.request("OPTIONS", f"sip:server@{SERVER}"), SERVER)
        assert (await caller.expect_response(final=True)).reason == "-1 -1 -1 -1 -1 -1 1"
        req = (await uas.expect_request("MESSAGE")).msg
        assert isinstance(req, SipRequest)
        assert (req.get("x-good"), req.get("subject"), req.body) == ("1", "a folded", b"")
        await trio.sleep(5)
        assert len(uas.requests()) == 1  # nothing of the refused ones was sent
        nursery.cancel_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "uac_req_send: bad header line 1 'X-A: 1\\rX-Evil: 2': '\\r' in the line (CR, LF "
        "and NUL are refused: header injection)",
        "uac_req_send: bad header line 1 'X-A: 1\\x00': '\\x00' in the line (CR, LF and NUL "
        "are refused: header injection)",
        "uac_req_send: bad header line 1 'X Evil: 1': header name 'X Evil' is not a token "
        "(RFC 3261 §25.1)",
        "uac_req_send: bad header line 3 'v=0': no colon: it is not a 'Name: value' header "
        "line",
        "uac_req_send: bad header line 1 ' X-A: 1': a continuation line (starting with "
        "white space) with no header line before it",
        "t_uac_send: Invalid params: bad header line 2 'X-A: 1\\rX-Evil: 2': '\\r' in the "
        "line (CR, LF and NUL are refused: header injection)",
    ]
