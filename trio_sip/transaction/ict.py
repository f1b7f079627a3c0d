"""The INVITE client transaction (RFC 3261 §17.1.1, with RFC 6026's Accepted state).

Theory of operation
-------------------
The transaction user (a proxy branch, a UAC) hands us an INVITE and the exact bytes
it put on the wire. ``start(now)`` sends them. From then on the owner feeds us what
happens (``receive_response``, ``transport_error``) and wakes us at
``next_deadline()`` (``handle_timer``); every call returns the actions to carry out,
in order. We never read a clock and never send anything ourselves.

Responses are classified into three inputs (1xx, 2xx, 300-699) and looked up in
``TRANSITIONS``. Inputs the RFC says to absorb (a provisional after a final, a
retransmitted final in Completed) are entries like any other; an input with no
entry raises a ProtocolError and changes nothing.

What the RFC leaves to the TU, and the runtime must therefore do:

* Timer B runs only in Calling. Once a provisional arrived, nothing here times the
  INVITE out: a proxy runs Timer C / Kamailio's fr_inv (§16.6 step 11, §16.8) and
  CANCELs the branch when it fires.
* The ACK for a 2xx is not ours (§13.2.2.4): every 2xx is passed up, and the TU
  acknowledges (UA core) or forwards it (proxy, §16.7 step 5).
* CANCEL is a separate non-INVITE client transaction; ``cancel_allowed`` says when
  one may be sent (§9.1: not before a provisional response).
"""

from __future__ import annotations

from enum import auto
from typing import Final

from ..sip.message import SipRequest, SipResponse
from ._machine import FastEnum, TransactionMachine
from .actions import Action, PassUp, TimedOut, TransportFailed
from .builders import build_ack, build_cancel, parse_sent_invite
from .timers import TimerConfig


class ICTState(FastEnum):
    #: created, nothing sent yet (the arrow into Calling in the figure)
    IDLE = auto()
    CALLING = auto()
    PROCEEDING = auto()
    #: a 2xx was received (RFC 6026 §7.2); more 2xx may follow from other forks
    ACCEPTED = auto()
    COMPLETED = auto()
    TERMINATED = auto()


class ICTInput(FastEnum):
    START = auto()
    RECV_1XX = auto()
    RECV_2XX = auto()
    RECV_300_699 = auto()
    TIMER_A = auto()
    TIMER_B = auto()
    TIMER_D = auto()
    TIMER_M = auto()
    TRANSPORT_ERROR = auto()


# RFC 6026 Figure 5 (RFC 3261 Figure 5 with the Accepted state), redrawn:
#
#                                |INVITE from TU
#              Timer A fires     |INVITE sent        Timer B fires
#              Reset A,          V                   or Transport Err.
#              INVITE sent +-----------+             inform TU
#                +---------|           |----------------------------+
#                |         |  Calling  |                            |
#                +-------->|           |-------------+              |
# 300-699                  +-----------+ 2xx         |              |
# ACK sent                    |  |       2xx to TU   |              |
# resp. to TU                 |  |1xx                |              |
# +---------------------------+  |1xx to TU          |              |
# |                              V                   |              |
# |              1xx       +-----------+             |              |
# |              1xx to TU |           |             |              |
# |              +---------|Proceeding |             |              |
# |              +-------->|           |-------------+              |
# |                        +-----------+ 2xx         |              |
# |       300-699              |         2xx to TU   |              |
# |       ACK sent,            |                     |              |
# |       resp. to TU          |                     V              |
# |                            V               +-----------+        |
# |                      +-----------+         |           |---+    |
# +--------------------->|           |         | Accepted  |   |2xx |
#            300-699     | Completed |         |           |<--+    |
#            ACK sent +--|           |         +-----------+2xx to TU
#                     +->|           |               |              |
#                        +-----------+               |Timer M fires |
#                          |       |                 |-             |
#         Transport Err.   |       |Timer D fires    |              |
#         Inform TU        |       |-                |              |
#                          V       V                 V              |
#                        +-------------------------------+          |
#                        |          Terminated           |<---------+
#                        +-------------------------------+
#
# Absorbed, as the RFC text says: a retransmitted 300-699 in Completed re-sends the
# ACK and is not passed up (§17.1.1.2); a 1xx after a final (UDP reordering) is
# dropped. Added: a 2xx in Completed is passed up without a state change. It
# happens when a downstream proxy loses the CANCEL/200 race after sending 487: a
# stateful proxy "MUST forward" any 2xx to an INVITE even after its final response
# (§16.7 step 5); our TU forwards it in turn, or (a UA) ACKs it and hangs up.
TRANSITIONS: Final[dict[tuple[ICTState, ICTInput], ICTState]] = {
    (ICTState.IDLE, ICTInput.START): ICTState.CALLING,
    (ICTState.CALLING, ICTInput.TIMER_A): ICTState.CALLING,
    (ICTState.CALLING, ICTInput.TIMER_B): ICTState.TERMINATED,
    (ICTState.CALLING, ICTInput.TRANSPORT_ERROR): ICTState.TERMINATED,
    (ICTState.CALLING, ICTInput.RECV_1XX): ICTState.PROCEEDING,
    (ICTState.CALLING, ICTInput.RECV_2XX): ICTState.ACCEPTED,
    (ICTState.CALLING, ICTInput.RECV_300_699): ICTState.COMPLETED,
    (ICTState.PROCEEDING, ICTInput.RECV_1XX): ICTState.PROCEEDING,
    (ICTState.PROCEEDING, ICTInput.RECV_2XX): ICTState.ACCEPTED,
    (ICTState.PROCEEDING, ICTInput.RECV_300_699): ICTState.COMPLETED,
    (ICTState.ACCEPTED, ICTInput.RECV_1XX): ICTState.ACCEPTED,  # absorbed
    (ICTState.ACCEPTED, ICTInput.RECV_2XX): ICTState.ACCEPTED,
    (ICTState.ACCEPTED, ICTInput.TIMER_M): ICTState.TERMINATED,
    (ICTState.COMPLETED, ICTInput.RECV_1XX): ICTState.COMPLETED,  # absorbed
    (ICTState.COMPLETED, ICTInput.RECV_2XX): ICTState.COMPLETED,  # passed up, see above
    (ICTState.COMPLETED, ICTInput.RECV_300_699): ICTState.COMPLETED,  # ACK again
    (ICTState.COMPLETED, ICTInput.TIMER_D): ICTState.TERMINATED,
    (ICTState.COMPLETED, ICTInput.TRANSPORT_ERROR): ICTState.TERMINATED,
}

_NETWORK_INPUTS: Final = frozenset({ICTInput.RECV_1XX, ICTInput.RECV_2XX, ICTInput.RECV_300_699})
_TIMER_INPUTS: Final = {
    "A": ICTInput.TIMER_A, "B": ICTInput.TIMER_B, "D": ICTInput.TIMER_D, "M": ICTInput.TIMER_M,
}


def response_input(status: int) -> ICTInput:
    if 100 <= status <= 199:
        return ICTInput.RECV_1XX
    if 200 <= status <= 299:
        return ICTInput.RECV_2XX
    if 300 <= status <= 699:
        return ICTInput.RECV_300_699
    raise ValueError(f"status code {status} out of range 100-699")


class ClientInviteTransaction(TransactionMachine[ICTState, ICTInput]):
    """RFC 3261 §17.1.1 + RFC 6026 §7.2. ``data`` are the bytes of ``request`` exactly
    as they go on the wire (our Via on top); the ACK and CANCEL are built from them."""

    def __init__(
        self, request: SipRequest, data: bytes, reliable: bool, timers: TimerConfig, now: float
    ) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE client transaction cannot send {request.method}")
        super().__init__(
            table=TRANSITIONS, initial=ICTState.IDLE, terminated=ICTState.TERMINATED,
            network_inputs=_NETWORK_INPUTS, timer_inputs=_TIMER_INPUTS,
            reliable=reliable, timers=timers, now=now,
        )
        self.request = request
        self.data = data
        #: the first final non-2xx response, once received
        self.final_response: SipResponse | None = None
        self._sent: SipRequest | None = None
        self._ack: bytes | None = None

    # -- what the TU asks -----------------------------------------------------------

    @property
    def ack(self) -> bytes | None:
        """The ACK sent for the 300-699 response (None until one arrived)."""
        return self._ack

    @property
    def cancel_allowed(self) -> bool:
        """Whether a CANCEL may be sent now: a provisional arrived and no final
        (§9.1: "SHOULD NOT be sent" before a provisional; §16.10)."""
        return self._state is ICTState.PROCEEDING

    def build_cancel(self, extra_headers: tuple[str, ...] = ()) -> bytes:
        """The CANCEL for this INVITE (§9.1), for a new non-INVITE client transaction."""
        return build_cancel(self._sent_request(), extra_headers)

    # -- inputs -------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Send the INVITE: arm Timer A (unreliable transports) and Timer B."""
        self._advance(now)
        self._state = self._lookup(ICTInput.START)
        self._start_retransmission("A", now)
        self._start_timeout("B", now)
        return [self._transmit(self.data, retransmission=False), *self._fire_due(now)]

    def receive_response(self, response: SipResponse, now: float) -> list[Action]:
        """A response matched to this transaction (§17.1.3)."""
        self._advance(now)
        event = response_input(response.status)
        previous = self._state
        new = self._lookup(event)
        out: list[Action] = []
        if event is ICTInput.RECV_300_699:
            if previous is ICTState.COMPLETED:
                # §17.1.1.2: a retransmission of the final response; ACK it again,
                # do not pass it up
                assert self._ack is not None
                out.append(self._transmit(self._ack, retransmission=True))
            else:
                self._ack = build_ack(self._sent_request(), response)
                self.final_response = response
                self._leave_calling_or_proceeding()
                self._start_timeout("D", now)
                out += [self._transmit(self._ack, retransmission=False), PassUp(response)]
        elif event is ICTInput.RECV_2XX:
            if previous is ICTState.CALLING or previous is ICTState.PROCEEDING:
                self._leave_calling_or_proceeding()
                self._start_timeout("M", now)
            out.append(PassUp(response))
        elif previous is not ICTState.ACCEPTED and previous is not ICTState.COMPLETED:
            if previous is ICTState.CALLING:
                # §17.1.1.2: no more retransmissions, and Timer B only runs in Calling
                self._leave_calling_or_proceeding()
            out.append(PassUp(response))
        self._state = new
        return out + self._fire_due(now)

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send the INVITE (Calling) or the ACK (Completed)."""
        self._advance(now)
        self._lookup(ICTInput.TRANSPORT_ERROR)
        return [TransportFailed(), *self._terminate()]

    # -- internals ----------------------------------------------------------------

    def _leave_calling_or_proceeding(self) -> None:
        self._stop_retransmission()
        self._stop_timeouts()

    def _next_interval(self, interval: float) -> float:
        # §17.1.1.2: Timer A doubles each time, with no T2 cap (unlike E and G)
        return 2 * interval

    def _on_timer(self, timer: str, now: float) -> list[Action]:
        new = self._lookup(self._timer_input(timer))
        if timer == "A":
            self._rearm_retransmission(now)
            return [self._transmit(self.data, retransmission=True)]
        assert new is ICTState.TERMINATED
        if timer == "B":
            return [TimedOut("B"), *self._terminate()]
        return self._terminate()  # D, M

    def _sent_request(self) -> SipRequest:
        if self._sent is None:
            self._sent = parse_sent_invite(self.data)
        return self._sent
