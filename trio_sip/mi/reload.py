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

A route coroutine that was waiting (``KSR.async.sleep``, rtpengine, an async MI
command) lives in the ``LuaRuntime`` that created it and must be resumed or
abandoned there, with that runtime's functions and globals: it finishes on its old
code. The runtime calls ``engine.resume(co_id, ...)`` / ``engine.abandon(co_id)``
on whichever engine it holds, so the new engine routes those calls:

* every generation shares one coroutine-id counter, so an id names one coroutine
  in one runtime, whatever the generation (two runtimes counting from 1 would
  resume each other's coroutines);
* a :class:`ReloadedEngine` remembers the ids of its own waiting coroutines and
  keeps the older engines that still have waiting coroutines; ``resume`` /
  ``abandon`` of an id that is not its own go to the older engine that owns it;
* an older engine is dropped (and its ``LuaRuntime`` freed) once none of its
  coroutines waits any more; ``pending_coroutines`` counts every generation.

Routes that *start* after the reload (including failure and onreply routes armed by
a transaction that began before it) run the new code, as Kamailio does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..script.context import MsgContext
from ..script.engine import ScriptEngine, Step
from ..script.exports import Module

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("trio_sip.mi")

__all__ = ["ReloadedEngine", "engine_generation", "older_engines", "own_pending", "reload_routes"]


def own_pending(engine: ScriptEngine) -> int:
    """The coroutines waiting in this engine's own LuaRuntime."""
    return int(engine._pending())


class ReloadedEngine(ScriptEngine):
    """An engine that replaced ``previous``: it resumes and abandons the coroutines
    that older engines still have waiting in those engines (see the module doc)."""

    def __init__(self, modules: Iterable[Module], *, engine: str = "luajit",
                 lua_path: Iterable[str] = (), previous: ScriptEngine) -> None:
        super().__init__(modules, engine=engine, lua_path=lua_path)
        # one id space for every generation: an id names one coroutine in one runtime
        self._ids = previous._ids
        self.generation: int = engine_generation(previous) + 1
        self.loaded_at = time.time()
        #: ids of this engine's own coroutines that yielded and were not finished
        self._live: set[int] = set()
        #: older engines that still have waiting coroutines, oldest first
        self._older: list[ScriptEngine] = [
            e for e in [*older_engines(previous), previous] if own_pending(e) > 0
        ]

    # -- routing by coroutine id ---------------------------------------------------------

    def _owner(self, co_id: int) -> ScriptEngine:
        if co_id in self._live or not self._older:
            return self
        for e in reversed(self._older):
            if isinstance(e, ReloadedEngine):
                if co_id in e._live:
                    return e
            else:
                return e  # the first generation, which does not track ids: the oldest
        return self

    def start(self, fn: Any, ctx: MsgContext, *args: Any) -> Step:
        step = super().start(fn, ctx, *args)
        if step.yielded:
            self._live.add(step.co_id)
        return step

    def resume(self, co_id: int, ctx: MsgContext, value: Any = None) -> Step:
        owner = self._owner(co_id)
        if owner is self:
            step = super().resume(co_id, ctx, value)
            if not step.yielded:
                self._live.discard(co_id)
            return step
        step = owner.resume(co_id, ctx, value)
        if not step.yielded:
            self.prune()
        return step

    def abandon(self, co_id: int) -> None:
        owner = self._owner(co_id)
        if owner is self:
            self._live.discard(co_id)
            super().abandon(co_id)
            return
        owner.abandon(co_id)
        self.prune()

    def prune(self) -> None:
        """Drop the older engines none of whose coroutines waits any more."""
        if self._older:
            self._older = [e for e in self._older if own_pending(e) > 0]
            for e in self._older:
                if isinstance(e, ReloadedEngine) and e._older:
                    e._older = [x for x in e._older if own_pending(x) > 0]

    @property
    def pending_coroutines(self) -> int:
        return own_pending(self) + sum(own_pending(e) for e in self._older)

    @property
    def older(self) -> list[ScriptEngine]:
        """The older engines kept for their waiting coroutines, oldest first."""
        self.prune()
        return list(self._older)


def engine_generation(engine: ScriptEngine) -> int:
    """1 for the engine the server started with, +1 for each reload."""
    gen = getattr(engine, "generation", 1)
    return gen if isinstance(gen, int) else 1


def older_engines(engine: ScriptEngine) -> list[ScriptEngine]:
    """The older engines ``engine`` keeps alive for their waiting coroutines."""
    return engine.older if isinstance(engine, ReloadedEngine) else []


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
