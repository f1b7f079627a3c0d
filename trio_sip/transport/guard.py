"""The loopback-only send guard.

Tests, examples and benchmarks of a SIP proxy are one typo away from sending
INVITEs to a real address (a Request-URI copied from a trace, a DNS answer,
a Contact from a torture test). With the guard enabled, every transport
refuses to send anywhere but 127.0.0.0/8 and ::1 (IPv4-mapped ::ffff:127.x
included), counts the refusal, and logs it once per destination: loud enough
to notice, not loud enough to flood the log when a retransmission timer keeps
trying.

Only IP literals are judged: transports never resolve names. Names are the
DNS resolver's (trio_sip/dns/): with the guard on it asks only the loopback
nameservers listed in ``[dns] nameservers``, never the system's, and the
addresses it returns pass through this guard like any other (docs/dns.md).
"""

from __future__ import annotations

import ipaddress
import logging

from trio_sip.sip.iplit import parse_ip
from trio_sip.transport.base import Address

__all__ = ["LoopbackGuard", "is_loopback_host"]

logger = logging.getLogger("trio_sip.transport")

# The "log once" memory is bounded; past this many distinct refused
# destinations it is cleared, so a destination may be logged again.
_MAX_REMEMBERED = 4096


#: host -> verdict: every send asks about the same few hosts, and the ipaddress
#: checks cost microseconds; bounded like parse_ip's memo (cleared when full)
_verdicts: dict[str, bool] = {}


def is_loopback_host(host: str) -> bool:
    """True for an IP literal in 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104."""
    try:
        return _verdicts[host]
    except KeyError:
        pass
    ip = parse_ip(host)
    if ip is None:
        verdict = False
    elif isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        verdict = ip.ipv4_mapped.is_loopback
    else:
        verdict = ip.is_loopback
    if len(_verdicts) >= _MAX_REMEMBERED:
        _verdicts.clear()
    _verdicts[host] = verdict
    return verdict


class LoopbackGuard:
    """Decide whether a destination may be sent to; count and log refusals.

    One guard is normally shared by all transports of a server, so
    :attr:`refused` is the server-wide count; each transport also counts its
    own refusals in its statistics.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: destinations refused so far (every refusal, not just the logged ones)
        self.refused = 0
        self._logged: set[Address] = set()

    def allows(self, dest: Address) -> bool:
        """True when ``dest`` may be sent to; a refusal is counted and logged."""
        if not self.enabled or is_loopback_host(dest.host):
            return True
        self.refused += 1
        if dest not in self._logged:
            if len(self._logged) >= _MAX_REMEMBERED:
                self._logged.clear()
            self._logged.add(dest)
            logger.warning(
                "loopback guard: refusing to send to %s (only loopback destinations are allowed)",
                dest,
            )
        return False
