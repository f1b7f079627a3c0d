"""IP literals: a bounded memo of ``ipaddress.ip_address`` (sans-IO).

The loopback guard, the transports' "is this an IP literal" check and the Via
``received`` rule (§18.2.1) ask about the same few hosts on every message, and
``ipaddress.ip_address`` costs microseconds each time.
"""

from __future__ import annotations

import ipaddress

__all__ = ["parse_ip"]

#: a proxy sees few distinct hosts, but a hostile peer could make us see many: the memo
#: is cleared when it reaches this size
_MEMO_MAX = 4096
_memo: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``ipaddress.ip_address(host)``, or None when ``host`` is not an IP literal."""
    try:
        return _memo[host]
    except KeyError:
        pass
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[host] = ip
    return ip
