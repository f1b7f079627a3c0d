"""The non-INVITE client transaction (RFC 3261 §17.1.2).

Theory of operation
-------------------
Same shape as the INVITE client transaction (see ``ict.py``): the TU gives the
request and its wire bytes, ``start(now)`` sends them, the owner feeds responses,
transport errors and timer wake-ups, and carries out the returned actions.

Non-INVITE requests must be answered quickly, so the timers differ from INVITE's:
Timer E retransmits from T1, doubling up to T2; after a provisional the request is
still retransmitted, every T2 (§17.1.2.2: "If Timer E fires while in the
'Proceeding' state, the request MUST be passed to the transport layer for
retransmission, and Timer E MUST be reset with a value of T2 seconds"). Timer F
(64*T1) runs in Trying *and* Proceeding: a provisional does not extend a non-INVITE
transaction. Timer K (T4, zero on reliable transports) absorbs response
retransmissions in Completed.

A CANCEL is a non-INVITE transaction of its own (its client key has method CANCEL,
see ``matching.py``); so is a PRACK, a BYE, a REGISTER. An ACK is never a
transaction (§17.1: the ACK for a 2xx belongs to no transaction, the ACK for a
non-2xx belongs to the INVITE's).
"""

from __future__ import annotations

from enum import auto
from typing import Final

from ..sip.message import SipRequest, SipResponse
from ._machine import FastEnum, TransactionMachine
from .actions import Action, PassUp, TimedOut, TransportFailed
from .timers import TimerConfig


class NICTState(FastEnum):
    #: created, nothing sent yet (the arrow into Trying in the figure)
    IDLE = auto()
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    TERMINATED = auto()


class NICTInput(FastEnum):
    START = auto()
    RECV_1XX = auto()
    RECV_200_699 = auto()
    TIMER_E = auto()
    TIMER_F = auto()
    TIMER_K = auto()
    TRANSPORT_ERROR = auto()


# RFC 3261 Figure 6: non-INVITE client transaction
#
#                                |Request from TU
#                                |send request
#            Timer E             V
#            send request  +-----------+
#                +---------|           |-------------------+
#                |         |  Trying   |  Timer F          |
#                +-------->|           |  or Transport Err.|
#                          +-----------+  inform TU        |
#             200-699         |  |                         |
#             resp. to TU     |  |1xx                      |
#             +---------------+  |resp. to TU              |
#             |                  |                         |
#             |   Timer E        V       Timer F           |
#             |   send req +-----------+ or Transport Err. |
#             |  +---------|           | inform TU         |
#             |  |         |Proceeding |------------------>|
#             |  +-------->|           |-----+             |
#             |            +-----------+     |1xx          |
#             |              |      ^        |resp to TU   |
#             | 200-699      |      +--------+             |
#             | resp. to TU  |                             |
#             |              |                             |
#             |              V                             |
#             |            +-----------+                   |
#             |            |           |                   |
#             |            | Completed |                   |
#             |            |           |                   |
#             |            +-----------+                   |
#             |              ^   |                         |
#             |              |   | Timer K                 |
#             +--------------+   | -                       |
#                                |                         |
#                                V                         |
#                          +-----------+                   |
#                          |           |                   |
#                          | Terminated|<------------------+
#                          |           |
#                          +-----------+
#
# Absorbed: any response in Completed ("The 'Completed' state exists to buffer any
# additional response retransmissions that may be received", §17.1.2.2), a late 1xx
# included.
TRANSITIONS: Final[dict[tuple[NICTState, NICTInput], NICTState]] = {
    (NICTState.IDLE, NICTInput.START): NICTState.TRYING,
    (NICTState.TRYING, NICTInput.TIMER_E): NICTState.TRYING,
    (NICTState.TRYING, NICTInput.TIMER_F): NICTState.TERMINATED,
    (NICTState.TRYING, NICTInput.TRANSPORT_ERROR): NICTState.TERMINATED,
    (NICTState.TRYING, NICTInput.RECV_1XX): NICTState.PROCEEDING,
    (NICTState.TRYING, NICTInput.RECV_200_699): NICTState.COMPLETED,
    (NICTState.PROCEEDING, NICTInput.TIMER_E): NICTState.PROCEEDING,
    (NICTState.PROCEEDING, NICTInput.TIMER_F): NICTState.TERMINATED,
    (NICTState.PROCEEDING, NICTInput.TRANSPORT_ERROR): NICTState.TERMINATED,
    (NICTState.PROCEEDING, NICTInput.RECV_1XX): NICTState.PROCEEDING,
    (NICTState.PROCEEDING, NICTInput.RECV_200_699): NICTState.COMPLETED,
    (NICTState.COMPLETED, NICTInput.RECV_1XX): NICTState.COMPLETED,  # absorbed
    (NICTState.COMPLETED, NICTInput.RECV_200_699): NICTState.COMPLETED,  # absorbed
    (NICTState.COMPLETED, NICTInput.TIMER_K): NICTState.TERMINATED,
}

_NETWORK_INPUTS: Final = frozenset({NICTInput.RECV_1XX, NICTInput.RECV_200_699})
_TIMER_INPUTS: Final = {"E": NICTInput.TIMER_E, "F": NICTInput.TIMER_F, "K": NICTInput.TIMER_K}


class ClientNonInviteTransaction(TransactionMachine[NICTState, NICTInput]):
    """RFC 3261 §17.1.2. ``data`` are the bytes of ``request`` as they go on the wire."""

    def __init__(
        self, request: SipRequest, data: bytes, reliable: bool, timers: TimerConfig, now: float
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE client transaction cannot send {request.method}")
        super().__init__(
            table=TRANSITIONS, initial=NICTState.IDLE, terminated=NICTState.TERMINATED,
            network_inputs=_NETWORK_INPUTS, timer_inputs=_TIMER_INPUTS,
            reliable=reliable, timers=timers, now=now,
        )
        self.request = request
        self.data = data
        #: the final response, once received
        self.final_response: SipResponse | None = None

    def start(self, now: float) -> list[Action]:
        """Send the request: arm Timer E (unreliable transports) and Timer F."""
        self._advance(now)
        self._state = self._lookup(NICTInput.START)
        self._start_retransmission("E", now)
        self._start_timeout("F", now)
        return [self._transmit(self.data, retransmission=False), *self._fire_due(now)]

    def receive_response(self, response: SipResponse, now: float) -> list[Action]:
        """A response matched to this transaction (§17.1.3)."""
        self._advance(now)
        if not 100 <= response.status <= 699:
            raise ValueError(f"status code {response.status} out of range 100-699")
        event = NICTInput.RECV_1XX if response.status < 200 else NICTInput.RECV_200_699
        previous = self._state
        new = self._lookup(event)
        self._state = new
        if previous is NICTState.COMPLETED:
            return self._fire_due(now)  # absorbed
        if new is NICTState.COMPLETED:
            self.final_response = response
            self._stop_retransmission()
            self._stop_timeouts()
            self._start_timeout("K", now)
        # a 1xx leaves Timer E armed: it fires as scheduled, then every T2
        return [PassUp(response), *self._fire_due(now)]

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send the request (§17.1.2.2: inform the TU)."""
        self._advance(now)
        self._lookup(NICTInput.TRANSPORT_ERROR)
        return [TransportFailed(), *self._terminate()]

    def _next_interval(self, interval: float) -> float:
        if self._state is NICTState.PROCEEDING:
            return self._timers.t2
        return min(2 * interval, self._timers.t2)

    def _on_timer(self, timer: str, now: float) -> list[Action]:
        new = self._lookup(self._timer_input(timer))
        if timer == "E":
            self._rearm_retransmission(now)
            return [self._transmit(self.data, retransmission=True)]
        assert new is NICTState.TERMINATED
        if timer == "F":
            return [TimedOut("F"), *self._terminate()]
        return self._terminate()  # K
