"""app_lua.reload: atomic, refused when broken, and calls in flight finish on their old code."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from mi_helpers import PROXY, ROUTES_V, rewrite, sim_server

from trio_sip.mi.registry import COMMAND_FAILED, INVALID_PARAMS, MiError
from trio_sip.mi.reload import ReloadedEngine, older_engines
from trio_sip.runtime.transactions import ServerTx
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptEngine
from trio_sip.script.exports import ModuleBuilder, RouteType
from trio_sip.script.ops import SleepOp
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimUA
from trio_sip.transport.base import Address

#: core.py hands a waiting request route to its transaction with tx.spawn
REQUEST_ROUTE_MAY_WAIT = hasattr(ServerTx, "spawn")


async def test_reload_puts_the_new_routes_in_force(autojump_clock: Any, write_routes: Any) -> None:
    path = write_routes(ROUTES_V.format(version="v1"))
    async with sim_server(path) as env:
        assert (await env.ask()).reason == "v1"
        rewrite(path, ROUTES_V.format(version="v2"))
        old = env.server.core.engine
        result = await env.call("app_lua.reload")
        assert result["generation"] == 2 and result["reloaded"] == path
        assert env.server.core.engine is env.server.engine is not old
        assert (await env.ask()).reason == "v2"
        # and again: each reload is a new generation
        rewrite(path, ROUTES_V.format(version="v3"))
        assert (await env.call("app_lua.reload", [0]))["generation"] == 3
        assert (await env.ask()).reason == "v3"
        assert (await env.call("app_lua.list"))["scripts"][0]["version"] == 3
        assert env.mi.stats["reloads"] == 2
        with pytest.raises(MiError) as exc:
            await env.call("app_lua.reload", [1])
        assert exc.value.code == INVALID_PARAMS


@pytest.mark.parametrize(("broken", "why"), [
    ("function ksr_request_route(\n  KSR.sl.sl_send_reply(200, 'x')\nend\n", "routes.lua:2"),
    ("error('refusing to load')\n", "refusing to load"),
    ("function ksr_request_route()\n  KSR.nosuch.fn()\nend\n", "KSR.nosuch"),
    ("function other()\nend\n", "no function ksr_request_route()"),
])
async def test_a_broken_reload_changes_nothing(autojump_clock: Any, write_routes: Any,
                                               broken: str, why: str) -> None:
    path = write_routes(ROUTES_V.format(version="v1"))
    async with sim_server(path) as env:
        old = env.server.core.engine
        rewrite(path, broken)
        with pytest.raises(MiError) as exc:
            await env.call("app_lua.reload")
        assert exc.value.code == COMMAND_FAILED
        assert "reload failed, the old routes stay" in exc.value.message
        assert why in exc.value.message
        assert env.server.core.engine is old and env.server.engine is old
        assert (await env.ask()).reason == "v1"
        assert env.mi.stats["reload_errors"] == 1
        assert (await env.call("app_lua.list"))["scripts"][0]["version"] == 1


async def test_a_missing_routes_file_is_refused(autojump_clock: Any, write_routes: Any) -> None:
    path = write_routes(ROUTES_V.format(version="v1"))
    async with sim_server(path) as env:
        rewrite(path, None)
        with pytest.raises(MiError, match="routes file not found"):
            await env.call("app_lua.reload")
        assert (await env.ask()).reason == "v1"


LAUNCHING = """
VERSION = "{version}"
function later()
  local mine = VERSION
  KSR.async.sleep(5)
  KSR.pv.sets("$shv(done_" .. mine .. ")", VERSION .. ":" .. helper())
end
function helper() return "{version}-helper" end
function ksr_request_route()
  KSR.async.launch("later")
  KSR.sl.sl_send_reply(200, VERSION)
end
"""


async def test_a_wait_in_flight_finishes_on_its_old_code(autojump_clock: Any,
                                                         write_routes: Any) -> None:
    path = write_routes(LAUNCHING.format(version="v1"))
    async with sim_server(path) as env:
        shv = env.server.core.shv
        assert (await env.ask()).reason == "v1"  # "later" now waits 5 s in v1's engine
        await trio.sleep(1)
        rewrite(path, LAUNCHING.format(version="v2"))
        await env.call("app_lua.reload")
        engine = env.server.core.engine
        assert engine.pending_coroutines == 1 and len(older_engines(engine)) == 1
        listing = await env.call("app_lua.list")
        assert listing["older"] == [{"version": 1, "pending_coroutines": 1, "transactions": 0}]
        assert (await env.ask()).reason == "v2"  # new requests run v2 at once
        await trio.sleep(10)
        # the old coroutine ended on v1's globals and functions, the new one on v2's
        assert shv["done_v1"] == "v1:v1-helper"
        assert shv["done_v2"] == "v2:v2-helper"
        assert engine.pending_coroutines == 0
        assert older_engines(engine) == []  # generation 1 was let go


@pytest.mark.skipif(not REQUEST_ROUTE_MAY_WAIT,
                    reason="the request route cannot wait yet: ServerTx.spawn (runtime/"
                    "transactions.py, which core.py calls for a waiting request route) is "
                    "missing")
async def test_a_request_waiting_across_a_reload_finishes_on_its_old_code(
        autojump_clock: Any, write_routes: Any) -> None:
    routes = ('VERSION = "{version}"\n'
              "function ksr_request_route()\n"
              "  KSR.async.sleep(5)\n"
              "  KSR.sl.send_reply(200, VERSION)\n"
              "end\n")
    path = write_routes(routes.format(version="v1"))
    async with sim_server(path) as env:
        start = len(env.uac.received)
        await env.uac.send(env.uac.request("OPTIONS", "sip:bob@127.0.0.1"),
                           env.server.address("udp"))
        await trio.sleep(1)
        rewrite(path, routes.format(version="v2"))
        await env.call("app_lua.reload")
        assert env.server.core.engine.pending_coroutines == 1
        got = await env.uac.wait_for(lambda r: getattr(r.msg, "status", 0) == 200, start=start)
        assert isinstance(got.msg, SipResponse) and got.msg.reason == "v1"
        assert (await env.ask(status=200)).reason == "v2"
        assert env.server.core.engine.pending_coroutines == 0


# -- the engine side: resume and abandon go to the engine that made the coroutine ----------


def _wait_module() -> Any:
    b = ModuleBuilder("w", "test waits")

    @b.export(("int",), is_async=True)
    def wait(ctx: MsgContext, n: int) -> Any:
        """Wait."""
        return SleepOp(float(n))

    return b.build()


def _engine(source: str, previous: ScriptEngine | None = None) -> ScriptEngine:
    mods = [_wait_module()]
    e = ScriptEngine(mods) if previous is None else ReloadedEngine(mods, previous=previous)
    e.load_string(source)
    return e


def _ctx() -> MsgContext:
    return MsgContext(None, None, None, None, RouteType.REQUEST, None)  # type: ignore[arg-type]


ROUTE = 'G = "{g}"\nfunction r() local x = G .. "-local" KSR.w.wait(1) return x .. "/" .. G end\n'


def test_resume_and_abandon_are_routed_to_the_owning_generation() -> None:
    e1 = _engine(ROUTE.format(g="one"))
    s1 = e1.start(e1.function("r"), _ctx())
    s1b = e1.start(e1.function("r"), _ctx())
    assert s1.yielded and s1b.yielded
    e2 = _engine(ROUTE.format(g="two"), previous=e1)
    s2 = e2.start(e2.function("r"), _ctx())
    assert s2.yielded
    # one id space: no generation reuses another's coroutine ids
    assert len({s1.co_id, s1b.co_id, s2.co_id}) == 3
    assert e2.pending_coroutines == 3
    e3 = _engine(ROUTE.format(g="three"), previous=e2)
    assert older_engines(e3) == [e1, e2]
    # the newest engine resumes each coroutine where it lives, on its own globals
    done = e3.resume(s1.co_id, _ctx(), 1)
    assert done.done and done.value == "one-local/one"
    assert e3.resume(s2.co_id, _ctx(), 1).value == "two-local/two"
    assert older_engines(e3) == [e1]  # generation 2 has nothing waiting any more
    e3.abandon(s1b.co_id)
    assert older_engines(e3) == [] and e3.pending_coroutines == 0
    gone = e3.resume(s1.co_id, _ctx(), 1)
    assert gone.failed and "gone" in str(gone.value)


def test_an_older_engine_still_drives_its_own_coroutines() -> None:
    e1 = _engine(ROUTE.format(g="one"))
    s1 = e1.start(e1.function("r"), _ctx())
    e2 = _engine(ROUTE.format(g="two"), previous=e1)
    assert e1.resume(s1.co_id, _ctx(), 1).value == "one-local/one"  # a task holding e1
    assert e2.pending_coroutines == 0
    assert older_engines(e2) == []


# -- transactions in flight keep their generation for their armed routes -----------------

UAS = Address("127.0.0.3", 5060)

ARMED = """
VERSION = "{version}"
function ksr_request_route()
  if KSR.is_CANCEL() or KSR.is_ACK() then KSR.tm.t_relay() return end
  if KSR.pv.get("$rU") == "sleepy" then KSR.async.sleep(2) end
  KSR.tm.t_on_branch("branch")
  KSR.tm.t_on_reply("replied")
  KSR.tm.t_on_failure("failed")
  KSR.tm.t_relay()
end
function branch()
  KSR.hdr.append("X-Branch: " .. VERSION .. "\\r\\n")
end
function replied()
  if KSR.pv.get("$rs") == 180 then
    KSR.pv.sets("$shv(ringing_" .. KSR.pv.get("$ci") .. ")", VERSION)
  end
end
function failed()
  KSR.tm.t_reply(500, "failed-" .. VERSION)
end
"""


async def test_a_transaction_in_flight_runs_its_armed_routes_from_its_generation(
        autojump_clock: Any, write_routes: Any) -> None:
    """Reload while calls wait for their callee (and one sleeps in its request route):
    every call is answered; the calls that began before the reload run their branch,
    onreply and failure routes from the old script, even those that start after the
    reload; a call that begins after it runs the new one. Kamailio would switch the
    old calls to the new script halfway."""
    path = write_routes(ARMED.format(version="v1"))
    async with sim_server(path) as env:
        callee = SimUA(env.net, UAS)
        callee.answer(486, ringing=3, after=5)  # 180 at +3 s, 486 at +5 s
        shv = env.server.core.shv
        old = env.server.core.engine
        calls = {}
        for name in ("sleepy", "awake"):
            calls[name] = f"{name}@test"
            await env.uac.send(env.uac.request("INVITE", f"sip:{name}@{UAS}",
                                               call_id=calls[name]), PROXY)
        await trio.sleep(1)
        rewrite(path, ARMED.format(version="v2"))
        assert (await env.call("app_lua.reload"))["generation"] == 2
        assert env.server.core.engine is not old
        listing = await env.call("app_lua.list")
        assert listing["older"] == [{"version": 1, "pending_coroutines": 1,
                                     "transactions": 2}]
        calls["new"] = "new@test"
        await env.uac.send(env.uac.request("INVITE", f"sip:new@{UAS}", call_id="new@test"),
                           PROXY)
        finals = {}
        for _ in range(3):
            got = await env.uac.wait_for(
                lambda r: isinstance(r.msg, SipResponse) and r.msg.status >= 200
                and r.msg.call_id not in finals)
            assert isinstance(got.msg, SipResponse)
            finals[got.msg.call_id] = (got.msg.status, got.msg.reason)
        assert finals == {"sleepy@test": (500, "failed-v1"), "awake@test": (500, "failed-v1"),
                          "new@test": (500, "failed-v2")}
        branches = {r.msg.call_id: r.msg.get("X-Branch") for r in callee.received
                    if isinstance(r.msg, SipRequest) and r.msg.method == "INVITE"}
        assert branches == {"sleepy@test": "v1", "awake@test": "v1", "new@test": "v2"}
        # the 180s came after the reload for all three
        assert {k: shv.get(f"ringing_{v}") for k, v in calls.items()} == {
            "sleepy": "v1", "awake": "v1", "new": "v2"}
        await trio.sleep(40)  # the transactions end: generation 1 is let go
        assert (await env.call("app_lua.list"))["older"] == []
        assert env.server.core.tm.servers == {}


ARMS = """
function ksr_request_route()
  -- a name made at run time: `trio-sip check` (and a reload) only sees literals
  local name = "on_failure_" .. "{which}"
  KSR.sl.sl_send_reply(200, "armed " .. KSR.tm.t_on_failure(name))
end
{extra}
"""


async def test_t_on_checks_the_functions_of_the_routes_in_force(
        autojump_clock: Any, write_routes: Any) -> None:
    """t_on_* remembers the functions it found (ScriptEngine.has_function), per
    script generation: after a reload that removes the function, arming it is refused
    again (-1), and one that a reload adds is found at once."""
    path = write_routes(ARMS.format(which="a", extra="function on_failure_a() end"))
    async with sim_server(path) as env:
        assert (await env.ask()).reason == "armed 1"
        assert (await env.ask()).reason == "armed 1"  # from what it remembered
        rewrite(path, ARMS.format(which="a", extra=""))
        await env.call("app_lua.reload")
        assert (await env.ask()).reason == "armed -1"
        rewrite(path, ARMS.format(which="b", extra="function on_failure_b() end"))
        await env.call("app_lua.reload")
        assert (await env.ask()).reason == "armed 1"
