"""Helpers for tests of the Lua bridge: real parsed messages, a small fake core, and a
way to run a Lua snippet as a route on a :class:`ScriptEngine`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trio_sip.modules import builtin_modules
from trio_sip.script.context import MsgContext
from trio_sip.script.engine import ScriptEngine, Step
from trio_sip.script.exports import RouteType
from trio_sip.sip.message import SipMessage
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.transport.base import Address

SERVER = Address("127.0.0.1", 5060)
SOURCE = Address("127.0.0.2", 5060)

INVITE = (
    b"INVITE sip:bob@127.0.0.3:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKeng1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@127.0.0.2>;tag=ft1\r\n"
    b"To: <sip:bob@127.0.0.3>\r\n"
    b"Call-ID: eng-1@127.0.0.2\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.2>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

REPLY = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsl1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKeng1;rport=5060;received=127.0.0.2\r\n"
    b"From: <sip:alice@127.0.0.2>;tag=ft1\r\n"
    b"To: <sip:bob@127.0.0.3>;tag=tt1\r\n"
    b"Call-ID: eng-1@127.0.0.2\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@dataclass
class FakeTransport:
    proto: str = "udp"
    local: Address = SERVER
    reliable: bool = False


@dataclass
class FakeCore:
    """What the exports under test ask of the proxy core, recorded."""

    local: Address = SERVER
    shv: dict[str, Any] = field(default_factory=dict)
    replies: list[tuple[int, str | None, list[str]]] = field(default_factory=list)
    forwards: list[str | None] = field(default_factory=list)

    def is_myself(self, host: str, port: int | None, proto: str = "") -> bool:
        return host == self.local.host and (port or 5060) == self.local.port

    def is_my_ip(self, host: str) -> bool:
        return host == self.local.host

    def advertised(self, transport: Any) -> tuple[str, int]:
        return self.local.host, self.local.port

    def send_reply(self, ctx: MsgContext, code: int, reason: str | None = None,
                   headers: Any = (), body: bytes = b"") -> bool:
        self.replies.append((code, reason, [*ctx.reply_headers, *headers]))
        ctx.replied = code
        return True

    def forward(self, ctx: MsgContext, uri: str | None = None) -> int:
        self.forwards.append(uri)
        return 1


def parse(data: bytes) -> SipMessage:
    return parse_message_untrusted(data)


def make_ctx(data: bytes = INVITE, route_type: RouteType = RouteType.REQUEST,
             core: Any = None) -> MsgContext:
    return MsgContext(parse(data), SOURCE, FakeTransport(), None, route_type,  # type: ignore[arg-type]
                      core if core is not None else FakeCore())


def new_engine(engine: str = "luajit", modules: Any = None) -> ScriptEngine:
    return ScriptEngine(builtin_modules() if modules is None else modules, engine=engine)


def run(engine: ScriptEngine, body: str, ctx: MsgContext | None = None, *args: Any) -> Step:
    """Define ``function t(...) <body> end`` (chunk name "=t.lua") and run it as a route."""
    engine.load_string(f"function t(...)\n{body}\nend\n", "=t.lua")
    fn = engine.function("t")
    assert fn is not None
    return engine.start(fn, ctx if ctx is not None else make_ctx(), *args)


def lua_value(engine: ScriptEngine, expr: str, ctx: MsgContext | None = None) -> Any:
    """The value of a Lua expression evaluated inside a route (``return <expr>``)."""
    step = run(engine, f"return {expr}", ctx)
    assert step.done, step.traceback or step.value
    return step.value
