"""Shared by the usrloc, registrar and htable tests: the modules registered with the
server (until the lead adds them to ``builtin_modules``), and small builders."""

from __future__ import annotations

from typing import Any

import pytest

MINE = ("registrar", "usrloc", "htable")


def ensure_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the server load registrar, usrloc and htable if ``builtin_modules`` does not
    list them yet."""
    import trio_sip.modules as mods
    import trio_sip.runtime.server as server
    from trio_sip.modules import htable, registrar, usrloc

    have = {m.name for m in mods.builtin_modules()}
    if set(MINE) <= have:
        return
    original = mods.builtin_modules

    def patched() -> list[Any]:
        base = original()
        names = {m.name for m in base}
        extra = [m for m in (registrar.MODULE, usrloc.MODULE, htable.MODULE)
                 if m.name not in names]
        return [*base, *extra]

    monkeypatch.setattr(mods, "builtin_modules", patched)
    monkeypatch.setattr(server, "builtin_modules", patched)
