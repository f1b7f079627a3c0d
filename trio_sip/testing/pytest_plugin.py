"""pytest fixtures for testing routes in virtual time (registered as the ``pytest11``
entry point ``trio_sip``: installed with trio-sip, active in every pytest run).

It needs pytest-trio (``trio_mode = true`` in the pytest settings, or
``@pytest.mark.trio`` on each test), and virtual time comes from pytest-trio's
``autojump_clock`` fixture, which the *test itself* must take (pytest-trio only picks a
clock among the test function's own arguments)::

    async def test_options(autojump_clock, sip_server, sip_ua):
        server = await sip_server(routes="routes/default.lua")
        alice = sip_ua("127.0.0.2")
        t0 = trio.current_time()
        await alice.send(alice.request("OPTIONS", "sip:127.0.0.1"), server.address())
        await alice.expect_response(200, at=t0)         # answered at once

Fixtures:

* ``sip_net``: a running :class:`~trio_sip.transport.sim.SimNetwork` (seed from the
  ``sip_seed`` fixture: 0 unless overridden or set by ``TRIO_SIP_TEST_SEED``); fails with
  a clear message when the test does not run on a MockClock.
* ``sip_server``: an async factory ``await sip_server(routes=..., config=..., address=...,
  protos=...)`` that starts the real server on ``sip_net`` (Lua routes, modules, tm) and
  returns the :class:`~trio_sip.runtime.server.Server`; every server it started is
  stopped at the end of the test.
* ``sip_ua``: a factory ``sip_ua(host, port=5060)`` of :class:`~trio_sip.testing.SimUA`.

These names do not clash with pytest-trio's (``autojump_clock``, ``mock_clock``,
``nursery``) nor with conftest fixtures of this repository.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from ..transport.base import Address
from ..transport.sim import SimNetwork
from . import DEFAULT_SERVER_ADDRESS, SimUA, start_server, stop_server

NO_CLOCK = ("trio_sip.testing: this test does not run in virtual time. Add pytest-trio's "
            "`autojump_clock` fixture to the test's own arguments: "
            "async def test_x(autojump_clock, sip_server): ...")


@pytest.fixture
def sip_seed() -> int:
    """The SimNetwork seed (override the fixture, or set TRIO_SIP_TEST_SEED)."""
    return int(os.environ.get("TRIO_SIP_TEST_SEED", "0"))


@pytest.fixture
async def sip_net(sip_seed: int) -> AsyncIterator[SimNetwork]:
    """A running SimNetwork, closed at the end of the test."""
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail(NO_CLOCK)
    async with SimNetwork(seed=sip_seed) as net:
        yield net


ServerFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def sip_server(sip_net: SimNetwork) -> AsyncIterator[ServerFactory]:
    """``await sip_server(routes=None, config=None, address=127.0.0.1:5060,
    protos=("udp",))``: the server on ``sip_net``; stopped at the end of the test."""
    started: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def factory(*, routes: str | None = None,
                          config: Mapping[str, Any] | None = None,
                          address: Address = DEFAULT_SERVER_ADDRESS,
                          protos: Sequence[str] = ("udp",)) -> Any:
            server = await start_server(nursery, sip_net, routes=routes, config=config,
                                        address=address, protos=protos)
            started.append(server)
            return server

        yield factory
        for server in started:
            await stop_server(server)
        nursery.cancel_scope.cancel()


@pytest.fixture
def sip_ua(sip_net: SimNetwork) -> Callable[..., SimUA]:
    """``sip_ua(host, port=5060, proto="udp")``: a SimUA on ``sip_net``."""

    def factory(host: str, port: int = 5060, proto: str = "udp") -> SimUA:
        return SimUA(sip_net, Address(host, port), proto=proto)

    return factory
