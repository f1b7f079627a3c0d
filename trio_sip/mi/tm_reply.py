"""Replying to a server transaction from the management interface.

* ``tm.reply CODE REASON TRANS_ID TO_TAG [HEADERS] [BODY]``: Kamailio's ``tm.reply``;
  ``TRANS_ID`` is ``"INDEX:LABEL"`` ($T(id_index), $T(id_label));
* ``tm.t_reply CODE REASON TINDEX TLABEL [TO_TAG] [HEADERS] [BODY]``: the same with the
  index and label as two params (OpenSIPS ``t_reply`` spells the id as one; these are
  the values ``$T(id_index)`` / ``$T(id_label)`` give a route that called
  ``KSR.tmx.t_suspend()`` and handed them to an operator or an external service).

The transaction must still be waiting for its final reply: suspended (t_suspend), or
relayed with branches pending, or created by t_newtran and not answered yet. A
provisional reply (101..199) is sent and the transaction goes on; a final reply
(200..699) ends it: a suspended transaction is no longer suspended (a later
t_continue is refused), pending branches are CANCELled (as Kamailio does for a local
final reply of an INVITE), and the transaction lingers for wt as usual.

``TO_TAG`` ("" or "." for none) replaces the transaction's own To tag for this reply
and later ones (ACK matching follows it); ``HEADERS`` are extra header lines, separated
by CRLF or LF, each ``Name: value`` (the rules of
:func:`~trio_sip.sip.headers.parse_header_lines_untrusted`: a token name, blank lines
skipped, folded lines joined); ``BODY`` goes with a ``Content-Type`` given in HEADERS
(Kamailio's convention). A header line without a colon or with a name that is not a
token, a CR, LF, NUL or other control character in a header line or the reason phrase
(header injection), a header the reply writes itself (Via, From, To, Call-ID, CSeq,
Content-Length, also in compact form), or a code out of 100..699 is refused with
-32602 naming the line and the reason, before anything is sent. An unknown or finished transaction is -32000 "481 No such
transaction"; one already answered, -32000 naming its final status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ..sip.errors import BadMessage
from ..sip.headers import header_key, is_token, parse_header_lines_untrusted
from .registry import COMMAND_FAILED, InvalidParams, MiCommand, MiContext, MiError

__all__ = ["commands"]

_CTL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: headers the reply builder writes itself (keys: compact forms are expanded): a copy
#: from HEADERS would contradict them
_OURS: Final = frozenset({"via", "from", "to", "call-id", "cseq", "content-length"})


def _int(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, bool):
        raise InvalidParams(f"{key} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidParams(f"{key} must be an integer, got {value!r}")


def _text(params: Mapping[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidParams(f"{key} must be a string")
    return value


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _headers(text: str) -> list[str]:
    """HEADERS checked by the shared rules for header lines given by a caller
    (:func:`~trio_sip.sip.headers.parse_header_lines_untrusted`: token names, folding
    joined, blank lines skipped, no CR/LF/NUL or other control character), then
    without the headers the reply writes itself."""
    try:
        lines = parse_header_lines_untrusted(text)
    except BadMessage as exc:
        raise InvalidParams(f"headers: {exc.reason}") from None
    out = []
    for name, value in lines:
        if header_key(name) in _OURS:
            raise InvalidParams(f"headers: {name} is written by the reply itself")
        out.append(f"{name}: {value}")
    return out


def _reply(ctx: MiContext, index: int, label: int, params: Mapping[str, Any]) -> Any:

    code = _int(params, "code")
    if not 100 <= code <= 699:
        raise InvalidParams(f"code must be 100..699, got {code}")
    reason = _text(params, "reason")
    if _CTL.search(reason):
        raise InvalidParams("reason: control characters are not allowed")
    if not _latin1(reason):
        raise InvalidParams("reason: only ISO-8859-1 characters")
    to_tag = _text(params, "to_tag").strip()
    if to_tag in (".", "-"):
        to_tag = ""
    if to_tag and not is_token(to_tag):
        raise InvalidParams(f"to_tag {to_tag!r} is not a token")
    headers = _headers(_text(params, "headers"))
    body = _text(params, "body").encode("utf-8")
    if body and not any(header_key(h.partition(":")[0]) == "content-type" for h in headers):
        raise InvalidParams("a body needs a Content-Type header in headers")

    tx = ctx.core.tm.by_index.get(index)
    if tx is None or tx.label != label or tx.finished.is_set():
        raise MiError(COMMAND_FAILED, f"481 No such transaction {index}:{label}")
    if tx.final_status:
        raise MiError(COMMAND_FAILED, f"transaction {index}:{label} was already answered "
                      f"({tx.final_status})")
    if tx.expired:
        raise MiError(COMMAND_FAILED, f"transaction {index}:{label} timed out")
    if to_tag and code > 100:
        tx.to_tag = to_tag
    if not tx.reply_local(code, reason or None, headers=headers, body=body):
        raise MiError(COMMAND_FAILED, f"transaction {index}:{label}: the reply could not "
                      "be sent")
    cancelled = 0
    if code >= 200:
        tx.suspended = False
        cancelled = tx.cancel_branches()
    tx.wake()  # the transaction's task sends what was queued and takes new deadlines
    ctx.stats["tm_replies"] += 1
    return {"index": index, "label": label, "code": code, "cancelled_branches": cancelled}


def tm_reply(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Reply to a server transaction (Kamailio tm.reply): CODE REASON TRANS_ID ("index:label"
    from $T(id_index) and $T(id_label)) TO_TAG ("" or ".": the transaction's own) [HEADERS]
    [BODY]. A final reply ends it (pending branches are cancelled)."""
    trans_id = _text(params, "trans_id")
    index, sep, label = trans_id.partition(":")
    if not sep or not index.strip().isdigit() or not label.strip().isdigit():
        raise InvalidParams(f"trans_id must be INDEX:LABEL, got {trans_id!r}")
    return _reply(ctx, int(index), int(label), params)


def tm_t_reply(params: Mapping[str, Any], ctx: MiContext) -> Any:
    """Reply to a suspended or pending server transaction: CODE REASON TINDEX TLABEL
    ($T(id_index), $T(id_label)) [TO_TAG] [HEADERS] [BODY]. A final reply ends it."""
    return _reply(ctx, _int(params, "tindex"), _int(params, "tlabel"), params)


def commands() -> list[MiCommand]:
    """The reply commands, for ``build_registry``."""
    return [
        MiCommand("tm.reply", tm_reply, tm_reply.__doc__ or "",
                  params=("code", "reason", "trans_id", "to_tag", "headers?", "body?")),
        MiCommand("tm.t_reply", tm_t_reply, tm_t_reply.__doc__ or "",
                  params=("code", "reason", "tindex", "tlabel", "to_tag?", "headers?",
                          "body?")),
    ]
