"""KSR.hdr: header edits are visible on the wire, not to the readers (Kamailio's lumps).

Expected values were checked against Kamailio 5.6.3 (app_lua) on the same requests.
"""

from __future__ import annotations

from typing import Any

from module_helpers import OUT_LUA, ask, lines, names, outs, relayed, serving


async def test_edits_reach_the_wire_in_kamailio_places(autojump_clock: Any,
                                                       write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local r = {}\n"
        "  r[#r+1] = KSR.hdr.append('X-App: 1\\r\\n')\n"
        "  r[#r+1] = KSR.hdr.insert('X-Ins: 1\\r\\n')\n"
        "  r[#r+1] = KSR.hdr.append_after('X-After: 1\\r\\n', 'Call-ID')\n"
        "  r[#r+1] = KSR.hdr.insert_before('X-Before: 1\\r\\n', 'cseq')\n"
        "  r[#r+1] = KSR.hdr.remove('x-gone')\n"
        "  r[#r+1] = KSR.hdr.remove('X-Not-There')\n"
        "  -- Kamailio: no such header -> after the last / before the first header\n"
        "  r[#r+1] = KSR.hdr.append_after('X-End: 1', 'X-None')\n"
        "  r[#r+1] = KSR.hdr.insert_before('X-Top: 1\\r\\n', 'X-None')\n"
        "  -- readers see the message as received\n"
        "  local seen = tostring(KSR.hdr.get('X-App')) .. ',' .. KSR.hdr.is_present('X-App')\n"
        "    .. ',' .. KSR.hdr.is_present('X-Gone') .. ',' .. tostring(KSR.hdr.get('X-Gone'))\n"
        "  KSR.hdr.append('X-Seen: ' .. seen .. '\\r\\n')\n"
        "  KSR.hdr.append('X-Codes: ' .. table.concat(r, ',') .. '\\r\\n')\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        req = env.uac.request("INVITE", "sip:bob@127.0.0.3:5060",
                              headers=[("X-Gone", "a"), ("x-gone", "b")])
        got = await relayed(env, req)
        assert names(got) == [
            "Via",  # ours: always on top (Kamailio puts inserted headers above it)
            "X-Ins", "X-Top", "Via", "Max-Forwards", "From", "To", "Call-ID", "X-After",
            "X-Before", "CSeq", "Contact", "Content-Length", "X-App", "X-End", "X-Seen",
            "X-Codes",
        ]
        assert got.get("X-Seen") == "nil,-1,1,a"
        assert got.get("X-Codes") == "1,1,1,1,1,1,1,1"
        assert got.body == b""


async def test_compact_and_case_insensitive_names(autojump_clock: Any,
                                                  write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('F', KSR.hdr.get('f'))\n"
        "  out('I', KSR.hdr.get('i'))\n"
        "  out('P', KSR.hdr.is_present('CALL-ID'))\n"
        "  out('M', KSR.hdr.is_present('m'))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1", call_id="c-1"))
        o = outs(resp)
        assert o["F"] == "string:<sip:ua@127.0.0.2:5060>;tag=ft1"
        assert o["I"] == "string:c-1"
        assert o["P"] == "number:1"
        assert o["M"] == "number:1"


async def test_getters_and_indexes(autojump_clock: Any, write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + (
        "function ksr_request_route()\n"
        "  out('G', KSR.hdr.get('X-Multi'))\n"
        "  out('I0', KSR.hdr.get_idx('X-Multi', 0))\n"
        "  out('I1', KSR.hdr.get_idx('X-Multi', 1))\n"
        "  out('ILast', KSR.hdr.get_idx('X-Multi', -1))\n"
        "  out('I9', KSR.hdr.get_idx('X-Multi', 9))\n"
        "  out('GE', KSR.hdr.gete('X-None'))\n"
        "  out('GW', KSR.hdr.getw('X-None'))\n"
        "  out('GN', KSR.hdr.get('X-None'))\n"
        "  out('C', KSR.hdr.count('X-Multi'))\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    ))
    async with serving(routes) as env:
        req = env.uac.request("OPTIONS", "sip:127.0.0.1",
                              headers=[("X-Multi", "a"), ("X-Multi", "b, c")])
        o = outs(await ask(env, req))
        assert o["G"] == "string:a"
        assert o["I0"] == "string:a"
        assert o["I1"] == "string:b, c"
        assert o["ILast"] == "string:b, c"
        assert o["I9"] == "nil:nil"
        assert o["GE"] == "string:"
        assert o["GW"] == "string:<null>"
        assert o["GN"] == "nil:nil"
        assert o["C"] == "number:2"


async def test_append_to_reply_goes_into_the_local_reply_only(autojump_clock: Any,
                                                              write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.hdr.append_to_reply('X-Reply: yes\\r\\n')\n"
        "  KSR.hdr.append_to_reply('X-Reply-2: also')\n"
        "  if KSR.pv.get('$rU') == 'fwd' then KSR.forward() KSR.x.exit() end\n"
        "  KSR.sl.sl_send_reply(404, 'Not Found')\n"
        "end\n"
    )
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("INVITE", "sip:nobody@127.0.0.1"), 404)
        assert resp.reason == "Not Found"
        assert resp.get("X-Reply") == "yes"
        assert resp.get("X-Reply-2") == "also"
        assert resp.raw.count(b"\r\nX-Reply: yes\r\n") == 1
        got = await relayed(env, env.uac.request("INVITE", "sip:fwd@127.0.0.3"))
        assert not got.has("X-Reply")


async def test_rmappend_rminsert_and_empty_text(autojump_clock: Any,
                                                write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  local a = KSR.hdr.rmappend('X-A', 'X-A: new\\r\\n')\n"
        "  local b = KSR.hdr.rminsert('X-B', 'X-B: new\\r\\n')\n"
        "  local c = KSR.hdr.append('')\n"
        "  local d = KSR.hdr.insert('\\r\\n')\n"
        "  KSR.hdr.append('X-R: ' .. a .. ',' .. b .. ',' .. c .. ',' .. d .. '\\r\\n')\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        req = env.uac.request("MESSAGE", "sip:bob@127.0.0.3",
                              headers=[("X-A", "old"), ("X-B", "old")])
        got = await relayed(env, req)
        assert got.get("X-R") == "1,1,-1,-1"
        assert got.get_all("X-A") == ["new"]
        assert got.get_all("X-B") == ["new"]
        assert names(got)[1] == "X-B"  # inserted first (after our Via)
        assert names(got)[-2] == "X-A"


async def test_a_multi_line_text_appends_several_headers(autojump_clock: Any,
                                                         write_routes: Any) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.hdr.append('X-One: 1\\r\\nX-Two: 2\\r\\n')\n"
        "  KSR.forward()\n"
        "end\n"
    )
    async with serving(routes) as env:
        got = await relayed(env, env.uac.request("MESSAGE", "sip:bob@127.0.0.3"))
        assert lines(got)[-2:] == ["X-One: 1", "X-Two: 2"]
