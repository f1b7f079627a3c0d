"""End to end: SIPp calls through the stateful proxy to a destination named in DNS
(dnsmasq on 127.0.0.1): the first SRV target is down (nothing listens on its port),
the call completes through the second by TM's DNS failover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.dns.conftest import requires_dnsmasq
from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.dnsmasq import Dnsmasq, DnsRecords
from tests.support.ports import free_port, free_port_both
from tests.support.sipp import Sipp
from trio_sip.config import config_from_dict
from trio_sip.runtime.server import Server, serve

pytestmark = [requires_dnsmasq, requires_sipp, pytest.mark.sipp]

ROUTES = """
function ksr_request_route()
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.is_ACK() then KSR.tm.t_relay() return end
  KSR.hdr.remove("Route")
  KSR.rr.record_route()
  KSR.tm.t_set_fr(0, 1000)            -- a target with no reply at all: 1 s, then the next
  KSR.setdsturi("sip:pbx.test")       -- the next hop by name: NAPTR, SRV, A
  if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
end
"""


@asynccontextmanager
async def proxy(routes: str, nameserver: str) -> AsyncIterator[Server]:
    port = free_port_both()
    data: dict[str, Any] = {
        "mi": {"listen": ""},
        "core": {"listen": [f"udp:127.0.0.1:{port}"], "log_level": "warning"},
        "lua": {"routes": routes},
        "dns": {"nameservers": [nameserver], "timeout": 1.0},
    }
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config_from_dict(data))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def test_sipp_call_completes_through_the_second_srv_target(write_routes: Any) -> None:
    calls = 5
    down = free_port("udp")  # nothing listens there: the INVITE is never answered
    uas_port = free_port_both()
    records = DnsRecords(zone="test", ttl=30)
    records.naptr("pbx.test", 10, 10, "S", "SIP+D2U", "_sip._udp.pbx.test")
    records.srv("_sip._udp.pbx.test", "down.pbx.test", down, priority=10)
    records.srv("_sip._udp.pbx.test", "up.pbx.test", uas_port, priority=20)
    records.host("down.pbx.test", "127.0.0.1")
    records.host("up.pbx.test", "127.0.0.1")
    with Dnsmasq(records).start() as dns_server:
        async with proxy(write_routes(ROUTES), dns_server.nameserver) as server:
            port = server.address("udp").port
            async with Sipp("uas.xml", local_port=uas_port, calls=calls,
                            timeout=30).running() as uas:
                result = await Sipp("uac.xml", remote=uas.port, via=port, rate=5,
                                    calls=calls, timeout=30).run_async()
            assert result.ok, result.describe()
            assert result.successful == calls
            stats = server.core.tm.statistics()
            assert stats["dns_failovers"] == calls  # every INVITE went to "down" first
            assert server.core.dns.statistics()["queries"] >= 3  # NAPTR, SRV, A...
