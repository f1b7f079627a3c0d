"""Embedded persistence: SQLite files written by one writer task each, and the clock
that maps in-memory deadlines (trio's clock) to epoch seconds on disk.

* :mod:`.sqlite`: ``db_url`` parsing, :class:`SqliteWriter` (ordered, group-committed
  writes off the event loop), :class:`Clock`.
* :mod:`.htable`: the hash tables of the ``htable`` module (Kamailio's ``$sht``).
"""

from __future__ import annotations

from .sqlite import Clock, DbUrlError, SqliteWriter, check_identifier, resolve_db_url

__all__ = ["Clock", "DbUrlError", "SqliteWriter", "check_identifier", "resolve_db_url"]
