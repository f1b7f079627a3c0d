"""KSR.ipops: DNS queries that wait without blocking (virtual time with a scripted DNS
peer, and against a real dnsmasq), their PV containers, and the address helpers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dns.conftest import requires_dnsmasq
from tests.modules.module_helpers import OUT_LUA, ask, outs, serving
from tests.support.dnsmasq import Dnsmasq
from trio_sip.testing.dns import ScriptedDns, use_scripted_dns

QUERY_ROUTES = OUT_LUA + """
function ksr_request_route()
  local rc = KSR.ipops.dns_query("multi.test", "h")
  out("rc", rc)
  out("count", KSR.pv.get("$dns(h=>count)"))
  out("ipv4", KSR.pv.get("$dns(h=>ipv4)"))
  out("ipv6", KSR.pv.get("$dns(h=>ipv6)"))
  out("addr0", KSR.pv.get("$dns(h=>addr[0])"))
  out("type0", KSR.pv.get("$dns(h=>type[0])"))
  out("last", KSR.pv.get("$dns(h=>addr[-1])"))
  out("typelast", KSR.pv.get("$dns(h=>type[-1])"))
  out("none", KSR.pv.get("$dns(h=>addr[9])"))
  out("nx", KSR.ipops.dns_query("missing.test", "x"))
  out("nxcount", KSR.pv.get("$dns(x=>count)"))
  out("fail", KSR.ipops.dns_query("broken.test", "y"))
  out("srv", KSR.ipops.srv_query("_sip._udp.multi.test", "s"))
  out("scount", KSR.pv.get("$srvquery(s=>count)"))
  out("s0", KSR.pv.get("$srvquery(s=>target[0])") .. ":" .. KSR.pv.get("$srvquery(s=>port[0])")
      .. "/" .. KSR.pv.get("$srvquery(s=>priority[0])") .. "/" .. KSR.pv.get("$srvquery(s=>weight[0])"))
  out("s1", KSR.pv.get("$srvquery(s=>target[1])"))
  out("naptr", KSR.ipops.naptr_query("multi.test", "n"))
  out("n0", KSR.pv.get("$naptrquery(n=>services[0])") .. " " .. KSR.pv.get("$naptrquery(n=>replace[0])")
      .. " " .. KSR.pv.get("$naptrquery(n=>order[0])") .. " " .. KSR.pv.get("$naptrquery(n=>flags[0])"))
  out("match", KSR.ipops.dns_int_match_ip("multi.test", "::1"))
  out("nomatch", KSR.ipops.dns_int_match_ip("multi.test", "127.0.0.99"))
  out("badname", KSR.ipops.dns_query("bad name", "z"))
  KSR.sl.sl_send_reply(200, "OK")
end
"""


def scripted() -> ScriptedDns:
    dns = ScriptedDns()
    dns.a("multi.test", "127.0.0.5", "127.0.0.6")
    dns.aaaa("multi.test", "::1")
    dns.srv("_sip._udp.multi.test", (20, 0, 5080, "b.multi.test"), (10, 0, 5070, "a.multi.test"))
    dns.naptr("multi.test", (20, 10, "S", "SIP+D2T", "", "_sip._tcp.multi.test"),
              (10, 10, "S", "SIP+D2U", "", "_sip._udp.multi.test"))
    dns.fail("broken.test", "servfail")
    return dns


async def test_queries_and_containers(autojump_clock: Any, write_routes: Any) -> None:
    async with serving(write_routes(QUERY_ROUTES)) as env:
        use_scripted_dns(env.server, scripted())
        reply = await ask(env, env.uac.request("OPTIONS", "sip:x@127.0.0.1"), 200)
        got = outs(reply)
    assert got["rc"] == "number:1"
    assert got["count"] == "number:3"
    assert (got["ipv4"], got["ipv6"]) == ("number:1", "number:1")
    assert (got["addr0"], got["type0"]) == ("string:127.0.0.5", "number:4")
    assert (got["last"], got["typelast"]) == ("string:::1", "number:6")
    assert got["none"] == "nil:nil"
    assert (got["nx"], got["nxcount"]) == ("number:-1", "number:0")
    assert got["fail"] == "number:-2"
    assert (got["srv"], got["scount"]) == ("number:1", "number:2")
    assert got["s0"] == "string:a.multi.test:5070/10/0"  # priority order
    assert got["s1"] == "string:b.multi.test"
    assert got["naptr"] == "number:1"
    assert got["n0"] == "string:SIP+D2U _sip._udp.multi.test 10 S"
    assert (got["match"], got["nomatch"]) == ("number:1", "number:-1")
    assert got["badname"] == "number:-1"


@requires_dnsmasq
async def test_srv_query_against_dnsmasq(dnsmasq: Dnsmasq, write_routes: Any) -> None:
    routes = write_routes(OUT_LUA + """
function ksr_request_route()
  out("rc", KSR.ipops.srv_query("_sip._tcp.example.test", "t"))
  out("t0", KSR.pv.get("$srvquery(t=>target[0])") .. ":" .. KSR.pv.get("$srvquery(t=>port[0])"))
  out("a", KSR.ipops.dns_query("u4.example.test", "u"))
  out("u", KSR.pv.get("$dns(u=>addr[0])") .. " " .. KSR.pv.get("$dns(u=>addr[1])"))
  KSR.sl.sl_send_reply(200, "OK")
end
""")
    async with serving(routes, config={"lua": {"routes": routes},
                                       "dns": {"nameservers": [dnsmasq.nameserver]}}) as env:
        got = outs(await ask(env, env.uac.request("OPTIONS", "sip:x@127.0.0.1"), 200))
    assert got["rc"] == "number:1"
    assert got["t0"] == "string:t1.example.test:5071"
    assert got["a"] == "number:1"
    assert got["u"] == "string:127.0.0.24 ::1"


@pytest.mark.parametrize(("fn", "args", "rc"), [
    ("is_ip", ("127.0.0.1",), 1), ("is_ip", ("[::1]",), 1), ("is_ip", ("x.test",), -1),
    ("is_pure_ip", ("[::1]",), -1), ("is_ipv4", ("10.1.2.3",), 1), ("is_ipv4", ("::1",), -1),
    ("is_ipv6", ("::1",), 1), ("is_ipv6_reference", ("[::1]",), 1),
    ("is_ipv6_reference", ("::1",), -1),
    ("ip_type", ("10.0.0.1",), 1), ("ip_type", ("fe80::1",), 2), ("ip_type", ("[fe80::1]",), 3),
    ("ip_type", ("nope",), -1),
    ("compare_ips", ("[::1]", "0:0::1"), 1), ("compare_ips", ("1.2.3.4", "1.2.3.5"), -1),
    ("compare_pure_ips", ("[::1]", "::1"), -1),
    ("is_ip_rfc1918", ("172.20.0.1",), 1), ("is_ip_rfc1918", ("172.32.0.1",), -1),
    ("is_in_subnet", ("10.1.2.3", "192.168.0.0/16, 10.0.0.0/8"), 1),
    ("is_in_subnet", ("10.1.2.3", "fd00::/8"), -1),
    ("is_in_subnet", ("10.1.2.3", "not-a-net"), -1),
])
def test_address_helpers(fn: str, args: tuple[str, ...], rc: int) -> None:
    from trio_sip.modules import ipops

    assert getattr(ipops, fn)(None, *args) == rc
