"""trio_sip.transaction: the sans-IO RFC 3261 §17 transaction layer (+ RFC 6026).

Four state machines (``ict``, ``nict``, ``ist``, ``nist``), the matching keys
(``matching``), the timer values (``timers``), the ACK/CANCEL builders
(``builders``). Nothing here imports trio or lupa, reads a clock or sends a byte:
every method takes ``now`` and returns a list of actions (``actions``).
"""

from ._machine import TransactionMachine as TransactionMachine
from .actions import Action as Action
from .actions import PassUp as PassUp
from .actions import Terminated as Terminated
from .actions import TimedOut as TimedOut
from .actions import Transmit as Transmit
from .actions import TransportFailed as TransportFailed
from .builders import build_ack as build_ack
from .builders import build_cancel as build_cancel
from .errors import LocalProtocolError as LocalProtocolError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .ict import ClientInviteTransaction as ClientInviteTransaction
from .ict import ICTState as ICTState
from .ist import ISTState as ISTState
from .ist import ServerInviteTransaction as ServerInviteTransaction
from .nict import ClientNonInviteTransaction as ClientNonInviteTransaction
from .nict import NICTState as NICTState
from .nist import NISTState as NISTState
from .nist import ServerNonInviteTransaction as ServerNonInviteTransaction
from .timers import TimerConfig as TimerConfig
