"""GET /metrics: every statistic in the Prometheus text format, scraped after traffic."""

from __future__ import annotations

import re
from typing import Any

import trio
from mi_helpers import http_request, real_server

from trio_sip.mi.metrics import metric_name, render

TOKEN = "metrics-token-0123456789"

STATEFUL = """
function ksr_request_route()
  if KSR.is_method("OPTIONS") then
    KSR.tm.t_newtran()
    KSR.tm.t_reply(200, "OK")
    return
  end
  KSR.sl.sl_send_reply(404, "Not Here")
end
"""

# exposition format 0.0.4: comments, and "name[{labels}] value" samples
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                     r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? '
                     r"(-?[0-9.eE+-]+|NaN|[+-]Inf)")
_COMMENT = re.compile(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)")


def parse(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """The samples and types of an exposition, checking every line's syntax and that
    each sample follows its own TYPE line, once."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        m = _COMMENT.fullmatch(line)
        if m is not None:
            if m[1] == "TYPE":
                assert m[3] in ("counter", "gauge"), line
                assert m[2] not in types, f"second TYPE for {m[2]}"
                types[m[2]] = m[3]
            continue
        s = _SAMPLE.fullmatch(line)
        assert s is not None, f"not a sample line: {line!r}"
        assert s[1] in types, f"{s[1]} has no TYPE line before it"
        assert s[1] not in samples, f"{s[1]} twice"
        if types[s[1]] == "counter":
            assert s[1].endswith("_total")
        samples[s[1]] = float(s[3])
    return samples, types


async def _sip(server: Any, requests: list[tuple[str, int]]) -> None:
    dest = server.address("udp")
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        for method, n in requests:
            await sock.sendto(_request(method, n, port), (dest.host, dest.port))
            with trio.fail_after(5):
                reply, _ = await sock.recvfrom(65536)
            assert reply.startswith(b"SIP/2.0 ")


def _request(method: str, n: int, port: int) -> bytes:
    return (f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-m{method}{n}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: metrics-{method}-{n}\r\nCSeq: 1 {method}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


async def test_metrics_after_traffic(write_routes: Any) -> None:
    async with real_server(mi={"token": TOKEN}, routes=write_routes(STATEFUL)) as server:
        addr = server.mi_address
        assert addr is not None
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # the same token rule as JSON-RPC
        r = await http_request(addr, "GET", "/metrics", headers={})
        assert r.status == 401
        r = await http_request(addr, "GET", "/metrics", headers={"Authorization": "Bearer x"})
        assert r.status == 401

        r = await http_request(addr, "GET", "/metrics", headers=auth)
        assert r.status == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        before, types = parse(r.body.decode())
        assert before["trio_sip_udp_received_total"] == 0
        assert types["trio_sip_tm_inuse_transactions"] == "gauge"
        assert types["trio_sip_udp_open_connections"] == "gauge"
        assert types["trio_sip_script_generation"] == "gauge"
        assert 'trio_sip_info{version="' in r.body.decode()

        await _sip(server, [("OPTIONS", i) for i in range(3)] + [("MESSAGE", i) for i in range(2)])

        r = await http_request(addr, "GET", "/metrics", headers=auth)
        after, types = parse(r.body.decode())
        assert after["trio_sip_udp_received_total"] == 5
        assert after["trio_sip_udp_sent_total"] == 5
        assert after["trio_sip_tm_uas_transactions_total"] == 3
        assert after["trio_sip_tm_rpl_generated_total"] == 3
        assert after["trio_sip_tm_2xx_transactions_total"] == 3
        assert types["trio_sip_tm_uas_transactions_total"] == "counter"
        assert after["trio_sip_mi_metrics_scrapes_total"] == 2
        assert after["trio_sip_uptime_seconds"] >= 0
        # one JSON-RPC statistic, one metric: the same number both ways
        got = await http_request(addr, "POST", "/", body=b'{"jsonrpc": "2.0", "id": 1, '
                                 b'"method": "stats.fetch", "params": ["tm:"]}',
                                 headers={**auth, "Content-Type": "application/json"})
        fetched = got.json()["result"]
        assert fetched["tm.UAS_transactions"] == 3

        r = await http_request(addr, "HEAD", "/metrics", headers=auth)
        assert r.status == 200 and r.body == b""
        r = await http_request(addr, "POST", "/metrics", body=b"x",
                               headers={**auth, "Content-Type": "text/plain"})
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        r = await http_request(addr, "GET", "/metricsx", headers=auth)
        assert r.status == 404


def test_metric_names_and_escaping() -> None:
    assert metric_name("tm", "UAS_transactions", counter=True) == "trio_sip_tm_uas_transactions_total"
    assert metric_name("tm", "2xx_transactions", counter=True) == "trio_sip_tm_2xx_transactions_total"
    assert metric_name("my-mod", "a.b  c", counter=False) == "trio_sip_my_mod_a_b_c"
    assert metric_name("g", "sent_total", counter=True) == "trio_sip_g_sent_total"
    text = render({"tm": {"inuse_transactions": 2, "X": 1, "x": 7},
                   "demo": {"queue": 3, "hits": 1.5, "label\n\"": 4}},
                  started=100.0, now=160.5, gauges={"demo": ["queue"]})
    samples, types = parse(text)
    assert types["trio_sip_tm_inuse_transactions"] == "gauge"
    assert types["trio_sip_demo_queue"] == "gauge"
    assert samples["trio_sip_demo_hits_total"] == 1.5
    assert samples["trio_sip_uptime_seconds"] == 60.5
    # tm:X and tm:x are one metric name: the first (sorted) wins, the other is counted
    assert samples["trio_sip_tm_x_total"] == 1
    assert samples["trio_sip_metrics_name_collisions"] == 1
    # a name with a newline and a quote: sanitised in the name, escaped in HELP
    assert samples["trio_sip_demo_label_total"] == 4
    assert "# HELP trio_sip_demo_label_total demo:label\\n\"" in text


def test_levels_are_gauges_and_event_counts_counters() -> None:
    # what goes up and down (requests in flight, open connections, cache size) must not
    # be exposed as a *_total counter: Prometheus' rate() on it would be nonsense
    text = render({"http_client": {"pending": 1, "connections": 2, "requests": 3},
                   "dns": {"cache_entries": 4, "cache_hits": 5}},
                  started=100.0, now=101.0, gauges={})
    samples, types = parse(text)
    assert types["trio_sip_http_client_pending"] == "gauge"
    assert types["trio_sip_http_client_connections"] == "gauge"
    assert types["trio_sip_http_client_requests_total"] == "counter"
    assert types["trio_sip_dns_cache_entries"] == "gauge"
    assert samples["trio_sip_dns_cache_hits_total"] == 5
