"""modparams_of / data_dir_of: how a module reads its [modparams.NAME] and the data dir."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from trio_sip.config import config_from_dict
from trio_sip.script.modparams import data_dir_of, modparams_of


@dataclass
class DemoParams:
    size: int = 4
    db_url: str = "sqlite:///{data_dir}/demo.sqlite"


def test_modparams_of_gives_the_servers_instance() -> None:
    mine = DemoParams(size=9)
    core = SimpleNamespace(modparams={"demo": mine, "other": DemoParams(size=1)})
    assert modparams_of(core, "demo", DemoParams) is mine


def test_modparams_of_falls_back_to_the_defaults_or_the_given_default() -> None:
    none = DemoParams(db_url="none")
    for core in (SimpleNamespace(), SimpleNamespace(modparams=None),
                 SimpleNamespace(modparams={}), SimpleNamespace(modparams={"demo": "x"})):
        assert modparams_of(core, "demo", DemoParams) == DemoParams()
        assert modparams_of(core, "demo", DemoParams, none) is none


def test_data_dir_of() -> None:
    config = config_from_dict({"core": {"data_dir": "/srv/trio"}})
    assert data_dir_of(SimpleNamespace(config=config)) == "/srv/trio"
    assert data_dir_of(SimpleNamespace(config=None)) == "var"
    assert data_dir_of(SimpleNamespace()) == "var"
