"""LoopbackGuard: only loopback destinations while enabled; refusals counted and logged once."""

from __future__ import annotations

import logging

import pytest

from trio_sip.transport.base import Address
from trio_sip.transport.guard import LoopbackGuard


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.255.255.254", "127.1.2.3", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"],
)
def test_loopback_allowed(host: str) -> None:
    guard = LoopbackGuard(True)
    assert guard.allows(Address(host, 5060))
    assert guard.refused == 0


@pytest.mark.parametrize(
    "host",
    [
        "192.0.2.1",
        "10.0.0.1",
        "0.0.0.0",
        "::",
        "::ffff:192.0.2.1",
        "2001:db8::1",
        "localhost",
        "",
        "128.0.0.1",
    ],
)
def test_non_loopback_refused(host: str) -> None:
    guard = LoopbackGuard(True)
    assert not guard.allows(Address(host, 5060))
    assert guard.refused == 1


def test_disabled_allows_everything() -> None:
    guard = LoopbackGuard(False)
    assert guard.allows(Address("192.0.2.1", 5060))
    assert guard.refused == 0


def test_refusal_logged_once_per_destination(caplog: pytest.LogCaptureFixture) -> None:
    guard = LoopbackGuard(True)
    with caplog.at_level(logging.WARNING, logger="trio_sip.transport"):
        for _ in range(3):
            guard.allows(Address("192.0.2.1", 5060))
        guard.allows(Address("192.0.2.1", 5061))
    assert guard.refused == 4
    warnings = [r for r in caplog.records if r.name == "trio_sip.transport"]
    assert [r.levelno for r in warnings] == [logging.WARNING] * 2
    assert "192.0.2.1:5060" in warnings[0].getMessage()
    assert "192.0.2.1:5061" in warnings[1].getMessage()
