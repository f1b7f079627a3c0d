"""Paths of the routes under test (the kit's fixtures come from trio_sip.testing)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def routes(relative: str) -> str:
    """The absolute path of a routes file of this repository."""
    path = REPO / relative
    assert path.is_file(), f"{relative} does not exist"
    return str(path)
