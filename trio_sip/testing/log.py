"""The message log of a :class:`~trio_sip.transport.sim.SimNetwork`, as SIP, with exact times.

The network records the fate of every copy of every message (``net.trace``, bounded by
``trace_size``). :func:`sip_log` turns it into :class:`Logged` entries: when the
message was sent and when it arrived (virtual time), from where to where, its first
line, its parsed form; :func:`assert_sent_at` checks that messages were sent at exact
virtual times, which is how a test pins down a timer::

    t0 = trio.current_time()
    ...                                             # an INVITE to a silent UAS
    assert_sent_at(net, [t0 + 0.5 * 2**k for k in range(7)],   # Timer A: T1, 2*T1, ...
                   src=PROXY, dst=UAS, method="INVITE", relative_to=t0 + 0.5)

Only SIP messages appear (other datagrams on the network, such as rtpengine's ng
protocol, are skipped); a message that does not parse appears with ``msg=None``.
Duplicates the network made (``fate == "duplicated"``) are left out unless asked for:
they are copies of one send.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..sip.errors import BadMessage
from ..sip.message import SipMessage, SipRequest, SipResponse
from ..sip.parser import parse_message_untrusted
from ..transport.base import Address
from ..transport.sim import SimNetwork, TraceEntry
from .ua import TOLERANCE, ExpectationFailed

__all__ = ["Logged", "assert_sent_at", "sent_times", "sip_log"]


@dataclass(frozen=True, slots=True)
class Logged:
    """One SIP message on the simulated network."""

    #: when it was sent, and when it arrived (for a lost one: when it was lost)
    sent_at: float
    time: float
    src: Address
    dst: Address
    #: "delivered", "duplicated" or "lost" (``reason`` says why)
    fate: str
    reason: str
    #: "INVITE" for a request, "200 INVITE" style for a response
    summary: str
    msg: SipMessage | None
    data: bytes

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if isinstance(self.msg, SipRequest):
            return self.msg.method
        if isinstance(self.msg, SipResponse):
            return self.msg.cseq_method
        return ""

    @property
    def status(self) -> int:
        """The status of a response, 0 for a request."""
        return self.msg.status if isinstance(self.msg, SipResponse) else 0


def _summary(msg: SipMessage | None, data: bytes) -> str:
    if isinstance(msg, SipResponse):
        return f"{msg.status} {msg.cseq_method}"
    if isinstance(msg, SipRequest):
        return msg.method
    return data.split(b"\r\n", 1)[0][:60].decode("latin-1")


def _is_sip(data: bytes) -> bool:
    head = data[:12]
    return head.startswith(b"SIP/2.0 ") or (b" " in head and head[:1].isalpha())


def _logged(e: TraceEntry) -> Logged | None:
    if not _is_sip(e.data):
        return None
    msg: SipMessage | None
    try:
        msg = parse_message_untrusted(e.data, stream=e.proto == "tcp")
    except BadMessage:
        if not e.data.split(b"\r\n", 1)[0].endswith(b"SIP/2.0") and \
                not e.data.startswith(b"SIP/2.0 "):
            return None  # not SIP at all (an ng command that happens to start with a word)
        msg = None
    return Logged(e.sent_at, e.time, e.src, e.dst, e.fate, e.reason, _summary(msg, e.data),
                  msg, e.data)


def sip_log(net: SimNetwork, *, src: Address | None = None, dst: Address | None = None,
            method: str | None = None, status: int | None = None,
            fates: Iterable[str] = ("delivered", "lost"),
            requests: bool | None = None) -> list[Logged]:
    """The SIP messages the network carried, in send order, filtered: by source and
    destination, CSeq ``method``, response ``status``, ``requests`` (True: requests only,
    False: responses only) and fate (by default every send once, lost or not; add
    "duplicated" for the network's extra copies)."""
    wanted = set(fates)
    out = []
    for e in net.trace:
        if e.fate not in wanted or (src is not None and e.src != src) or \
                (dst is not None and e.dst != dst):
            continue
        entry = _logged(e)
        if entry is None:
            continue
        if method is not None and entry.method != method:
            continue
        if status is not None and entry.status != status:
            continue
        if requests is not None and isinstance(entry.msg, SipRequest) != requests:
            continue
        out.append(entry)
    out.sort(key=lambda x: x.sent_at)
    return out


def sent_times(net: SimNetwork, *, relative_to: float = 0.0, **filters: object) -> list[float]:
    """The send times of the messages :func:`sip_log` selects (``filters`` are its keyword
    arguments), minus ``relative_to``."""
    return [x.sent_at - relative_to for x in sip_log(net, **filters)]  # type: ignore[arg-type]


def assert_sent_at(net: SimNetwork, at: float | Sequence[float], *, relative_to: float = 0.0,
                   tolerance: float = TOLERANCE, **filters: object) -> list[Logged]:
    """Assert that the messages :func:`sip_log` selects were sent at exactly these virtual
    times (one time: exactly one message; a sequence: one message per time, in order),
    each ± ``tolerance``; times are relative to ``relative_to``. Returns the messages.
    ExpectationFailed shows both lists."""
    want = [float(at)] if isinstance(at, int | float) else [float(t) for t in at]
    got = sip_log(net, **filters)  # type: ignore[arg-type]
    times = [x.sent_at - relative_to for x in got]
    if len(times) != len(want) or any(abs(a - b) > tolerance
                                      for a, b in zip(times, want, strict=False)):
        raise ExpectationFailed(
            f"messages {filters} sent at {[round(t, 6) for t in times]}, expected at "
            f"{[round(t, 6) for t in want]}"
            + (f" (relative to {relative_to})" if relative_to else ""))
    return got
