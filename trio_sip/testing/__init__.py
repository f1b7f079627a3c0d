"""Public helpers for testing routes and the server in virtual time.

* :class:`SimNetwork`, :class:`LinkSpec`: an in-memory network with seeded loss,
  duplication, delay and reordering (transport/sim.py).
* :class:`SimUA`: a scripted endpoint on that network (testing/ua.py).
* :func:`start_server`: the real server (parser, core, Lua routes) on the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from ..config import Config, config_from_dict
from ..runtime.server import Server, serve
from ..transport.base import Address, MessageHandler, Transport
from ..transport.guard import LoopbackGuard
from ..transport.sim import LinkSpec, SimNetwork, SimTransport
from .ua import Received, SimUA, build_message

__all__ = [
    "LinkSpec",
    "Received",
    "SimNetwork",
    "SimTransport",
    "SimUA",
    "build_message",
    "start_server",
]


DEFAULT_SERVER_ADDRESS = Address("127.0.0.1", 5060)


async def start_server(
    nursery: trio.Nursery,
    net: SimNetwork,
    *,
    routes: str | None = None,
    address: Address = DEFAULT_SERVER_ADDRESS,
    protos: Sequence[str] = ("udp",),
    config: Mapping[str, Any] | Config | None = None,
) -> Server:
    """Start the server on ``net`` at ``address`` with the routes file ``routes`` (or the
    default routes) and return it once it serves."""
    if isinstance(config, Config):
        cfg = config
    else:
        data: dict[str, Any] = {k: dict(v) for k, v in (config or {}).items()}
        if routes is not None:
            data.setdefault("lua", {})["routes"] = routes
        cfg = config_from_dict(data)

    def make(handler: MessageHandler, guard: LoopbackGuard) -> list[Transport]:
        return [net.transport(address, handler, proto=p, guard=guard)  # type: ignore[arg-type]
                for p in protos]

    server: Server = await nursery.start(partial(serve, cfg, transports=make))
    return server
