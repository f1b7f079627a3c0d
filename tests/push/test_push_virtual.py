"""lua/push.lua through examples/push/routes.lua, in virtual time: SimNetwork, scripted
devices and the scripted push gateway (trio_sip/testing/http.py). Every time asserted is
exact: the pushes, the 480 at the end of the wait, the INVITE reaching a device the
moment it registers."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.usrloc.helpers import ensure_modules
from trio_sip.modules.htable import htables_for
from trio_sip.modules.tmx import waiters
from trio_sip.runtime.server import Server
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import SimNetwork, SimUA, build_message, start_server
from trio_sip.testing.http import HttpExchange, ScriptedHttp
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
ROUTES = str(REPO / "examples" / "push" / "routes.lua")
PROXY = Address("127.0.0.1", 5060)
CALLER = Address("127.0.0.2", 5060)
DEV1 = Address("127.0.0.3", 5060)
DEV2 = Address("127.0.0.4", 5060)
GATEWAY = "http://127.0.0.1:8088/push"

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _modules(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_modules(monkeypatch)
    monkeypatch.setenv("PUSH_GATEWAY", GATEWAY)
    monkeypatch.setenv("PUSH_AUTHORIZATION", "Bearer gw-token")
    monkeypatch.setenv("PUSH_WAIT_MS", "5000")
    monkeypatch.setenv("PUSH_FORK_WINDOW_MS", "3000")
    monkeypatch.setenv("PUSH_HTTP_TIMEOUT_MS", "1500")


@dataclass
class Env:
    net: SimNetwork
    server: Server
    gateway: ScriptedHttp
    caller: SimUA
    dev1: SimUA
    dev2: SimUA
    nursery: trio.Nursery


@asynccontextmanager
async def push_env(tmp_path: Path, gateway: ScriptedHttp,
                   modparams: dict[str, Any] | None = None,
                   engine: str = "luajit") -> AsyncIterator[Env]:
    async with SimNetwork(seed=5) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=ROUTES,
                                    config={"core": {"data_dir": str(tmp_path)},
                                            "lua": {"engine": engine},
                                            "mi": {"listen": ""},
                                            "modparams": modparams or {}})
        gateway.install(server.core)
        yield Env(net, server, gateway, SimUA(net, CALLER), SimUA(net, DEV1), SimUA(net, DEV2),
                  nursery)
        nursery.cancel_scope.cancel()


def contact(dev: SimUA, prid: str | None) -> str:
    pn = f";pn-provider=acme;pn-prid={prid};pn-param=ACME.app" if prid else ""
    return f"<sip:bob@{dev.local}{pn}>"


async def register(dev: SimUA, prid: str | None, *, call_id: str, cseq: int) -> SipResponse:
    """A REGISTER of bob from ``dev``; its final answer."""
    n = next(_ids)
    branch = f"z9hG4bKpr{n}"
    data = build_message("REGISTER sip:127.0.0.1 SIP/2.0", [
        ("Via", f"SIP/2.0/UDP {dev.local};branch={branch};rport"), ("Max-Forwards", "70"),
        ("From", f"<sip:bob@127.0.0.1>;tag=r{n}"), ("To", "<sip:bob@127.0.0.1>"),
        ("Call-ID", call_id), ("CSeq", f"{cseq} REGISTER"),
        ("Contact", contact(dev, prid)), ("Expires", "3600")])
    start = len(dev.received)
    await dev.send(data, PROXY)
    got = await dev.wait_for(lambda r: isinstance(r.msg, SipResponse) and r.msg.status >= 200
                             and r.msg.via1 is not None and r.msg.via1.branch == branch,
                             start=start)
    assert isinstance(got.msg, SipResponse)
    return got.msg


def answering(dev: SimUA, *, ring: bool = True, answer: bool = True) -> None:
    """The device answers an INVITE (180, then 200 unless ``answer`` is false), 200 to a
    CANCEL and then 487 to its INVITE."""
    invites: list[SipRequest] = []

    def on_request(ua: SimUA, req: SipRequest, src: Address) -> None:
        if req.method == "INVITE":
            invites.append(req)
            out = [ua.response_to(req, 180, "Ringing")] if ring else []
            if answer:
                out.append(ua.response_to(req, 200, "OK"))
            ua.send_soon(src, *out)
        elif req.method == "CANCEL":
            ua.send_soon(src, ua.response_to(req, 200, "OK"),
                         *[ua.response_to(i, 487, "Request Terminated") for i in invites])

    dev.on_request = on_request


def invite(caller: SimUA, call_id: str) -> bytes:
    return caller.request("INVITE", "sip:bob@127.0.0.1", call_id=call_id,
                          branch=f"z9hG4bK{call_id}", to="sip:bob@127.0.0.1")


def invites_to(dev: SimUA) -> list[tuple[float, SipRequest]]:
    return [(r.at, r.msg) for r in dev.received
            if isinstance(r.msg, SipRequest) and r.msg.method == "INVITE"]


def register_later(env: Env, dev: SimUA, prid: str, after: float, *, call_id: str,
                   cseq: int) -> Callable[[HttpExchange], None]:
    """A gateway hook: the device wakes ``after`` seconds after its push and registers."""

    def hook(ex: HttpExchange) -> None:
        if ex.json()["pn-prid"] != prid:
            return

        async def wake() -> None:
            await trio.sleep(after)
            await register(dev, prid, call_id=call_id, cseq=cseq)

        env.nursery.start_soon(wake)

    return hook


def both(*hooks: Callable[[HttpExchange], None]) -> Callable[[HttpExchange], None]:
    def hook(ex: HttpExchange) -> None:
        for h in hooks:
            h(ex)
    return hook


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
async def test_push_wakes_the_callee_and_the_call_connects(autojump_clock, tmp_path,
                                                           engine) -> None:
    gw = ScriptedHttp(delay=0.2)
    async with push_env(tmp_path, gw, engine=engine) as env:
        assert (await register(env.dev1, "tok1", call_id="d1", cseq=1)).status == 200
        answering(env.dev1)
        gw.on_request = register_later(env, env.dev1, "tok1", 1.0, call_id="d1", cseq=2)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c1"), PROXY)
        ok = await env.caller.expect_response(200, method="INVITE")
        assert ok.status == 200
        push = gw.requests[0]
        assert push.at == t0
        assert push.method == "POST" and push.url == GATEWAY
        assert push.headers["authorization"] == "Bearer gw-token"
        assert push.headers["content-type"] == "application/json"
        assert push.json() == {"type": "call", "aor": "bob", "pn-provider": "acme",
                               "pn-prid": "tok1", "pn-param": "ACME.app", "call-id": "c1",
                               "from": "sip:ua@127.0.0.2:5060", "to": "sip:bob@127.0.0.1"}
        # nothing went to the sleeping device before it registered; then at once
        [(at, inv)] = invites_to(env.dev1)
        assert at == t0 + 1.0  # woke 1 s after its push, while the route was waiting
        assert inv.ruri_text.startswith("sip:bob@127.0.0.3:5060;pn-provider=acme")
        # the route listens for more devices until the fork window ends (3 s), no longer
        assert "push:bob" in waiters(env.server.core)
        await trio.sleep_until(at + 3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == at + 3.0
        assert waiters(env.server.core) == {}
        assert env.server.engine.pending_coroutines == 0


async def test_no_register_gives_480_at_the_end_of_the_wait(autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp(delay=0.25)
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        answering(env.dev1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c2"), PROXY)
        final = await env.caller.expect_response(final=True, method="INVITE")
        assert final.status == 480
        assert trio.current_time() - t0 == pytest.approx(0.25 + 5.0, abs=1e-9)
        assert invites_to(env.dev1) == []
        assert waiters(env.server.core) == {}


async def test_a_wait_longer_than_fr_is_not_cut_by_a_408(autojump_clock, tmp_path,
                                                         monkeypatch) -> None:
    """wait_ms beyond tm's fr_timer (30 s): push.invite raises the transaction's fr, so
    the caller gets the 480 at the end of the wait, not a 408 at 30 s."""
    monkeypatch.setenv("PUSH_WAIT_MS", "40000")
    gw = ScriptedHttp()
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c13"), PROXY)
        final = await env.caller.expect_response(final=True, method="INVITE", within=60)
        assert (final.status, trio.current_time() - t0) == (480, 40.0)


async def test_cancel_while_waiting_gives_487_and_ends_the_wait(autojump_clock,
                                                                tmp_path) -> None:
    gw = ScriptedHttp()
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        answering(env.dev1)
        await env.caller.send(invite(env.caller, "c3"), PROXY)
        await gw.wait_for_request()
        await trio.sleep(2)
        assert "push:bob" in waiters(env.server.core)  # the INVITE waits for bob
        await env.caller.send(env.caller.request("CANCEL", "sip:bob@127.0.0.1", call_id="c3",
                                                 branch="z9hG4bKc3", to="sip:bob@127.0.0.1"),
                              PROXY)
        assert (await env.caller.expect_response(200, method="CANCEL")).status == 200
        final = await env.caller.expect_response(final=True, method="INVITE")
        assert final.status == 487
        assert waiters(env.server.core) == {}  # the wait was cancelled with the INVITE
        # the device wakes up after all: the cancelled call does not reach it
        await register(env.dev1, "tok1", call_id="d1", cseq=2)
        await trio.sleep(10)
        assert invites_to(env.dev1) == []
        assert env.server.engine.pending_coroutines == 0
        # one final answer (retransmitted, as the caller sends no ACK here)
        assert {r.status for r in env.caller.responses() if r.cseq_method == "INVITE"
                and r.status >= 200} == {487}


async def test_two_devices_both_get_the_invite(autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp(delay=0.1)
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        await register(env.dev2, "tok2", call_id="d2", cseq=1)
        answering(env.dev1, answer=False)  # rings
        answering(env.dev2, answer=False)
        gw.on_request = both(
            register_later(env, env.dev1, "tok1", 1.0, call_id="d1", cseq=2),
            register_later(env, env.dev2, "tok2", 2.5, call_id="d2b", cseq=1))
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c4"), PROXY)
        await env.dev2.expect_request("INVITE", within=30)
        one, two = gw.requests
        assert (one.json()["pn-prid"], one.at) == ("tok1", t0)
        assert (two.json()["pn-prid"], two.at) == ("tok2", t0 + 0.1)  # one after the other
        [(at1, _)] = invites_to(env.dev1)
        [(at2, _)] = invites_to(env.dev2)
        assert at1 == t0 + 1.0  # the first device rings as soon as it registered
        assert at2 == pytest.approx(t0 + 0.1 + 2.5, abs=1e-9)  # the second joins the call
        # dev2 answers: the caller gets its 200 and dev1 a CANCEL
        inv2 = invites_to(env.dev2)[0][1]
        await env.dev2.send(env.dev2.response_to(inv2, 200, "OK"), PROXY)
        assert (await env.caller.expect_response(200, method="INVITE")).status == 200
        await env.dev1.expect_request("CANCEL")


async def test_a_device_after_the_fork_window_is_not_called(autojump_clock,
                                                            tmp_path) -> None:
    gw = ScriptedHttp()
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        await register(env.dev2, "tok2", call_id="d2", cseq=1)
        answering(env.dev1, answer=False)
        answering(env.dev2, answer=False)
        gw.on_request = both(
            register_later(env, env.dev1, "tok1", 1.0, call_id="d1", cseq=2),
            register_later(env, env.dev2, "tok2", 4.5, call_id="d2", cseq=2))  # > 1 + 3
        await env.caller.send(invite(env.caller, "c5"), PROXY)
        await trio.sleep(10)
        assert len(invites_to(env.dev1)) == 1
        assert invites_to(env.dev2) == []


async def test_gateway_down_gives_480_at_once(autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp(down=True)
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c6"), PROXY)
        final = await env.caller.expect_response(final=True, method="INVITE")
        assert (final.status, trio.current_time()) == (480, t0)
        assert len(gw.requests) == 1
        assert env.server.core.http_client.statistics()["connfail"] == 1


async def test_gateway_slow_is_bounded_by_the_http_timeout(autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp(delay=60)
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c7"), PROXY)
        final = await env.caller.expect_response(final=True, method="INVITE")
        assert final.status == 480
        assert trio.current_time() - t0 == pytest.approx(1.5, abs=1e-9)  # PUSH_HTTP_TIMEOUT_MS
        assert env.server.core.http_client.statistics()["timeouts"] == 1


async def test_gateway_error_status_gives_480(autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp(status=503, body=b'{"error": "unavailable"}')
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        await env.caller.send(invite(env.caller, "c8"), PROXY)
        final = await env.caller.expect_response(final=True, method="INVITE")
        assert final.status == 480


async def test_a_register_during_the_post_is_not_missed(autojump_clock, tmp_path) -> None:
    """The device registers while the gateway has not answered yet (nobody waits for the
    event then): the location table says it is fresh, and the INVITE goes to it."""
    gw = ScriptedHttp(delay=0.5)
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, "tok1", call_id="d1", cseq=1)
        answering(env.dev1)
        gw.on_request = register_later(env, env.dev1, "tok1", 0.1, call_id="d1", cseq=2)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c9"), PROXY)
        assert (await env.caller.expect_response(200, method="INVITE")).status == 200
        [(at, _)] = invites_to(env.dev1)
        assert at == t0 + 0.5  # right after the gateway's answer


async def test_awake_bindings_ring_at_once_and_no_push_target_means_plain_lookup(
        autojump_clock, tmp_path) -> None:
    gw = ScriptedHttp()
    async with push_env(tmp_path, gw) as env:
        await register(env.dev1, None, call_id="d1", cseq=1)  # no pn-* params
        answering(env.dev1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c10"), PROXY)
        assert (await env.caller.expect_response(200, method="INVITE")).status == 200
        [(at, _)] = invites_to(env.dev1)
        assert at == t0 and gw.requests == []
        # an unknown user: 404 from the route
        start = len(env.caller.received)
        await env.caller.send(env.caller.request("INVITE", "sip:carol@127.0.0.1",
                                                 call_id="c11"), PROXY)
        got = await env.caller.wait_for(lambda r: isinstance(r.msg, SipResponse)
                                        and r.msg.call_id == "c11" and r.msg.status >= 200,
                                        start=start)
        assert isinstance(got.msg, SipResponse) and got.msg.status == 404


async def test_a_callee_known_only_in_the_htable_is_pushed(autojump_clock, tmp_path,
                                                           monkeypatch) -> None:
    """No binding at all (the phone unregistered): the push record comes from the
    htable; the phone's first REGISTER after the push gets the INVITE."""
    monkeypatch.setenv("PUSH_HTABLE", "push")
    gw = ScriptedHttp()
    async with push_env(tmp_path, gw, {"htable": {"htable": ["push=>size=8"]}}) as env:
        htables_for(env.server.core).get("push").set(  # type: ignore[union-attr]
            "bob", "pn-provider=acme;pn-prid=tokA;pn-param=X, pn-provider=acme;pn-prid=tokB")
        answering(env.dev1)
        gw.on_request = register_later(env, env.dev1, "tokB", 0.5, call_id="new", cseq=1)
        t0 = trio.current_time()
        await env.caller.send(invite(env.caller, "c12"), PROXY)
        assert (await env.caller.expect_response(200, method="INVITE")).status == 200
        assert [ex.json()["pn-prid"] for ex in gw.requests] == ["tokA", "tokB"]
        assert gw.requests[0].json()["pn-param"] == "X"
        [(at, _)] = invites_to(env.dev1)
        assert at == t0 + 0.5


def test_payload_escaping_is_valid_json() -> None:
    from trio_sip.modules import builtin_modules
    from trio_sip.script.engine import ScriptEngine

    engine = ScriptEngine(builtin_modules())
    encode: Any = engine.lua.eval("function(s) return require('push').json_string(s) end")
    tricky = 'a"b\\c\r\n\t\x01é'
    assert json.loads(encode(tricky)) == tricky
    parse: Any = engine.lua.eval(
        "function(u) local t = require('push').pn_params(u) "
        "if not t then return nil end return t.provider .. '|' .. t.prid .. '|' .. "
        "tostring(t.param) end")
    assert parse("sip:bob@h;PN-Provider=apns;pn-prid=ab%3Acd;transport=tcp") == "apns|ab%3Acd|nil"
    assert parse("sip:bob@h;pn-provider=apns") is None
    assert parse("sip:bob@h?pn-provider=x&pn-prid=y") is None  # headers are not params


def test_the_example_passes_trio_sip_check() -> None:
    """`trio-sip check` (the same analysis) finds nothing in the routes nor in push.lua."""
    from trio_sip.modules import builtin_modules
    from trio_sip.script.check import check_routes

    assert check_routes(ROUTES, builtin_modules()) == []


def test_setup_refuses_bad_options_naming_them() -> None:
    import importlib

    from trio_sip.modules import builtin_modules
    from trio_sip.script.engine import ScriptEngine

    engine = ScriptEngine(builtin_modules())
    lua_error = importlib.import_module(type(engine.lua).__module__).LuaError
    setup: Any = engine.lua.eval("function(t) return require('push').setup(t) end")
    table: Any = engine.lua.table_from
    cases = [
        ({}, "gateway must be an http(s) URL"),
        ({"gateway": "ftp://x"}, "gateway must be an http(s) URL"),
        ({"gateway": GATEWAY, "wait": 1}, "unknown option 'wait'"),
        ({"gateway": GATEWAY, "wait_ms": -1}, "wait_ms must be a number >= 0"),
        ({"gateway": GATEWAY, "failure_code": 200}, "failure_code must be"),
        ({"gateway": GATEWAY, "authorization": "a\r\nX-Evil: 1"}, "one-line"),
        ({"gateway": GATEWAY, "table": ""}, "table must be a non-empty string"),
    ]
    for opts, message in cases:
        with pytest.raises(lua_error, match=re.escape(message)):
            setup(table(opts))
    setup(table({"gateway": GATEWAY, "failure_code": 503, "failure_reason": "Gone"}))
    options: Any = engine.lua.eval("function() return require('push').options() end")()
    assert (options["failure_code"], options["wait_ms"]) == (503, 20000)  # refused: no trace
