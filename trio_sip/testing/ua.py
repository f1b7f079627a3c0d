"""Scripted SIP endpoints for tests in virtual time.

:class:`SimUA` is a transport on a :class:`~trio_sip.transport.sim.SimNetwork`
that keeps every message it receives (with the virtual time it arrived) and
lets a test send requests and wait for what comes back::

    ua = SimUA(net, Address("127.0.0.2", 5060))
    await ua.send(ua.request("OPTIONS", "sip:bob@127.0.0.3"), proxy)
    resp = await ua.expect_response(200)

Messages are built from text with CRLF line ends and a correct
Content-Length; ``request()`` fills in the headers a request needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..sip.message import SipMessage, SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..transport.base import Address, Transport
from ..transport.sim import SimNetwork

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Received:
    """A message a SimUA received, when (virtual time) and from where."""

    msg: SipMessage
    at: float
    source: Address


def build_message(start_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """A message with CRLF line ends and Content-Length set from the body."""
    lines = [start_line] + [f"{k}: {v}" for k, v in headers if k.lower() != "content-length"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class SimUA:
    """A user agent on the simulated network that records what it receives."""

    def __init__(self, net: SimNetwork, local: Address, *, proto: str = "udp") -> None:
        self.local = local
        self._net = net
        self.received: list[Received] = []
        self._arrived = trio.Event()
        self.transport: Transport = net.transport(local, self._on_message, proto=proto)  # type: ignore[arg-type]
        #: optional automatic behaviour: called for every request received
        self.on_request: Callable[[SimUA, SipRequest, Address], None] | None = None

    async def _on_message(self, data: bytes, source: Address, transport: Transport,
                          conn_id: int | None) -> None:
        msg = parse_message_untrusted(data, stream=transport.reliable)
        self.received.append(Received(msg, trio.current_time(), source))
        self._arrived.set()
        self._arrived = trio.Event()
        if isinstance(msg, SipRequest) and self.on_request is not None:
            self.on_request(self, msg, source)

    # -- building ---------------------------------------------------------------

    def request(
        self,
        method: str,
        ruri: str,
        *,
        call_id: str | None = None,
        cseq: int = 1,
        from_tag: str = "ft1",
        to: str | None = None,
        to_tag: str | None = None,
        branch: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        max_forwards: int | None = 70,
    ) -> bytes:
        n = next(_ids)
        branch = branch or f"z9hG4bKua{n}"
        call_id = call_id or f"call-{n}@{self.local.host}"
        to_value = f"<{to or ruri}>" + (f";tag={to_tag}" if to_tag else "")
        hdrs = [
            ("Via", f"SIP/2.0/{self.transport.proto.upper()} {self.local};branch={branch};rport"),
        ]
        if max_forwards is not None:
            hdrs.append(("Max-Forwards", str(max_forwards)))
        hdrs += [
            ("From", f"<sip:ua@{self.local}>;tag={from_tag}"),
            ("To", to_value),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:ua@{self.local}>"),
        ]
        hdrs += headers or []
        return build_message(f"{method} {ruri} SIP/2.0", hdrs, body)

    def response_to(self, req: SipRequest, code: int, reason: str = "",
                    *, to_tag: str | None = "uas1", body: bytes = b"",
                    headers: list[tuple[str, str]] | None = None) -> bytes:
        """A response to ``req`` as a UAS would send it (Vias, From, To, Call-ID, CSeq copied;
        Record-Route copied for 18x/2xx as RFC 3261 §12.1.1 requires)."""
        hdrs: list[tuple[str, str]] = []
        for h in req.headers:
            if h.key in ("via", "from", "call-id", "cseq") or (
                h.key == "record-route" and 100 < code < 300
            ):
                hdrs.append((h.name, h.text))
            elif h.key == "to":
                value = h.text
                if to_tag and code > 100 and "tag=" not in value:
                    value += f";tag={to_tag}"
                hdrs.append(("To", value))
        if code > 100 and 100 < code < 300:
            hdrs.append(("Contact", f"<sip:uas@{self.local}>"))
        hdrs += headers or []
        return build_message(f"SIP/2.0 {code} {reason or 'Reason'}", hdrs, body)

    # -- sending and expecting ------------------------------------------------------

    async def send(self, data: bytes, dest: Address) -> bool:
        return await self.transport.send(data, dest)

    def send_soon(self, dest: Address, *messages: bytes) -> None:
        """Send from synchronous code (``on_request`` callbacks): one task of the network
        sends the messages in order, at the current virtual time."""

        async def send_all() -> None:
            for data in messages:
                await self.transport.send(data, dest)

        self._net_nursery().start_soon(send_all)

    def _net_nursery(self) -> trio.Nursery:
        nursery = self._net._nursery  # the network's own nursery owns in-flight sends
        if nursery is None:
            raise RuntimeError("the SimNetwork is not running")
        return nursery

    async def wait_for(self, pred: Callable[[Received], bool], within: float = 40.0,
                       *, start: int = 0) -> Received:
        """The first received message (from index ``start``) matching ``pred``; waits in
        virtual time, TooSlowError unless it arrives ``within`` seconds."""
        with trio.fail_after(within):
            i = start
            while True:
                while i < len(self.received):
                    r = self.received[i]
                    i += 1
                    if pred(r):
                        return r
                await self._arrived.wait()

    async def expect_response(self, status: int | None = None, *, method: str | None = None,
                              within: float = 40.0, final: bool = False) -> SipResponse:
        def pred(r: Received) -> bool:
            m = r.msg
            return (isinstance(m, SipResponse)
                    and (status is None or m.status == status)
                    and (not final or m.status >= 200)
                    and (method is None or m.cseq_method == method))
        r = await self.wait_for(pred, within)
        assert isinstance(r.msg, SipResponse)
        return r.msg

    async def expect_request(self, method: str | None = None, *, within: float = 40.0
                             ) -> Received:
        return await self.wait_for(
            lambda r: isinstance(r.msg, SipRequest) and (method is None or r.msg.method == method),
            within)

    def responses(self) -> list[SipResponse]:
        return [r.msg for r in self.received if isinstance(r.msg, SipResponse)]

    def requests(self) -> list[SipRequest]:
        return [r.msg for r in self.received if isinstance(r.msg, SipRequest)]


INF = math.inf
