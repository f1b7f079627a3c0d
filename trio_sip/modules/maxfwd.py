"""KSR.maxfwd: Max-Forwards processing (Kamailio ``maxfwd`` module).

``process_maxfwd(limit)`` returns 2 when the header was missing and was added
with ``limit`` (before the first header, where Kamailio puts it), 1 when it was
decremented, -1 when it is 0 (answer 483) and, as in Kamailio, also when
``limit`` is outside 0..255. The decremented value never exceeds ``max_limit``
(70, Kamailio's default for its ``max_limit`` param). A value that is not a
number never gets here: the parser answers such a request 400.
"""

from __future__ import annotations

import logging

from ..script.context import MsgContext
from ..script.exports import REQUEST_ROUTES, ModuleBuilder, RouteType
from ..sip.message import Header

log = logging.getLogger("trio_sip.script")

m = ModuleBuilder("maxfwd", "Max-Forwards checks.")

MAX_LIMIT = 70
_ROUTES = RouteType.REQUEST | RouteType.FAILURE | RouteType.BRANCH


def _current(ctx: MsgContext) -> tuple[Header, int] | None:
    # the first Max-Forwards by the parser's first-of-each-name table (a dict lookup,
    # no scan of the headers): this runs for every request
    h = ctx.msg.first_header("max-forwards")
    return None if h is None else (h, int(h.text))


@m.export(("int",), routes=_ROUTES)
def process_maxfwd(ctx: MsgContext, limit: int) -> int:
    """Decrement Max-Forwards, or add it with ``limit`` when missing."""
    if not 0 <= limit <= 255:
        log.error("KSR.maxfwd.process_maxfwd: invalid limit %d (0..255)", limit)
        return -1
    cur = _current(ctx)
    if cur is None:
        ctx.msg.insert_header_first(f"Max-Forwards: {limit}")
        return 2
    h, value = cur
    if value == 0:
        return -1
    ctx.msg.replace_value_of(h, str(min(value - 1, MAX_LIMIT)))
    return 1


@m.export(("int",), routes=REQUEST_ROUTES)
def is_maxfwd_lt(ctx: MsgContext, limit: int) -> int:
    """1 if Max-Forwards is lower than ``limit``, -1 if not, -2 if missing."""
    if not 0 <= limit <= 255:
        log.error("KSR.maxfwd.is_maxfwd_lt: invalid limit %d (0..255)", limit)
        return -1
    cur = _current(ctx)
    if cur is None:
        return -2
    return 1 if cur[1] < limit else -1


MODULE = m.build()
