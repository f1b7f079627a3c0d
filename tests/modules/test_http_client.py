"""KSR.http_client: Kamailio's functions and return codes against a real HTTP server on
127.0.0.1 (real time), and timeouts, cancellation, failover and bounds against the
scripted peer in virtual time."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import trio
from module_helpers import OUT_LUA, PROXY, ask, outs, serving

from tests.support.http_server import HttpRequest, HttpServer
from trio_sip.config import ConfigError
from trio_sip.modules import builtin_modules
from trio_sip.modules.http_client import (
    HttpClient,
    HttpClientParams,
    parse_header_lines,
    parse_httpcon,
)
from trio_sip.script.modparams import build_modparams
from trio_sip.testing import build_message
from trio_sip.testing.http import ScriptedHttp

_n = iter(range(1, 1_000_000))


def message(body: str = "") -> bytes:
    n = next(_n)
    return build_message("MESSAGE sip:bob@127.0.0.1 SIP/2.0", [
        ("Via", f"SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKhc{n};rport"),
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@127.0.0.2>;tag=hc"), ("To", "<sip:bob@127.0.0.1>"),
        ("Call-ID", f"hc-{n}"), ("CSeq", "1 MESSAGE"), ("X-Url", body)])


def route(snippet: str) -> str:
    """A request route: the URL comes in the X-Url header; ``snippet`` reports with
    out(); then 200."""
    return OUT_LUA + (
        "function ksr_request_route()\n"
        "  if KSR.is_ACK() then return end\n"
        "  local url = KSR.pv.get('$hdr(X-Url)')\n"
        f"{snippet}\n"
        "  KSR.sl.send_reply(200, 'OK')\n"
        "end\n")


async def run(write_routes, snippet: str, url: str, config=None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    async with serving(write_routes(route(snippet)), config=config) as env:
        resp = await ask(env, message(url), 200)
        return outs(resp)


# -- real time, a real server ----------------------------------------------------------------


async def test_query_get_first_line_and_whole_body(write_routes) -> None:
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(HttpServer(body=b"first line\nsecond line\n",
                                             content_type="text/plain").serve)
        url = f"http://127.0.0.1:{srv.port}/q?a=1"
        got = await run(write_routes, (
            "  out('rc', KSR.http_client.query(url, '$var(r)'))\n"
            "  out('r', KSR.pv.get('$var(r)'))\n"
            "  out('rc2', KSR.http_client.get_hdrs(url, '', 'X-Token: abc', '$var(w)'))\n"
            "  out('w', string.len(KSR.pv.get('$var(w)')))\n"
            "  local code, body = KSR.http_client.request('GET', url)\n"
            "  out('rc3', code) out('b3', string.len(body))\n"), url)
        assert got["rc"] == "number:200"
        assert got["r"] == "string:first line"  # query_result=1: the first line
        assert got["rc2"] == "number:200"
        assert got["w"] == "number:23"  # get_hdrs: the whole body
        assert (got["rc3"], got["b3"]) == ("number:200", "number:23")
        first, second, _ = srv.requests
        assert (first.method, first.target) == ("GET", "/q?a=1")
        assert first.headers["user-agent"] == "trio-sip http_client"
        assert first.headers["connection"] == "close"  # keep_connections = 0
        assert second.headers["x-token"] == "abc"
        nursery.cancel_scope.cancel()


async def test_query_post_hdrs_and_request(write_routes) -> None:
    def hook(req: HttpRequest) -> tuple[int, bytes]:
        if req.target == "/missing":
            return 404, b"no such thing"
        if req.target == "/broken":
            return 503, b"down for maintenance"
        return 201, b"created:" + req.body

    async with trio.open_nursery() as nursery:
        srv = await nursery.start(HttpServer(hook=hook).serve)
        base = f"http://127.0.0.1:{srv.port}"
        got = await run(write_routes, (
            "  out('p', KSR.http_client.query_post(url .. '/form', 'a=1&b=2', '$var(p)'))\n"
            "  out('pv', KSR.pv.get('$var(p)'))\n"
            "  out('ph', KSR.http_client.query_post_hdrs(url .. '/j', '{\"x\":1}',"
            " 'Content-Type: application/json', '$var(j)'))\n"
            "  local code, body = KSR.http_client.request('PUT', url .. '/put', 'data',"
            " 'X-A: 1\\r\\nX-B: 2', 2000)\n"
            "  out('code', code) out('body', body)\n"
            "  out('m', KSR.http_client.query(url .. '/missing', '$var(m)'))\n"
            "  out('mv', KSR.pv.get('$var(m)'))\n"
            "  out('b', KSR.http_client.query(url .. '/broken', '$var(b)'))\n"
            "  out('bv', KSR.pv.get('$var(b)'))\n"
            "  out('ct', KSR.http_client.response_header('content-type'))\n"), base,
            config={"modparams": {"http_client": {"authorization": "Bearer s3cret",
                                                   "keep_connections": 1}}})
        assert got["p"] == "number:201"
        assert got["pv"] == "string:created:a=1&b=2"
        assert got["ph"] == "number:201"
        assert (got["code"], got["body"]) == ("number:201", "string:created:data")
        assert got["m"] == "number:404" and got["mv"] == "string:no such thing"
        # a 5xx returns its status; its body is not given to the script (Kamailio)
        assert got["b"] == "number:503" and got["bv"] == "string:"
        assert got["ct"] == "string:application/json"
        form, js, put = srv.requests[:3]
        assert form.headers["content-type"] == "application/x-www-form-urlencoded"
        assert js.headers["content-type"] == "application/json"
        assert (put.method, put.headers["x-a"], put.headers["x-b"]) == ("PUT", "1", "2")
        assert all(r.headers["authorization"] == "Bearer s3cret" for r in srv.requests)
        assert "connection" not in put.headers or put.headers["connection"] != "close"
        nursery.cancel_scope.cancel()


async def test_bad_header_lines_return_minus_one_with_a_log_line(write_routes,
                                                                caplog) -> None:
    """hdrs follow the shared rules for header lines (tests/sip/test_header_lines.py) with
    HTTP's differences: a bad line makes the function return -1, logs the line and why,
    and nothing is sent; a trailing CRLF and a blank line are harmless, and a value's
    bytes (UTF-8 from Lua) are sent as written."""
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(HttpServer(body=b"ok").serve)
        got = await run(write_routes, (
            "  out('cr', KSR.http_client.http_request('GET', url, '', 'X-A: 1\\rX-Evil: 2'))\n"
            "  out('nul', KSR.http_client.get_hdrs(url, '', 'X-A: 1\\0', '$var(r)'))\n"
            "  out('sp', KSR.http_client.query_post_hdrs(url, 'a=1', 'X Evil: 1', '$var(r)'))\n"
            "  out('body', KSR.http_client.http_request('POST', url, 'x',"
            " 'X-A: 1\\r\\n\\r\\na=1&b=2'))\n"
            "  out('fold', KSR.http_client.http_request('GET', url, '', 'X-A: 1\\r\\n 2'))\n"
            "  out('hcolon', KSR.http_client.http_request('GET', url, '', 'X-A : 1'))\n"
            "  out('good', KSR.http_client.http_request('GET', url, '',"
            " 'X-A: 1\\r\\n\\r\\nX-City: K\\195\\182ln\\r\\nX#Tag: t\\r\\n'))\n"),
            f"http://127.0.0.1:{srv.port}/h")
        assert got == {"cr": "number:-1", "nul": "number:-1", "sp": "number:-1",
                       "body": "number:-1", "fold": "number:-1", "hcolon": "number:-1",
                       "good": "number:200"}
        [req] = srv.requests  # only the good one was sent
        assert (req.headers["x-a"], req.headers["x-city"], req.headers["x#tag"]) == (
            "1", "K\xc3\xb6ln", "t")  # the UTF-8 bytes of "Köln", as written
        nursery.cancel_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "http_client.http_request: header line 1 'X-A: 1\\rX-Evil: 2': '\\r' in the line "
        "(CR, LF and NUL are refused: header injection)",
        "http_client.get_hdrs: header line 1 'X-A: 1\\x00': '\\x00' in the line (CR, LF and "
        "NUL are refused: header injection)",
        "http_client.query_post_hdrs: header line 1 'X Evil: 1': header name 'X Evil' is "
        "not a token (RFC 9110 §5.6.2)",
        "http_client.http_request: header line 3 'a=1&b=2': no colon: it is not a "
        "'Name: value' header line",
        "http_client.http_request: header line 2 ' 2': a continuation (folded) line: HTTP "
        "header lines must not be folded (RFC 9112 §5.2)",
        "http_client.http_request: header line 1 'X-A : 1': white space between the name "
        "and the colon (RFC 9112 §5.1)",
    ]


async def test_failures_are_negative_and_never_sent_beyond_loopback(write_routes) -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    got = await run(write_routes, (
        "  out('refused', KSR.http_client.query(url, '$var(r)'))\n"
        "  out('text', KSR.pv.get('$curlerror(-7)'))\n"
        "  out('foreign', KSR.http_client.query('http://192.0.2.1/x', '$var(r)'))\n"
        "  out('name', KSR.http_client.query('http://example.com/x', '$var(r)'))\n"
        "  out('scheme', KSR.http_client.query('ftp://127.0.0.1/x', '$var(r)'))\n"
        "  out('bad', KSR.http_client.query('not a url', '$var(r)'))\n"
        "  out('ro', KSR.http_client.query(url, '$rm'))\n"
        "  out('hdr', KSR.http_client.get_hdrs(url, '', 'no colon', '$var(r)'))\n"
        "  out('meth', KSR.http_client.http_request('get it', url))\n"), f"http://127.0.0.1:{closed}/")
    assert got["refused"] == "number:-7"
    assert got["text"] == "string:Couldn't connect to server"
    assert got["foreign"] == "number:-7"  # the loopback guard refused it
    assert got["name"] == "number:-7"  # names are refused while the guard is on
    assert got["scheme"] == "number:-1"
    assert got["bad"] == "number:-3"  # malformed
    assert got["ro"] == "number:-1"  # a read-only PV cannot take the answer: not sent
    assert got["hdr"] == "number:-1"
    assert got["meth"] == "number:-1"


async def test_a_slow_server_times_out(write_routes) -> None:
    release = trio.Event()

    async def slow(req: HttpRequest) -> None:
        await release.wait()

    async with trio.open_nursery() as nursery:
        srv = await nursery.start(HttpServer(hook=slow).serve)
        got = await run(write_routes,
                        "  out('rc', KSR.http_client.query(url, '$var(r)'))\n",
                        f"http://127.0.0.1:{srv.port}/",
                        config={"modparams": {"http_client": {"timeout_mode": 2,
                                                               "connection_timeout": 300}}})
        assert got["rc"] == "number:-28"
        assert len(srv.requests) == 1
        release.set()
        nursery.cancel_scope.cancel()


# -- virtual time, the scripted peer ---------------------------------------------------------


async def test_timeout_is_exact_in_virtual_time(autojump_clock, write_routes) -> None:
    peer = ScriptedHttp(delay=math.inf)  # hung
    snippet = (
        "  out('rc', KSR.http_client.http_request('POST', url, 'x', '', 1500))\n"
        "  out('rc2', KSR.http_client.query(url, '$var(r)'))\n")
    async with serving(write_routes(route(snippet))) as env:
        peer.install(env.server.core)
        start = trio.current_time()
        resp = await ask(env, message("http://127.0.0.1:9/x"), 200)
        # 1.5 s for the first (its own timeout), 4 s (connection_timeout) for the second
        assert trio.current_time() - start == pytest.approx(5.5)
        assert outs(resp)["rc"] == "number:-28" and outs(resp)["rc2"] == "number:-28"
        stats = env.server.core.http_client.statistics()
        assert stats["timeouts"] == 2 and stats["pending"] == 0


async def test_a_cancel_stops_the_pending_request(autojump_clock, write_routes) -> None:
    peer = ScriptedHttp(delay=30)
    routes = write_routes(
        "function ksr_request_route()\n"
        "  if KSR.is_CANCEL() then if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end"
        " return end\n"
        "  if KSR.is_ACK() then return end\n"
        "  local rc = KSR.http_client.http_request('GET', 'http://127.0.0.1:9/slow', '', '', 60000)\n"
        "  KSR.pv.sets('$shv(resumed)', tostring(rc))\n"
        "  KSR.tm.t_relay()\n"
        "end\n")
    async with serving(routes, config={"modparams": {"http_client": {"timeout_mode": 0}}}
                       ) as env:
        peer.install(env.server.core)
        invite = env.uac.request("INVITE", "sip:bob@127.0.0.3", branch="z9hG4bKcx", call_id="cx")
        await env.uac.send(invite, PROXY)
        await peer.wait_for_request()
        await trio.sleep(1)
        await env.uac.send(env.uac.request("CANCEL", "sip:bob@127.0.0.3", branch="z9hG4bKcx",
                                           call_id="cx"), PROXY)
        final = await env.uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        await trio.sleep(60)
        assert "resumed" not in env.server.core.shv
        assert peer.requests[0].status == 0  # never answered: the request was abandoned
        assert env.server.core.http_client.statistics()["pending"] == 0
        assert env.uas.requests() == []


async def test_httpcon_failover_and_basic_auth(autojump_clock, write_routes) -> None:
    def answer(ex):  # type: ignore[no-untyped-def]
        if "primary" in ex.url:
            return httpx.Response(503)
        return httpx.Response(200, content=b"from " + ex.url.encode())

    peer = ScriptedHttp(on_request=answer)
    config = {"modparams": {"http_client": {"httpcon": [
        "primary=>http://u%40x:pw@127.0.0.1:8001/primary;timeout=2;failover=backup",
        "backup=>http://127.0.0.1:8002/backup"]}}}
    snippet = (
        "  out('rc', KSR.http_client.curl_connect('primary', '/users/1', '$var(r)'))\n"
        "  out('r', KSR.pv.get('$var(r)'))\n"
        "  out('none', KSR.http_client.curl_connect('nope', '/x', '$var(r)'))\n"
        "  out('post', KSR.http_client.curl_connect_post('backup', '/p', 'text/plain', 'hi',"
        " '$var(p)'))\n"
        "  out('list', KSR.mi.mi('httpclient.listcon'))\n"
        "  out('stats', KSR.mi.mi('stats.get_statistics', '[\"http_client:\"]'))\n")
    async with serving(write_routes(route(snippet)), config=config) as env:
        peer.install(env.server.core)
        got = outs(await ask(env, message(""), 200))
    assert got["rc"] == "number:200"
    assert got["r"] == "string:from http://127.0.0.1:8002/backup/users/1"
    assert got["none"] == "number:-1"
    assert got["post"] == "number:200"
    listed = json.loads(got["list"].removeprefix("string:"))
    assert [(c["name"], c["url"], c["timeout"], c["failover"]) for c in listed] == [
        ("primary", "http://127.0.0.1:8001/primary", 2, "backup"),
        ("backup", "http://127.0.0.1:8002/backup", 4, None)]
    assert "pw" not in got["list"]  # the password is not shown
    stats = got["stats"]
    assert "http_client:requests = 3" in stats and "http_client:connok = 2" in stats, stats
    first, second, third = peer.requests
    assert first.url == "http://127.0.0.1:8001/primary/users/1"
    assert first.headers["authorization"] == "Basic dUB4OnB3"  # base64("u@x:pw")
    assert "authorization" not in second.headers
    assert (third.method, third.headers["content-type"], third.body) == (
        "POST", "text/plain", b"hi")


async def test_max_pending_bounds_requests_in_flight(autojump_clock) -> None:
    peer = ScriptedHttp(delay=2)
    client = HttpClient(HttpClientParams(max_pending=2), transport=peer)
    results: list[int] = []

    async def one() -> None:
        results.append((await client.request("GET", "http://127.0.0.1:9/")).status)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(results) == [-1, 200, 200]
    assert client.statistics()["dropped"] == 1
    await client.aclose()


async def test_a_peer_that_is_down_fails_at_once(autojump_clock) -> None:
    peer = ScriptedHttp(down=True)
    client = HttpClient(transport=peer)
    start = trio.current_time()
    r = await client.request("POST", "http://127.0.0.1:9/push", body="{}")
    assert (r.status, trio.current_time() - start) == (-7, 0)
    assert client.statistics()["connfail"] == 1
    await client.aclose()


# -- params ------------------------------------------------------------------------------


def test_bad_params_refuse_to_start_naming_the_key() -> None:
    mods = builtin_modules()
    p = build_modparams(mods, {"http_client": {"connection_timeout": 2, "timeout_mode": 2}})
    assert p["http_client"].timeout_seconds() == 0.002
    bad: list[dict[str, object]] = [
        {"timeout_mode": 3}, {"httpcon": ["nourl"]}, {"httpcon": ["a=>ftp://x"]},
        {"httpcon": ["a=>http://127.0.0.1;failover=b"]}, {"headers": ["oops"]},
        {"headers": ["X-A: 1\rX-Evil: 2"]}, {"authorization": "Bearer x\r\nX-Evil: 1"},
        {"useragent": "ua\x00"}, {"httpcon": ["a=>http://127.0.0.1;useragent=x\x1by"]},
        {"connection_timeout": "soon"}, {"nope": 1},
    ]
    for raw in bad:
        with pytest.raises(ConfigError) as err:
            build_modparams(mods, {"http_client": raw})
        assert "modparams.http_client" in str(err.value)


def test_parsers() -> None:
    con = parse_httpcon("api=>https://me:pw@127.0.0.1:8443/v1;timeout=3;useragent=x")
    assert (con.url, con.username, con.password, con.timeout, con.useragent) == (
        "https://127.0.0.1:8443/v1", "me", "pw", 3, "x")
    assert parse_header_lines("A: 1\r\nB:2\n\n") == [("A", "1"), ("B", "2")]
    with pytest.raises(ValueError):
        parse_header_lines("A 1")
    with pytest.raises(ValueError, match="header injection"):
        parse_header_lines("A: 1\rB: 2")

