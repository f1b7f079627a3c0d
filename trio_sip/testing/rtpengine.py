"""A scripted rtpengine (the ng control protocol) on a SimNetwork, with fault modes.

:class:`FakeRtpengine` records every datagram it receives (virtual time, cookie,
decoded command) and answers according to ``mode``:

* ``"answer"``: ping -> pong; offer/answer -> the SDP with ``c=`` and the ``m=`` port
  rewritten (``media_host``, ``media_port``, +2 per offer/answer); delete/query -> ok;
  the reply echoes the call-id as ``x-call-id`` so tests can check that replies reach
  the right request;
* ``"silent"``: nothing (a dead node, or one behind a partition);
* ``"error"``: ``{"result": "error", "error-reason": error_reason}`` to everything
  but ping (a node that refuses: the route sees -1);
* ``"garbage"``: a reply that is not bencode (the client must count and drop it);
* ``"slow"``: the ``"answer"`` reply, ``delay`` virtual seconds late (past the client's
  ``rtpengine_tout_ms`` it retransmits with the same cookie; like rtpengine's cookie
  cache, a copy that arrives while the command is still in progress gets nothing, one
  that arrives later gets the cached reply);
* ``"flaky"``: like ``"answer"``, but a command not answered yet is ignored with probability
  ``flaky`` (seeded with ``seed``: the same run twice gives the same faults);
* ``reply``: a function ``(command) -> dict | None`` overriding the answer (None: stay
  silent for that one).

Like rtpengine it answers a repeated cookie from its cache without running the
command again (rtpengine.md §6). Delays, loss and reordering on the way come from
the network's LinkSpec; ``mode`` may be changed at any time (a node that dies and
comes back).

A server under test talks to it once its ng client is on the SimNetwork:
:func:`attach_rtpengine` makes that client from the server's
``[modparams.rtpengine]`` and puts it where ``KSR.rtpengine.*`` finds it::

    ng = FakeRtpengine(net, Address("127.0.0.1", 2223))
    server = await start_server(nursery, net, routes=..., config={
        "modparams": {"rtpengine": {"rtpengine_sock": ng.sock}}})
    await attach_rtpengine(server, net)
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..rtpengine.protocol import (
    BadNgReply,
    decode_command_untrusted,
    encode_reply,
    wire_bytes,
)
from ..transport.base import Address, Transport
from ..transport.sim import SimNetwork

__all__ = ["MODES", "FakeRtpengine", "Got", "attach_rtpengine"]

MODES = ("answer", "silent", "error", "garbage", "slow", "flaky")


@dataclass(frozen=True)
class Got:
    """One command the fake received."""

    at: float
    cookie: bytes
    command: dict[str, Any]
    source: Address
    data: bytes


@dataclass
class FakeRtpengine:
    """A scripted ng peer at ``address`` on ``net`` (see the module doc)."""

    net: SimNetwork
    address: Address
    mode: str = "answer"
    reply: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    media_host: str = "127.0.0.1"
    media_port: int = 30000
    #: "slow": how late the answer is (virtual seconds)
    delay: float = 2.0
    #: "flaky": the probability of ignoring a new command
    flaky: float = 0.5
    #: "error": the error-reason of the error replies
    error_reason: str = "Unknown call-id"
    seed: int = 0
    received: list[Got] = field(default_factory=list)
    cache: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self._rng = random.Random(f"{self.seed}|{self.address}")
        self._in_progress: set[bytes] = set()
        self.transport = self.net.transport(self.address, self._on_datagram)

    @property
    def sock(self) -> str:
        """The ``rtpengine_sock`` modparam that reaches this peer."""
        return f"udp:{self.address.host}:{self.address.port}"

    def commands(self, name: str | None = None) -> list[Got]:
        """What it received (each retransmission too), optionally one command only."""
        return [g for g in self.received if name is None or g.command["command"] == name]

    def calls(self) -> set[str]:
        """The call-ids offered and not deleted (media sessions left open)."""
        live: set[str] = set()
        for g in self.received:
            cid = str(g.command.get("call-id", ""))
            if g.command["command"] in ("offer", "answer"):
                live.add(cid)
            elif g.command["command"] == "delete":
                live.discard(cid)
        return live

    async def _on_datagram(self, data: bytes, source: Address, transport: Transport,
                           conn_id: int | None) -> None:
        try:
            cookie, command = decode_command_untrusted(data)
        except BadNgReply:
            return
        self.received.append(Got(trio.current_time(), cookie, command, source, data))
        if self.mode == "silent":
            return
        if cookie in self._in_progress:
            return
        cached = self.cache.get(cookie)
        if cached is not None:
            await self.transport.send(cached, source)
            return
        if self.mode == "flaky" and self._rng.random() < self.flaky:
            return
        if self.mode == "garbage":
            await self.transport.send(cookie + b" not-bencode", source)
            return
        if self.reply is not None:
            answer = self.reply(command)
        elif self.mode == "error" and command["command"] != "ping":
            answer = {"result": "error", "error-reason": self.error_reason}
        else:
            answer = self.default(command)
        if answer is None:
            return
        out = encode_reply(cookie, answer)
        if self.mode == "slow":
            self._in_progress.add(cookie)
            self.net_nursery().start_soon(self._send_late, cookie, out, source)
            return
        self.cache[cookie] = out
        await self.transport.send(out, source)

    def net_nursery(self) -> trio.Nursery:
        nursery = self.net._nursery
        if nursery is None:
            raise RuntimeError("the SimNetwork is not running")
        return nursery

    async def _send_late(self, cookie: bytes, data: bytes, dest: Address) -> None:
        await trio.sleep(self.delay)
        self._in_progress.discard(cookie)
        self.cache[cookie] = data
        await self.transport.send(data, dest)

    def default(self, command: dict[str, Any]) -> dict[str, Any]:
        """What a healthy rtpengine answers (see the module doc)."""
        name = command["command"]
        if name == "ping":
            return {"result": "pong"}
        out: dict[str, Any] = {"result": "ok", "x-call-id": command.get("call-id", "")}
        if name in ("offer", "answer") and "sdp" in command:
            sdp = wire_bytes(command["sdp"])
            sdp = re.sub(rb"c=IN IP4 [0-9.]+", b"c=IN IP4 " + self.media_host.encode(), sdp)
            sdp = re.sub(rb"m=audio \d+", b"m=audio %d" % self.media_port, sdp)
            self.media_port += 2
            out["sdp"] = sdp
        return out


async def attach_rtpengine(server: Any, net: SimNetwork, *, host: str = "127.0.0.1",
                           port: int = 40000) -> Any:
    """Give ``server`` an rtpengine ng client on ``net`` (local ``host:port``), made from
    its ``[modparams.rtpengine]`` and run in its nursery, so that ``KSR.rtpengine.*``
    talks to scripted peers in virtual time. Returns the client."""
    from ..modules.rtpengine import RtpengineParams, _run_client
    from ..rtpengine import RtpengineClient, sim_endpoints
    from ..script.modparams import modparams_of

    core = server.core
    params = modparams_of(core, "rtpengine", RtpengineParams)
    client = RtpengineClient(params.client_config(), guard=core.guard,
                             open_endpoint=sim_endpoints(net, host, port))
    nursery = core.tm.nursery
    if nursery is None:
        raise RuntimeError("the server is not running")
    nursery.start_soon(_run_client, client, name="rtpengine-client")
    core.rtpengine = client
    await trio.lowlevel.checkpoint()
    return client
