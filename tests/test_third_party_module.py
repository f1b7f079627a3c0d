"""Third-party modules through the ``trio_sip.modules`` entry points, with the example
package of examples/module/ (imported from its directory, not pip-installed: the
entry-point lookup is replaced), and module lifecycle hooks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sip.config import config_from_dict
from trio_sip.modules import builtin_modules, loader
from trio_sip.runtime import server as server_mod
from trio_sip.script import docgen
from trio_sip.script.exports import Module, ModuleBuilder
from trio_sip.sip.message import SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "module"
PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


@pytest.fixture
def example() -> Iterator[Any]:
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        import trio_sip_example

        yield trio_sip_example
    finally:
        sys.path.remove(str(EXAMPLE_DIR))


def use_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    monkeypatch.setattr(loader, "_entry_points", lambda: list(eps))


def test_example_pyproject_declares_the_entry_point() -> None:
    text = (EXAMPLE_DIR / "pyproject.toml").read_text()
    assert '[project.entry-points."trio_sip.modules"]' in text
    assert 'example = "trio_sip_example:MODULE"' in text


def test_load_modules_appends_third_party(monkeypatch: pytest.MonkeyPatch, example: Any) -> None:
    use_entry_points(monkeypatch, FakeEntryPoint("example", "trio_sip_example:MODULE",
                                                 example.MODULE))
    mods = loader.load_modules()
    assert [m.name for m in mods[:-1]] == [m.name for m in builtin_modules()]
    assert mods[-1] is example.MODULE
    assert mods[-1].init is not None
    assert "KSR.example.greet" in docgen.render(mods)


def test_builder_and_factory_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    b = ModuleBuilder("tp_b", "b")
    use_entry_points(monkeypatch, FakeEntryPoint("b", "x:b", b),
                     FakeEntryPoint("c", "x:c", lambda: Module("tp_c", "c", ())))
    names = [m.name for m in loader.third_party_modules()]
    assert names == ["tp_b", "tp_c"]


def test_name_clash_refuses_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_entry_points(monkeypatch, FakeEntryPoint("evil", "evil:MODULE", Module("sl", "x", ())))
    with pytest.raises(loader.ModuleLoadError, match="'sl' clashes"):
        loader.load_modules()
    routes = tmp_path / "r.lua"
    routes.write_text("function ksr_request_route() end\n")
    problems = server_mod.check(config_from_dict({"lua": {"routes": str(routes)}}))
    assert problems and "clashes" in problems[0]


def test_import_failure_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    use_entry_points(monkeypatch,
                     FakeEntryPoint("broken", "broken_pkg:MODULE", ImportError("no numpy")))
    with pytest.raises(loader.ModuleLoadError, match=r"'broken'.*failed to import.*no numpy"):
        loader.load_modules()
    use_entry_points(monkeypatch, FakeEntryPoint("odd", "odd:X", 42))
    with pytest.raises(loader.ModuleLoadError, match=r"'odd'.*not a trio_sip Module"):
        loader.load_modules()


def test_example_routes_check_clean(monkeypatch: pytest.MonkeyPatch, example: Any) -> None:
    use_entry_points(monkeypatch, FakeEntryPoint("example", "trio_sip_example:MODULE",
                                                 example.MODULE))
    cfg = config_from_dict({"lua": {"routes": str(EXAMPLE_DIR / "routes.lua")}})
    assert server_mod.check(cfg) == []


async def test_example_module_serves(autojump_clock: Any, monkeypatch: pytest.MonkeyPatch,
                                     example: Any) -> None:
    use_entry_points(monkeypatch, FakeEntryPoint("example", "trio_sip_example:MODULE",
                                                 example.MODULE))
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        server = await start_server(
            nursery, net, routes=str(EXAMPLE_DIR / "routes.lua"), address=PROXY,
            config={"modparams": {"example": {"greeting": "Hi"}}})
        uac = SimUA(net, UAC)
        await uac.send(uac.request("OPTIONS", "sip:127.0.0.1"), PROXY)
        got = await uac.wait_for(lambda r: isinstance(r.msg, SipResponse))
        assert isinstance(got.msg, SipResponse) and got.msg.status == 200
        headers = {h.name: h.text for h in got.msg.headers}
        assert headers["X-Greeting"].startswith("Hi, ")
        assert headers["X-Greeted"] == "1"
        assert server.registry is not None and server.mi is not None
        assert await server.registry.call("example.stats", [], server.mi) == {"greeted": 1}
        nursery.cancel_scope.cancel()


async def test_lifecycle_hooks_order(autojump_clock: Any, monkeypatch: pytest.MonkeyPatch,
                                     write_routes: Any) -> None:
    calls: list[str] = []
    m = ModuleBuilder("tp_hooks", "hooks", init=lambda core: calls.append("a.init"))

    @m.on_child_init
    def child(core: Any) -> None:
        assert core.modparams is not None
        calls.append("a.child_init")

    @m.on_shutdown
    async def stop(core: Any) -> None:
        await trio.sleep(1)
        calls.append("a.shutdown")

    n = ModuleBuilder("tp_hooks2", "hooks2")

    @n.on_init
    async def init2(core: Any) -> None:
        await trio.sleep(0.5)
        calls.append("b.init")

    @n.on_shutdown
    async def stop2(core: Any) -> None:
        await trio.sleep(3600)  # bounded by SHUTDOWN_TIMEOUT
        calls.append("b.shutdown-never")

    use_entry_points(monkeypatch, FakeEntryPoint("a", "a:M", m.build()),
                     FakeEntryPoint("b", "b:M", n.build()))
    routes = write_routes("function ksr_request_route() end\n")
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=routes, address=PROXY)
        assert calls == ["a.init", "b.init", "a.child_init"]
        nursery.cancel_scope.cancel()
    assert calls == ["a.init", "b.init", "a.child_init", "a.shutdown"]


async def test_failing_init_refuses_to_start(autojump_clock: Any,
                                             monkeypatch: pytest.MonkeyPatch,
                                             write_routes: Any) -> None:
    def bad(core: Any) -> None:
        raise RuntimeError("no database")

    calls: list[str] = []
    ok = ModuleBuilder("tp_ok", "x", init=lambda core: None,
                       shutdown=lambda core: calls.append("ok.shutdown"))
    use_entry_points(monkeypatch, FakeEntryPoint("o", "o:M", ok.build()),
                     FakeEntryPoint("a", "a:M", ModuleBuilder("tp_bad", "x", init=bad).build()),
                     FakeEntryPoint("n", "n:M", ModuleBuilder(
                         "tp_never", "x", shutdown=lambda core: calls.append("never")).build()))
    routes = write_routes("function ksr_request_route() end\n")
    async with SimNetwork(seed=1) as net:
        with pytest.raises(BaseExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                await start_server(nursery, net, routes=routes, address=PROXY)
    leaves = [str(e) for e in server_mod._leaves(info.value)]
    assert any("'tp_bad': init failed: RuntimeError: no database" in t for t in leaves)
    assert calls == ["ok.shutdown"]  # what did init is shut down
