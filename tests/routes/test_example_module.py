"""examples/module/routes.lua with its third-party module KSR.example (imported from
examples/module/, the entry-point lookup replaced: no pip install needed), in virtual
time with the kit's fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.modules import loader
from trio_sip.testing import SimUA

from .conftest import REPO, routes

ROUTES = routes("examples/module/routes.lua")
EXAMPLE_DIR = Path(REPO) / "examples" / "module"


class EntryPoint:
    name = "example"
    value = "trio_sip_example:MODULE"

    def load(self) -> Any:
        import trio_sip_example

        return trio_sip_example.MODULE


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setattr(loader, "_entry_points", lambda: [EntryPoint()])
    yield
    sys.modules.pop("trio_sip_example", None)


async def test_options_gets_a_greeting(
        autojump_clock: trio.testing.MockClock, example_module: None, sip_server: Any,
        sip_ua: Callable[..., SimUA]) -> None:
    server = await sip_server(routes=ROUTES, config={"modparams": {"example": {
        "greeting": "Ahoy"}}})
    alice = sip_ua("127.0.0.2")
    t0 = trio.current_time()
    for n in (1, 2):
        await alice.send(alice.request("OPTIONS", "sip:127.0.0.1"), server.address())
        ok = await alice.expect_response(200, at=t0, start=len(alice.received))
        assert ok.get("X-Greeting") == "Ahoy, ua!"
        assert ok.get("X-Greeted") == str(n)
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.1"), server.address())
    assert (await alice.expect_response(final=True, start=len(alice.received))).status == 501
