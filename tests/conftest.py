"""Shared fixtures: virtual time for trio tests, paths, log capture."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.testing

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """The kit's fixtures (sip_net, sip_server, sip_ua) also when trio-sip was installed
    before its pytest11 entry point existed (an installed one is not registered twice)."""
    from trio_sip.testing import pytest_plugin

    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "trio_sip.testing.pytest_plugin")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps to the next deadline whenever every task is blocked."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def write_routes(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a routes file and return its path: ``write_routes(lua_source)``."""

    def write(source: str, name: str = "routes.lua") -> str:
        p = tmp_path / name
        p.write_text(source)
        return str(p)

    return write
