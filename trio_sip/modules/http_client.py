"""KSR.http_client: HTTP requests from routes (Kamailio ``http_client``), without blocking.

Kamailio's http_client runs libcurl inside the SIP worker: a slow web server stalls the
worker for up to ``connection_timeout`` seconds per request. Here every request is an
:class:`~trio_sip.script.ops.AsyncOp`: the route waits in place (locals intact) while
the server serves other calls, and the request belongs to the transaction it serves: a
CANCEL, the fr timer or a shutdown cancels it. The client is httpx on Trio (through
anyio), one connection pool per server (``core.http_client``, made on first use).

Kamailio's KEMI functions, with its return convention (the HTTP status, e.g. 200 or 404;
the body of a 2xx..4xx answer goes into the PV named by ``dpv``)::

    KSR.http_client.query(url, dpv)                        GET
    KSR.http_client.query_post(url, post, dpv)             POST (form content type)
    KSR.http_client.query_post_hdrs(url, post, hdrs, dpv)  POST with headers ("Name: v")
    KSR.http_client.get_hdrs(url, body, hdrs, dpv)         GET with headers (whole body)
    KSR.http_client.curl_connect(con, url, dpv)            GET on an httpcon connection
    KSR.http_client.curl_connect_post(con, url, ctype, data, dpv)

trio-sip's own form, for route authors (and the push helper, lua/push.lua)::

    local code, body = KSR.http_client.request("POST", url, json, "Content-Type: application/json", 2000)

``request(method, url, body, hdrs, timeout_ms)`` returns two values: the status (or a
negative error, below) and the whole response body ("" when none); ``timeout_ms`` 0
means the module's timeout. ``http_request`` is the same returning only the status;
after either, ``response_body()``, ``response_header(name)`` and ``$httprhdr(name)``
read the last response of this message (headers always kept for these two).

Failures. Kamailio returns libcurl's error code (below 100) when no HTTP answer came,
which a KEMI script reads as *true*; trio-sip returns it negated so ``< 0`` means
failed: -7 cannot connect (also a destination refused by the loopback guard), -28
timed out, -3 malformed URL, -1 unsupported scheme, -47 too many redirects, -55/-56
send/receive failure, -8 bad HTTP answer; ``$curlerror(N)`` (N with or without its
sign) gives the text. A 5xx answer returns its status, as in Kamailio.

Params (``[modparams.http_client]``, Kamailio's names and defaults):

* ``connection_timeout`` = 4, in the unit of ``timeout_mode`` (1 seconds, 2 ms, 0 no
  timeout): the bound of a whole request, connect to last byte (libcurl's
  CURLOPT_TIMEOUT, as Kamailio sets it); an httpcon's ``timeout`` overrides it;
* ``httpredirect`` = 1 follows redirects (each hop checked by the loopback guard);
* ``useragent``; ``maxdatasize`` = 0 (no cut) cuts the body given to the script;
  ``query_result`` = 1: query* give the first line of the body only (0: all of it);
  ``query_maxdatasize``; ``keep_connections`` = 0 closes the connection after each
  request (1 reuses it); ``response_headers`` = 0 (1: keep them for $httprhdr);
* ``httpcon`` = ["name=>http://user:pass@host:port/base;timeout=2;failover=other"]:
  connections for curl_connect*, with params ``timeout``, ``useragent``,
  ``maxdatasize``, ``httpredirect``, ``keep_connections``, ``failover`` (another
  connection tried on a transport failure or a 5xx, as Kamailio does);
* trio-sip: ``authorization`` (an ``Authorization`` header value added to every
  request that has none, e.g. "Bearer TOKEN"), ``headers`` (default headers
  "Name: value" for every request), ``max_response_size`` (bytes read at most from an
  answer; the rest is not read), ``max_pending`` (requests in flight at most; beyond
  it a request fails at once with -1 and is counted as ``dropped``).

With ``[core] loopback_only`` (the default) only 127.0.0.0/8 and ::1 literals may be
requested; names are refused (resolving them is traffic). Proxies from the environment
are ignored.

Statistics (``stats.get_statistics http_client:``): requests, connok (200 answers),
connfail (everything else, as Kamailio counts), timeouts, refused, dropped, pending.
MI: ``httpclient.listcon`` lists the httpcon connections.

Not implemented: TLS client certificates and CA/cipher settings (https uses the
system's trust store), ``httpproxy``, ``netinterface``, ``config_file``, HTTP/2
(``http_client_request_v2pk``), ``http_get_redirect``, ``authmethod`` beyond Basic (1)
and Digest (2) (3, Kamailio's default, uses Basic).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import trio

from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ANY_ROUTE, ModuleBuilder, RouteType
from ..script.modparams import modparams_of
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.headers import parse_header_lines_untrusted
from ..transport.base import Address

log = logging.getLogger("trio_sip.http_client")
# httpx logs every request at INFO; this module logs what failed, with the route's
# Call-ID, so the per-request lines stay out of an info-level server log
logging.getLogger("httpx").setLevel(logging.WARNING)

# libcurl error codes (https://curl.se/libcurl/c/libcurl-errors.html) and their text
CURLE_UNSUPPORTED_PROTOCOL = 1
CURLE_URL_MALFORMAT = 3
CURLE_COULDNT_CONNECT = 7
CURLE_WEIRD_SERVER_REPLY = 8
CURLE_OPERATION_TIMEDOUT = 28
CURLE_TOO_MANY_REDIRECTS = 47
CURLE_SEND_ERROR = 55
CURLE_RECV_ERROR = 56
CURL_ERRORS = {
    0: "No error",
    CURLE_UNSUPPORTED_PROTOCOL: "Unsupported protocol",
    CURLE_URL_MALFORMAT: "URL using bad/illegal format or missing URL",
    CURLE_COULDNT_CONNECT: "Couldn't connect to server",
    CURLE_WEIRD_SERVER_REPLY: "Weird server reply",
    CURLE_OPERATION_TIMEDOUT: "Timeout was reached",
    CURLE_TOO_MANY_REDIRECTS: "Number of redirects hit maximum amount",
    CURLE_SEND_ERROR: "Failed sending data to the peer",
    CURLE_RECV_ERROR: "Failure when receiving data from the peer",
}

R = RouteType
#: where a request may wait: not in branch routes nor the core reply route (they run
#: synchronously), as for every waiting export
WAIT_ROUTES = R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH_FAILURE | R.EVENT | R.TIMER
_LAST = "\0http_client:last"


# -- params ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCon:
    """One ``httpcon`` connection (Kamailio syntax ``name=>url;param=value``)."""

    name: str
    url: str
    username: str = ""
    password: str = ""
    timeout: int | None = None
    useragent: str | None = None
    maxdatasize: int | None = None
    httpredirect: int | None = None
    keep_connections: int | None = None
    failover: str = ""


_CON_INT_PARAMS = ("timeout", "maxdatasize", "httpredirect", "keep_connections")


def parse_httpcon(spec: str) -> HttpCon:
    """``name=>scheme://[user:pass@]host[:port][/path][;param=value]...``; ValueError."""
    name, sep, rest = spec.partition("=>")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ValueError(f"httpcon {spec!r}: expected name=>url")
    url, *params = [p.strip() for p in rest.strip().split(";")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"httpcon {name}: {url!r} is not an http(s) URL")
    kwargs: dict[str, Any] = {}
    for p in params:
        if not p:
            continue
        key, eq, value = p.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"httpcon {name}: param {p!r} has no value")
        if key in _CON_INT_PARAMS:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"httpcon {name}: {key} must be an integer") from None
        elif key in ("useragent", "failover"):
            kwargs[key] = value.strip()
        else:
            raise ValueError(f"httpcon {name}: unknown param {key!r} (known: "
                             f"{', '.join((*_CON_INT_PARAMS, 'useragent', 'failover'))})")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return HttpCon(name, base, unquote(parts.username or ""), unquote(parts.password or ""),
                   **kwargs)


@dataclass(frozen=True)
class HttpClientParams:
    """``[modparams.http_client]`` (see the module docstring)."""

    connection_timeout: int = 4
    timeout_mode: int = 1
    httpredirect: int = 1
    useragent: str = "trio-sip http_client"
    maxdatasize: int = 0
    query_result: int = 1
    query_maxdatasize: int = 0
    keep_connections: int = 0
    response_headers: int = 0
    authmethod: int = 3
    httpcon: tuple[str, ...] = ()
    #: trio-sip: an Authorization header value for every request that has none
    authorization: str = ""
    #: trio-sip: headers ("Name: value") added to every request that has none of that name
    headers: tuple[str, ...] = ()
    #: trio-sip: bytes read at most from an answer
    max_response_size: int = 1 << 20
    #: trio-sip: requests in flight at most
    max_pending: int = 1000

    def validate(self) -> None:
        if self.timeout_mode not in (0, 1, 2):
            raise ValueError("timeout_mode must be 0 (none), 1 (seconds) or 2 (ms)")
        if self.connection_timeout < 0:
            raise ValueError("connection_timeout must be >= 0")
        for name in ("maxdatasize", "query_maxdatasize"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_response_size <= 0 or self.max_pending <= 0:
            raise ValueError("max_response_size and max_pending must be > 0")
        if self.authmethod not in range(1, 32):
            raise ValueError("authmethod must be a bitmap of 1 (Basic), 2 (Digest), ...")
        for h in self.headers:
            try:
                parse_header_lines(h)
            except ValueError as exc:
                raise ValueError(f"headers: {exc}") from None
        for key in ("authorization", "useragent"):
            try:
                parse_header_lines_untrusted([f"X: {getattr(self, key)}"], http=True)
            except BadMessage:
                raise ValueError(f"{key} must be one line of ISO-8859-1 text without "
                                 "control characters") from None
        cons = self.connections()
        for con in cons.values():
            try:
                parse_header_lines_untrusted([f"X: {con.useragent or ''}"], http=True)
            except BadMessage:
                raise ValueError(f"httpcon {con.name}: useragent must be ISO-8859-1 text "
                                 "without control characters") from None
            if con.failover and con.failover not in cons:
                raise ValueError(f"httpcon {con.name}: failover {con.failover!r} is not "
                                 "a defined connection")

    def connections(self) -> dict[str, HttpCon]:
        out: dict[str, HttpCon] = {}
        for spec in self.httpcon:
            con = parse_httpcon(spec)
            if con.name in out:
                raise ValueError(f"httpcon {con.name} is defined twice")
            out[con.name] = con
        return out

    def timeout_seconds(self, value: int | None = None) -> float | None:
        """A timeout in this module's unit as seconds (None: no timeout)."""
        v = self.connection_timeout if value is None else value
        if self.timeout_mode == 0 or v <= 0:
            return None
        return v / 1000 if self.timeout_mode == 2 else float(v)


def parse_header_lines(text: str) -> list[tuple[str, str]]:
    """HTTP request header lines given by a route or the config: ``"Name: value"``
    lines, CRLF or LF separated, blank lines skipped; ValueError names the bad line and
    why. The rules are the shared ones for header lines given by a caller
    (:func:`~trio_sip.sip.headers.parse_header_lines_untrusted`, no CR/LF/NUL or other
    control character: header injection) with HTTP's differences: a name is an RFC
    9110 token (which also allows ``# $ & ^ |``), no white space before the colon (RFC
    9112 §5.1) and no folded lines (RFC 9112 §5.2); SIP's compact forms mean nothing
    here. Values are sent as the bytes written (ISO-8859-1 characters: a Lua string's
    bytes), as libcurl does."""
    try:
        return parse_header_lines_untrusted(text, http=True)
    except BadMessage as exc:
        raise ValueError(exc.reason) from None


# -- the client -------------------------------------------------------------------------


@dataclass
class HttpResult:
    """The outcome of one request: ``status`` is the HTTP status, or a negated libcurl
    error code when no answer came (``error`` says why)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    url: str = ""

    @property
    def text(self) -> str:
        # latin-1 keeps every byte; scripts hand the bytes on as they came
        return self.body.decode("latin-1")

    def header(self, name: str) -> str | None:
        key = name.lower()
        for k, v in self.headers:
            if k.lower() == key:
                return v
        return None


class _Refused(Exception):
    """The loopback guard refused a destination (the first request or a redirect)."""


class HttpClient:
    """The server's HTTP client: one httpx pool on Trio, bounded, counted.

    ``transport`` replaces the network (trio_sip/testing/http.py: a scripted peer in
    virtual time); ``guard`` is the server's loopback guard."""

    def __init__(self, params: HttpClientParams | None = None, *, guard: Any = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.params = params or HttpClientParams()
        self.connections = self.params.connections()
        self.guard = guard
        self.stats: Counter[str] = Counter()
        self.pending = 0
        self._default_headers = [h for line in self.params.headers
                                 for h in parse_header_lines(line)]
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._client = httpx.AsyncClient(
            transport=transport, timeout=None, limits=limits, trust_env=False,
            follow_redirects=False, max_redirects=10,
            event_hooks={"request": [self._check_destination]})

    async def _check_destination(self, request: httpx.Request) -> None:
        host = request.url.host
        if self.guard is not None and not self.guard.allows(
                Address(host, request.url.port or 0)):
            raise _Refused(f"loopback guard: refusing {request.url.scheme}://{host}")

    def statistics(self) -> dict[str, int]:
        out = {k: self.stats[k] for k in ("requests", "connok", "connfail", "timeouts",
                                          "refused", "dropped")}
        out["pending"] = self.pending
        out["connections"] = len(self.connections)
        return out

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, *, body: str | bytes | None = None,
                      headers: list[tuple[str, str]] | None = None,
                      limit: float | bool | None = True, follow_redirects: bool | None = None,
                      keep_connection: bool | None = None, useragent: str | None = None,
                      auth: tuple[str, str] | None = None) -> HttpResult:
        """Send one request and read its answer. Never raises for network trouble: the result carries
        the negated libcurl code. ``limit`` True: the module's timeout, None: none, else
        seconds."""
        p = self.params
        if self.pending >= p.max_pending:
            self.stats["dropped"] += 1
            log.error("http_client: %d requests in flight (max_pending): %s %s refused",
                      self.pending, method, url)
            return HttpResult(-1, error="too many requests in flight")
        bound = p.timeout_seconds() if limit is True else limit
        self.stats["requests"] += 1
        self.pending += 1
        try:
            result: HttpResult | None = None
            with trio.move_on_after(bound if bound is not None else float("inf")):
                result = await self._send(method, url, body, headers or [], follow_redirects,
                                          keep_connection, useragent, auth)
            if result is None:
                self.stats["timeouts"] += 1
                result = HttpResult(-CURLE_OPERATION_TIMEDOUT, url=url,
                                    error=f"no answer within {bound:g} s")
        finally:
            self.pending -= 1
        if result.status == 200:
            self.stats["connok"] += 1
        else:
            self.stats["connfail"] += 1
        if result.status < 0:
            log.warning("http_client: %s %s failed: %s (%d)", method, url, result.error,
                        result.status)
        return result

    def _build(self, method: str, url: str, body: str | bytes | None,
               headers: list[tuple[str, str]], keep: bool | None, useragent: str | None,
               ) -> httpx.Request:
        p = self.params
        names = {k.lower() for k, _ in headers}
        all_headers = list(headers)
        for k, v in self._default_headers:
            if k.lower() not in names:
                all_headers.append((k, v))
                names.add(k.lower())
        if p.authorization and "authorization" not in names:
            all_headers.append(("Authorization", p.authorization))
        if "user-agent" not in names:
            all_headers.append(("User-Agent", useragent or p.useragent))
        if not (p.keep_connections if keep is None else keep) and "connection" not in names:
            all_headers.append(("Connection", "close"))
        content = body.encode("latin-1") if isinstance(body, str) else body
        # the bytes as written (httpx would encode str as ASCII and refuse the rest)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in all_headers]
        return self._client.build_request(method, url, headers=raw, content=content)

    async def _send(self, method: str, url: str, body: str | bytes | None,
                    headers: list[tuple[str, str]], follow: bool | None, keep: bool | None,
                    useragent: str | None, auth: tuple[str, str] | None) -> HttpResult:
        p = self.params
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return HttpResult(-CURLE_URL_MALFORMAT, url=url, error=str(exc))
        if parts.scheme not in ("http", "https"):
            code = CURLE_UNSUPPORTED_PROTOCOL if parts.scheme else CURLE_URL_MALFORMAT
            return HttpResult(-code, url=url, error=f"not an http(s) URL: {url!r}")
        try:
            request = self._build(method, url, body, headers, keep, useragent)
        except (httpx.InvalidURL, ValueError, UnicodeEncodeError) as exc:
            return HttpResult(-CURLE_URL_MALFORMAT, url=url, error=str(exc))
        httpx_auth: httpx.Auth | None = None
        if auth is not None:
            user, password = auth
            httpx_auth = (httpx.DigestAuth(user, password) if p.authmethod & 3 == 2
                          else httpx.BasicAuth(user, password))
        redirects = bool(p.httpredirect) if follow is None else follow
        try:
            response = await self._client.send(request, stream=True, auth=httpx_auth,
                                               follow_redirects=redirects)
            try:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) >= p.max_response_size:
                        log.warning("http_client: %s %s: answer cut at %d bytes "
                                    "(max_response_size)", method, url, p.max_response_size)
                        del data[p.max_response_size:]
                        break
            finally:
                await response.aclose()
        except _Refused as exc:
            self.stats["refused"] += 1
            return HttpResult(-CURLE_COULDNT_CONNECT, url=url, error=str(exc))
        except httpx.TooManyRedirects as exc:
            return HttpResult(-CURLE_TOO_MANY_REDIRECTS, url=url, error=str(exc))
        except httpx.TimeoutException as exc:
            return HttpResult(-CURLE_OPERATION_TIMEDOUT, url=url, error=str(exc) or "timeout")
        except httpx.ConnectError as exc:
            return HttpResult(-CURLE_COULDNT_CONNECT, url=url, error=str(exc) or "connect")
        except httpx.UnsupportedProtocol as exc:
            return HttpResult(-CURLE_UNSUPPORTED_PROTOCOL, url=url, error=str(exc))
        except (httpx.InvalidURL, httpx.LocalProtocolError) as exc:
            return HttpResult(-CURLE_URL_MALFORMAT, url=url, error=str(exc))
        except httpx.WriteError as exc:
            return HttpResult(-CURLE_SEND_ERROR, url=url, error=str(exc) or "send")
        except httpx.RemoteProtocolError as exc:
            return HttpResult(-CURLE_WEIRD_SERVER_REPLY, url=url, error=str(exc))
        except (httpx.TransportError, OSError) as exc:
            return HttpResult(-CURLE_RECV_ERROR, url=url, error=str(exc) or type(exc).__name__)
        return HttpResult(response.status_code, bytes(data), list(response.headers.items()),
                          url=str(response.url))


def http_client_for(core: Any) -> HttpClient:
    """The server's client, made on first use from ``[modparams.http_client]`` (a test
    may set ``core.http_client`` to one with a scripted transport first)."""
    client = getattr(core, "http_client", None)
    if isinstance(client, HttpClient):
        return client
    params = modparams_of(core, "http_client", HttpClientParams)
    client = HttpClient(params, guard=getattr(core, "guard", None))
    core.http_client = client
    return client


# -- the exports ------------------------------------------------------------------------

m = ModuleBuilder(
    "http_client",
    "HTTP requests (GET, POST, any method) that wait without blocking the server and are "
    "cancelled with their transaction; Kamailio's http_client names and return codes. "
    "Each returns the HTTP status (a 5xx too), or a negated libcurl code when no answer "
    "came: -7 cannot connect (or refused by the loopback guard), -28 timed out, -3 "
    "malformed URL, -1 bad arguments, an unsupported scheme or max_pending reached (also "
    "-8, -47, -55, -56 as libcurl; `$curlerror(N)` gives the text). Params in "
    "`[modparams.http_client]`: connection_timeout (4) in the unit of timeout_mode (1 "
    "seconds, 2 ms, 0 none) bounds a whole request; httpredirect, useragent, maxdatasize, "
    "query_result, query_maxdatasize, keep_connections, response_headers, authmethod, "
    "httpcon (\"name=>url;timeout=..;failover=..\"); trio-sip's authorization (a default "
    "Authorization header), headers, max_response_size, max_pending. Statistics in "
    "`stats.get_statistics http_client:`; MI `httpclient.listcon`.",
    params=HttpClientParams)


class HttpOp(AsyncOp):
    """One request of a route; the result goes to ``dpv`` and the message's last
    response. Resumes the route with the status (or the negated libcurl code)."""

    def __init__(self, fn: str, method: str, url: str, *, body: str | None = None,
                 headers: list[tuple[str, str]] | None = None, dpv: str | None = None,
                 oneline: bool = False, maxdatasize: int = 0, con: HttpCon | None = None,
                 timeout: float | bool | None = True) -> None:
        self.name = f"http_client.{fn}"
        self.method = method
        self.url = url
        self.body = body
        self.headers = headers or []
        self.dpv = dpv
        self.oneline = oneline
        self.maxdatasize = maxdatasize
        self.con = con
        self.request_timeout = timeout

    async def run(self, ctx: MsgContext) -> Any:
        client = http_client_for(ctx.core)
        con, url = self.con, self.url
        tried: set[str] = set()
        while True:
            result = await self._one(client, con, url)
            # httpcon failover (Kamailio): on a transport failure or a 5xx, the same
            # request on the failover connection, each connection once
            if con is None or not con.failover or not (result.status < 0
                                                       or result.status >= 500):
                break
            tried.add(con.name)
            nxt = client.connections.get(con.failover)
            if nxt is None or nxt.name in tried:
                break
            log.warning("http_client: %s failed (%d), failover to %s", con.name,
                        result.status, nxt.name)
            url = nxt.url + url[len(con.url):]
            con = nxt
        _deliver(ctx, result, self.dpv, self.oneline, self.maxdatasize)
        return result.status

    async def _one(self, client: HttpClient, con: HttpCon | None, url: str) -> HttpResult:
        if con is None:
            return await client.request(self.method, url, body=self.body,
                                        headers=self.headers, limit=self.request_timeout)
        p = client.params
        timeout = p.timeout_seconds(con.timeout) if con.timeout is not None else True
        return await client.request(
            self.method, url, body=self.body, headers=self.headers, limit=timeout,
            follow_redirects=None if con.httpredirect is None else bool(con.httpredirect),
            keep_connection=None if con.keep_connections is None else bool(con.keep_connections),
            useragent=con.useragent,
            auth=(con.username, con.password) if con.username else None)


def _deliver(ctx: MsgContext, result: HttpResult, dpv: str | None, oneline: bool,
             maxdatasize: int) -> None:
    ctx.vars[_LAST] = result
    if dpv is None:
        return
    value = ""
    if 200 <= result.status < 500:
        value = result.text
        if oneline:
            nl = value.find("\n")
            if nl >= 0:
                value = value[:nl]
        if maxdatasize and len(value) > maxdatasize:
            value = value[:maxdatasize]
    try:
        pv.set_(ctx, dpv, value)
    except pv.PvError as exc:  # checked at the call; a PV may still refuse the value
        log.error("http_client: cannot store the answer in %s: %s", dpv, exc)


def _writable(dpv: str) -> bool:
    try:
        s = pv.spec(dpv)
    except pv.PvError as exc:
        log.error("http_client: %s", exc)
        return False
    if s.cls.setter is None:
        log.error("http_client: %s is read-only: it cannot take the answer", dpv)
        return False
    return True


def _headers(fn: str, text: str) -> list[tuple[str, str]] | None:
    try:
        return parse_header_lines(text)
    except ValueError as exc:
        log.error("http_client.%s: %s", fn, exc)
        return None


def _params(ctx: MsgContext) -> HttpClientParams:
    client = getattr(ctx.core, "http_client", None)
    if isinstance(client, HttpClient):
        return client.params
    return modparams_of(ctx.core, "http_client", HttpClientParams)


def _query(ctx: MsgContext, fn: str, url: str, post: str, hdrs: str, dpv: str) -> Any:
    if not url or not _writable(dpv):
        return -1
    headers = _headers(fn, hdrs)
    if headers is None:
        return -1
    p = _params(ctx)
    if post and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # libcurl's
    return HttpOp(fn, "POST" if post else "GET", url, body=post or None, headers=headers,
                  dpv=dpv, oneline=bool(p.query_result),
                  maxdatasize=p.query_maxdatasize or p.maxdatasize)


@m.export(("str", "str"), is_async=True, routes=WAIT_ROUTES)
def query(ctx: MsgContext, url: str, dpv: str) -> Any:
    """GET ``url``; the answer's body (its first line with query_result=1, the default)
    goes into the PV ``dpv``. Returns the HTTP status, or a negated libcurl code (-7
    cannot connect, -28 timeout, ...)."""
    return _query(ctx, "query", url, "", "", dpv)


@m.export(("str", "str", "str"), is_async=True, routes=WAIT_ROUTES)
def query_post(ctx: MsgContext, url: str, post: str, dpv: str) -> Any:
    """POST ``post`` (application/x-www-form-urlencoded) to ``url``; as query()."""
    return _query(ctx, "query_post", url, post, "", dpv)


@m.export(("str", "str", "str", "str"), is_async=True, routes=WAIT_ROUTES)
def query_post_hdrs(ctx: MsgContext, url: str, post: str, hdrs: str, dpv: str) -> Any:
    """query_post() with extra headers ``hdrs`` ("Name: value" lines, e.g. a
    Content-Type); an empty ``post`` makes it a GET, as in Kamailio."""
    return _query(ctx, "query_post_hdrs", url, post, hdrs, dpv)


@m.export(("str", "str", "str", "str"), is_async=True, routes=WAIT_ROUTES)
def get_hdrs(ctx: MsgContext, url: str, body: str, hdrs: str, dpv: str) -> Any:
    """GET ``url`` with an optional ``body`` and headers ``hdrs``; the whole answer
    body goes into ``dpv`` (Kamailio's http_client_get). Returns as query()."""
    if not url or not _writable(dpv):
        return -1
    headers = _headers("get_hdrs", hdrs)
    if headers is None:
        return -1
    p = _params(ctx)
    return HttpOp("get_hdrs", "GET", url, body=body or None, headers=headers, dpv=dpv,
                  maxdatasize=p.maxdatasize)


def _con(ctx: MsgContext, fn: str, name: str, dpv: str) -> HttpCon | None:
    con = http_client_for(ctx.core).connections.get(name)
    if con is None:
        log.error("http_client.%s: no httpcon connection %r", fn, name)
        return None
    return con if _writable(dpv) else None


@m.export(("str", "str", "str"), is_async=True, routes=WAIT_ROUTES)
def curl_connect(ctx: MsgContext, con: str, url: str, dpv: str) -> Any:
    """GET the httpcon connection ``con``'s base URL followed by ``url``; the whole body
    into ``dpv``. Returns the HTTP status or a negated libcurl code; -1 for an unknown
    connection."""
    c = _con(ctx, "curl_connect", con, dpv)
    if c is None:
        return -1
    return HttpOp("curl_connect", "GET", c.url + url, dpv=dpv, con=c,
                  maxdatasize=c.maxdatasize if c.maxdatasize is not None
                  else _params(ctx).maxdatasize)


@m.export(("str", "str", "str", "str", "str"), is_async=True, routes=WAIT_ROUTES)
def curl_connect_post(ctx: MsgContext, con: str, url: str, ctype: str, data: str,
                      dpv: str) -> Any:
    """POST ``data`` with Content-Type ``ctype`` to connection ``con`` + ``url``; as
    curl_connect()."""
    c = _con(ctx, "curl_connect_post", con, dpv)
    if c is None:
        return -1
    headers = [("Content-Type", ctype)] if ctype else []
    return HttpOp("curl_connect_post", "POST", c.url + url, body=data, headers=headers,
                  dpv=dpv, con=c, maxdatasize=c.maxdatasize if c.maxdatasize is not None
                  else _params(ctx).maxdatasize)


_METHOD = re.compile(r"^[A-Z]{1,20}$")


@m.export(("str", "str", "str", "str", "int"), min_args=2, is_async=True, routes=WAIT_ROUTES)
def http_request(ctx: MsgContext, method: str, url: str, body: str | None = None,
                 hdrs: str | None = None, timeout_ms: int | None = None) -> Any:
    """trio-sip: send ``method`` (GET, POST, PUT, DELETE...) to ``url`` with an optional
    ``body`` and headers ``hdrs`` ("Name: value" lines), within ``timeout_ms`` (0 or
    nil: the module's connection_timeout). Returns the status (or a negated libcurl
    code); the answer is read with response_body() and response_header()."""
    m_upper = (method or "").upper()
    if not _METHOD.match(m_upper) or not url:
        log.error("http_client.http_request: bad method %r or empty URL", method)
        return -1
    headers = _headers("http_request", hdrs or "")
    if headers is None:
        return -1
    if timeout_ms is not None and timeout_ms < 0:
        return -1
    timeout: float | bool = timeout_ms / 1000 if timeout_ms else True
    return HttpOp("http_request", m_upper, url, body=body or None, headers=headers,
                  timeout=timeout)


m.lua_export(
    "request",
    "function(method, url, body, hdrs, timeout_ms) "
    "local code = KSR.http_client.http_request(method, url, body, hdrs, timeout_ms) "
    "return code, KSR.http_client.response_body() end",
    doc="trio-sip: ``local code, body = KSR.http_client.request(method, url, body, hdrs, "
        "timeout_ms)``: http_request() returning two values, the status (or a negated "
        "libcurl code: -7 cannot connect, -28 timeout) and the whole answer body (\"\" "
        "when none).",
    params=("str", "str", "str", "str", "int"), min_args=2, ret="xval", routes=WAIT_ROUTES,
    is_async=True)


def _last(ctx: MsgContext) -> HttpResult | None:
    r = ctx.vars.get(_LAST)
    return r if isinstance(r, HttpResult) else None


@m.export(ret="str", routes=ANY_ROUTE)
def response_body(ctx: MsgContext) -> str:
    """trio-sip: the whole body of this message's last HTTP answer ("" if none)."""
    r = _last(ctx)
    return r.text if r is not None else ""


@m.export(("str",), ret="xval", routes=ANY_ROUTE)
def response_header(ctx: MsgContext, name: str) -> Any:
    """trio-sip: a header of this message's last HTTP answer, or nil."""
    r = _last(ctx)
    return r.header(name) if r is not None else None


def _httprhdr(ctx: MsgContext, name: str) -> Any:
    r = _last(ctx)
    if r is None or not _params(ctx).response_headers:
        return None
    return r.header(name)


def _curlerror(ctx: MsgContext, arg: str) -> Any:
    try:
        code = abs(int(arg))
    except ValueError:
        return None
    return CURL_ERRORS.get(code, f"libcurl error {code}")


pv.register("httprhdr", _httprhdr, needs_arg=True)
pv.register("curlerror", _curlerror, needs_arg=True)


@m.mi("httpclient.listcon")
def listcon(params: Any, ctx: Any) -> Any:
    """The httpcon connections (passwords hidden)."""
    client = http_client_for(ctx.core)
    p = client.params
    return [{"name": c.name, "url": c.url, "username": c.username or None,
             "timeout": c.timeout if c.timeout is not None else p.connection_timeout,
             "httpredirect": c.httpredirect if c.httpredirect is not None else p.httpredirect,
             "keep_connections": (c.keep_connections if c.keep_connections is not None
                                  else p.keep_connections),
             "failover": c.failover or None}
            for c in client.connections.values()]


@m.on_shutdown
async def _shutdown(core: Any) -> None:
    client = getattr(core, "http_client", None)
    if isinstance(client, HttpClient):
        await client.aclose()


MODULE = m.build()
