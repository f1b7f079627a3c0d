"""KSR.sl: stateless replies (Kamailio ``sl`` module).

``send_reply`` replies statefully when the request has a transaction and
statelessly otherwise (Kamailio: "stateful if a transaction exists").
"""

from __future__ import annotations

from ..script.context import MsgContext
from ..script.exports import REQUEST_ROUTES, ModuleBuilder

m = ModuleBuilder("sl", "Stateless replies.")

_ROUTES = REQUEST_ROUTES


def _check_code(code: int) -> bool:
    return 100 <= code <= 699


@m.export(("int", "str"), routes=_ROUTES)
def sl_send_reply(ctx: MsgContext, code: int, reason: str) -> int:
    """Send a reply statelessly. Returns 1, or -1 on failure (bad code, ACK, not a request)."""
    if not _check_code(code):
        return -1
    return 1 if ctx.core.send_reply(ctx, code, reason) else -1


@m.export(("int", "str"), routes=_ROUTES)
def send_reply(ctx: MsgContext, code: int, reason: str) -> int:
    """Reply statefully if the request has a transaction, else statelessly."""
    if not _check_code(code):
        return -1
    tx = ctx.transaction
    if tx is not None and hasattr(tx, "reply"):
        return int(tx.reply(ctx, code, reason))
    return 1 if ctx.core.send_reply(ctx, code, reason) else -1


def _error_reply(ctx: MsgContext) -> int:
    code = ctx.last_error or 500
    return 1 if ctx.core.send_reply(ctx, code, _ERROR_REASONS.get(code)) else -1


# Kamailio's err2reason_phrase() wording for the internal errors we report.
_ERROR_REASONS = {
    477: "Unfortunately error on sending to next hop occurred",
    478: "Unresolvable destination",
    500: "Server Internal Error",
    503: "Service Unavailable",
}


@m.export(routes=_ROUTES)
def sl_reply_error(ctx: MsgContext) -> int:
    """Reply with the error of the last failed internal operation (500 if unknown)."""
    return _error_reply(ctx)


@m.export(routes=_ROUTES)
def send_reply_error(ctx: MsgContext) -> int:
    """Like sl_reply_error (stateful when a transaction exists)."""
    return _error_reply(ctx)


MODULE = m.build()
