"""What a transaction state machine asks its owner to do.

Every machine method returns a list of these, in the order they must be carried
out (for example ``[Transmit(ack), PassUp(response)]``: the ACK goes out before the
TU sees the 487). They are frozen value objects; dispatch on ``type(action)``.

=================  ==============================================================
action             what the runtime does
=================  ==============================================================
``Transmit``       send ``data`` to the transaction's peer: a client transaction's
                   destination (the ACK goes where the INVITE went, §17.1.1.3), a
                   server transaction's response address (§18.2.2)
``PassUp``         deliver ``message`` to the transaction user (proxy core, UA core)
``TimedOut``       tell the TU that timer B, F or H fired (a proxy's B/F means a
                   408 for that branch, §16.7 step 2 / §16.8)
``TransportFailed``tell the TU the transport failed (a proxy treats it like a 503
                   for the branch, §16.9; a server transaction's TU may retry the
                   response elsewhere, RFC 3263 §5)
``Terminated``     the machine is finished: remove it from the matching table and
                   end its task (closing its nursery); it accepts no more input
=================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..sip.message import SipMessage


@dataclass(frozen=True, slots=True, repr=False)
class Transmit:
    """Send these bytes to the peer. ``retransmission`` is set for every resend of
    bytes already sent (timers A/E/G, an answer to a retransmitted request, a
    repeated ACK), for statistics and logs."""

    data: bytes
    retransmission: bool = False

    def __repr__(self) -> str:
        first_line = self.data.split(b"\r\n", 1)[0]
        return (f"Transmit({first_line!r}... {len(self.data)} bytes, "
                f"retransmission={self.retransmission})")


@dataclass(frozen=True, slots=True)
class PassUp:
    """Deliver a message to the transaction user: a response (client transactions)
    or the ACK for a 2xx (INVITE server transaction in Accepted, RFC 6026 §8.7)."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer ``timer`` ("B", "F" or "H") fired: the transaction failed for lack of an
    answer. A ``Terminated`` follows in the same list."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport error the runtime reported was taken into account. In client
    transactions and the non-INVITE server transaction a ``Terminated`` follows; the
    INVITE server transaction stays where it is (RFC 6026 Figure 7)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached its Terminated state; it must be destroyed at once
    (§17.1.1.2: "MUST be destroyed the instant it enters the Terminated state")."""


Action: TypeAlias = Transmit | PassUp | TimedOut | TransportFailed | Terminated
