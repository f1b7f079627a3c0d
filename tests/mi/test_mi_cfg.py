"""cfg.get / cfg.set (Kamailio cfg_rpc), corex.debug / debug.level: runtime-settable values,
checked as at start, applied to new transactions only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from mi_helpers import PROXY, sim_server

from trio_sip.mi.registry import COMMAND_FAILED, INVALID_PARAMS, MiError
from trio_sip.sip.message import SipResponse
from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

UAS = Address("127.0.0.3", 5060)

RELAY = """
function ksr_request_route()
  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end
  if KSR.is_method("REGISTER") then KSR.registrar.save("location", 0) return end
  KSR.tm.t_relay()
end
"""


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level
    yield
    root.setLevel(saved)


async def _err(env: Any, method: str, params: Any) -> MiError:
    with pytest.raises(MiError) as exc:
        await env.call(method, params)
    return exc.value


async def test_get_list_and_type_checked_sets(autojump_clock: Any, write_routes: Any,
                                              tmp_path: Any) -> None:
    async with sim_server(write_routes(RELAY),
                          config={"core": {"data_dir": str(tmp_path)}}) as env:
        listed = await env.call("cfg.list")
        names = {(v["group"], v["name"]) for v in listed}
        assert {("tm", "fr_timer"), ("tm", "fr_inv_timer"), ("tm", "wt_timer"),
                ("tm", "retr_timer1"), ("tm", "retr_timer2"), ("tm", "max_inv_lifetime"),
                ("core", "debug"), ("core", "log_level"),
                ("registrar", "max_expires")} <= names
        assert ("core", "listen") not in names  # not runtime-settable
        assert await env.call("cfg.get", ["tm", "fr_timer"]) == 30000
        tm = await env.call("cfg.get", ["tm"])
        assert tm["fr_inv_timer"] == 120000 and tm["restart_fr_on_each_reply"] is True
        assert [v["name"] for v in await env.call("cfg.list", ["registrar"])] == [
            "default_expires", "max_contacts", "max_expires", "min_expires"]

        got = await env.call("cfg.set", ["tm", "fr_timer", 10000])
        assert got == {"group": "tm", "name": "fr_timer", "old": 30000, "new": 10000}
        assert await env.call("cfg.sets", ["tm", "fr_inv_timer", "60000"]) == {
            "group": "tm", "name": "fr_inv_timer", "old": 120000, "new": 60000}
        assert (await env.call("cfg.seti", {"group": "tm", "name": "wt_timer",
                                           "value": 2000}))["new"] == 2000
        assert (await env.call("cfg.set", ["tm", "auto_inv_100", "off"]))["new"] is False
        assert env.server.core.tm.params.fr_timer == 10000
        assert env.server.core.config.tm.fr_inv_timer == 60000
        assert env.server.config.tm.wt_timer == 2000

        # type, range and cross-field checks: the error names the rule; nothing changes
        e = await _err(env, "cfg.set", ["tm", "fr_timer", "soon"])
        assert e.code == INVALID_PARAMS and "tm.fr_timer: 'soon' is not an integer" in e.message
        e = await _err(env, "cfg.set", ["tm", "fr_timer", -5])
        assert e.code == COMMAND_FAILED and e.message == "tm.fr_timer = -5 refused: must be > 0"
        e = await _err(env, "cfg.set", ["tm", "fr_inv_timer", 200000])
        assert "must be <= tm.max_inv_lifetime (180000)" in e.message
        e = await _err(env, "cfg.set", ["tm", "retr_timer2", 100])
        assert "tm.retr_timer1 must be <= tm.retr_timer2 (100)" in e.message
        e = await _err(env, "cfg.seti", ["tm", "fr_timer", 1.5])
        assert e.code == INVALID_PARAMS
        e = await _err(env, "cfg.sets", ["tm", "fr_timer", 5])
        assert e.code == INVALID_PARAMS
        e = await _err(env, "cfg.set", ["tm", "auto_inv_100", 2])
        assert "is not a boolean" in e.message
        e = await _err(env, "cfg.set", ["tm", "no_such", 1])
        assert e.code == INVALID_PARAMS and "tm has no runtime-settable value 'no_such'" \
            in e.message
        e = await _err(env, "cfg.get", ["nosuch"])
        assert "no runtime-settable group 'nosuch'" in e.message
        e = await _err(env, "cfg.set", ["core", "listen", "udp:127.0.0.1:1"])
        assert e.code == INVALID_PARAMS
        e = await _err(env, "cfg.set", ["tm", "fr_timer"])
        assert e.code == INVALID_PARAMS
        assert env.server.core.tm.params.fr_timer == 10000
        assert "new transactions" in await env.call("cfg.help", ["tm", "fr_timer"])

        # module params: validated by the module's rules, read at their next use
        assert (await env.call("cfg.set", ["app_lua", "budget_ms", "250"]))["new"] == 250
        e = await _err(env, "cfg.set", ["app_lua", "budget_instructions", -1])
        assert "budget_instructions must be >= 0" in e.message
        e = await _err(env, "cfg.set", ["app_lua", "mi_runstring", True])
        assert e.code == INVALID_PARAMS  # not runtime-settable: MI cannot enable itself
        assert (await env.call("cfg.set", ["registrar", "max_expires", 120]))["new"] == 120
        e = await _err(env, "cfg.set", ["registrar", "min_expires", -1])
        assert e.message == "registrar.min_expires = -1 refused: expiries must be >= 0"
        start = len(env.uac.received)
        await env.uac.send(env.uac.request(
            "REGISTER", "sip:127.0.0.1", to="sip:alice@127.0.0.1",
            headers=[("Expires", "3600")]), PROXY)
        ok = await env.uac.wait_for(
            lambda r: isinstance(r.msg, SipResponse) and r.msg.status == 200, start=start)
        assert isinstance(ok.msg, SipResponse)
        expires = int((ok.msg.get("Contact") or "").rsplit("expires=", 1)[1])
        assert 100 < expires <= 120  # capped by the new max_expires, not 3600


async def test_tm_timers_apply_to_new_transactions_only(autojump_clock: Any,
                                                        write_routes: Any) -> None:
    """fr_inv_timer lowered while a call rings: that call keeps 120 s, the next one
    gets 5 s (virtual time)."""
    async with sim_server(write_routes(RELAY)) as env:
        callee = SimUA(env.net, UAS)
        # rings 0.4 s after the INVITE (before the proxy's first retransmission at T1),
        # never answers in time
        callee.answer(200, ringing=0.4, after=1000)
        t0 = trio.current_time()
        await env.uac.send(env.uac.request("INVITE", f"sip:old@{UAS}", call_id="old"), PROXY)
        await trio.sleep(0.2)
        await env.call("cfg.set", ["tm", "fr_inv_timer", 5000])
        t1 = trio.current_time()
        await env.uac.send(env.uac.request("INVITE", f"sip:new@{UAS}", call_id="new"), PROXY)
        finals: dict[str, float] = {}
        while len(finals) < 2:
            got = await env.uac.wait_for(
                lambda r: isinstance(r.msg, SipResponse) and r.msg.status >= 200
                and r.msg.call_id not in finals, within=200)
            assert isinstance(got.msg, SipResponse) and got.msg.status == 408
            finals[got.msg.call_id] = got.at
        # fr_inv runs from the 180, 0.4 s after each INVITE: for the old call that is after
        # the change, and it still gets the value its transaction started with
        assert finals["new"] - t1 == pytest.approx(0.4 + 5.0, abs=1e-6)
        assert finals["old"] - t0 == pytest.approx(0.4 + 120.0, abs=1e-6)


async def test_debug_level(autojump_clock: Any, write_routes: Any, root_level: None) -> None:
    async with sim_server(write_routes(RELAY)) as env:
        logging.getLogger().setLevel(logging.INFO)
        assert await env.call("corex.debug") == {"debug": 2}
        assert await env.call("debug.level") == {"level": "info", "debug": 2}
        assert await env.call("corex.debug", [3]) == {"old": 2, "new": 3}
        assert logging.getLogger().level == logging.DEBUG
        engine = env.server.core.engine
        # the Lua side's cached flags follow: KSR.dbg is on now
        assert engine.lua.eval("tsip_log_on.dbg") is True
        assert await env.call("debug.level", ["warn"]) == {"old": "debug", "new": "warning",
                                                           "debug": 0}
        assert engine.lua.eval("tsip_log_on.dbg") is False
        assert engine.lua.eval("tsip_log_on.info") is False
        assert await env.call("cfg.get", ["core", "debug"]) == 0
        assert await env.call("cfg.get", ["core", "log_level"]) == "warning"
        assert (await env.call("cfg.set", ["core", "debug", -1]))["new"] == -1
        assert logging.getLogger().level == logging.ERROR
        assert (await env.call("debug.level", ["1"]))["new"] == "notice"
        for bad, method in (([4], "corex.debug"), (["info"], "corex.debug"),
                            (["loud"], "debug.level"), ([True], "debug.level")):
            e = await _err(env, method, bad)
            assert e.code in (INVALID_PARAMS, COMMAND_FAILED), e
        assert logging.getLogger().level == 25
        logging.getLogger().setLevel(logging.NOTSET)  # logs everything: Kamailio's 3
        assert await env.call("corex.debug") == {"debug": 3}
