"""A real HTTP/1.1 server on 127.0.0.1 for real-time tests (a push gateway, a REST
service): Trio sockets and h11, started in the test's nursery, records every request
and runs an optional hook per request::

    async with trio.open_nursery() as nursery:
        srv = await nursery.start(HttpServer(hook=on_push).serve)
        url = f"http://127.0.0.1:{srv.port}/push"
        ...
        nursery.cancel_scope.cancel()

``hook(request)`` (plain or ``async def``) may return ``(status, body)`` or
``(status, body, headers)`` to answer with; otherwise the server answers
``status``/``body`` as configured. Connections are kept alive as the client asks.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

MAX_BODY = 1 << 20


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    #: trio.current_time() when the request was complete
    at: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpServer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    hook: Callable[[HttpRequest], Any] | None = None
    requests: list[HttpRequest] = field(default_factory=list)
    port: int = 0
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def wait_for_request(self, count: int = 1, *, within: float = 10.0) -> HttpRequest:
        with trio.fail_after(within):
            while len(self.requests) < count:
                await self._arrived.wait()
        return self.requests[count - 1]

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a client that breaks the protocol or goes away: only its connection ends

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            for _ in range(1000):  # bounded: requests per connection
                req = await self._read_request(stream, conn)
                if req is None:
                    return
                status, body, headers = await self._answer(req)
                hdrs = [("Content-Type", self.content_type), ("Content-Length", str(len(body))),
                        *headers]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=hdrs)))
                await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection
                            ) -> HttpRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)  # b"" is the end of the stream
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return None
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                req = HttpRequest(head.method.decode(), head.target.decode(),
                                  {k.decode().lower(): v.decode("latin-1")
                                   for k, v in head.headers}, bytes(body), trio.current_time())
                self.requests.append(req)
                self._arrived.set()
                self._arrived = trio.Event()
                return req
            else:  # ConnectionClosed, or a protocol state we do not serve
                return None

    async def _answer(self, req: HttpRequest) -> tuple[int, bytes, list[tuple[str, str]]]:
        if self.hook is not None:
            out = self.hook(req)
            if inspect.isawaitable(out):
                out = await out
            if out is not None:
                status, body, *rest = out
                body = body.encode() if isinstance(body, str) else body
                return status, body, list(rest[0]) if rest else []
        return self.status, self.body, []
