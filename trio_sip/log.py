"""Logging for the server: one line per event, tagged with the call it belongs to.

Why a module of our own rather than ``logging.basicConfig``:

* **Kamailio's levels.** Route authors come from Kamailio, where ``notice`` sits
  between ``info`` and ``warn`` and ``crit`` is the short name of ``critical``.
  Their scripts call ``KSR.log("notice", ...)`` and their configs say
  ``log_level = "notice"``, so we register a :data:`NOTICE` level (25) and accept
  Kamailio's short names (``dbg``, ``warn``, ``err``, ``crit``) beside Python's.

* **The call, on every line.** A proxy's log is read one call at a time. While
  :data:`current_call_id` is set (the runtime sets it in the task that serves a
  transaction, see :func:`call_id_context`), every line logged from that task,
  from any module, carries `` [call-id]``. A :class:`contextvars.ContextVar` is
  the right carrier because every Trio task runs in its own copy of the context:
  a value set in one transaction's task is invisible to the others, and child
  tasks (branches, timers, async operations) inherit it for free.

* **Script locations.** Lines logged by Lua routes go to :data:`lua_logger`
  (``trio_sip.script``) with ``extra={"lua_location": "routes/default.lua:42"}``
  and the location is printed before the message, so a route author reads the
  line of *their* file, not of our bridge.

The format is::

    2026-11-29T20:31:02.123Z INFO  trio_sip.proxy [a84b4c76e66710] message

UTC with milliseconds, so lines from several nodes sort together.

Cost when a level is disabled
-----------------------------
``logger.debug("... %s", x)`` with DEBUG disabled costs one ``isEnabledFor`` check
(a cached dict lookup in :mod:`logging`) and no formatting: keep the %-style lazy
arguments, never f-strings, in log calls on the message path. Where building the
*arguments* is itself costly (serialising a message, dumping a transaction), guard
the call with ``if log.isEnabledFor(logging.DEBUG):``. The call-id filter and the
formatter run only for records that are actually emitted.

Untrusted text
--------------
Messages often quote what a peer sent. A CR or LF in such text could forge a whole
log line, so the formatter prints ``\\r`` as an escape and indents every
continuation line: only real records start with a timestamp.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO

__all__ = [
    "CANONICAL_LEVELS",
    "LEVELS",
    "NOTICE",
    "CallIdFilter",
    "ServerFormatter",
    "call_id_context",
    "current_call_id",
    "level_from_name",
    "log_script",
    "lua_logger",
    "setup_logging",
]

#: Kamailio's ``L_NOTICE``: between INFO (20) and WARNING (30).
NOTICE: Final = 25
logging.addLevelName(NOTICE, "NOTICE")

#: Every level name we accept, in config files and from ``KSR.log``: Python's
#: names plus Kamailio's (``dbg``, ``warn``, ``err``, ``crit``, ``alert``,
#: ``bug``). Kamailio's ``alert`` and ``bug`` are above ``crit``; Python has
#: nothing above CRITICAL, so they map to it.
LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "dbg": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "err": logging.ERROR,
    "critical": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "bug": logging.CRITICAL,
}

#: The names we document and list in error messages; the others are aliases.
CANONICAL_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical")

#: The Call-ID of the call the current task is serving, or None outside calls.
current_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trio_sip_current_call_id", default=None
)

#: The logger for lines written by route scripts (``KSR.log``, ``KSR.xlog``...).
lua_logger: Final = logging.getLogger("trio_sip.script")

# Marks the handler installed by setup_logging(), so that calling it again (tests,
# a log-level change at reload) replaces our handler and leaves others alone.
_HANDLER_MARK: Final = "_trio_sip_handler"


def level_from_name(name: str) -> int:
    """Return the numeric level for a level *name* (see :data:`LEVELS`).

    Case-insensitive, because ``KSR.log("NOTICE", ...)`` appears in scripts in
    the wild. Raises ValueError naming the accepted names.
    """
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}: expected one of {'|'.join(CANONICAL_LEVELS)}"
            " (or Kamailio's dbg, warn, err, crit)"
        ) from None


@contextmanager
def call_id_context(call_id: str | None) -> Iterator[None]:
    """Tag every line logged inside the ``with`` block with *call_id*.

    Use it in the task that owns a transaction. Trio gives each task its own
    copy of the context, so this never leaks into sibling tasks, and child tasks
    started inside the block inherit the value.
    """
    token = current_call_id.set(call_id)
    try:
        yield
    finally:
        current_call_id.reset(token)


class CallIdFilter(logging.Filter):
    """Copy :data:`current_call_id` into each record as ``record.call_id``.

    This runs when the record is handled, which :mod:`logging` does
    synchronously in the task that logged it: the context read here is the
    caller's. Copying it onto the record (rather than reading the contextvar in
    the formatter) keeps the value right even if a handler later formats the
    record elsewhere (a ``QueueHandler`` thread). A ``call_id`` passed
    explicitly through ``extra`` wins.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = current_call_id.get()
        return True


def _escape_line_breaks(text: str) -> str:
    # CR is escaped (a terminal would overwrite the line); LF is kept but the
    # continuation is indented so it cannot pass for a record of its own.
    return text.replace("\r", "\\r").replace("\n", "\n    ")


class ServerFormatter(logging.Formatter):
    """Format records as ``TIME LEVEL LOGGER [call-id] location: message``.

    The call-id appears only when set, the Lua location (``lua_location``
    extra) only on script lines. Tracebacks and stack info are appended as
    :class:`logging.Formatter` does.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        parts = [self.formatTime(record), f"{record.levelname:<5}", record.name]
        call_id = getattr(record, "call_id", None)
        if call_id:
            parts.append(f"[{_escape_line_breaks(str(call_id))}]")
        location = getattr(record, "lua_location", None)
        if location:
            parts.append(f"{location}:")
        message = record.getMessage()
        if "\n" in message or "\r" in message:
            message = _escape_line_breaks(message)
        parts.append(message)
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def setup_logging(level: str, stream: TextIO | None = None) -> logging.Handler:
    """Send all logging to *stream* (default: ``sys.stderr`` at call time) at *level*.

    Configures the root logger, not just ``trio_sip``, so that warnings from
    the libraries we run on (trio, lupa, dnspython) reach the same place in the
    same format. Calling it again replaces the handler it installed before and
    leaves any other handler (pytest's ``caplog``) in place. The stream default
    is resolved at call time rather than bound at import, so a redirected
    ``sys.stderr`` is honoured. Returns the handler, mostly for tests.
    """
    numeric = level_from_name(level)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(CallIdFilter())
    handler.setFormatter(ServerFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def log_script(level: int, message: str, location: str | None = None) -> None:
    """Log one line from a route script on :data:`lua_logger`.

    *location* is ``"file:line"`` of the script statement that logged it. The
    level check comes first so that a disabled ``KSR.dbg`` costs one lookup.
    The message is passed as an argument, never as the format string: script
    text may contain ``%``.
    """
    if lua_logger.isEnabledFor(level):
        extra = {"lua_location": location} if location else None
        lua_logger.log(level, "%s", message, extra=extra)
