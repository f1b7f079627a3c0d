"""KSR.mqueue: message queues shared by every route (Kamailio ``mqueue``), ``$mqk(q)``,
``$mqv(q)``, ``$mq_size(q)``.

The recipe it exists for (mqueue README, "Overview"): a SIP route queues slow work with
``mq_add`` and answers at once; a timer route (modules/rtimer.py) drains the queue with
``while KSR.mqueue.mq_fetch("q") == 1 do ... end`` and does the slow part (HTTP, SQL).

Queues are declared in ``[modparams.mqueue] mqueue = ["name=q;size=100;addmode=0;dbmode=1"]``
(Kamailio syntax; storage/mqueue.py explains size, addmode and dbmode). Kamailio's
``mqueue_name`` / ``mqueue_size`` / ``mqueue_addmode`` params work too. Queues with a
``dbmode`` live in the SQLite file ``db_url`` and survive a restart.

Return codes (Kamailio's KEMI functions, ``mqueue_mod.c``):

* ``mq_add(q, key, value)``: 1, or -1 if there is no such queue (an add ignored by
  addmode 1 is a success, 1);
* ``mq_fetch(q)``: 1 (the item is now in ``mqk_get``/``mqv_get``), -1 no such queue,
  -2 the queue is empty;
* ``mq_size(q)``: the number of items (0 when empty), -1 if there is no such queue.
  (The native-cfg ``mq_size`` of Kamailio returns -1 for empty and -2 for unknown;
  KEMI's, which Lua scripts call, returns the count, and so does this one.)
* ``mqk_get/mqv_get(q)``: the fetched key/value, nil when none (``_gete``: "",
  ``_getw``: "<null>"); ``mq_pv_free(q)``: forget the fetched item, 1.

The fetched item is per route run (Kamailio: per process): two timer routes draining
one queue concurrently each see their own item.

MI (Kamailio RPC names): ``mqueue.get_size NAME`` -> ``{"name", "size"}``,
``mqueue.get_sizes`` -> ``[{"name", "size"}, ...]``, ``mqueue.fetch NAME`` -> ``{"key",
"val"}`` (takes the item out of the queue); errors: no such queue, "Empty queue".
Statistics (group ``mqueue``): per queue ``NAME:size``, ``:added``, ``:fetched``,
``:dropped`` (beyond size), ``:kept_oldest``/``:replaced`` (addmode), and the file's
``db_*`` counters.

Not implemented: Kamailio's shutdown-only saving (dbmode 1 and 3 write through
instead, which also survives a crash), other databases than SQLite for persistence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from ..mi.registry import COMMAND_FAILED, InvalidParams, MiError, add_module_stats
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder
from ..script.modparams import data_dir_of, modparams_of
from ..storage.mqueue import (
    MQueue,
    MQueues,
    QueueSpec,
    SpecError,
    parse_queue_spec,
)
from ..storage.sqlite import DbUrlError, resolve_db_url

log = logging.getLogger("trio_sip.mqueue")

#: JSON-RPC error codes of mqueue.fetch on an empty queue (Kamailio answers 404)
EMPTY_QUEUE = 404
NO_SUCH_QUEUE = COMMAND_FAILED

_ITEM_KEY = "\0mqueue:item:"


@dataclass(frozen=True)
class MqueueParams:
    """``[modparams.mqueue]``."""

    #: queue definitions, Kamailio syntax: "name=q;size=100;addmode=0;dbmode=1"
    mqueue: tuple[str, ...] = ()
    #: Kamailio's other form: just names, with mqueue_size and mqueue_addmode
    mqueue_name: tuple[str, ...] = ()
    mqueue_size: int = 0
    mqueue_addmode: int = 0
    #: the file of the queues with a dbmode ({data_dir} is core.data_dir)
    db_url: str = "sqlite:///{data_dir}/mqueue.sqlite"

    def validate(self) -> None:
        specs = self.specs()
        names: set[str] = set()
        for s in specs:
            if s.name in names:
                raise ValueError(f"mqueue {s.name} is defined twice")
            names.add(s.name)
        if any(s.dbmode for s in specs):
            try:
                path = resolve_db_url(self.db_url, "var")
            except DbUrlError as exc:
                raise ValueError(str(exc)) from None
            if path is None:
                raise ValueError("a queue has a dbmode but db_url is \"none\"")

    def specs(self) -> list[QueueSpec]:
        try:
            out = [parse_queue_spec(t) for t in self.mqueue]
            out += [parse_queue_spec(f"name={n};size={self.mqueue_size};"
                                     f"addmode={self.mqueue_addmode}")
                    for n in self.mqueue_name]
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return out


m = ModuleBuilder("mqueue", "Message queues shared by all routes: $mqk(q), $mqv(q).",
                  params=MqueueParams)


def mqueues_for(core: Any) -> MQueues:
    """The server's queues: made on first use from ``[modparams.mqueue]`` and loaded from
    their file. Raises OSError/sqlite3.Error when the file cannot be used (the module's
    init hook calls this, so the server then refuses to start)."""
    mqs = getattr(core, "mqueue", None)
    if isinstance(mqs, MQueues):
        return mqs
    params = modparams_of(core, "mqueue", MqueueParams)
    data_dir = data_dir_of(core)
    mqs = MQueues(params.specs(), db_path=resolve_db_url(params.db_url, data_dir))
    try:
        mqs.open()
    except BaseException:
        if mqs.writer is not None:
            mqs.writer.close()
        raise
    core.mqueue = mqs
    return mqs


@m.on_init
def _init(core: Any) -> None:
    mqs = mqueues_for(core)
    # the sizes go up and down: gauges in /metrics
    add_module_stats(core, "mqueue", mqs.statistics,
                     gauges=[f"{name}:size" for name in mqs.queues])
    if mqs.db_path is not None:
        log.info("mqueue: queues with a dbmode are kept in %s", mqs.db_path)


@m.on_service
async def _service(core: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    """Runs the writer of the queues' file (commits what is left when the server stops)."""
    await mqueues_for(core).run(task_status=task_status)


def _queue(ctx: MsgContext, name: str) -> MQueue | None:
    q = mqueues_for(ctx.core).get(name)
    if q is None:
        log.error("mqueue: no queue %r (declare it in [modparams.mqueue] mqueue)", name)
    return q


@m.export(("str", "str", "str"))
def mq_add(ctx: MsgContext, mq: str, key: str, val: str) -> int:
    """Queue (key, value); beyond the queue's size the oldest item is dropped. 1, or -1
    if there is no such queue."""
    q = _queue(ctx, mq)
    if q is None:
        return -1
    q.add(key, val)
    return 1


@m.export(("str",))
def mq_fetch(ctx: MsgContext, mq: str) -> int:
    """Take the oldest item out of the queue into mqk_get()/mqv_get(): 1; -1 no such
    queue; -2 the queue is empty (the previous item is forgotten either way)."""
    ctx.vars.pop(_ITEM_KEY + mq, None)
    q = _queue(ctx, mq)
    if q is None:
        return -1
    item = q.fetch()
    if item is None:
        return -2
    ctx.vars[_ITEM_KEY + mq] = (item.key, item.value)
    return 1


@m.export(("str",))
def mq_size(ctx: MsgContext, mq: str) -> int:
    """The number of items queued (0 when empty), -1 if there is no such queue."""
    q = _queue(ctx, mq)
    return -1 if q is None else len(q)


@m.export(("str",))
def mq_pv_free(ctx: MsgContext, mq: str) -> int:
    """Forget the fetched item (optional: the next fetch does it). 1."""
    ctx.vars.pop(_ITEM_KEY + mq, None)
    return 1


def _fetched(ctx: MsgContext, mq: str, index: int) -> str | None:
    item = ctx.vars.get(_ITEM_KEY + mq)
    return item[index] if isinstance(item, tuple) else None


@m.export(("str",), ret="xval")
def mqk_get(ctx: MsgContext, mq: str) -> Any:
    """The key of the fetched item, nil if none."""
    return _fetched(ctx, mq, 0)


@m.export(("str",), ret="xval")
def mqk_gete(ctx: MsgContext, mq: str) -> Any:
    """Like mqk_get, but "" instead of nil."""
    v = _fetched(ctx, mq, 0)
    return "" if v is None else v


@m.export(("str",), ret="xval")
def mqk_getw(ctx: MsgContext, mq: str) -> Any:
    """Like mqk_get, but "<null>" instead of nil."""
    v = _fetched(ctx, mq, 0)
    return "<null>" if v is None else v


@m.export(("str",), ret="xval")
def mqv_get(ctx: MsgContext, mq: str) -> Any:
    """The value of the fetched item, nil if none."""
    return _fetched(ctx, mq, 1)


@m.export(("str",), ret="xval")
def mqv_gete(ctx: MsgContext, mq: str) -> Any:
    """Like mqv_get, but "" instead of nil."""
    v = _fetched(ctx, mq, 1)
    return "" if v is None else v


@m.export(("str",), ret="xval")
def mqv_getw(ctx: MsgContext, mq: str) -> Any:
    """Like mqv_get, but "<null>" instead of nil."""
    v = _fetched(ctx, mq, 1)
    return "<null>" if v is None else v


# -- MI -----------------------------------------------------------------------------------


def _mi_queue(ctx: Any, params: Any) -> MQueue:
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidParams("name the queue")
    q = mqueues_for(ctx.core).get(name)
    if q is None:
        raise MiError(NO_SUCH_QUEUE, "No such queue")
    return q


@m.mi("mqueue.get_size", params=("name",))
def mi_get_size(params: Any, ctx: Any) -> Any:
    """The number of items in a queue: ``{"name", "size"}``."""
    q = _mi_queue(ctx, params)
    return {"name": q.name, "size": len(q)}


@m.mi("mqueue.get_sizes")
def mi_get_sizes(params: Any, ctx: Any) -> Any:
    """Every queue and its number of items."""
    return [{"name": q.name, "size": len(q)} for q in mqueues_for(ctx.core).queues.values()]


@m.mi("mqueue.fetch", params=("name",))
def mi_fetch(params: Any, ctx: Any) -> Any:
    """Take the oldest item out of a queue: ``{"key", "val"}``; error 404 "Empty queue"."""
    q = _mi_queue(ctx, params)
    item = q.fetch()
    if item is None:
        raise MiError(EMPTY_QUEUE, "Empty queue")
    return {"key": item.key, "val": item.value}


MODULE = m.build()


# -- pseudo-variables -------------------------------------------------------------------


def _pv_queue(ctx: MsgContext, name: str) -> MQueue:
    q = mqueues_for(ctx.core).get(name)
    if q is None:
        raise pv.PvError(f"mqueue not found: {name!r}")
    return q


def _pv_item(index: int) -> Any:
    def get(ctx: MsgContext, name: str) -> Any:
        _pv_queue(ctx, name)
        return _fetched(ctx, name, index)

    return get


def _pv_size(ctx: MsgContext, name: str) -> Any:
    return len(_pv_queue(ctx, name))


pv.register("mqk", _pv_item(0), needs_arg=True)
pv.register("mqv", _pv_item(1), needs_arg=True)
pv.register("mq_size", _pv_size, needs_arg=True)

__all__ = ["MODULE", "MqueueParams", "mqueues_for"]
