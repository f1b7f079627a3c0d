"""The ul.* and htable.* management commands, through the MI registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trio_sip.mi.commands import build_registry
from trio_sip.mi.registry import MiContext, MiError, MiRegistry
from trio_sip.modules import htable, usrloc
from trio_sip.storage.htable import Htables, parse_table_spec
from trio_sip.usrloc import Usrloc, UsrlocParams


class Core:
    """Just what the commands look at: the services made on first use."""

    def __init__(self, tmp_path: Path) -> None:
        self.usrloc = Usrloc(UsrlocParams(), db_path=str(tmp_path / "loc.sqlite"))
        self.usrloc.open()
        self.htable = Htables([parse_table_spec("a=>size=4"),
                               parse_table_spec("b=>dbtable=b_t")],
                              db_path=str(tmp_path / "ht.sqlite"))
        self.htable.open()


@pytest.fixture
def mi(tmp_path: Path) -> tuple[MiRegistry, MiContext]:
    registry = build_registry([usrloc.MODULE, htable.MODULE])
    return registry, MiContext(Core(tmp_path), registry)  # type: ignore[arg-type]


async def test_ul_commands(mi: tuple[MiRegistry, MiContext], autojump_clock: Any) -> None:
    registry, ctx = mi
    added = await registry.call("ul.add", ["location", "alice@example.com",
                                           "sip:alice@127.0.0.2", 60, 0.5], ctx)
    assert added["AoR"] == "alice" and added["Ruid"].startswith("uloc-")
    await registry.call("ul.add", {"table": "location", "aor": "alice",
                                   "contact": "sip:alice@127.0.0.3", "expires": 0}, ctx)
    found = await registry.call("ul.lookup", ["location", "alice"], ctx)
    assert [c["Address"] for c in found["Contacts"]] == ["sip:alice@127.0.0.2",
                                                          "sip:alice@127.0.0.3"]
    assert found["Contacts"][0]["Q"] == "0.5"
    dump = await registry.call("ul.dump", [], ctx)
    assert dump["Domains"][0]["AoRs"][0]["AoR"] == "alice"
    brief = await registry.call("ul.dump", ["brief"], ctx)
    assert brief["Domains"][0]["AoRs"][0]["Contacts"][0] == {"Address": "sip:alice@127.0.0.2"}
    with pytest.raises(MiError, match="Contact not found"):
        await registry.call("ul.rm_contact", ["location", "alice", "sip:x@y"], ctx)
    assert await registry.call("ul.rm_contact", ["location", "alice",
                                                 "sip:alice@127.0.0.2"], ctx) == {"removed": 1}
    assert await registry.call("ul.rm", ["location", "alice"], ctx) == {"removed": 1}
    with pytest.raises(MiError, match="AOR not found"):
        await registry.call("ul.lookup", ["location", "alice"], ctx)
    with pytest.raises(MiError) as info:
        await registry.call("ul.add", ["location", "bob", "sip:bob@x", "soon"], ctx)
    assert info.value.code == -32602
    assert await registry.call("ul.flush", [], ctx) == "ok"
    reply = await registry.handle(json.dumps({"jsonrpc": "2.0", "method": "ul.dump",
                                              "id": 1}), ctx)
    assert reply is not None and json.loads(reply)["result"]["Domains"][0]["AoRs"] == []
    ctx.core.usrloc.close()


async def test_htable_commands(mi: tuple[MiRegistry, MiContext], autojump_clock: Any
                               ) -> None:
    registry, ctx = mi
    assert await registry.call("htable.sets", ["a", "k", "v"], ctx) == "ok"
    assert await registry.call("htable.seti", ["a", "n", "7"], ctx) == "ok"
    with pytest.raises(MiError):
        await registry.call("htable.seti", ["a", "n", "seven"], ctx)
    assert await registry.call("htable.get", ["a", "n"], ctx) == {
        "item": {"name": "n", "value": 7, "expires": 0}}
    with pytest.raises(MiError, match="No such htable"):
        await registry.call("htable.get", ["zz", "n"], ctx)
    with pytest.raises(MiError, match="doesn't exist"):
        await registry.call("htable.get", ["a", "nope"], ctx)
    dump = await registry.call("htable.dump", ["a"], ctx)
    assert {i["name"]: i["value"] for i in dump} == {"k": "v", "n": 7}
    assert await registry.call("htable.delete", ["a", "k"], ctx) == "ok"
    assert [t["name"] for t in await registry.call("htable.listTables", [], ctx)] == ["a",
                                                                                      "b"]
    assert await registry.call("htable.stats", [], ctx) == [{"name": "a", "items": 1},
                                                            {"name": "b", "items": 0}]
    assert await registry.call("htable.flush", ["a"], ctx) == "ok"
    assert await registry.call("htable.dump", ["a"], ctx) == []
    await registry.call("htable.sets", ["b", "x", "y"], ctx)
    assert await registry.call("htable.store", [], ctx) == "ok"
    ctx.core.htable.close()
