"""The non-INVITE server transaction (RFC 3261 §17.2.2).

Theory of operation
-------------------
Created by the dispatcher, in Trying, for a non-INVITE request that matched no
transaction (a CANCEL too: it has its own server transaction, §9.2). The TU answers
through ``send_response(data, status, now)``; the machine never retransmits on a
timer (the client does: Timer E). Instead it answers each retransmitted request
with its last response: absorbed in Trying (nothing to answer yet), the last
provisional in Proceeding, the final in Completed. Timer J (64*T1, zero on reliable
transports) keeps the Completed state around for the client's retransmissions.

A second final response from the TU is refused with a LocalProtocolError and not
sent (§17.2.2: "Any other final responses passed by the TU to the server
transaction MUST be discarded while in the 'Completed' state"; Kamailio refuses a
t_reply after a final reply the same way).
"""

from __future__ import annotations

from enum import auto
from typing import Final

from ..sip.message import SipRequest
from ._machine import FastEnum, TransactionMachine
from .actions import Action, TransportFailed
from .timers import TimerConfig


class NISTState(FastEnum):
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    TERMINATED = auto()


class NISTInput(FastEnum):
    SEND_1XX = auto()
    SEND_200_699 = auto()
    RECV_REQUEST = auto()
    TIMER_J = auto()
    TRANSPORT_ERROR = auto()


# RFC 3261 Figure 8: non-INVITE server transaction
#
#                               |Request received
#                               |pass to TU
#                               V
#                         +-----------+
#                         |           |
#                         | Trying    |-------------+
#                         |           |             |
#                         +-----------+             |200-699 from TU
#                               |                   |send response
#                               |1xx from TU        |
#                               |send response      |
#                               |                   |
#            Request            V      1xx from TU  |
#            send response+-----------+send response|
#                +--------|           |--------+    |
#                |        | Proceeding|        |    |
#                +------->|           |<-------+    |
#         +<--------------|           |             |
#         |Trnsprt Err    +-----------+             |
#         |Inform TU            |                   |
#         |                     |                   |
#         |                     |200-699 from TU    |
#         |                     |send response      |
#         |  Request            V                   |
#         |  send response+-----------+             |
#         |      +--------|           |             |
#         |      |        | Completed |<------------+
#         |      +------->|           |
#         +<--------------|           |
#         |Trnsprt Err    +-----------+
#         |Inform TU            |
#         |                     |Timer J fires
#         |                     |-
#         |                     |
#         |                     V
#         |               +-----------+
#         |               |           |
#         +-------------->| Terminated|
#                         |           |
#                         +-----------+
#
# Absorbed: a retransmitted request in Trying (§17.2.2: "any further request
# retransmissions are discarded"). No transport error in Trying: nothing was sent.
TRANSITIONS: Final[dict[tuple[NISTState, NISTInput], NISTState]] = {
    (NISTState.TRYING, NISTInput.SEND_1XX): NISTState.PROCEEDING,
    (NISTState.TRYING, NISTInput.SEND_200_699): NISTState.COMPLETED,
    (NISTState.TRYING, NISTInput.RECV_REQUEST): NISTState.TRYING,  # absorbed
    (NISTState.PROCEEDING, NISTInput.SEND_1XX): NISTState.PROCEEDING,
    (NISTState.PROCEEDING, NISTInput.SEND_200_699): NISTState.COMPLETED,
    (NISTState.PROCEEDING, NISTInput.RECV_REQUEST): NISTState.PROCEEDING,  # resend last 1xx
    (NISTState.PROCEEDING, NISTInput.TRANSPORT_ERROR): NISTState.TERMINATED,
    (NISTState.COMPLETED, NISTInput.RECV_REQUEST): NISTState.COMPLETED,  # resend the final
    (NISTState.COMPLETED, NISTInput.TRANSPORT_ERROR): NISTState.TERMINATED,
    (NISTState.COMPLETED, NISTInput.TIMER_J): NISTState.TERMINATED,
}

_NETWORK_INPUTS: Final = frozenset({NISTInput.RECV_REQUEST})
_TIMER_INPUTS: Final = {"J": NISTInput.TIMER_J}


class ServerNonInviteTransaction(TransactionMachine[NISTState, NISTInput]):
    """RFC 3261 §17.2.2. Created in Trying for ``request``."""

    def __init__(self, request: SipRequest, reliable: bool, timers: TimerConfig, now: float) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"a non-INVITE server transaction cannot serve {request.method}")
        super().__init__(
            table=TRANSITIONS, initial=NISTState.TRYING, terminated=NISTState.TERMINATED,
            network_inputs=_NETWORK_INPUTS, timer_inputs=_TIMER_INPUTS,
            reliable=reliable, timers=timers, now=now,
        )
        self.request = request
        #: the bytes and status of the last response sent
        self.last_response: bytes | None = None
        self.last_status: int | None = None

    def send_response(self, data: bytes, status: int, now: float) -> list[Action]:
        """The TU sends a response. ProtocolError (nothing sent) after a final."""
        self._advance(now)
        if not 100 <= status <= 699:
            raise ValueError(f"status code {status} out of range 100-699")
        event = NISTInput.SEND_1XX if status < 200 else NISTInput.SEND_200_699
        self._state = self._lookup(event)
        self.last_response = data
        self.last_status = status
        if event is NISTInput.SEND_200_699:
            self._start_timeout("J", now)
        return [self._transmit(data, retransmission=False), *self._fire_due(now)]

    def receive_request(self, now: float) -> list[Action]:
        """A retransmission of the request (§17.2.2)."""
        self._advance(now)
        self._lookup(NISTInput.RECV_REQUEST)
        if self._state is NISTState.TRYING or self.last_response is None:
            return self._fire_due(now)  # absorbed
        return [self._transmit(self.last_response, retransmission=True), *self._fire_due(now)]

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send a response: tell the TU and terminate."""
        self._advance(now)
        self._lookup(NISTInput.TRANSPORT_ERROR)
        return [TransportFailed(), *self._terminate()]

    def _on_timer(self, timer: str, now: float) -> list[Action]:
        new = self._lookup(self._timer_input(timer))
        assert new is NISTState.TERMINATED
        return self._terminate()  # J
