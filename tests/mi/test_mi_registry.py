"""The command registry and its JSON-RPC 2.0 processing, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from trio_sip.mi.commands import build_registry, builtin_commands
from trio_sip.mi.registry import (
    CANNOT_WAIT,
    COMMAND_FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TIMEOUT,
    MiContext,
    MiError,
    MiRegistry,
    run_without_waiting,
)
from trio_sip.modules import builtin_modules
from trio_sip.script.exports import MiCommand, ModuleBuilder


class DummyCore:
    """Commands in these tests do not look at the core."""


def make() -> tuple[MiRegistry, MiContext]:
    reg = MiRegistry(default_timeout=5.0)

    def echo(params: Any, ctx: MiContext) -> Any:
        return params

    def fail(params: Any, ctx: MiContext) -> Any:
        raise MiError(COMMAND_FAILED, "it failed", {"why": "test"})

    def bug(params: Any, ctx: MiContext) -> Any:
        raise ZeroDivisionError("oops")

    def not_json(params: Any, ctx: MiContext) -> Any:
        return object()

    async def slow(params: dict[str, Any], ctx: MiContext) -> Any:
        await trio.sleep(params.get("seconds", 1))
        return "slept"

    reg.add(MiCommand("t.echo", echo, "Echo the params."))
    reg.add(MiCommand("t.named", echo, "Named.", params=("a", "b?", "*rest")))
    reg.add(MiCommand("t.fail", fail))
    reg.add(MiCommand("t.bug", bug))
    reg.add(MiCommand("t.notjson", not_json))
    reg.add(MiCommand("t.slow", slow, is_async=True, params=("seconds?",), timeout=10.0))
    return reg, MiContext(DummyCore(), reg)  # type: ignore[arg-type]


# -- registration ------------------------------------------------------------------------


def test_duplicate_and_bad_names_are_refused() -> None:
    reg, _ = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.add(MiCommand("t.echo", lambda p, c: p))
    reg.add(MiCommand("t.echo", lambda p, c: "new"), replace=True)
    with pytest.raises(ValueError, match="bad MI command name"):
        reg.add(MiCommand("has space", lambda p, c: p))
    with pytest.raises(ValueError, match="must be the last"):
        reg.add(MiCommand("t.x", lambda p, c: p, params=("*a", "b")))
    with pytest.raises(ValueError, match="after an optional"):
        reg.add(MiCommand("t.y", lambda p, c: p, params=("a?", "b")))
    assert "t.echo" in reg and "t.x" not in reg


def test_module_builder_declares_mi_commands() -> None:
    b = ModuleBuilder("demo", "A demo module.")

    @b.mi()
    def stats(params: Any, ctx: Any) -> Any:
        """Demo statistics."""
        return {"n": 1}

    @b.mi("other.ping", params=("host?",))
    async def ping(params: Any, ctx: Any) -> Any:
        return "pong"

    @b.export(("str",))
    def f(ctx: Any, s: str) -> int:
        """An export, unchanged by MI declarations."""
        return 1

    mod = b.build()
    assert [c.name for c in mod.mi_commands] == ["demo.stats", "other.ping"]
    assert mod.mi_commands[0].doc == "Demo statistics." and not mod.mi_commands[0].is_async
    assert mod.mi_commands[1].is_async and mod.mi_commands[1].params == ("host?",)
    assert mod.export("f") is not None
    with pytest.raises(ValueError, match="declared twice"):
        b.mi("stats")(stats)
    reg = build_registry([*builtin_modules(), mod])
    assert reg.command("demo.stats") is mod.mi_commands[0]
    assert reg.is_async("other.ping") and not reg.is_async("demo.stats")


def test_builtin_registry_has_the_kamailio_names() -> None:
    reg = build_registry(builtin_modules())
    for name in ("core.uptime", "core.version", "core.ps", "core.shmmem", "core.stats",
                 "stats.get_statistics", "stats.reset_statistics", "tm.stats", "tm.list",
                 "app_lua.reload", "app_lua.api_list", "app_lua.list", "mi.list",
                 "system.listMethods", "transport.stats", "rtpengine.show",
                 "rtpengine.ping", "rtpengine.enable"):
        assert name in reg, name
    assert reg.is_async("rtpengine.ping") and not reg.is_async("tm.stats")
    # every command documents itself
    assert all(c.doc for c in builtin_commands())
    # without the rtpengine module, no rtpengine commands
    without = build_registry([m for m in builtin_modules() if m.name != "rtpengine"])
    assert "rtpengine.show" not in without


# -- params ------------------------------------------------------------------------------------


def test_params_bind_positionally_and_by_name() -> None:
    reg, _ = make()
    cmd = reg.command("t.named")
    assert cmd is not None
    assert reg.bind(cmd, [1]) == {"a": 1, "rest": []}
    assert reg.bind(cmd, [1, 2, 3, 4]) == {"a": 1, "b": 2, "rest": [3, 4]}
    assert reg.bind(cmd, {"a": 1, "rest": "x"}) == {"a": 1, "rest": ["x"]}
    for bad, why in (([], "needs a"), ({"b": 1}, "needs a"), ({"a": 1, "zz": 2}, "no param 'zz'"),
                     ("text", "array or an object")):
        with pytest.raises(MiError, match=why) as info:
            reg.bind(cmd, bad)
        assert info.value.code == INVALID_PARAMS
    slow = reg.command("t.slow")
    assert slow is not None
    with pytest.raises(MiError, match="at most 1"):
        reg.bind(slow, [1, 2])
    echo = reg.command("t.echo")
    assert echo is not None
    assert reg.bind(echo, None) == [] and reg.bind(echo, {"x": 1}) == {"x": 1}


# -- calls ---------------------------------------------------------------------------------------


async def test_call_sync_async_errors_and_timeout(autojump_clock: Any) -> None:
    reg, ctx = make()
    assert await reg.call("t.echo", [1, "a"], ctx) == [1, "a"]
    assert await reg.call("t.slow", {"seconds": 2}, ctx) == "slept"
    with pytest.raises(MiError) as info:
        await reg.call("t.slow", [60], ctx)
    assert info.value.code == TIMEOUT and "10 s" in info.value.message
    with pytest.raises(MiError) as info:
        await reg.call("nope", None, ctx)
    assert info.value.code == METHOD_NOT_FOUND
    with pytest.raises(MiError) as info:
        await reg.call("t.fail", None, ctx)
    assert (info.value.code, info.value.data) == (COMMAND_FAILED, {"why": "test"})
    with pytest.raises(MiError) as info:
        await reg.call("t.bug", None, ctx)
    assert info.value.code == INTERNAL_ERROR and "ZeroDivisionError" in info.value.message
    assert (ctx.stats["command_errors"], ctx.stats["unknown_commands"]) == (3, 1)


def test_call_now_runs_sync_commands_and_refuses_waiting_ones() -> None:
    reg, ctx = make()
    assert reg.call_now("t.echo", {"k": "v"}, ctx) == {"k": "v"}
    with pytest.raises(MiError) as info:
        reg.call_now("t.slow", None, ctx)
    assert info.value.code == CANNOT_WAIT


def test_run_without_waiting_refuses_a_coroutine_that_suspends() -> None:
    async def suspends() -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(MiError, match="tried to wait"):
        run_without_waiting(suspends())


# -- JSON-RPC ------------------------------------------------------------------------------------


def reply(reg: MiRegistry, ctx: MiContext, payload: Any) -> Any:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    out = reg.handle_now(text, ctx)
    return None if out is None else json.loads(out)


def test_jsonrpc_single_requests() -> None:
    reg, ctx = make()
    assert reply(reg, ctx, {"jsonrpc": "2.0", "method": "t.echo", "params": [1], "id": 7}) == \
        {"jsonrpc": "2.0", "result": [1], "id": 7}
    assert reply(reg, ctx, {"jsonrpc": "2.0", "method": "t.echo", "id": "abc"})["result"] == []
    r = reply(reg, ctx, {"jsonrpc": "2.0", "method": "nope", "id": 1})
    assert r["error"]["code"] == METHOD_NOT_FOUND and r["id"] == 1
    r = reply(reg, ctx, {"jsonrpc": "2.0", "method": "t.fail", "id": 2})
    assert r["error"] == {"code": COMMAND_FAILED, "message": "it failed", "data": {"why": "test"}}
    r = reply(reg, ctx, {"jsonrpc": "2.0", "method": "t.notjson", "id": 3})
    assert r["error"]["code"] == INTERNAL_ERROR
    r = reply(reg, ctx, {"jsonrpc": "2.0", "method": "t.slow", "id": 4})
    assert r["error"]["code"] == CANNOT_WAIT


@pytest.mark.parametrize(("payload", "code", "rid"), [
    ("{not json", PARSE_ERROR, None),
    ('{"jsonrpc": "2.0", "method": "t.echo", "id": NaN}', PARSE_ERROR, None),
    ("[" * 100000 + "]" * 100000, PARSE_ERROR, None),
    ("[]", INVALID_REQUEST, None),
    ("1", INVALID_REQUEST, None),
    ('{"method": "t.echo", "id": 1}', INVALID_REQUEST, 1),
    ('{"jsonrpc": "1.0", "method": "t.echo", "id": 1}', INVALID_REQUEST, 1),
    ('{"jsonrpc": "2.0", "method": 5, "id": 1}', INVALID_REQUEST, 1),
    ('{"jsonrpc": "2.0", "method": "t.echo", "id": true}', INVALID_REQUEST, None),
    ('{"jsonrpc": "2.0", "method": "t.echo", "id": [1]}', INVALID_REQUEST, None),
    ('{"jsonrpc": "2.0", "method": "t.echo", "params": 5, "id": 1}', INVALID_PARAMS, 1),
])
def test_jsonrpc_bad_requests(payload: str, code: int, rid: Any) -> None:
    reg, ctx = make()
    r = reply(reg, ctx, payload)
    assert r["error"]["code"] == code, r
    assert r["id"] == rid


def test_jsonrpc_batches_and_notifications() -> None:
    reg, ctx = make()
    batch = [
        {"jsonrpc": "2.0", "method": "t.echo", "params": ["a"], "id": 1},
        {"jsonrpc": "2.0", "method": "t.echo", "params": ["notified"]},
        {"jsonrpc": "2.0", "method": "nope"},  # a failing notification: no reply either
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        {"foo": "boo"},
        5,
    ]
    r = reply(reg, ctx, batch)
    assert [x.get("id") for x in r] == [1, 2, None, None]
    assert r[0]["result"] == ["a"]
    assert r[1]["error"]["code"] == METHOD_NOT_FOUND
    assert r[2]["error"]["code"] == r[3]["error"]["code"] == INVALID_REQUEST
    # only notifications: nothing to answer
    assert reg.handle_now(json.dumps([{"jsonrpc": "2.0", "method": "t.echo"}] * 2), ctx) is None
    assert reg.handle_now('{"jsonrpc": "2.0", "method": "t.echo"}', ctx) is None
    # bounded batches
    big = [{"jsonrpc": "2.0", "method": "t.echo", "id": i} for i in range(reg.max_batch + 1)]
    assert reply(reg, ctx, big)["error"]["code"] == INVALID_REQUEST


def test_methods_in_names_what_a_payload_calls() -> None:
    reg, _ = make()
    assert reg.methods_in('[{"method": "a"}, {"method": 5}, 3, {"method": "b"}]') == ["a", "b"]
    assert reg.methods_in('{"method": "a"}') == ["a"]
    assert reg.methods_in("{bad") is None


async def test_handle_awaits_async_commands(autojump_clock: Any) -> None:
    reg, ctx = make()
    out = await reg.handle(json.dumps([
        {"jsonrpc": "2.0", "method": "t.slow", "params": [1], "id": 1},
        {"jsonrpc": "2.0", "method": "t.echo", "params": [2], "id": 2},
    ]), ctx)
    assert out is not None
    assert [x["result"] for x in json.loads(out)] == ["slept", [2]]
