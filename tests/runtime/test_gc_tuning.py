"""core.gc_threshold: what a server process does to Python's cyclic GC once it started."""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.support.ports import free_port_both
from trio_sip.config import ConfigError, load_config
from trio_sip.runtime import server as server_mod
from trio_sip.runtime.server import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_tune_gc_freezes_what_exists_and_sets_the_young_threshold(restore_gc: None) -> None:
    _, older, oldest = gc.get_threshold()
    kept = [object() for _ in range(10)], {"a": []}  # container objects alive now
    tune_gc(12345)
    assert gc.get_threshold() == (12345, older, oldest)
    assert gc.get_freeze_count() > 0
    # a frozen object is in no generation any more: no collection walks it
    assert not any(o is kept[1] for gen in range(3) for o in gc.get_objects(gen))


def test_zero_keeps_pythons_threshold(restore_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


def test_the_default_and_the_bounds() -> None:
    assert load_config(None).core.gc_threshold == 50000
    with pytest.raises(ConfigError, match=r"core\.gc_threshold"):
        load_config(None, overrides=["core.gc_threshold=-1"])


def test_trio_sip_run_tunes_the_gc_once_serving(restore_gc: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``trio-sip run`` (server.run, in this process) applies core.gc_threshold and the
    freeze once the server is up, and serves on until SIGINT."""
    port = free_port_both()
    config = load_config(None, overrides=[
        "core.gc_threshold=23456", "core.loopback_only=true", "mi.listen=",
        f"core.listen=udp:127.0.0.1:{port}"])
    tuned = threading.Event()
    seen: list[tuple[tuple[int, int, int], int]] = []

    def recording(threshold: int) -> None:
        tune_gc(threshold)
        tuned.set()

    def watch() -> None:
        if tuned.wait(30):
            seen.append((gc.get_threshold(), gc.get_freeze_count()))
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(server_mod, "tune_gc", recording)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert server_mod.run(config) == 0
    finally:
        watcher.join()
    assert seen and seen[0][0][0] == 23456 and seen[0][1] > 0
