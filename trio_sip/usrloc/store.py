"""The SQLite image of the location tables: one SQL table per usrloc domain, with
Kamailio's column names where they exist (``aor`` replaces username/domain: it is the
key as the registrar computed it). Expiries are epoch seconds, 0 for permanent."""

from __future__ import annotations

import logging
from typing import Any

from ..storage.sqlite import Clock, SqliteWriter, check_identifier
from .contact import Contact

log = logging.getLogger("trio_sip.usrloc")

#: (column, SQL type); the order of the INSERT and of the rows read back
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ruid", "TEXT PRIMARY KEY"),
    ("aor", "TEXT NOT NULL"),
    ("contact", "TEXT NOT NULL"),
    ("received", "TEXT NOT NULL DEFAULT ''"),
    ("path", "TEXT NOT NULL DEFAULT ''"),
    ("expires", "REAL NOT NULL"),
    ("q", "INTEGER NOT NULL DEFAULT -1"),
    ("callid", "TEXT NOT NULL DEFAULT ''"),
    ("cseq", "INTEGER NOT NULL DEFAULT 0"),
    ("last_modified", "REAL NOT NULL DEFAULT 0"),
    ("flags", "INTEGER NOT NULL DEFAULT 0"),
    ("cflags", "INTEGER NOT NULL DEFAULT 0"),
    ("user_agent", "TEXT NOT NULL DEFAULT ''"),
    ("socket", "TEXT NOT NULL DEFAULT ''"),
    ("methods", "TEXT"),
    ("instance", "TEXT NOT NULL DEFAULT ''"),
    ("reg_id", "INTEGER NOT NULL DEFAULT 0"),
    ("server_id", "INTEGER NOT NULL DEFAULT 0"),
    ("connection_id", "INTEGER NOT NULL DEFAULT -1"),
    ("keepalive", "INTEGER NOT NULL DEFAULT 0"),
)
_NAMES = [c for c, _ in COLUMNS]
_REQUIRED = {"ruid", "aor", "contact", "expires"}


class LocationStore:
    """Rows in, rows out; writes go through the file's :class:`SqliteWriter`."""

    def __init__(self, writer: SqliteWriter, clock: Clock) -> None:
        self.writer = writer
        self.clock = clock

    def tables(self) -> list[str]:
        """The location tables already in the file (start-up)."""
        out = []
        for (name,) in self.writer.query(
                "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
            cols = {row[1] for row in self.writer.query(f'PRAGMA table_info("{name}")')}
            if cols >= _REQUIRED:
                out.append(str(name))
        return out

    def create(self, table: str) -> None:
        """Queue the table's creation (a domain first used while serving)."""
        check_identifier(table)
        cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
        self.writer.submit(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
        self.writer.submit(f'CREATE INDEX IF NOT EXISTS "{table}_aor" ON "{table}" (aor)')

    def load(self, table: str) -> list[Contact]:
        """Every binding still valid (start-up); expired rows are deleted."""
        check_identifier(table)
        epoch_now = self.clock.wall()
        self.writer.query(f'DELETE FROM "{table}" WHERE expires != 0 AND expires <= ?',
                          (epoch_now,))
        present = {row[1] for row in self.writer.query(f'PRAGMA table_info("{table}")')}
        names = [n for n in _NAMES if n in present]
        rows = self.writer.query(f'SELECT {", ".join(names)} FROM "{table}"')
        out = []
        for row in rows:
            try:
                out.append(self._contact(dict(zip(names, row, strict=True))))
            except (TypeError, ValueError) as exc:
                log.warning("usrloc: skipping a bad row of %s: %s", table, exc)
        return out

    def _contact(self, r: dict[str, Any]) -> Contact:
        return Contact(
            aor=str(r["aor"]), uri=str(r["contact"]),
            expires=self.clock.from_epoch(float(r["expires"])),
            q=int(r.get("q", -1)), callid=str(r.get("callid") or ""),
            cseq=int(r.get("cseq") or 0), received=str(r.get("received") or ""),
            path=str(r.get("path") or ""), user_agent=str(r.get("user_agent") or ""),
            socket=str(r.get("socket") or ""),
            methods=None if r.get("methods") is None else str(r["methods"]),
            instance=str(r.get("instance") or ""), reg_id=int(r.get("reg_id") or 0),
            flags=int(r.get("flags") or 0), cflags=int(r.get("cflags") or 0),
            ruid=str(r["ruid"]),
            last_modified=self.clock.from_epoch(float(r.get("last_modified") or 0) or 1.0),
            conn_id=int(r.get("connection_id", -1)), server_id=int(r.get("server_id") or 0),
            keepalive=int(r.get("keepalive") or 0), persisted=True,
        )

    def upsert(self, table: str, c: Contact) -> None:
        values = (
            c.ruid, c.aor, c.uri, c.received, c.path, self.clock.to_epoch(c.expires), c.q,
            c.callid, c.cseq, self.clock.to_epoch(c.last_modified), c.flags, c.cflags,
            c.user_agent, c.socket, c.methods, c.instance, c.reg_id, c.server_id, c.conn_id,
            c.keepalive,
        )
        marks = ", ".join("?" for _ in _NAMES)
        self.writer.submit(
            f'INSERT OR REPLACE INTO "{table}" ({", ".join(_NAMES)}) VALUES ({marks})', values)

    def delete(self, table: str, ruid: str) -> None:
        self.writer.submit(f'DELETE FROM "{table}" WHERE ruid = ?', (ruid,))
