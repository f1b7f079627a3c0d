"""A scripted HTTP peer for tests in virtual time.

:class:`ScriptedHttp` is an httpx transport that answers from a script instead of the
network, on Trio's clock: under ``trio.testing.MockClock(autojump_threshold=0)`` a
5 s delay costs nothing and every time can be asserted exactly. It stands in for a
push gateway, a REST service, anything ``KSR.http_client`` talks to::

    gw = ScriptedHttp(status=200, delay=0.2)
    gw.install(server.core)                 # the server's KSR.http_client uses it
    ...                                     # a route POSTs
    ex = await gw.wait_for_request()        # what was sent, and when
    assert ex.json()["pn-prid"] == "tok1"

Behaviours, changeable at any time (``gw.down = True``):

* ``status``, ``body``, ``headers``: the answer;
* ``delay``: seconds before answering (``math.inf``: never answers, a hung peer);
* ``down``: the connection is refused at once (httpx.ConnectError, -7 in the route);
* ``on_request(exchange)``: called for every request before it is answered (plain or
  ``async def``): a test triggers what the request should cause, e.g. the callee's
  REGISTER when a push arrives; it may return an ``httpx.Response`` to answer with
  instead of the script's.

Every request is recorded as an :class:`HttpExchange` in ``requests``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

__all__ = ["HttpExchange", "ScriptedHttp"]


@dataclass
class HttpExchange:
    """One request the peer received: what, when (virtual time), and the answer given
    (``status`` 0 while unanswered or when the peer was down)."""

    method: str
    url: str
    headers: httpx.Headers
    body: bytes
    at: float
    status: int = 0
    answered_at: float | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def path(self) -> str:
        return httpx.URL(self.url).path


OnRequest = Callable[[HttpExchange], Any]


class ScriptedHttp(httpx.AsyncBaseTransport):
    """An HTTP peer that answers from a script on Trio's clock (see the module doc)."""

    def __init__(self, *, status: int = 200, body: bytes | str = b"",
                 headers: dict[str, str] | None = None, delay: float = 0.0,
                 down: bool = False, on_request: OnRequest | None = None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = dict(headers or {})
        self.delay = delay
        self.down = down
        self.on_request = on_request
        self.requests: list[HttpExchange] = []
        self._arrived = trio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        ex = HttpExchange(request.method, str(request.url), request.headers, body,
                          trio.current_time())
        self.requests.append(ex)
        self._arrived.set()
        self._arrived = trio.Event()
        if self.down:
            raise httpx.ConnectError("connection refused (scripted peer is down)",
                                     request=request)
        response: Any = None
        if self.on_request is not None:
            response = self.on_request(ex)
            if inspect.isawaitable(response):
                response = await response
        if math.isinf(self.delay):
            await trio.sleep_forever()
        await trio.sleep(max(0.0, self.delay))
        answer = response if isinstance(response, httpx.Response) else httpx.Response(
            self.status, headers=self.headers, content=self.body)
        ex.status = answer.status_code
        ex.answered_at = trio.current_time()
        return answer

    async def wait_for_request(self, count: int = 1, *, within: float = 60.0) -> HttpExchange:
        """The ``count``-th request received (1-based); waits in virtual time,
        trio.TooSlowError unless it comes ``within`` seconds."""
        with trio.fail_after(within):
            while len(self.requests) < count:
                await self._arrived.wait()
        return self.requests[count - 1]

    def install(self, core: Any, params: Any = None) -> Any:
        """Make the server's KSR.http_client use this peer: a new
        :class:`~trio_sip.modules.http_client.HttpClient` with the server's
        ``[modparams.http_client]`` (or ``params``) and loopback guard. Returns it."""
        from ..modules.http_client import HttpClient, HttpClientParams
        from ..script.modparams import modparams_of

        if not isinstance(params, HttpClientParams):
            params = modparams_of(core, "http_client", HttpClientParams)
        client = HttpClient(params, guard=getattr(core, "guard", None), transport=self)
        core.http_client = client
        return client
