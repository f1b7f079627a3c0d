"""The location service: its tables, their file, the expiry sweep, and the Python API
the MI commands use (Kamailio ``ul.dump``, ``ul.lookup``, ``ul.rm``, ``ul.rm_contact``,
``ul.add``, ``ul.flush``).

One :class:`Usrloc` per server, made on first use by the registrar (modules/usrloc.py
``usrloc_for``) and run in the server's nursery: :meth:`run` is the writer task of the
file and the sweep. Without it (a test on a bare context) changes are committed when
:meth:`flush` is called, in the calling thread.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import Counter
from typing import Any

import trio
import trio.lowlevel

from ..storage.sqlite import Clock, SqliteWriter, check_identifier
from .aor import normalize_aor
from .contact import Q_UNSPECIFIED, Contact, contact_info
from .domain import Domain
from .params import UsrlocParams
from .store import LocationStore

log = logging.getLogger("trio_sip.usrloc")


class Usrloc:
    """Every location table of the server, in memory, with their SQLite image."""

    def __init__(self, params: UsrlocParams | None = None, *, db_path: str | None = None,
                 clock: Clock | None = None) -> None:
        self.params = params if params is not None else UsrlocParams()
        self.clock = clock if clock is not None else Clock()
        self.writer: SqliteWriter | None = None
        self.store: LocationStore | None = None
        if db_path is not None:
            self.writer = SqliteWriter(db_path, max_pending=self.params.db_max_pending,
                                       name="usrloc")
            self.store = LocationStore(self.writer, self.clock)
        self.domains: dict[str, Domain] = {}
        self.stats: Counter[str] = Counter()
        self._ruids = itertools.count(1)
        self._ruid_prefix = f"uloc-{int(self.clock.wall()):x}-{os.getpid():x}"
        self.running = False

    # -- start and stop ---------------------------------------------------------------

    def open(self) -> None:
        """Load every table of the file (bindings that expired meanwhile are dropped)."""
        if self.store is None:
            return
        for name in self.store.tables():
            d = self._new_domain(name)
            contacts = self.store.load(name)
            d.load(contacts)
            self.stats["loaded"] += len(contacts)
        if self.stats["loaded"]:
            log.info("usrloc: %d binding(s) loaded from %s", self.stats["loaded"],
                     self.writer.path if self.writer else "-")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The service's tasks: the file's writer and the expiry sweep. Cancel to stop."""
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                if self.writer is not None:
                    await nursery.start(self.writer.run)
                nursery.start_soon(self._sweeper)
                task_status.started()
        finally:
            self.running = False

    def close(self) -> None:
        """Commit what is queued and close the file (no writer task running)."""
        if self.writer is not None and not self.writer.running:
            self.writer.flush_sync()
            self.writer.close()

    async def flush(self) -> None:
        """Wait until every change made so far is in the file."""
        if self.writer is not None:
            await self.writer.flush()

    @property
    def dirty(self) -> bool:
        """Changes wait to be committed."""
        return self.writer is not None and self.writer.dirty

    # -- tables -----------------------------------------------------------------------

    def domain(self, name: str) -> Domain:
        """The table ``name`` (made, and created in the file, on first use). ValueError for
        a name that cannot be an SQL table name."""
        d = self.domains.get(name)
        if d is None:
            check_identifier(name)
            d = self._new_domain(name)
            if self.store is not None:
                self.store.create(name)
        return d

    def _new_domain(self, name: str) -> Domain:
        d = Domain(name, self.store, desc_time_order=bool(self.params.desc_time_order))
        self.domains[name] = d
        return d

    def new_ruid(self) -> str:
        return f"{self._ruid_prefix}-{next(self._ruids):x}"

    # -- expiry -----------------------------------------------------------------------

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.params.timer_interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Remove expired bindings from memory and file, ``sweep_batch`` AoRs at a time
        with a checkpoint between steps. Returns how many were removed."""
        removed = 0
        batch = self.params.sweep_batch
        for d in list(self.domains.values()):
            aors = d.aors()
            for i in range(0, len(aors), batch):
                removed += d.expire(aors[i:i + batch], self.clock.now())
                await trio.lowlevel.checkpoint()
        self.stats["expired"] += removed
        return removed

    # -- the MI API -------------------------------------------------------------------

    def _aor(self, aor: str) -> str:
        return normalize_aor(aor, use_domain=bool(self.params.use_domain))

    def dump(self, brief: bool = False) -> dict[str, Any]:
        """Every table, AoR and live binding (Kamailio ``ul.dump``; ``brief``: addresses
        only)."""
        now, epoch = self.clock.now(), self.clock.wall()
        out = []
        for name, d in sorted(self.domains.items()):
            aors = []
            for aor in sorted(d.aors()):
                live = d.valid(aor, now)
                if not live:
                    continue
                contacts = ([{"Address": c.uri} for c in live] if brief
                            else [contact_info(c, now, epoch) for c in live])
                aors.append({"AoR": aor, "Contacts": contacts})
            out.append({"Domain": name, "AoRs": aors,
                        "Stats": {"Records": len(aors)}})
        return {"Domains": out}

    def lookup(self, table: str, aor: str) -> list[dict[str, Any]] | None:
        """The live bindings of an AoR (Kamailio ``ul.lookup``); None if it has none."""
        d = self.domains.get(table)
        if d is None:
            return None
        now, epoch = self.clock.now(), self.clock.wall()
        live = d.valid(self._aor(aor), now)
        return [contact_info(c, now, epoch) for c in live] or None

    def rm(self, table: str, aor: str, contact: str | None = None) -> int:
        """Remove an AoR's bindings, or only the one with ``contact`` as address (Kamailio
        ``ul.rm`` / ``ul.rm_contact``). Returns how many were removed."""
        d = self.domains.get(table)
        if d is None:
            return 0
        key = self._aor(aor)
        if contact is None:
            return len(d.delete_aor(key))
        gone = [c for c in d.all(key) if c.uri == contact]
        for c in gone:
            d.delete(c)
        return len(gone)

    def add(self, table: str, aor: str, contact: str, expires: int, q: float = -1.0,
            path: str = "", flags: int = 0, cflags: int = 0,
            methods: str | None = None) -> Contact:
        """Add or replace a binding (Kamailio ``ul.add``): ``expires`` seconds from now, 0
        for permanent; ``q`` 0..1 or -1 for unspecified."""
        d = self.domain(table)
        key = self._aor(aor)
        now = self.clock.now()
        deadline = math.inf if expires == 0 else now + expires
        qv = Q_UNSPECIFIED if q < 0 else min(1000, round(q * 1000))
        for c in d.all(key):
            if c.uri == contact:
                c.expires, c.q, c.path, c.flags, c.cflags = deadline, qv, path, flags, cflags
                c.methods, c.last_modified = methods, now
                d.update(c)
                return c
        c = Contact(aor=key, uri=contact, expires=deadline, q=qv, path=path, flags=flags,
                    cflags=cflags, methods=methods, ruid=self.new_ruid(), last_modified=now,
                    callid="ul.add", cseq=1)
        d.insert(c)
        return c

    def statistics(self) -> dict[str, int]:
        now = self.clock.now()
        out = dict(self.stats)
        out["records"] = sum(len(d) for d in self.domains.values())
        out["contacts"] = sum(1 for d in self.domains.values() for c in d.contacts()
                              if c.valid(now))
        if self.writer is not None:
            out.update(self.writer.stats)
        return out
