"""Public helpers for testing routes and the server in virtual time (docs/testing.md).

* :class:`SimNetwork`, :class:`LinkSpec`: an in-memory network with seeded per-link
  loss, duplication, delay distributions (:func:`exponential_delay`...), reordering and
  partitions that heal (transport/sim.py).
* :class:`SimUA`: a scripted endpoint that sends what the test writes and checks what
  arrives, and when (``expect_response(200, at=t0 + 1.5)``; testing/ua.py).
* :class:`Caller`, :class:`Callee`: RFC 3261 user agents with behaviours (answer after
  N s, ring forever, busy, 6xx, never answer, crash in the dialog; testing/agents.py).
* :class:`FakeRtpengine` and :func:`attach_rtpengine`: a scripted rtpengine with fault
  modes (testing/rtpengine.py).
* :func:`sip_log`, :func:`assert_sent_at`: the network's message log with exact virtual
  times (testing/log.py).
* :func:`leftovers`, :class:`Watch`: nothing left after the last timer, no route code
  after its transaction, live objects back to zero (testing/invariants.py).
* :func:`start_server`: the real server (parser, core, Lua routes) on the network.
* the pytest plugin (testing/pytest_plugin.py): the ``sip_net``, ``sip_server``,
  ``sip_ua`` fixtures.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from ..config import Config, config_from_dict
from ..runtime.server import Server, serve
from ..transport.base import Address, MessageHandler, Transport
from ..transport.guard import LoopbackGuard
from ..transport.sim import (
    LinkSpec,
    Partition,
    SimNetwork,
    SimTransport,
    exponential_delay,
    lognormal_delay,
    normal_delay,
)
from .agents import BEHAVIOURS, Callee, Caller
from .invariants import Watch, leftovers
from .log import Logged, assert_sent_at, sent_times, sip_log
from .rtpengine import FakeRtpengine, attach_rtpengine
from .ua import ExpectationFailed, Received, SimUA, build_message

__all__ = [
    "BEHAVIOURS",
    "Callee",
    "Caller",
    "ExpectationFailed",
    "FakeRtpengine",
    "LinkSpec",
    "Logged",
    "Partition",
    "Received",
    "SimNetwork",
    "SimTransport",
    "SimUA",
    "Watch",
    "assert_sent_at",
    "attach_rtpengine",
    "build_message",
    "exponential_delay",
    "leftovers",
    "lognormal_delay",
    "normal_delay",
    "sent_times",
    "sip_log",
    "start_server",
    "stop_server",
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
    default routes) and return it once it serves.

    With ``config`` given as a mapping (or None) that does not set ``core.data_dir``, the
    server gets a temporary data directory of its own, removed when it stops: a test never
    writes its location table or htables into the working directory (``var/``), where a
    later test would find them. A :class:`Config` is used as it is."""
    scratch: str | None = None
    if isinstance(config, Config):
        cfg = config
    else:
        data: dict[str, Any] = {k: dict(v) for k, v in (config or {}).items()}
        if routes is not None:
            data.setdefault("lua", {})["routes"] = routes
        if "data_dir" not in data.get("core", {}):
            scratch = tempfile.mkdtemp(prefix="trio-sip-test-")
            data.setdefault("core", {})["data_dir"] = scratch
        cfg = config_from_dict(data)

    def make(handler: MessageHandler, guard: LoopbackGuard) -> list[Transport]:
        return [net.transport(address, handler, proto=p, guard=guard)  # type: ignore[arg-type]
                for p in protos]

    server: Server = await nursery.start(partial(_serve_recording_stop, cfg, make, scratch))
    return server


#: id(server) -> set when its serve() returned (see stop_server)
_stopped: dict[int, trio.Event] = {}


class _Started:
    """A task status that also keeps the Server serve() reports."""

    def __init__(self, inner: trio.TaskStatus[Server]) -> None:
        self.inner = inner
        self.server: Server | None = None

    def started(self, value: Server) -> None:
        self.server = value
        _stopped[id(value)] = trio.Event()
        self.inner.started(value)


async def _serve_recording_stop(cfg: Config, make: Any, scratch: str | None = None, *,
                                task_status: trio.TaskStatus[Server]
                                = trio.TASK_STATUS_IGNORED) -> None:
    status = _Started(task_status)
    try:
        await serve(cfg, transports=make, task_status=status)  # type: ignore[arg-type]
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if status.server is not None:
            # a stopped server leaves the network (its transports are the network's)
            for t in status.server.transports:
                close = getattr(t, "close", None)
                if close is not None:
                    close()
            _stopped.pop(id(status.server), trio.Event()).set()


async def stop_server(server: Server) -> None:
    """Stop a server started by :func:`start_server` as a shutdown would: its nursery is
    cancelled (every transaction, branch and waiting route with it; the coroutines are
    abandoned), the modules' shutdown hooks run and its transports leave the network.
    Returns once it has stopped; does nothing for a server that already stopped."""
    nursery = server.core.tm.nursery
    stopped = _stopped.get(id(server))
    if stopped is None:  # stopped already (or never started by start_server)
        return
    if nursery is not None:
        nursery.cancel_scope.cancel()
    await stopped.wait()
