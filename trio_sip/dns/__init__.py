"""DNS for SIP: RFC 3263 server location on dnspython + Trio, a TTL cache with negative
caching, and the destination blocklist used by TM's DNS failover. See docs/dns.md.

* ``rfc3263``: the sans-IO plan (NAPTR → SRV → A/AAAA) and RFC 2782 SRV ordering;
* ``cache``: the answer cache and the blocklist (sans-IO);
* ``backend``: asking real servers with dnspython's async query functions on Trio;
* ``resolver``: :class:`SipResolver`, the per-server object (``core.dns``).
"""

from __future__ import annotations

from .backend import Backend, DnspythonBackend, parse_nameserver
from .cache import Blocklist, DnsCache
from .resolver import SipResolver
from .rfc3263 import (
    Answer,
    DnsFailure,
    NaptrRecord,
    Query,
    Resolution,
    SrvRecord,
    Target,
    locate,
    order_srv,
)

__all__ = [
    "Answer",
    "Backend",
    "Blocklist",
    "DnsCache",
    "DnsFailure",
    "DnspythonBackend",
    "NaptrRecord",
    "Query",
    "Resolution",
    "SipResolver",
    "SrvRecord",
    "Target",
    "locate",
    "order_srv",
    "parse_nameserver",
]
