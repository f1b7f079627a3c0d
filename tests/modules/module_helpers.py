"""Helpers for the KSR module tests: the server with a small routes file on the
simulated network (virtual time), scripted UAs, and a way to read results that a
route reports in reply headers.

A route reports values with ``out(name, value)`` (see ``OUT_LUA``): each becomes a
``X-<name>: <lua type>:<value>`` header of the next local reply, so the assertions
are on bytes that reached a SimUA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_sip.modules import builtin_modules
from trio_sip.runtime.server import Server
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptEngine, Step
from trio_sip.script.exports import RouteType
from trio_sip.sip.message import SipMessage, SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS = Address("127.0.0.3", 5060)
HOP = Address("127.0.0.4", 5060)

#: Lua helper prepended to test routes: report a value in the next local reply.
OUT_LUA = (
    "function out(name, v)\n"
    "  KSR.hdr.append_to_reply('X-' .. name .. ': ' .. type(v) .. ':' .. tostring(v) .. '\\r\\n')\n"
    "end\n"
)


@dataclass
class Env:
    net: SimNetwork
    server: Server
    uac: SimUA
    uas: SimUA
    hop: SimUA


@asynccontextmanager
async def serving(routes: str, *, seed: int = 1, address: Address = PROXY,
                  protos: Sequence[str] = ("udp",),
                  config: Mapping[str, Any] | None = None) -> AsyncIterator[Env]:
    """The server with ``routes`` (a path) plus a UAC, a UAS and a next hop."""
    async with SimNetwork(seed=seed) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, address=address,
                                    protos=protos, config=config)
        yield Env(net, server, SimUA(net, UAC), SimUA(net, UAS), SimUA(net, HOP))
        nursery.cancel_scope.cancel()


def outs(msg: SipMessage) -> dict[str, str]:
    """``{"name": "type:value"}`` from the X-<name> headers a route added with out()."""
    return {h.name[2:]: h.text for h in msg.headers if h.name.startswith("X-")}


def lines(msg: SipMessage) -> list[str]:
    """The header lines of a received message, as they came on the wire."""
    head = msg.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return head.split("\r\n")[1:]


def names(msg: SipMessage) -> list[str]:
    return [line.split(":", 1)[0] for line in lines(msg)]


async def ask(env: Env, request: bytes, status: int | None = None) -> SipResponse:
    """Send a request from the UAC to the proxy and wait for its (next) response."""
    start = len(env.uac.received)
    await env.uac.send(request, PROXY)
    got = await env.uac.wait_for(
        lambda r: isinstance(r.msg, SipResponse) and (status is None or r.msg.status == status),
        start=start)
    assert isinstance(got.msg, SipResponse)
    return got.msg


async def relayed(env: Env, request: bytes, to: SimUA | None = None) -> SipRequest:
    """Send a request from the UAC to the proxy and wait until it reaches ``to`` (the UAS)."""
    ua = to if to is not None else env.uas
    start = len(ua.received)
    await env.uac.send(request, PROXY)
    got = await ua.wait_for(lambda r: isinstance(r.msg, SipRequest), start=start)
    assert isinstance(got.msg, SipRequest)
    return got.msg


# -- direct runs (no network): an engine and a context on a parsed message -------------


@dataclass
class FakeTransport:
    proto: str = "udp"
    local: Address = PROXY
    reliable: bool = False


@dataclass
class FakeCore:
    local: Address = PROXY
    shv: dict[str, Any] = field(default_factory=dict)
    replies: list[int] = field(default_factory=list)

    def is_myself(self, host: str, port: int | None, proto: str = "") -> bool:
        return host == self.local.host and (port or 5060) == self.local.port

    def is_my_ip(self, host: str) -> bool:
        return host == self.local.host

    def advertised(self, transport: Any) -> tuple[str, int]:
        return self.local.host, self.local.port

    def send_reply(self, ctx: MsgContext, code: int, reason: str | None = None,
                   headers: Any = (), body: bytes = b"") -> bool:
        self.replies.append(code)
        ctx.replied = code
        return True


class Direct:
    """Run Lua snippets as routes on one engine, against contexts made here."""

    def __init__(self, engine: str = "luajit") -> None:
        self.engine = ScriptEngine(builtin_modules(), engine=engine)

    def ctx(self, data: bytes, route_type: RouteType = RouteType.REQUEST) -> MsgContext:
        msg = parse_message_untrusted(data)
        return MsgContext(msg, UAC, FakeTransport(), None, route_type,  # type: ignore[arg-type]
                          FakeCore())

    def run(self, ctx: MsgContext, body: str) -> Step:
        self.engine.load_string(f"function t()\n{body}\nend\n", "=t.lua")
        fn = self.engine.function("t")
        assert fn is not None
        return self.engine.start(fn, ctx)

    def value(self, ctx: MsgContext, expr: str) -> Any:
        step = self.run(ctx, f"return {expr}")
        assert step.done, step.traceback or step.value
        return step.value
