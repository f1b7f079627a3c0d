"""JSON-RPC 2.0 over HTTP/1.1 on Trio: the management interface's server.

A deliberately small, strict and bounded HTTP/1.1 server (no dependency):

* ``POST /`` (or ``/RPC``, Kamailio jsonrpcs' path) with ``Content-Type:
  application/json`` and a ``Content-Length`` body: a JSON-RPC 2.0 request or
  batch; the reply is ``200 application/json``, or ``204`` when the body held only
  notifications;
* ``GET /`` / ``HEAD /``: a short text help; other methods on ``/``: 405;
* ``GET /metrics`` / ``HEAD /metrics``: every statistic in the Prometheus text format
  (:mod:`trio_sip.mi.metrics`), under the same token rule as JSON-RPC; other paths: 404;
* the request line and headers may take 16 KiB, the body ``mi.max_body_size``
  (413 beyond); no chunked bodies (501), ``Expect: 100-continue`` is honoured;
* with ``mi.token`` every request needs ``Authorization: Bearer TOKEN`` (compared
  in constant time; 401 otherwise). Without a token the ``Host`` header must name
  an IP address or ``localhost``: a web page cannot reach the interface through
  a DNS name rebound to 127.0.0.1, and its cross-site POSTs cannot be
  ``application/json`` without a CORS preflight, which gets 405;
* every phase of a connection is bounded by ``mi.timeout`` (a request must arrive
  in full, an idle keep-alive connection is closed, the reply must leave), a
  connection serves at most 100 requests, at most 64 connections are open at once
  (503 beyond);
* anything malformed gets a 4xx and the connection is closed; nothing a client
  sends can raise out of its connection's task.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import trio

from .. import __version__
from ..config import split_mi_listen
from ..transport.base import Address
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import exposition
from .registry import MiContext

__all__ = ["HttpError", "MiHttpServer", "serve_mi"]

log = logging.getLogger("trio_sip.mi")

MAX_HEAD: Final = 16 * 1024
MAX_HEADERS: Final = 100
MAX_CONNECTIONS: Final = 64
MAX_REQUESTS_PER_CONNECTION: Final = 100
PATHS: Final = ("/", "/RPC")
METRICS_PATH: Final = "/metrics"

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE_RE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)")
_CTL_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_REASONS: Final = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
    417: "Expectation Failed", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

HELP: Final = (
    f"trio-sip {__version__} management interface: JSON-RPC 2.0 over HTTP.\n"
    "POST / with Content-Type: application/json, e.g.\n"
    '  {"jsonrpc": "2.0", "method": "system.listMethods", "id": 1}\n'
    "or use the command line: trio-sip ctl --list; trio-sip ctl tm.stats\n"
    "Prometheus metrics: GET /metrics\n"
)


class HttpError(Exception):
    """A request we refuse: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class Request:
    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise HttpError(400, f"more than one {name} header")
        return values[0]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.headers.get(name, []) for t in v.split(",")}


class _Reader:
    """Buffered reads from a stream, bounded."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def head(self) -> bytes | None:
        """The request line and headers (without the blank line); None on a clean end
        of the connection between requests."""
        while True:
            # RFC 9112 §2.2: ignore empty lines before a request line
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > MAX_HEAD:
                    raise HttpError(431, "request line and headers over 16 KiB")
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) >= MAX_HEAD:
                raise HttpError(431, "request line and headers over 16 KiB")
            data = await self.stream.receive_some(MAX_HEAD)
            if not data:
                if self.buf:
                    raise HttpError(400, "the connection ended inside a request")
                return None
            self.buf += data

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.stream.receive_some(max(65536, n - len(self.buf)))
            if not data:
                raise HttpError(400, "the connection ended inside the body")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def parse_head(head: bytes) -> Request:
    """Parse the request line and headers; HttpError(400/505) when malformed."""
    lines = head.split(b"\r\n")
    m = _REQUEST_LINE_RE.fullmatch(lines[0])
    if m is None:
        raise HttpError(400, "malformed request line")
    method, target, major, minor = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if major != 1:
        raise HttpError(505, "only HTTP/1.x")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding or an empty header line")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise HttpError(400, "malformed header line")
        value = value.strip(b" \t")
        if _CTL_RE.search(value) or b"\r" in value or b"\n" in value:
            raise HttpError(400, "control character in a header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    path = _path_of(target)
    return Request(method.decode("ascii"), path, (major, minor), headers)


def _path_of(target: bytes) -> str:
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
        rest = text.split("://", 1)[1]
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
    if not text.startswith("/"):
        raise HttpError(400, "request target must be a path")
    return text.split("?", 1)[0].split("#", 1)[0]


def _host_allowed(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _response(status: int, body: bytes = b"", *, content_type: str | None = None,
              close: bool = False, head_only: bool = False,
              headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Server: trio-sip/{__version__}", "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if status != 204:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append("Connection: close" if close else "Connection: keep-alive")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head_only or status == 204 else out + body


class MiHttpServer:
    """The HTTP side of the management interface of one server."""

    def __init__(self, ctx: MiContext, *, token: str | None = None,
                 max_body_size: int = 1 << 20, timeout: float = 10.0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.ctx = ctx
        self._token = token.encode("ascii") if token else None
        self.max_body_size = max_body_size
        self.timeout = timeout
        self.max_connections = max_connections
        self.active = 0
        self.address: Address | None = None

    async def serve(self, listen: str | Address, *,
                    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind ``listen`` (``ADDR:PORT``), report the bound address, serve until
        cancelled."""
        if isinstance(listen, Address):
            host, port = listen.host, listen.port
        else:
            host, port = split_mi_listen(listen)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(exc.errno, f"management interface: cannot listen on {shown}: "
                          f"{exc.strerror or exc} (set mi.listen; \"\" turns it off)") from exc
        sockname = listeners[0].socket.getsockname()
        self.address = Address(str(sockname[0]), int(sockname[1]))
        log.info("management interface on http://%s/ (JSON-RPC 2.0%s)", self.address,
                 ", bearer token required" if self._token else "")
        task_status.started(self.address)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.active += 1
        self.ctx.stats["http_connections"] += 1
        try:
            if self.active > self.max_connections:
                self.ctx.stats["http_refused"] += 1
                await self._send(stream, _response(503, b"too many connections\n",
                                                   content_type="text/plain", close=True))
                await self._linger(stream)
                return
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the peer went away, or would not take our reply in time
        except Exception:
            # a bug here must not take the server down: log it, drop the connection
            log.exception("management interface: error on a connection")
            self.ctx.stats["http_errors"] += 1
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        reader = _Reader(stream)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                keep = await self._one(reader, stream)
            except HttpError as exc:
                self.ctx.stats["http_bad_requests"] += 1
                log.log(logging.INFO if exc.status in (401, 403) else logging.DEBUG,
                        "management interface: %d %s", exc.status, exc.message)
                await self._send(stream, _response(
                    exc.status, (exc.message + "\n").encode("latin-1", "replace"),
                    content_type="text/plain; charset=utf-8", close=True, headers=exc.headers))
                await self._linger(stream)
                return
            if not keep:
                return

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close after an error without losing the reply: a client still sending (a
        body we refused) would get a reset that can destroy the reply in flight, so
        end our side and read what it still sends, for a bounded time and amount."""
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        budget = max(self.max_body_size, 1 << 20) * 2
        with trio.move_on_after(min(self.timeout, 2.0)):
            while budget > 0:
                data = await stream.receive_some(65536)
                if not data:
                    return
                budget -= len(data)

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        """Send within the timeout; TooSlowError (the connection is then closed)."""
        with trio.fail_after(self.timeout):
            await stream.send_all(data)

    async def _read_head(self, reader: _Reader) -> bytes | None:
        started = bool(reader.buf)
        with trio.move_on_after(self.timeout) as scope:
            return await reader.head()
        if scope.cancelled_caught and (started or reader.buf):
            raise HttpError(408, "the request did not arrive in time")
        return None  # an idle keep-alive connection: closed quietly

    async def _one(self, reader: _Reader, stream: trio.SocketStream) -> bool:
        """Serve one request; True to keep the connection open for another."""
        head = await self._read_head(reader)
        if head is None:
            return False
        req = parse_head(head)
        self.ctx.stats["http_requests"] += 1
        if req.version >= (1, 1):
            if req.header("host") is None:
                raise HttpError(400, "HTTP/1.1 needs a Host header")
            keep = "close" not in req.tokens("connection")
        else:
            keep = "keep-alive" in req.tokens("connection")
        if "transfer-encoding" in req.headers:
            raise HttpError(501, "Transfer-Encoding is not supported: send a Content-Length")
        length = self._content_length(req)
        self._authorize(req)
        if req.path == METRICS_PATH:
            if req.method not in ("GET", "HEAD"):
                raise HttpError(405, f"{req.method} is not allowed on {METRICS_PATH} (GET it)",
                                (("Allow", "GET, HEAD"),))
            if length:
                raise HttpError(400, f"{req.method} with a body")
            await self._send(stream, _response(200, exposition(self.ctx).encode("utf-8"),
                                               close=not keep,
                                               content_type=METRICS_CONTENT_TYPE,
                                               head_only=req.method == "HEAD"))
            return keep
        if req.path not in PATHS:
            raise HttpError(404, f"no such path {req.path} (POST JSON-RPC to /, GET "
                            f"{METRICS_PATH})")
        if req.method in ("GET", "HEAD"):
            if length:
                raise HttpError(400, f"{req.method} with a body")
            await self._send(stream, _response(200, HELP.encode(), close=not keep,
                                               content_type="text/plain; charset=utf-8",
                                               head_only=req.method == "HEAD"))
            return keep
        if req.method != "POST":
            raise HttpError(405, f"{req.method} is not allowed (POST JSON-RPC to /)",
                            (("Allow", "GET, HEAD, POST"),))
        if length is None:
            raise HttpError(411, "POST needs a Content-Length")
        self._check_content_type(req)
        if length > self.max_body_size:
            raise HttpError(413, f"body of {length} bytes (at most {self.max_body_size})")
        expect = req.header("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, f"Expect: {expect} is not supported")
            if req.version >= (1, 1):
                await self._send(stream, b"HTTP/1.1 100 Continue\r\n\r\n")
        with trio.move_on_after(self.timeout) as scope:
            body = await reader.exactly(length)
        if scope.cancelled_caught:
            raise HttpError(408, "the body did not arrive in time")
        reply = await self.ctx.registry.handle(body, self.ctx)
        if reply is None:
            await self._send(stream, _response(204, close=not keep))
        else:
            await self._send(stream, _response(200, reply.encode("utf-8"), close=not keep,
                                               content_type="application/json"))
        return keep

    @staticmethod
    def _content_length(req: Request) -> int | None:
        values = req.headers.get("content-length")
        if not values:
            return None
        parts = {p.strip() for v in values for p in v.split(",")}
        if len(parts) != 1:
            raise HttpError(400, "conflicting Content-Length values")
        text = parts.pop()
        if not text.isdigit() or not text.isascii() or len(text) > 18:
            raise HttpError(400, "malformed Content-Length")
        return int(text)

    def _authorize(self, req: Request) -> None:
        if self._token is None:
            host = req.header("host")
            if host is not None and not _host_allowed(host):
                raise HttpError(403, "Host must be an IP address or localhost "
                                "(set mi.token to use names)")
            return
        given = req.header("authorization") or ""
        scheme, _, credentials = given.strip().partition(" ")
        supplied = credentials.strip().encode("latin-1", "replace")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(supplied, self._token)
        if not ok:
            self.ctx.stats["http_unauthorized"] += 1
            raise HttpError(401, "a valid bearer token is required",
                            (("WWW-Authenticate", 'Bearer realm="trio-sip"'),))

    @staticmethod
    def _check_content_type(req: Request) -> None:
        ctype = req.header("content-type")
        if ctype is None:
            raise HttpError(415, "Content-Type must be application/json")
        media, *params = (p.strip().lower() for p in ctype.split(";"))
        if media != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        for p in params:
            k, _, v = p.partition("=")
            if k.strip() == "charset" and v.strip().strip('"') not in ("utf-8", "utf8"):
                raise HttpError(415, "the charset must be utf-8")


async def serve_mi(server: Any, listen: str | Address | None = None, *,
                   token: str | None = None, max_body_size: int | None = None,
                   io_timeout: float | None = None,
                   task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the management interface of ``server`` (a runtime ``Server`` with its
    ``mi`` context) on ``listen`` (default ``server.config.mi.listen``) until
    cancelled; Trio's start protocol: ``address = await nursery.start(serve_mi, server)``
    reports the bound address. The other settings default to ``server.config.mi``."""
    cfg = server.config.mi
    ctx = server.mi
    if not isinstance(ctx, MiContext):
        raise TypeError("the server has no management context (server.mi)")
    http = MiHttpServer(
        ctx,
        token=token if token is not None else cfg.token,
        max_body_size=max_body_size if max_body_size is not None else cfg.max_body_size,
        timeout=io_timeout if io_timeout is not None else cfg.timeout,
    )
    where = listen if listen is not None else cfg.listen
    if not where:
        raise ValueError("no address to listen on (mi.listen is empty)")
    await http.serve(where, task_status=task_status)
