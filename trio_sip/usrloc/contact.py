"""One binding (Kamailio's ``ucontact_t``) and how bindings are ordered."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Contact flag: kept in memory only, never written to the database (Kamailio FL_MEM)
FL_MEM = 1
#: q when the UA gave none (Kamailio Q_UNSPECIFIED)
Q_UNSPECIFIED = -1


@dataclass(slots=True, eq=False)
class Contact:
    """A binding of an AoR to a contact address.

    ``expires`` and ``last_modified`` are on the usrloc clock (trio's clock, see
    storage/sqlite.py ``Clock``); ``math.inf`` is a permanent binding. A binding is gone
    at its expiry exactly: :meth:`valid` is ``expires > now``.
    """

    aor: str
    uri: str
    expires: float
    q: int = Q_UNSPECIFIED
    callid: str = ""
    cseq: int = 0
    #: where requests for this binding are sent instead of the contact (NAT): a URI
    received: str = ""
    #: the Path header values of the REGISTER, comma-separated (RFC 3327)
    path: str = ""
    user_agent: str = ""
    #: the socket the REGISTER came in on: "udp:127.0.0.1:5060"
    socket: str = ""
    #: methods the UA accepts (Contact methods param or Allow), comma-separated; None: all
    methods: str | None = None
    #: +sip.instance without quotes (RFC 5626), and reg-id (0: none)
    instance: str = ""
    reg_id: int = 0
    flags: int = 0
    #: branch flags saved with the binding and restored by lookup()
    cflags: int = 0
    #: the record's unique id (stable for the life of the binding)
    ruid: str = ""
    last_modified: float = 0.0
    conn_id: int = -1
    server_id: int = 0
    keepalive: int = 0
    #: written to the database (a memory-only binding is not)
    persisted: bool = False

    def valid(self, now: float) -> bool:
        return self.expires > now

    def remaining(self, now: float) -> int:
        """Seconds left, rounded up so a live binding never shows 0 (which means
        removed); 0 for a permanent one, as Kamailio shows it."""
        if math.isinf(self.expires):
            return 0
        return max(0, math.ceil(self.expires - now))

    def allows(self, method: str) -> bool:
        if self.methods is None:
            return True
        return method.upper() in self.methods.split(",")

    def bare_instance(self) -> str:
        return instance_key(self.instance)


def instance_key(instance: str) -> str:
    """+sip.instance compared without its <> (Kamailio reg_cmp_instances)."""
    if len(instance) > 2 and instance[0] == "<" and instance[-1] == ">":
        return instance[1:-1]
    return instance


def best_first(contacts: Iterable[Contact], desc_time_order: bool = False) -> list[Contact]:
    """Highest q first (unspecified q sorts below 0, as in Kamailio), then the most
    recently registered; with ``desc_time_order`` the most recent first, q ignored."""
    if desc_time_order:
        return sorted(contacts, key=lambda c: -c.last_modified)
    return sorted(contacts, key=lambda c: (-c.q, -c.last_modified))


def q_text(q: int) -> str:
    """Kamailio q2str: 1000 -> "1", 500 -> "0.5", 50 -> "0.05"."""
    if q >= 1000:
        return "1"
    return ("0." + f"{q:03d}").rstrip("0") if q > 0 else "0"


def contact_info(c: Contact, now: float, epoch: float) -> dict[str, Any]:
    """A binding as ul.dump / ul.lookup show it (Kamailio's field names). ``epoch`` is
    the wall clock at ``now``."""
    last = epoch - (now - c.last_modified)
    return {
        "Address": c.uri,
        "Expires": "permanent" if math.isinf(c.expires) else c.remaining(now),
        "Q": q_text(c.q) if c.q >= 0 else -1,
        "Call-ID": c.callid,
        "CSeq": c.cseq,
        "User-Agent": c.user_agent,
        "Received": c.received or "[not set]",
        "Path": c.path or "[not set]",
        "State": "CS_SYNC" if c.persisted else "CS_NEW",
        "Flags": c.flags,
        "CFlags": c.cflags,
        "Socket": c.socket or "[not set]",
        "Methods": c.methods if c.methods is not None else "all",
        "Ruid": c.ruid,
        "Instance": c.instance or "[not set]",
        "Reg-Id": c.reg_id,
        "Server-Id": c.server_id,
        "Tcpconn-Id": c.conn_id,
        "Keepalive": c.keepalive,
        "Last-Modified": int(last),
    }
