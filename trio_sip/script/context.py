"""The per-message state a route works on (Kamailio's ``sip_msg_t`` plus its run context).

One :class:`MsgContext` exists per received message (and per transaction route
run later on it). Exports receive it as their first argument; the script engine
makes it current for the duration of each coroutine step, so Lua code never
passes it explicitly (``KSR.pv.get("$ru")`` reads the current context).

Differences from Kamailio worth knowing (they are deliberate):

* ``$var(x)`` is per message, not per worker process: with many routes waiting
  concurrently in one process, a process-wide variable would change under a
  waiting route's feet. Use ``$shv``/htable for values shared between messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..sip.message import SipRequest
from ..sip.parser import parse_message_untrusted
from ..transport.base import Address
from .exports import RouteType

if TYPE_CHECKING:
    from ..sip.message import SipMessage, SipResponse
    from ..transport.base import Transport


@dataclass(slots=True)
class Branch:
    """An extra destination appended to the destination set (``append_branch``)."""

    uri: str
    dst_uri: str | None = None
    path: str | None = None
    q: int = -1  # Kamailio's "no q" marker; q is in thousandths otherwise
    flags: int = 0
    socket: str | None = None
    instance: str | None = None
    ruid: str | None = None


@dataclass(slots=True, eq=False, weakref_slot=True)
class MsgContext:
    """Everything a route can see or change about the message it processes."""

    msg: SipMessage
    source: Address
    transport: Transport
    conn_id: int | None
    route_type: RouteType
    #: the server's services (proxy core, transports, transaction layer); typed loosely
    #: here to keep script/ free of runtime imports.
    core: Any
    #: message flags ($mf), 0..31
    flags: int = 0
    #: branch flags of branch 0 ($bf)
    bflags: int = 0
    #: set by KSR.drop()/KSR.x.drop(): do not forward (request) or relay (reply)
    drop: bool = False
    vars: dict[str, Any] = field(default_factory=dict)
    branches: list[Branch] = field(default_factory=list)
    #: Record-Route requested by rr.record_route(), with params from add_rr_param()
    record_route: bool = False
    rr_params: str = ""
    #: parameters of our own Route entry that loose_route() consumed (check_route_param)
    route_params: str | None = None
    #: force_rport(): answer to the source port even without rport in Via
    force_rport: bool = False
    #: the last status this server answered for the request (stateless or stateful)
    replied: int = 0
    #: a transaction, once one was created for this request (issue "transactions")
    transaction: Any = None
    #: the script engine (generation) the first route on this message ran in, set by
    #: ``ScriptEngine.start``: a transaction made for the message keeps it, so its armed
    #: routes run the functions it started with even after an ``app_lua.reload``
    engine: Any = None
    #: where the script's exit/drop left things
    exited: bool = False
    #: a reply being processed in a reply route, when msg is the request (tm routes)
    reply: SipResponse | None = None
    #: routes armed (t_on_failure...) before the transaction exists: kind -> function name;
    #: "branch_reply" holds a t_on_reply() called in a branch route (for that branch only)
    armed: dict[str, str] = field(default_factory=dict)
    #: per-transaction settings (t_set_fr...) made before the transaction exists
    tx_settings: Any = None
    #: KSR.async.set_timeout(): the next wait of the route gives up after this (seconds)
    next_wait_timeout: float | None = None
    #: the branch a reply/failure route is about ($T_branch_idx), -1 for none
    branch_index: int = -1
    #: status of the last internal failure, answered by sl_reply_error() (0: unknown -> 500)
    last_error: int = 0
    #: headers added with KSR.hdr.append_to_reply(), used by the next local reply
    reply_headers: list[str] = field(default_factory=list)
    #: messages the route asked to send, flushed by the runtime after each route step:
    #: (proto or transport, destination, bytes, connection id or None): a proto is sent
    #: with the core's transport for it, a transport (replies upstream) with that socket
    outbox: list[tuple[str | Transport, Address, bytes, int | None]] = field(
        default_factory=list)

    @property
    def request(self) -> SipRequest:
        from ..sip.message import SipRequest

        if not isinstance(self.msg, SipRequest):
            raise TypeError("not a request")
        return self.msg

    @property
    def is_request(self) -> bool:
        return self.msg.is_request


# -- the faked message -------------------------------------------------------------------

# Kamailio's faked message (core/fmsg.c), with a branch so the parser accepts it.
_FAKED = (
    b"OPTIONS sip:you@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK-faked\r\n"
    b"From: <sip:you@127.0.0.1>;tag=notag\r\n"
    b"To: <sip:you@127.0.0.1>;tag=notag\r\n"
    b"Call-ID: dummycallid\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class FakedRequest(SipRequest):
    """A request the server made up for a route with no message (``is_faked_msg``)."""

    __slots__ = ()
    faked = True


def faked_request() -> SipRequest:
    """A fresh copy of the faked OPTIONS (routes may change it; each run gets its own)."""
    msg = parse_message_untrusted(_FAKED)
    assert type(msg) is SipRequest
    msg.__class__ = FakedRequest  # same slots: only the class flag differs
    return msg


def faked_context(core: Any, route_type: RouteType) -> MsgContext:
    """A route context on Kamailio's faked OPTIONS (``KSR.corex.is_faked_msg()`` is 1),
    for routes that run on no SIP message: rtimer's timer routes, MI
    ``app_lua.runstring``. Its source is 127.0.0.1:0, its transport the server's first
    (None without one), with no connection."""
    transport = next(iter(getattr(core, "transports", {}).values()), None)
    return MsgContext(faked_request(), Address("127.0.0.1", 0), transport,  # type: ignore[arg-type]
                      None, route_type, core)
