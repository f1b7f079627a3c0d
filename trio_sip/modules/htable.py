"""KSR.htable: hash tables shared by every route (Kamailio ``htable``), ``$sht(t=>k)``.

Tables are declared in ``[modparams.htable] htable = ["name=>size=..;autoexpire=.."]``
(storage/htable.py explains each attribute). Values are integers or strings; a missing
item reads as the table's ``initval`` or nil. Tables with a ``dbtable`` are loaded from
SQLite at start and every change is written back (not awaited by the route).

Return codes are Kamailio's: 1 success, -1 failure (no such table, bad operator);
sht_inc/sht_dec return the new value or -255.

sht_lock/sht_unlock hold a real per-key lock (storage/htable.py ``KeyLocks``): only a
route that waits while holding a key makes another route's sht_lock() wait; a lock not
released within ``lock_max_hold`` seconds is taken over. A branch route or the core
reply route cannot wait: there, sht_lock() on a key held elsewhere returns -1.

MI commands (Kamailio's RPC names) over ``htables_for(core)``: htable.dump NAME,
htable.get NAME KEY, htable.sets NAME KEY VALUE, htable.seti NAME KEY VALUE,
htable.delete NAME KEY, htable.flush NAME (empties the table), htable.listTables,
htable.stats, htable.store (waits until the dbtable tables are written).

Not implemented: DMQ replication, multi-column dbtables (cols), reloadat, the
htable:expired:<table> and htable:mod-init events, $shtrecord.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..mi.registry import COMMAND_FAILED, InvalidParams, MiError
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..script.modparams import data_dir_of, modparams_of
from ..script.ops import AsyncOp
from ..storage.htable import (
    HashTable,
    Htables,
    SpecError,
    TableSpec,
    count_matching,
    matcher,
    parse_table_spec,
)
from ..storage.sqlite import Clock, DbUrlError, resolve_db_url

log = logging.getLogger("trio_sip.htable")

#: what sht_inc/sht_dec return on failure (Kamailio)
INC_FAILED = -255


@dataclass(frozen=True)
class HtableParams:
    """``[modparams.htable]``."""

    #: table definitions, Kamailio syntax: "name=>size=8;autoexpire=120;dbtable=t"
    htable: tuple[str, ...] = ()
    #: the file of the tables with a dbtable (``{data_dir}`` is core.data_dir; "none":
    #: no file, dbtable ignored)
    db_url: str = "sqlite:///{data_dir}/htable.sqlite"
    #: seconds between sweeps of expired items
    timer_interval: int = 20
    #: trio-sip: seconds a route may hold sht_lock() before a waiter takes it over
    lock_max_hold: int = 10

    def validate(self) -> None:
        names: set[str] = set()
        for spec in self.specs():
            if spec.name in names:
                raise ValueError(f"htable {spec.name} is defined twice")
            names.add(spec.name)
        try:
            resolve_db_url(self.db_url, "var")
        except DbUrlError as exc:
            raise ValueError(str(exc)) from None
        if self.timer_interval <= 0 or self.lock_max_hold <= 0:
            raise ValueError("timer_interval and lock_max_hold must be > 0")

    def specs(self) -> list[TableSpec]:
        try:
            return [parse_table_spec(t) for t in self.htable]
        except SpecError as exc:
            raise ValueError(str(exc)) from None


m = ModuleBuilder("htable", "Hash tables shared by all routes: $sht(table=>key).",
                  params=HtableParams)

R = RouteType
_NO_WAIT = R.BRANCH | R.CORE_REPLY
_IT_KEY = "\0htable:it:"


def htables_for(core: Any, *, clock: Clock | None = None) -> Htables:
    """The server's tables: made on first use from ``[modparams.htable]`` (loaded from
    their file) and run in the server's nursery. A file that cannot be opened is logged
    and the tables live in memory only."""
    hts = getattr(core, "htable", None)
    if isinstance(hts, Htables):
        return hts
    params = modparams_of(core, "htable", HtableParams, HtableParams(db_url="none"))
    data_dir = data_dir_of(core)
    specs = params.specs()
    kw: dict[str, Any] = {"clock": clock, "timer_interval": params.timer_interval,
                          "lock_max_hold": float(params.lock_max_hold)}
    hts = None
    try:
        hts = Htables(specs, db_path=resolve_db_url(params.db_url, data_dir), **kw)
        hts.open()
    except (OSError, sqlite3.Error) as exc:
        log.error("htable: cannot use %s (%s): tables are kept in memory only",
                  params.db_url, exc)
        if hts is not None and hts.writer is not None:
            hts.writer.close()
        hts = Htables(specs, db_path=None, **kw)
    nursery = getattr(getattr(core, "tm", None), "nursery", None)
    if nursery is not None:
        nursery.start_soon(_run, hts)
    core.htable = hts
    return hts


async def _run(hts: Htables) -> None:
    try:
        await hts.run()
    except Exception:  # a bug here must not take the server down
        log.exception("the htable service stopped")


def _table(ctx: MsgContext, name: str) -> HashTable | None:
    ht = htables_for(ctx.core).get(name)
    if ht is None:
        log.error("htable: no table %r (declare it in [modparams.htable] htable)", name)
    return ht


# -- get and set -----------------------------------------------------------------------


@m.export(("str", "str"), ret="xval")
def sht_get(ctx: MsgContext, htname: str, itname: str) -> Any:
    """The item's value (integer or string), the table's initval if it is missing, else
    nil."""
    ht = _table(ctx, htname)
    return ht.get(itname) if ht is not None else None


@m.export(("str", "str"), ret="xval")
def sht_gete(ctx: MsgContext, htname: str, itname: str) -> Any:
    """Like sht_get, but "" instead of nil."""
    v = sht_get(ctx, htname, itname)
    return "" if v is None else v


@m.export(("str", "str"), ret="xval")
def sht_getw(ctx: MsgContext, htname: str, itname: str) -> Any:
    """Like sht_get, but "<null>" instead of nil (for log lines)."""
    v = sht_get(ctx, htname, itname)
    return "<null>" if v is None else v


@m.export(("str", "str", "str"))
def sht_sets(ctx: MsgContext, htname: str, itname: str, itval: str) -> int:
    """Set a string item. 1, or -1 if there is no such table."""
    ht = _table(ctx, htname)
    if ht is None:
        return -1
    ht.set(itname, itval)
    return 1


@m.export(("str", "str", "int"))
def sht_seti(ctx: MsgContext, htname: str, itname: str, itval: int) -> int:
    """Set an integer item. 1, or -1 if there is no such table."""
    ht = _table(ctx, htname)
    if ht is None:
        return -1
    ht.set(itname, itval)
    return 1


@m.export(("str", "str", "str", "int"))
def sht_setxs(ctx: MsgContext, htname: str, itname: str, itval: str, exval: int) -> int:
    """Set a string item that expires ``exval`` seconds from now (<= 0: the table's rule)."""
    ht = _table(ctx, htname)
    if ht is None:
        return -1
    ht.set(itname, itval, exval)
    return 1


@m.export(("str", "str", "int", "int"))
def sht_setxi(ctx: MsgContext, htname: str, itname: str, itval: int, exval: int) -> int:
    """Set an integer item that expires ``exval`` seconds from now (<= 0: the table's
    rule)."""
    ht = _table(ctx, htname)
    if ht is None:
        return -1
    ht.set(itname, itval, exval)
    return 1


@m.export(("str", "str", "int"))
def sht_setex(ctx: MsgContext, htname: str, itname: str, itval: int) -> int:
    """Make an existing item expire ``itval`` seconds from now (0: never). 1, or -1 if
    there is no such table (Kamailio: only in autoexpire tables; here in any)."""
    ht = _table(ctx, htname)
    if ht is None:
        return -1
    ht.set_expire(itname, itval)
    return 1


@m.export(("str", "str"))
def sht_rm(ctx: MsgContext, hname: str, iname: str) -> int:
    """Remove an item. 1, or -1 if there is no such table."""
    ht = _table(ctx, hname)
    if ht is None:
        return -1
    ht.rm(iname)
    return 1


@m.export(("str", "str"))
def sht_is_null(ctx: MsgContext, htname: str, itname: str) -> int:
    """1 if the item does not exist, -1 if it does."""
    ht = _table(ctx, htname)
    return -1 if ht is not None and ht.exists(itname) else 1


def _add(ctx: MsgContext, htname: str, itname: str, delta: int) -> int:
    ht = _table(ctx, htname)
    if ht is None:
        return INC_FAILED
    v = ht.add(itname, delta)
    return INC_FAILED if v is None else v


@m.export(("str", "str"))
def sht_inc(ctx: MsgContext, htname: str, itname: str) -> int:
    """Add 1 to an integer item (made from initval if missing) and return the new value;
    -255 if there is no such table, the item is a string, or it is missing and the table
    has no initval."""
    return _add(ctx, htname, itname, 1)


@m.export(("str", "str"))
def sht_dec(ctx: MsgContext, htname: str, itname: str) -> int:
    """Subtract 1 (see sht_inc)."""
    return _add(ctx, htname, itname, -1)


@m.export(("str",))
def sht_reset(ctx: MsgContext, hname: str) -> int:
    """Remove every item of the table."""
    ht = _table(ctx, hname)
    if ht is None:
        return -1
    ht.reset()
    return 1


# -- matching ---------------------------------------------------------------------------


def _rm(ctx: MsgContext, htname: str, op: str, val: str, by_value: bool) -> int:
    ht = _table(ctx, htname)
    test = matcher(op, val) if op in ("re", "sw", "ew", "in") else None
    if ht is None or test is None:
        if ht is not None:
            log.error("htable: bad operator or expression %r %r", op, val)
        return -1
    if by_value:
        ht.rm_where(lambda k, it: isinstance(it.value, str) and test(it.value))
    else:
        ht.rm_where(lambda k, it: test(k))
    return 1


@m.export(("str", "str"))
def sht_rm_name_re(ctx: MsgContext, htname: str, rexp: str) -> int:
    """Remove the items whose name matches the regular expression (case-insensitive)."""
    return _rm(ctx, htname, "re", rexp, False)


@m.export(("str", "str"))
def sht_rm_value_re(ctx: MsgContext, htname: str, rexp: str) -> int:
    """Remove the string items whose value matches the regular expression."""
    return _rm(ctx, htname, "re", rexp, True)


@m.export(("str", "str", "str"))
def sht_rm_name(ctx: MsgContext, sname: str, sop: str, sval: str) -> int:
    """Remove the items whose name matches: op "re" regexp, "sw" starts with, "ew" ends
    with, "in" contains."""
    return _rm(ctx, sname, sop, sval, False)


@m.export(("str", "str", "str"))
def sht_rm_value(ctx: MsgContext, sname: str, sop: str, sval: str) -> int:
    """Remove the string items whose value matches (ops as sht_rm_name)."""
    return _rm(ctx, sname, sop, sval, True)


def _match(ctx: MsgContext, htname: str, op: str, val: str, by_value: bool) -> int:
    ht = _table(ctx, htname)
    test = matcher(op, val) if op in ("eq", "ne", "re", "sw") else None
    if ht is None or test is None:
        return -1
    for k, it in ht.items():
        if by_value:
            if isinstance(it.value, str) and test(it.value):
                return 1
        elif test(k):
            return 1
    return -1


@m.export(("str", "str", "str"))
def sht_match_name(ctx: MsgContext, sname: str, sop: str, sval: str) -> int:
    """1 if an item's name matches ``sval`` by op "eq", "ne", "re" or "sw"; else -1
    (Kamailio sht_has_name)."""
    return _match(ctx, sname, sop, sval, False)


@m.export(("str", "str", "str"))
def sht_match_str_value(ctx: MsgContext, sname: str, sop: str, sval: str) -> int:
    """1 if a string item's value matches (ops as sht_match_name); else -1."""
    return _match(ctx, sname, sop, sval, True)


# -- locks -----------------------------------------------------------------------------


class LockOp(AsyncOp):
    """Wait for a key held by another route."""

    name = "htable.sht_lock"

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key

    async def run(self, ctx: MsgContext) -> Any:
        await htables_for(ctx.core).locks.acquire(self.key, ctx)
        return 1


@m.export(("str", "str"), name="_sht_lock_try")
def _sht_lock_try(ctx: MsgContext, htname: str, skey: str) -> int:
    """Internal (sht_lock): 1 locked, 0 held by another route (wait), -1 failure."""
    hts = htables_for(ctx.core)
    if hts.get(htname) is None:
        log.error("htable: sht_lock: no table %r", htname)
        return -1
    if hts.locks.try_acquire((htname, skey), ctx):
        return 1
    if ctx.route_type & _NO_WAIT:
        log.error("htable: sht_lock(%s=>%s): held by another route, and a %s cannot wait",
                  htname, skey, ctx.route_type.label)
        return -1
    return 0


@m.export(("str", "str"), is_async=True, name="_sht_lock_wait")
def _sht_lock_wait(ctx: MsgContext, htname: str, skey: str) -> Any:
    """Internal (sht_lock): wait for the key."""
    return LockOp((htname, skey))


m.lua_export(
    "sht_lock",
    "function(ht, key) local r = KSR.htable._sht_lock_try(ht, key) "
    "if r ~= 0 then return r end return KSR.htable._sht_lock_wait(ht, key) end",
    params=("str", "str"), ret="int",
    doc="Lock the key for this route (re-entrant). If another route holds it (it waits "
        "while holding it), wait until it unlocks. 1, or -1 (no such table; or held "
        "elsewhere in a route that cannot wait).",
)


@m.export(("str", "str"))
def sht_unlock(ctx: MsgContext, htname: str, skey: str) -> int:
    """Unlock a key this route locked. 1, or -1 if it does not hold it."""
    return 1 if htables_for(ctx.core).locks.release((htname, skey), ctx) else -1


# -- iterators ---------------------------------------------------------------------------


def _iter(ctx: MsgContext, iname: str) -> dict[str, Any] | None:
    it = ctx.vars.get(_IT_KEY + iname)
    return it if isinstance(it, dict) else None


@m.export(("str", "str"))
def sht_iterator_start(ctx: MsgContext, iname: str, hname: str) -> int:
    """Start iterating over the table (a snapshot of its item names)."""
    ht = _table(ctx, hname)
    if ht is None:
        return -1
    ctx.vars[_IT_KEY + iname] = {"table": hname, "keys": [k for k, _ in ht.items()],
                                 "pos": -1, "key": None}
    return 1


@m.export(("str",))
def sht_iterator_next(ctx: MsgContext, iname: str) -> int:
    """Move to the next item: 1, or -1 when there is none ($shtitkey/$shtitval read it)."""
    it = _iter(ctx, iname)
    if it is None:
        return -1
    ht = htables_for(ctx.core).get(it["table"])
    while ht is not None:
        it["pos"] += 1
        if it["pos"] >= len(it["keys"]):
            it["key"] = None
            return -1
        key = it["keys"][it["pos"]]
        if ht.exists(key):
            it["key"] = key
            return 1
    return -1


@m.export(("str",))
def sht_iterator_end(ctx: MsgContext, iname: str) -> int:
    """Close the iterator."""
    return 1 if ctx.vars.pop(_IT_KEY + iname, None) is not None else -1


def _current(ctx: MsgContext, iname: str) -> tuple[HashTable, str] | None:
    it = _iter(ctx, iname)
    if it is None or it["key"] is None:
        return None
    ht = htables_for(ctx.core).get(it["table"])
    return (ht, it["key"]) if ht is not None else None


@m.export(("str",))
def sht_iterator_rm(ctx: MsgContext, iname: str) -> int:
    """Remove the current item."""
    cur = _current(ctx, iname)
    if cur is None:
        return -1
    cur[0].rm(cur[1])
    return 1


@m.export(("str", "str"))
def sht_iterator_sets(ctx: MsgContext, iname: str, sval: str) -> int:
    """Set the current item to a string."""
    cur = _current(ctx, iname)
    if cur is None:
        return -1
    cur[0].set(cur[1], sval)
    return 1


@m.export(("str", "int"))
def sht_iterator_seti(ctx: MsgContext, iname: str, ival: int) -> int:
    """Set the current item to an integer."""
    cur = _current(ctx, iname)
    if cur is None:
        return -1
    cur[0].set(cur[1], ival)
    return 1


@m.export(("str", "int"))
def sht_iterator_setex(ctx: MsgContext, iname: str, exval: int) -> int:
    """Make the current item expire ``exval`` seconds from now."""
    cur = _current(ctx, iname)
    if cur is None:
        return -1
    cur[0].set_expire(cur[1], exval)
    return 1


# -- MI -----------------------------------------------------------------------------------


def _mi_table(ctx: Any, params: Any) -> HashTable:
    name = params.get("htable")
    ht = htables_for(ctx.core).get(str(name))
    if ht is None:
        raise MiError(COMMAND_FAILED, "No such htable")
    return ht


@m.mi("htable.dump", params=("htable",))
def mi_dump(params: Any, ctx: Any) -> Any:
    """Every live item of a table: name, value, type, seconds to expiry (0: never)."""
    _mi_table(ctx, params)
    return htables_for(ctx.core).dump(str(params["htable"]))


@m.mi("htable.get", params=("htable", "key"))
def mi_get(params: Any, ctx: Any) -> Any:
    """One item."""
    ht = _mi_table(ctx, params)
    key = str(params["key"])
    if not ht.exists(key):
        raise MiError(COMMAND_FAILED, "Key name doesn't exist in htable.")
    return {"item": {"name": key, "value": ht.get(key), "expires": ht.expires_in(key)}}


@m.mi("htable.sets", params=("htable", "key", "value"))
def mi_sets(params: Any, ctx: Any) -> Any:
    """Set an item to a string."""
    _mi_table(ctx, params).set(str(params["key"]), str(params["value"]))
    return "ok"


@m.mi("htable.seti", params=("htable", "key", "value"))
def mi_seti(params: Any, ctx: Any) -> Any:
    """Set an item to an integer."""
    value = params["value"]
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidParams(f"value must be an integer, not {value!r}") from None
    _mi_table(ctx, params).set(str(params["key"]), number)
    return "ok"


@m.mi("htable.delete", params=("htable", "key"))
def mi_delete(params: Any, ctx: Any) -> Any:
    """Remove an item."""
    _mi_table(ctx, params).rm(str(params["key"]))
    return "ok"


@m.mi("htable.flush", params=("htable",))
def mi_flush(params: Any, ctx: Any) -> Any:
    """Remove every item of a table."""
    _mi_table(ctx, params).reset()
    return "ok"


@m.mi("htable.listTables")
def mi_list_tables(params: Any, ctx: Any) -> Any:
    """The tables and their definitions."""
    return htables_for(ctx.core).list_tables()


@m.mi("htable.stats")
def mi_stats(params: Any, ctx: Any) -> Any:
    """Items per table."""
    return htables_for(ctx.core).statistics()


@m.mi("htable.store")
async def mi_store(params: Any, ctx: Any) -> Any:
    """Wait until every change of the dbtable tables is in the file."""
    await htables_for(ctx.core).flush()
    return "ok"


MODULE = m.build()


# -- pseudo-variables -------------------------------------------------------------------


def _split(arg: str) -> tuple[str, str]:
    name, sep, key = arg.partition("=>")
    if not sep:
        raise pv.PvError(f"expected table=>key, not {arg!r}")
    return name.strip(), key


def _sht_get(ctx: MsgContext, arg: str) -> Any:
    name, key = _split(arg)
    return sht_get(ctx, name, key)


def _sht_set(ctx: MsgContext, arg: str, value: Any) -> None:
    name, key = _split(arg)
    ht = _table(ctx, name)
    if ht is None:
        raise pv.PvError(f"$sht({arg}): no table {name!r}")
    if value is None:
        ht.rm(key)
    elif isinstance(value, bool):
        ht.set(key, int(value))
    elif isinstance(value, int):
        ht.set(key, value)
    elif isinstance(value, float) and value.is_integer():
        ht.set(key, int(value))
    else:
        ht.set(key, str(value))


def _shtex_get(ctx: MsgContext, arg: str) -> Any:
    name, key = _split(arg)
    ht = _table(ctx, name)
    return ht.expires_in(key) if ht is not None else None


def _shtex_set(ctx: MsgContext, arg: str, value: Any) -> None:
    name, key = _split(arg)
    ht = _table(ctx, name)
    if ht is not None:
        ht.set_expire(key, int(value or 0))


def _shtinc_get(ctx: MsgContext, arg: str) -> Any:
    name, key = _split(arg)
    v = _add(ctx, name, key, 1)
    return None if v == INC_FAILED else v


def _count(by_value: bool) -> Any:
    def get(ctx: MsgContext, arg: str) -> Any:
        name, expr = _split(arg)
        ht = _table(ctx, name)
        return count_matching(ht, expr, by_value) if ht is not None else None

    return get


def _it_get(what: str) -> Any:
    def get(ctx: MsgContext, iname: str) -> Any:
        cur = _current(ctx, iname)
        if cur is None:
            return None
        return cur[1] if what == "key" else cur[0].get(cur[1])

    return get


pv.register("sht", _sht_get, _sht_set, needs_arg=True)
pv.register("shtex", _shtex_get, _shtex_set, needs_arg=True)
pv.register("shtinc", _shtinc_get, needs_arg=True)
pv.register("shtcn", _count(False), needs_arg=True)
pv.register("shtcv", _count(True), needs_arg=True)
pv.register("shtitkey", _it_get("key"), needs_arg=True)
pv.register("shtitval", _it_get("value"), needs_arg=True)

__all__ = ["MODULE", "HtableParams", "LockOp", "htables_for"]
