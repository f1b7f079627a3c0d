"""One location table in memory (Kamailio's ``udomain_t``): AoR -> bindings.

Every change goes through :meth:`Domain.insert`, :meth:`Domain.update` and
:meth:`Domain.delete`, which also queue the SQL that keeps the file in step (unless the
binding is memory-only, ``FL_MEM``). Reads never return an expired binding; the sweep
(:meth:`Domain.expire`) only frees memory and file rows, in bounded steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .contact import FL_MEM, Contact, best_first
from .store import LocationStore


class Domain:
    """The bindings of one table (``"location"``)."""

    def __init__(self, name: str, store: LocationStore | None = None, *,
                 desc_time_order: bool = False) -> None:
        self.name = name
        self.store = store
        self.desc_time_order = desc_time_order
        self._records: dict[str, list[Contact]] = {}
        self._by_ruid: dict[str, Contact] = {}

    # -- reads ------------------------------------------------------------------------

    def aors(self) -> list[str]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def all(self, aor: str) -> list[Contact]:
        """Every binding of the AoR as stored (expired ones included), in insertion order."""
        return list(self._records.get(aor, ()))

    def valid(self, aor: str, now: float) -> list[Contact]:
        """The live bindings of the AoR, best first."""
        return best_first((c for c in self._records.get(aor, ()) if c.valid(now)),
                          self.desc_time_order)

    def by_ruid(self, ruid: str) -> Contact | None:
        return self._by_ruid.get(ruid)

    def contacts(self) -> Iterator[Contact]:
        for cs in self._records.values():
            yield from cs

    # -- changes ----------------------------------------------------------------------

    def insert(self, c: Contact) -> None:
        self._records.setdefault(c.aor, []).append(c)
        self._by_ruid[c.ruid] = c
        self._persist(c)

    def update(self, c: Contact) -> None:
        """``c`` (already in the table) was changed in place."""
        self._persist(c)

    def delete(self, c: Contact) -> None:
        cs = self._records.get(c.aor)
        if cs is None or c not in cs:
            return
        cs.remove(c)
        if not cs:
            del self._records[c.aor]
        self._by_ruid.pop(c.ruid, None)
        if self.store is not None and c.persisted:
            self.store.delete(self.name, c.ruid)

    def delete_aor(self, aor: str) -> list[Contact]:
        removed = self.all(aor)
        for c in removed:
            self.delete(c)
        return removed

    def load(self, contacts: Iterable[Contact]) -> None:
        """Bindings read from the file at start (already persisted)."""
        for c in contacts:
            self._records.setdefault(c.aor, []).append(c)
            self._by_ruid[c.ruid] = c

    def _persist(self, c: Contact) -> None:
        if self.store is None:
            return
        if c.flags & FL_MEM:
            if c.persisted:  # it was written before it became memory-only: forget the row
                self.store.delete(self.name, c.ruid)
                c.persisted = False
            return
        self.store.upsert(self.name, c)
        c.persisted = True

    # -- expiry -----------------------------------------------------------------------

    def expire(self, aors: Iterable[str], now: float) -> int:
        """Remove the expired bindings of these AoRs; returns how many."""
        n = 0
        for aor in aors:
            for c in [c for c in self._records.get(aor, ()) if not c.valid(now)]:
                self.delete(c)
                n += 1
        return n
