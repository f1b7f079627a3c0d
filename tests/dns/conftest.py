"""Fixtures of the DNS tests: a real dnsmasq on 127.0.0.1 with the records of
``example.test`` (tests/support/dnsmasq.py), started and stopped by the fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.dnsmasq import Dnsmasq, DnsRecords, dnsmasq_binary

requires_dnsmasq = pytest.mark.skipif(
    dnsmasq_binary() is None and not os.environ.get("CI"),
    reason="dnsmasq not installed (Debian package dnsmasq-base; scripts/test installs it)",
)


def example_records() -> DnsRecords:
    """example.test as RFC 3263 sees it:

    * NAPTR order 10: SIP+D2T (TCP), then order 20: SIP+D2U (UDP)
    * _sip._tcp: t1 (priority 10, port 5071)
    * _sip._udp: u1 (priority 10, weight 10, port 5072), u2 (priority 10, weight 30,
      port 5073), u3 (priority 10, weight 60, port 5074), u4 (priority 20, port 5075)
    * nonaptr.test: no NAPTR, _sip._udp SRV to u1 at 5076; plain.test: A only;
      v6.test: AAAA only
    """
    r = DnsRecords(zone="test", ttl=30)
    r.naptr("example.test", 20, 10, "S", "SIP+D2U", "_sip._udp.example.test")
    r.naptr("example.test", 10, 10, "S", "SIP+D2T", "_sip._tcp.example.test")
    r.srv("_sip._tcp.example.test", "t1.example.test", 5071, priority=10, weight=0)
    r.srv("_sip._udp.example.test", "u1.example.test", 5072, priority=10, weight=10)
    r.srv("_sip._udp.example.test", "u2.example.test", 5073, priority=10, weight=30)
    r.srv("_sip._udp.example.test", "u3.example.test", 5074, priority=10, weight=60)
    r.srv("_sip._udp.example.test", "u4.example.test", 5075, priority=20, weight=0)
    r.srv("_sip._udp.nonaptr.test", "u1.example.test", 5076, priority=10, weight=0)
    r.host("t1.example.test", "127.0.0.11")
    r.host("u1.example.test", "127.0.0.21")
    r.host("u2.example.test", "127.0.0.22")
    r.host("u3.example.test", "127.0.0.23")
    r.host("u4.example.test", "127.0.0.24", "::1")
    r.host("plain.test", "127.0.0.31")
    r.host("v6.test", "::1")
    return r


@pytest.fixture
def dnsmasq() -> Iterator[Dnsmasq]:
    """dnsmasq serving :func:`example_records` on 127.0.0.1:<free port>."""
    with Dnsmasq(example_records()).start() as server:
        yield server
