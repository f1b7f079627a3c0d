"""Errors raised by the transaction state machines.

Like h11's ``LocalProtocolError``/``RemoteProtocolError``, the error says whose fault
it is, so the runtime knows what to do with it:

* :class:`RemoteProtocolError`: a *network* input (a response, a retransmitted
  request, an ACK) that the machine's table has no entry for in its current state,
  e.g. a 486 after a 200 on an INVITE client transaction. The peer is at fault; the
  runtime counts the message and drops it. The machine is unchanged.
* :class:`LocalProtocolError`: an input from our own side (the transaction user, a
  timer, the transport layer) that cannot happen in this state, e.g. a second final
  response handed down by the TU. That is a bug in the caller; it should propagate.
  The machine is unchanged, and nothing was sent.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """An input with no entry in the state machine's transition table."""

    def __init__(self, message: str, *, machine: str = "", state: str = "", event: str = "") -> None:
        super().__init__(message)
        #: the machine's class name, its state and the input, for logs and statistics
        self.machine = machine
        self.state = state
        self.event = event


class LocalProtocolError(ProtocolError):
    """Our side (TU, timer, transport) asked for something impossible in this state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something this transaction cannot accept in its state."""
