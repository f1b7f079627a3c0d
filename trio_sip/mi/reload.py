"""``app_lua.reload``: load the routes again, atomically, without disturbing calls in flight.

Mechanism
---------
A reload builds a whole new engine: a new ``LuaRuntime`` with the same modules,
the routes file loaded into it and put through the same static checks as at start
(``runtime.server.build_engine``). Only if all of that succeeds is the new engine
put in place (``core.engine`` and ``server.engine``), in one assignment made on the
Trio thread without a checkpoint in between, so every route started after it runs
the new code and none runs a half-loaded script. A reload that fails (the file does
not load, a check fails) raises before anything was changed: the old routes stay in
force and the error says why.

Calls in flight finish on the code they started with:

* a route coroutine that was waiting (``KSR.async.sleep``, rtpengine, an async MI
  command) lives in the ``LuaRuntime`` that created it and is resumed or abandoned
  there, with that runtime's functions and globals. Every generation shares one
  coroutine-id counter and one map from the id of each waiting coroutine to its
  engine (``ScriptEngine._owners``), so ``resume``/``abandon`` called on any
  generation reach the right runtime (two runtimes counting from 1 would resume each
  other's coroutines);
* a transaction remembers the engine its request route started in
  (``MsgContext.engine``, ``ServerTx.engine``): its armed routes (``t_on_failure``,
  ``t_on_reply``, ``t_on_branch``, ``t_on_branch_failure``, ``t_continue``) run that
  generation's functions, even when they start after the reload
  (``ProxyCore.engine_for``). Kamailio runs them from the new script; here a
  transaction never mixes two versions of the routes;
* an older engine lives as long as a waiting coroutine or a transaction refers to
  it, and is freed with the last of them (plain references: nothing to prune).

Routes that *start* for new messages after the reload run the new code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..script.engine import ScriptEngine
from ..script.exports import Module

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("trio_sip.mi")

__all__ = ["ReloadedEngine", "engine_generation", "engines_in_flight", "older_engines",
           "own_pending", "reload_routes"]


def own_pending(engine: ScriptEngine) -> int:
    """The coroutines waiting in this engine's own LuaRuntime."""
    return int(engine._pending())


class ReloadedEngine(ScriptEngine):
    """An engine that replaced ``previous``: same coroutine ids and owner map, so the
    coroutines still waiting in older engines are resumed there (see the module doc)."""

    def __init__(self, modules: Iterable[Module], *, engine: str = "luajit",
                 lua_path: Iterable[str] = (), previous: ScriptEngine) -> None:
        super().__init__(modules, engine=engine, lua_path=lua_path)
        # one id space for every generation: an id names one coroutine in one runtime
        self._ids = previous._ids
        self._owners = previous._owners
        self.generation: int = engine_generation(previous) + 1
        self.loaded_at = time.time()

    @property
    def pending_coroutines(self) -> int:
        """The coroutines waiting in this engine and in every older one."""
        return own_pending(self) + sum(own_pending(e) for e in self.older)

    @property
    def older(self) -> list[ScriptEngine]:
        """The older engines that still have waiting coroutines, oldest first."""
        found = {id(e): e for e in self._owners.values()
                 if engine_generation(e) < self.generation}
        return sorted(found.values(), key=engine_generation)


def engine_generation(engine: ScriptEngine) -> int:
    """1 for the engine the server started with, +1 for each reload."""
    gen = getattr(engine, "generation", 1)
    return gen if isinstance(gen, int) else 1


def older_engines(engine: ScriptEngine) -> list[ScriptEngine]:
    """The older engines ``engine`` keeps alive for their waiting coroutines."""
    return engine.older if isinstance(engine, ReloadedEngine) else []


def engines_in_flight(core: Any) -> list[tuple[ScriptEngine, int, int]]:
    """The older engines still in use by ``core`` (a ``ProxyCore``), oldest first:
    ``(engine, waiting coroutines, live transactions started in it)``."""
    current: ScriptEngine = core.engine
    gen = engine_generation(current)
    found: dict[int, ScriptEngine] = {id(e): e for e in older_engines(current)}
    txs: dict[int, int] = {}
    for tx in list(core.tm.servers.values()):
        e = getattr(tx, "engine", None)
        if isinstance(e, ScriptEngine) and e is not current and engine_generation(e) < gen:
            found[id(e)] = e
            txs[id(e)] = txs.get(id(e), 0) + 1
    return [(e, own_pending(e), txs.get(id(e), 0))
            for e in sorted(found.values(), key=engine_generation)]


def reload_routes(server: Any, config: Config | None = None) -> ScriptEngine:
    """Build, check and put in place a new engine for ``server`` (a runtime
    ``Server``: its ``core``, ``engine`` and ``config``); returns it. Raises
    ``ScriptError`` (``ScriptLoadError``, ``RouteCheckError``) with the reason when
    the routes do not load or do not pass the checks; then nothing has changed."""
    from ..runtime.server import build_engine

    core = server.core
    old: ScriptEngine = core.engine
    cfg = config if config is not None else server.config
    new = build_engine(cfg, list(old.modules.values()), previous=old)
    # the swap: no checkpoint between these lines, so no task sees one without the other
    core.engine = new
    server.engine = new
    log.info("routes reloaded from %s (%s, generation %d; %d coroutine(s) finish on "
             "older routes)", cfg.lua.routes, new.implementation, engine_generation(new),
             new.pending_coroutines - own_pending(new))
    return new
