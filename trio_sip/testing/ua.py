"""Scripted SIP endpoints for tests in virtual time.

:class:`SimUA` is a transport on a :class:`~trio_sip.transport.sim.SimNetwork`
that keeps every message it receives (with the virtual time it arrived) and
lets a test send requests and wait for what comes back::

    ua = SimUA(net, Address("127.0.0.2", 5060))
    await ua.send(ua.request("OPTIONS", "sip:bob@127.0.0.3"), proxy)
    resp = await ua.expect_response(200)

Messages are built from text with CRLF line ends and a correct
Content-Length; ``request()`` fills in the headers a request needs.

Exact virtual times: with ``at=`` an expectation also asserts *when* the message
arrived (``trio.current_time()`` at its arrival, within ``tolerance``)::

    t0 = trio.current_time()
    await ua.send(invite, proxy)
    await ua.expect_response(408, at=t0 + 32.0)      # fr_inv_timer ran out, exactly

and ``on_request`` makes it a responder (see ``answer()``: a UAS that answers every
INVITE with a given status after a delay in virtual time).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..sip.message import SipMessage, SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..sip.reply import reason_phrase
from ..transport.base import Address, Transport
from ..transport.sim import SimNetwork

_ids = itertools.count(1)

#: default tolerance of ``at=`` checks: virtual times are floats summed from timers
TOLERANCE = 1e-6


class ExpectationFailed(AssertionError):
    """A message did not arrive when (or as) a test expected."""


def _first_line(msg: SipMessage) -> str:
    if isinstance(msg, SipResponse):
        return f"{msg.status} {msg.cseq_method}"
    assert isinstance(msg, SipRequest)
    return f"{msg.method} {msg.cseq_num}"


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
        return build_message(f"SIP/2.0 {code} {reason or reason_phrase(code)}", hdrs, body)

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
                       *, start: int = 0, at: float | None = None,
                       tolerance: float = TOLERANCE) -> Received:
        """The first received message (from index ``start``) matching ``pred``; waits in
        virtual time, TooSlowError unless it arrives ``within`` seconds. With ``at`` (an
        absolute virtual time; ``within`` is then ignored), it waits until then at most
        and asserts that the message arrived at ``at`` (± ``tolerance``):
        ExpectationFailed says when it did, or that none came by then."""
        if at is not None:  # no need to wait past it
            within = max(0.0, at - trio.current_time() + tolerance)
        try:
            with trio.fail_after(within):
                i = start
                while True:
                    while i < len(self.received):
                        r = self.received[i]
                        i += 1
                        if pred(r):
                            if at is not None and abs(r.at - at) > tolerance:
                                raise ExpectationFailed(
                                    f"{self.local}: {_first_line(r.msg)!r} arrived at "
                                    f"{r.at!r}, expected at {at!r} (off by {r.at - at:+.6f} s)")
                            return r
                    await self._arrived.wait()
        except trio.TooSlowError:
            if at is None:
                raise
            raise ExpectationFailed(
                f"{self.local}: nothing matching arrived by {trio.current_time()!r} "
                f"(expected at {at!r})") from None

    async def expect_response(self, status: int | None = None, *, method: str | None = None,
                              within: float = 40.0, final: bool = False,
                              at: float | None = None, tolerance: float = TOLERANCE,
                              start: int = 0) -> SipResponse:
        """The first response (from index ``start`` of :attr:`received`) with this status
        and CSeq method (None: any; ``final``: >= 200). ``at``: it must arrive at exactly
        that virtual time (see :meth:`wait_for`)."""
        def pred(r: Received) -> bool:
            m = r.msg
            return (isinstance(m, SipResponse)
                    and (status is None or m.status == status)
                    and (not final or m.status >= 200)
                    and (method is None or m.cseq_method == method))
        r = await self.wait_for(pred, within, start=start, at=at, tolerance=tolerance)
        assert isinstance(r.msg, SipResponse)
        return r.msg

    async def expect_request(self, method: str | None = None, *, within: float = 40.0,
                             at: float | None = None, tolerance: float = TOLERANCE,
                             start: int = 0) -> Received:
        """The first request (from index ``start``) with this method; ``at`` as above."""
        return await self.wait_for(
            lambda r: isinstance(r.msg, SipRequest) and (method is None or r.msg.method == method),
            within, start=start, at=at, tolerance=tolerance)

    async def expect_nothing(self, until: float, pred: Callable[[Received], bool] | None = None,
                             ) -> None:
        """Wait until the virtual time ``until`` and assert that nothing (matching
        ``pred``) arrived from now until then."""
        first = len(self.received)
        await trio.sleep_until(until)
        extra = [r for r in self.received[first:] if pred is None or pred(r)]
        if extra:
            raise ExpectationFailed(
                f"{self.local}: expected nothing until {until!r}, got "
                + ", ".join(f"{_first_line(r.msg)!r} at {r.at!r}" for r in extra))

    def answer(self, status: int = 200, *, after: float = 0.0, ringing: float | None = None,
               body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        """Become a simple UAS: every INVITE gets 180 ``ringing`` seconds after it
        arrived (if given) and ``status`` ``after`` seconds after it; BYE and CANCEL get
        200, other requests ``status``. Retransmissions are answered again (no IST:
        for RFC-exact behaviour use :class:`~trio_sip.testing.agents.Callee`)."""

        def on_request(ua: SimUA, req: SipRequest, source: Address) -> None:
            if req.method == "ACK":
                return
            if req.method in ("BYE", "CANCEL") or req.method != "INVITE":
                code = 200 if req.method in ("BYE", "CANCEL") else status
                ua.send_soon(source, ua.response_to(req, code, headers=headers))
                return
            if ringing is not None:
                ua.send_later(ringing, source, ua.response_to(req, 180, "Ringing"))
            ua.send_later(after, source, ua.response_to(req, status, body=body,
                                                        headers=headers))

        self.on_request = on_request

    def send_later(self, delay: float, dest: Address, *messages: bytes) -> None:
        """Like :meth:`send_soon`, ``delay`` virtual seconds from now."""

        async def send_all() -> None:
            await trio.sleep(delay)
            for data in messages:
                await self.transport.send(data, dest)

        self._net_nursery().start_soon(send_all)

    def responses(self) -> list[SipResponse]:
        return [r.msg for r in self.received if isinstance(r.msg, SipResponse)]

    def requests(self) -> list[SipRequest]:
        return [r.msg for r in self.received if isinstance(r.msg, SipRequest)]

    def times(self, t0: float = 0.0, method: str | None = None, *,
              status: int | None = None) -> list[float]:
        """When this UA received requests of ``method`` (with ``status``: responses with
        that status, to ``method`` if given), in seconds from ``t0``, counting only what
        came at ``t0`` or later: ``uas.times(t0, "ACK") == [0, 8]``."""
        if method is None and status is None:
            raise TypeError("times() needs a method, a status, or both")
        out = []
        for r in self.received:
            m = r.msg
            if r.at < t0:
                continue
            if status is None:
                if isinstance(m, SipRequest) and m.method == method:
                    out.append(r.at - t0)
            elif isinstance(m, SipResponse) and m.status == status and (
                    method is None or m.cseq_method == method):
                out.append(r.at - t0)
        return out


INF = math.inf
