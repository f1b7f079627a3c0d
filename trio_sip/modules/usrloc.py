"""usrloc: the location table's params (``[modparams.usrloc]``), the server's
:class:`~trio_sip.usrloc.Usrloc`, and Kamailio's ``ul.*`` RPC commands. Kamailio's usrloc
exports nothing to KEMI (the registrar does the SIP part).

MI commands (Kamailio names and params) and the Python API they call::

    ul.dump [brief]                     usrloc_for(core).dump(brief)
    ul.lookup TABLE AOR                 usrloc_for(core).lookup(table, aor)
    ul.rm TABLE AOR                     usrloc_for(core).rm(table, aor)
    ul.rm_contact TABLE AOR CONTACT     usrloc_for(core).rm(table, aor, contact)
    ul.add TABLE AOR CONTACT EXPIRES [Q PATH FLAGS CFLAGS METHODS]
                                        usrloc_for(core).add(...)
    ul.flush                            await usrloc_for(core).flush()
    (statistics)                        usrloc_for(core).statistics()

Changes made by ul.add/ul.rm are in the file when the command answers (it waits for
the write, as a REGISTER's reply does).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from ..mi.registry import COMMAND_FAILED, InvalidParams, MiError
from ..script.exports import ModuleBuilder
from ..script.modparams import data_dir_of, modparams_of
from ..storage.sqlite import Clock
from ..usrloc import Usrloc, UsrlocParams

log = logging.getLogger("trio_sip.usrloc")

m = ModuleBuilder(
    "usrloc",
    "User location: the table the registrar keeps (params only; no KSR functions, as in "
    "Kamailio).",
    params=UsrlocParams,
)



def _text(params: Any, name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if value is None:
        raise InvalidParams(f"{name} is required")
    return str(value)


def _number(params: Any, name: str, default: float) -> float:
    value = params.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidParams(f"{name} must be a number, not {value!r}") from None


@m.mi("ul.dump", params=("brief?",))
def ul_dump(params: Any, ctx: Any) -> Any:
    """Every table, AoR and live binding; ``brief``: the addresses only."""
    return usrloc_for(ctx.core).dump(bool(params.get("brief")))


@m.mi("ul.lookup", params=("table", "aor"))
def ul_lookup(params: Any, ctx: Any) -> Any:
    """The live bindings of an AoR ("user", "user@domain" or a SIP URI)."""
    found = usrloc_for(ctx.core).lookup(_text(params, "table"), _text(params, "aor"))
    if found is None:
        raise MiError(COMMAND_FAILED, "AOR not found")
    return {"AoR": _text(params, "aor"), "Contacts": found}


@m.mi("ul.rm", params=("table", "aor"))
async def ul_rm(params: Any, ctx: Any) -> Any:
    """Remove every binding of an AoR."""
    ul = usrloc_for(ctx.core)
    n = ul.rm(_text(params, "table"), _text(params, "aor"))
    await ul.flush()
    return {"removed": n}


@m.mi("ul.rm_contact", params=("table", "aor", "contact"))
async def ul_rm_contact(params: Any, ctx: Any) -> Any:
    """Remove one binding of an AoR, by its contact address."""
    ul = usrloc_for(ctx.core)
    n = ul.rm(_text(params, "table"), _text(params, "aor"), _text(params, "contact"))
    if not n:
        raise MiError(COMMAND_FAILED, "Contact not found")
    await ul.flush()
    return {"removed": n}


@m.mi("ul.add", params=("table", "aor", "contact", "expires", "q?", "path?", "flags?",
                        "cflags?", "methods?"))
async def ul_add(params: Any, ctx: Any) -> Any:
    """Add or replace a binding: expires in seconds (0: permanent), q 0..1 (-1: none)."""
    ul = usrloc_for(ctx.core)
    try:
        c = ul.add(_text(params, "table"), _text(params, "aor"), _text(params, "contact"),
                   int(_number(params, "expires", 0)), _number(params, "q", -1.0),
                   _text(params, "path", ""), int(_number(params, "flags", 0)),
                   int(_number(params, "cflags", 0)), params.get("methods") or None)
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    await ul.flush()
    return {"AoR": c.aor, "Ruid": c.ruid}


@m.mi("ul.flush")
async def ul_flush(params: Any, ctx: Any) -> Any:
    """Wait until every change is in the location file."""
    await usrloc_for(ctx.core).flush()
    return "ok"


MODULE = m.build()


def usrloc_for(core: Any, *, clock: Clock | None = None) -> Usrloc:
    """The server's location service: made on first use from ``[modparams.usrloc]``, its
    file loaded, and run in the server's nursery (until the module registry starts
    modules at start-up). A file that cannot be opened is logged and the table lives in
    memory only."""
    ul = getattr(core, "usrloc", None)
    if isinstance(ul, Usrloc):
        return ul
    # a core without the usrloc module: no file
    params = modparams_of(core, "usrloc", UsrlocParams, UsrlocParams(db_url="none"))
    data_dir = data_dir_of(core)
    ul = None
    try:
        ul = Usrloc(params, db_path=params.db_path(data_dir), clock=clock)
        ul.open()
    except (OSError, sqlite3.Error) as exc:
        log.error("usrloc: cannot use %s (%s): registrations are kept in memory only",
                  params.db_url, exc)
        if ul is not None and ul.writer is not None:
            ul.writer.close()
        ul = Usrloc(params, db_path=None, clock=clock)
    nursery = getattr(getattr(core, "tm", None), "nursery", None)
    if nursery is not None:
        nursery.start_soon(_run, ul)
    core.usrloc = ul
    return ul


async def _run(ul: Usrloc) -> None:
    try:
        await ul.run()
    except Exception:  # a bug here must not take the server down
        log.exception("the usrloc service stopped")
