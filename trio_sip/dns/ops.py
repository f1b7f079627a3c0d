"""The wait of a route for DNS: an :class:`~trio_sip.script.ops.AsyncOp`.

``forward()`` to a name the cache cannot answer returns a :class:`ResolveOp`: the route
yields, the name is resolved (RFC 3263) and ``then(ctx, resolution)`` sends, and the
route goes on at the next line with its result. It is *stateless*: a request route
that waits for it gets no transaction (the core runs the continuation as a task of
the server; runtime/core.py ``_finish``), since a stateless forward must not make the
proxy answer 408 later. Its timeout bounds the whole resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..script.context import MsgContext
from ..script.ops import AsyncOp
from ..sip.uri import URI
from .resolver import SipResolver
from .rfc3263 import Resolution

__all__ = ["ResolveOp"]


class ResolveOp(AsyncOp):
    """Resolve ``uri`` and hand the resolution to ``then`` (whose result the route gets)."""

    name = "dns"
    #: no transaction is needed to wait for it (see the module docstring)
    stateless = True
    timeout_result = -1

    def __init__(self, resolver: SipResolver, uri: URI, supported: Sequence[str],
                 then: Callable[[MsgContext, Resolution], Any], timeout: float) -> None:
        self.resolver = resolver
        self.uri = uri
        self.supported = tuple(supported)
        self.then = then
        self.timeout = timeout

    async def run(self, ctx: MsgContext) -> Any:
        res = await self.resolver.resolve(self.uri, self.supported)
        return self.then(ctx, res)
