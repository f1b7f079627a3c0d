"""KSR.example: a complete, tiny third-party trio-sip module.

Installed (``pip install -e examples/module``), it is found through the
``trio_sip.modules`` entry point declared in pyproject.toml and loaded after the
built-in modules. It shows every part a module can declare: exports (a string one
and an int one), params (``[modparams.example]``), an MI command and an init hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trio_sip.script.context import MsgContext
from trio_sip.script.exports import REQUEST_ROUTES, ModuleBuilder


@dataclass
class ExampleParams:
    """``[modparams.example]`` in the config."""

    greeting: str = "Hello"
    max_greets: int = 1000

    def validate(self) -> None:
        if self.max_greets < 0:
            raise ValueError("max_greets must be >= 0")


m = ModuleBuilder("example", "An example third-party module (examples/module/).",
                  params=ExampleParams)

#: per-server state, set by the init hook (keyed by the core, as a process may run several)
_greeted: dict[int, int] = {}


def _params(ctx: MsgContext) -> ExampleParams:
    p = getattr(ctx.core, "modparams", {}).get("example")
    return p if isinstance(p, ExampleParams) else ExampleParams()


@m.export(("str",), ret="str")
def greet(ctx: MsgContext, name: str) -> str:
    """A greeting for ``name``, with ``[modparams.example] greeting``."""
    key = id(ctx.core)
    _greeted[key] = _greeted.get(key, 0) + 1
    return f"{_params(ctx).greeting}, {name}!"


@m.export((), routes=REQUEST_ROUTES)
def greeted(ctx: MsgContext) -> int:
    """How many greetings this server made (an int export), or -1 when more than
    ``max_greets``."""
    n = _greeted.get(id(ctx.core), 0)
    return -1 if n > _params(ctx).max_greets else n


@m.mi("stats")
def example_stats(params: Mapping[str, Any], ctx: Any) -> Any:
    """``example.stats``: the greetings made so far."""
    return {"greeted": _greeted.get(id(ctx.core), 0)}


@m.on_init
def example_init(core: Any) -> None:
    """Once at start, after the modparams are built (may also be ``async def``)."""
    _greeted[id(core)] = 0


MODULE = m.build()
