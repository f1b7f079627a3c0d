"""The INVITE server transaction (RFC 3261 §17.2.1, with RFC 6026's Accepted state).

Theory of operation
-------------------
The dispatcher creates this machine when an INVITE matches no transaction
(§17.2.3); it starts in Proceeding and the INVITE goes to the TU. The TU answers
through ``send_response(data, status, now)`` with the bytes of each response; the
machine returns the ``Transmit`` for them and remembers the last one. Everything
else is the network (``receive_request`` for a retransmitted INVITE,
``receive_ack``), the transport (``transport_error``) and the clock
(``handle_timer``).

* Provisional responses keep the machine in Proceeding; a retransmitted INVITE is
  answered with the last provisional (absorbed while none was sent).
* A 300-699 moves to Completed: on unreliable transports Timer G resends the final
  response (T1 doubling to T2) until the ACK arrives; Timer H (64*T1) gives up and
  tells the TU (TimedOut("H")). The ACK moves to Confirmed, where Timer I (T4, zero
  on reliable transports) absorbs ACK retransmissions.
* A 2xx moves to Accepted (RFC 6026 §7.1). The machine never retransmits a 2xx:
  the UAS core does (§13.3.1.4) and hands each copy down through
  ``send_response``; a proxy forwards every 2xx of every fork the same way. A
  retransmitted INVITE is absorbed; an ACK that matches is passed up to the TU
  (RFC 6026 §8.7). Timer L (64*T1) ends it.

Not here (TU or runtime): the 100 Trying "if the TU won't in 200 ms" (the runtime
sends it at once, like Kamailio's ``auto_inv_100``); a 2xx the TU still wants to
send after a non-2xx final (a proxy forwards it statelessly, §16.7 step 10).
"""

from __future__ import annotations

from enum import auto
from typing import Final

from ..sip.message import SipRequest
from ._machine import FastEnum, TransactionMachine
from .actions import Action, PassUp, TimedOut, TransportFailed
from .timers import TimerConfig


class ISTState(FastEnum):
    PROCEEDING = auto()
    #: a 2xx was sent (RFC 6026 §7.1)
    ACCEPTED = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


class ISTInput(FastEnum):
    SEND_1XX = auto()
    SEND_2XX = auto()
    SEND_300_699 = auto()
    RECV_INVITE = auto()
    RECV_ACK = auto()
    TIMER_G = auto()
    TIMER_H = auto()
    TIMER_I = auto()
    TIMER_L = auto()
    TRANSPORT_ERROR = auto()


# RFC 6026 Figure 7 (RFC 3261 Figure 7 with the Accepted state):
#
#                                      |INVITE
#                                      |pass INV to TU
#                   INVITE             V send 100 if TU won't in 200 ms
#                   send response+------------+
#                       +--------|            |--------+ 101-199 from TU
#                       |        |            |        | send response
#                       +------->|            |<-------+
#                                | Proceeding |
#                                |            |--------+ Transport Err.
#                                |            |        | Inform TU
#                                |            |<-------+
#                                +------------+
#                   300-699 from TU |    |2xx from TU
#                   send response   |    |send response
#                    +--------------+    +------------+
#                    |                                |
#   INVITE           V          Timer G fires         |
#   send response +-----------+ send response         |
#        +--------|           |--------+              |
#        |        |           |        |              |
#        +------->| Completed |<-------+      INVITE  |  Transport Err.
#                 |           |               -       |  Inform TU
#        +--------|           |----+          +-----+ |  +---+
#        |        +-----------+    | ACK      |     | v  |   v
#        |          ^   |          | -        |  +------------+
#        |          |   |          |          |  |            |---+ ACK
#        +----------+   |          |          +->|  Accepted  |   | to TU
#        Transport Err. |          |             |            |<--+
#        Inform TU      |          V             +------------+
#                       |      +-----------+        |  ^     |
#                       |      |           |        |  |     |
#                       |      | Confirmed |        |  +-----+
#                       |      |           |        |  2xx from TU
#         Timer H fires |      +-----------+        |  send response
#         -             |          |                |
#                       |          | Timer I fires  |
#                       |          | -              | Timer L fires
#                       |          V                | -
#                       |        +------------+     |
#                       |        |            |<----+
#                       +------->| Terminated |
#                                |            |
#                                +------------+
#
# RFC 6026 turned the transport errors into self-loops: the TU is told and may send
# the response elsewhere (RFC 3263 §5); Timers H and L still end the transaction.
# Timer H also tells the TU (§17.2.1: "MUST indicate to the TU that a transaction
# failure has occurred"). Absorbed: a retransmitted INVITE in Proceeding before any
# response was sent, and in Accepted and Confirmed; ACKs in Confirmed (§17.2.1: "to
# absorb any additional ACK messages").
TRANSITIONS: Final[dict[tuple[ISTState, ISTInput], ISTState]] = {
    (ISTState.PROCEEDING, ISTInput.SEND_1XX): ISTState.PROCEEDING,
    (ISTState.PROCEEDING, ISTInput.SEND_2XX): ISTState.ACCEPTED,
    (ISTState.PROCEEDING, ISTInput.SEND_300_699): ISTState.COMPLETED,
    (ISTState.PROCEEDING, ISTInput.RECV_INVITE): ISTState.PROCEEDING,  # resend last 1xx
    (ISTState.PROCEEDING, ISTInput.TRANSPORT_ERROR): ISTState.PROCEEDING,
    (ISTState.ACCEPTED, ISTInput.SEND_2XX): ISTState.ACCEPTED,
    (ISTState.ACCEPTED, ISTInput.RECV_INVITE): ISTState.ACCEPTED,  # absorbed
    (ISTState.ACCEPTED, ISTInput.RECV_ACK): ISTState.ACCEPTED,  # passed up
    (ISTState.ACCEPTED, ISTInput.TRANSPORT_ERROR): ISTState.ACCEPTED,
    (ISTState.ACCEPTED, ISTInput.TIMER_L): ISTState.TERMINATED,
    (ISTState.COMPLETED, ISTInput.RECV_INVITE): ISTState.COMPLETED,  # resend the final
    (ISTState.COMPLETED, ISTInput.TIMER_G): ISTState.COMPLETED,
    (ISTState.COMPLETED, ISTInput.RECV_ACK): ISTState.CONFIRMED,
    (ISTState.COMPLETED, ISTInput.TRANSPORT_ERROR): ISTState.COMPLETED,
    (ISTState.COMPLETED, ISTInput.TIMER_H): ISTState.TERMINATED,
    (ISTState.CONFIRMED, ISTInput.RECV_INVITE): ISTState.CONFIRMED,  # absorbed
    (ISTState.CONFIRMED, ISTInput.RECV_ACK): ISTState.CONFIRMED,  # absorbed
    (ISTState.CONFIRMED, ISTInput.TIMER_I): ISTState.TERMINATED,
}

_NETWORK_INPUTS: Final = frozenset({ISTInput.RECV_INVITE, ISTInput.RECV_ACK})
_TIMER_INPUTS: Final = {
    "G": ISTInput.TIMER_G, "H": ISTInput.TIMER_H, "I": ISTInput.TIMER_I, "L": ISTInput.TIMER_L,
}


def send_input(status: int) -> ISTInput:
    if 100 <= status <= 199:
        return ISTInput.SEND_1XX
    if 200 <= status <= 299:
        return ISTInput.SEND_2XX
    if 300 <= status <= 699:
        return ISTInput.SEND_300_699
    raise ValueError(f"status code {status} out of range 100-699")


class ServerInviteTransaction(TransactionMachine[ISTState, ISTInput]):
    """RFC 3261 §17.2.1 + RFC 6026 §7.1. Created in Proceeding for ``request``."""

    def __init__(self, request: SipRequest, reliable: bool, timers: TimerConfig, now: float) -> None:
        if request.method != "INVITE":
            raise ValueError(f"an INVITE server transaction cannot serve {request.method}")
        super().__init__(
            table=TRANSITIONS, initial=ISTState.PROCEEDING, terminated=ISTState.TERMINATED,
            network_inputs=_NETWORK_INPUTS, timer_inputs=_TIMER_INPUTS,
            reliable=reliable, timers=timers, now=now,
        )
        self.request = request
        #: the bytes and status of the last response sent (what a retransmitted
        #: INVITE is answered with)
        self.last_response: bytes | None = None
        self.last_status: int | None = None

    def send_response(self, data: bytes, status: int, now: float) -> list[Action]:
        """The TU sends a response. ProtocolError (nothing sent) if the state does
        not allow it: a 1xx or 300-699 after a final, a 2xx after a non-2xx final."""
        self._advance(now)
        event = send_input(status)
        previous = self._state
        self._state = self._lookup(event)
        retransmission = previous is ISTState.ACCEPTED and data == self.last_response
        self.last_response = data
        self.last_status = status
        if event is ISTInput.SEND_2XX and previous is ISTState.PROCEEDING:
            self._start_timeout("L", now)
        elif event is ISTInput.SEND_300_699:
            self._start_retransmission("G", now)
            self._start_timeout("H", now)
        return [self._transmit(data, retransmission=retransmission), *self._fire_due(now)]

    def receive_request(self, now: float) -> list[Action]:
        """A retransmission of the INVITE (§17.2.1: answer it with the most recent
        provisional in Proceeding, with the final in Completed)."""
        self._advance(now)
        self._lookup(ISTInput.RECV_INVITE)
        out: list[Action] = []
        if self._state in (ISTState.PROCEEDING, ISTState.COMPLETED) and self.last_response:
            out.append(self._transmit(self.last_response, retransmission=True))
        return out + self._fire_due(now)

    def receive_ack(self, ack: SipRequest, now: float) -> list[Action]:
        """An ACK matched to this transaction (§17.2.3)."""
        self._advance(now)
        previous = self._state
        self._state = self._lookup(ISTInput.RECV_ACK)
        out: list[Action] = []
        if previous is ISTState.ACCEPTED:
            out.append(PassUp(ack))
        elif previous is ISTState.COMPLETED:
            self._stop_retransmission()
            self._stop_timeouts()
            self._start_timeout("I", now)
        return out + self._fire_due(now)

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send a response: tell the TU, stay (RFC 6026)."""
        self._advance(now)
        self._lookup(ISTInput.TRANSPORT_ERROR)
        return [TransportFailed(), *self._fire_due(now)]

    def _on_timer(self, timer: str, now: float) -> list[Action]:
        new = self._lookup(self._timer_input(timer))
        if timer == "G":
            assert self.last_response is not None
            self._rearm_retransmission(now)
            return [self._transmit(self.last_response, retransmission=True)]
        assert new is ISTState.TERMINATED
        if timer == "H":
            return [TimedOut("H"), *self._terminate()]
        return self._terminate()  # I, L
