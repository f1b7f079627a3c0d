"""A scripted ng peer on a SimNetwork: the one fake rtpengine (chaos and fault tests).

It records every datagram it receives (virtual time, cookie, decoded command) and
answers according to ``mode``:

* ``"answer"``: ping -> pong; offer/answer -> the SDP with c= and the m= port
  rewritten (127.0.0.1, ``port``); delete/query -> ok; the reply echoes the call-id
  as ``x-call-id`` so tests can check that replies reach the right request;
* ``"silent"``: nothing (a dead node);
* ``reply``: a function ``(command) -> dict | None`` overriding the answer (None:
  stay silent for that one).

Like rtpengine it answers a repeated cookie from its cache without running the
command again. Delays, loss and reordering come from the network's LinkSpec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_sip.rtpengine.protocol import (
    BadNgReply,
    decode_command_untrusted,
    encode_reply,
    wire_bytes,
)
from trio_sip.transport.base import Address, Transport
from trio_sip.transport.sim import SimNetwork


@dataclass(frozen=True)
class Got:
    at: float
    cookie: bytes
    command: dict[str, Any]
    source: Address
    data: bytes


@dataclass
class FakeNg:
    net: SimNetwork
    address: Address
    mode: str = "answer"
    reply: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    media_port: int = 30000
    received: list[Got] = field(default_factory=list)
    cache: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.transport = self.net.transport(self.address, self._on_datagram)

    @property
    def sock(self) -> str:
        return f"udp:{self.address.host}:{self.address.port}"

    def commands(self, name: str | None = None) -> list[Got]:
        return [g for g in self.received if name is None or g.command["command"] == name]

    async def _on_datagram(self, data: bytes, source: Address, transport: Transport,
                           conn_id: int | None) -> None:
        try:
            cookie, command = decode_command_untrusted(data)
        except BadNgReply:
            return
        self.received.append(Got(trio.current_time(), cookie, command, source, data))
        if self.mode == "silent":
            return
        cached = self.cache.get(cookie)
        if cached is not None:
            await self.transport.send(cached, source)
            return
        answer = self.reply(command) if self.reply is not None else self.default(command)
        if answer is None:
            return
        out = encode_reply(cookie, answer)
        self.cache[cookie] = out
        await self.transport.send(out, source)

    def default(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command["command"]
        if name == "ping":
            return {"result": "pong"}
        out: dict[str, Any] = {"result": "ok", "x-call-id": command.get("call-id", "")}
        if name in ("offer", "answer"):
            sdp = wire_bytes(command["sdp"])
            sdp = re.sub(rb"c=IN IP4 [0-9.]+", b"c=IN IP4 127.0.0.1", sdp)
            sdp = re.sub(rb"m=audio \d+", b"m=audio %d" % self.media_port, sdp)
            self.media_port += 2
            out["sdp"] = sdp
        return out
