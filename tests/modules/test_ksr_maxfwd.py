"""KSR.maxfwd: return codes 2/1/-1 and the Max-Forwards value that goes on the wire.

Checked against Kamailio 5.6.3: a missing header is added with the limit before the
first header; a value above max_limit (70) is lowered to it; an out-of-range limit
is -1 (logged).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from module_helpers import ask, names, relayed, serving

ROUTES = (
    "function ksr_request_route()\n"
    "  local limit = tonumber(KSR.hdr.get('X-Limit') or '10')\n"
    "  local rc = KSR.maxfwd.process_maxfwd(limit)\n"
    "  local lt = KSR.maxfwd.is_maxfwd_lt(5)\n"
    "  if rc == -1 and limit <= 255 then KSR.sl.sl_send_reply(483, 'Too Many Hops') return end\n"
    "  KSR.hdr.append('X-R: ' .. rc .. ',' .. lt .. '\\r\\n')\n"
    "  KSR.forward()\n"
    "end\n"
)


@pytest.mark.parametrize(("mf", "rc", "lt", "sent"), [
    (70, "1", "-1", "69"),
    (3, "1", "1", "2"),
    (1, "1", "1", "0"),
    (100, "1", "-1", "70"),  # max_limit
    (255, "1", "-1", "70"),
    (None, "2", "-2", "10"),  # added with the limit
])
async def test_process_maxfwd(autojump_clock: Any, write_routes: Any, mf: int | None,
                              rc: str, lt: str, sent: str) -> None:
    async with serving(write_routes(ROUTES)) as env:
        got = await relayed(env, env.uac.request("MESSAGE", "sip:bob@127.0.0.3",
                                                 max_forwards=mf))
        assert got.get("X-R") == f"{rc},{lt}"
        assert got.get_all("Max-Forwards") == [sent]
        if mf is None:
            assert names(got)[:2] == ["Via", "Max-Forwards"]  # before the received headers
        else:
            assert names(got).index("Max-Forwards") == 2  # in place, after both Vias


async def test_zero_is_minus_one_and_the_route_answers_483(autojump_clock: Any,
                                                           write_routes: Any) -> None:
    async with serving(write_routes(ROUTES)) as env:
        resp = await ask(env, env.uac.request("MESSAGE", "sip:bob@127.0.0.3", max_forwards=0))
        assert (resp.status, resp.reason) == (483, "Too Many Hops")
        assert env.uas.received == []


async def test_limit_out_of_range_is_minus_one(autojump_clock: Any, write_routes: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="trio_sip.script")
    async with serving(write_routes(ROUTES)) as env:
        got = await relayed(env, env.uac.request("MESSAGE", "sip:bob@127.0.0.3",
                                                 headers=[("X-Limit", "300")]))
        assert got.get("X-R") == "-1,-1"
        assert got.get("Max-Forwards") == "70"  # untouched
    assert "process_maxfwd: invalid limit 300" in caplog.text


async def test_is_maxfwd_lt_limit_range(autojump_clock: Any, write_routes: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.hdr.append_to_reply('X-R: ' .. KSR.maxfwd.is_maxfwd_lt(256) .. ','\n"
        "    .. KSR.maxfwd.is_maxfwd_lt(71) .. ',' .. KSR.maxfwd.is_maxfwd_lt(70) .. '\\r\\n')\n"
        "  KSR.sl.sl_send_reply(200, 'OK')\n"
        "end\n"
    )
    caplog.set_level(logging.ERROR, logger="trio_sip.script")
    async with serving(routes) as env:
        resp = await ask(env, env.uac.request("OPTIONS", "sip:127.0.0.1"))
        assert resp.get("X-R") == "-1,1,-1"
