"""KSR.hdr: add, remove and read headers (Kamailio core ``hdr`` KEMI submodule).

As in Kamailio, changes are recorded edits applied when the message is sent:
``get``/``is_present`` read the headers as received, so a header appended by
the route is not seen by them. Header names match case-insensitively and
compact forms match their long names (``f`` is ``From``).

A header text passed without a trailing CRLF gets one (Kamailio would send a
broken message instead).
"""

from __future__ import annotations

from typing import Any

from ..script.context import MsgContext
from ..script.exports import ModuleBuilder
from ..sip.headers import header_key

m = ModuleBuilder("hdr", "Header manipulation.")


def _line(text: str) -> str:
    return text.rstrip("\r\n")


@m.export(("str",))
def append(ctx: MsgContext, text: str) -> int:
    """Append a header ("Name: value\\r\\n") after the last header."""
    if not _line(text):
        return -1
    ctx.msg.append_header(_line(text))
    return 1


@m.export(("str", "str"))
def append_after(ctx: MsgContext, text: str, name: str) -> int:
    """Append a header after the first header named ``name`` (after the last header
    when there is none, as Kamailio does)."""
    if not _line(text):
        return -1
    for _i, h in ctx.msg.find(name):
        ctx.msg.insert_at(h.end, _line(text) + "\r\n")
        return 1
    ctx.msg.append_header(_line(text))
    return 1


@m.export(("str",))
def insert(ctx: MsgContext, text: str) -> int:
    """Insert a header before the first header."""
    if not _line(text):
        return -1
    ctx.msg.insert_header_first(_line(text))
    return 1


@m.export(("str", "str"))
def insert_before(ctx: MsgContext, text: str, name: str) -> int:
    """Insert a header before the first header named ``name`` (before the first
    header when there is none, as Kamailio does)."""
    if not _line(text):
        return -1
    for i, _h in ctx.msg.find(name):
        ctx.msg.insert_header_before(i, _line(text))
        return 1
    ctx.msg.insert_header_first(_line(text))
    return 1


@m.export(("str",))
def remove(ctx: MsgContext, name: str) -> int:
    """Remove every header named ``name``."""
    ctx.msg.remove_headers(name)
    return 1


@m.export(("str", "str"))
def rmappend(ctx: MsgContext, name: str, text: str) -> int:
    """Remove headers named ``name``, then append ``text``."""
    ctx.msg.remove_headers(name)
    return append(ctx, text)


@m.export(("str", "str"))
def rminsert(ctx: MsgContext, name: str, text: str) -> int:
    """Remove headers named ``name``, then insert ``text`` first."""
    ctx.msg.remove_headers(name)
    return insert(ctx, text)


@m.export(("str",))
def is_present(ctx: MsgContext, name: str) -> int:
    """1 if a header named ``name`` is in the received message, else -1."""
    return 1 if ctx.msg.has(name) else -1


@m.export(("str",), ret="xval")
def get(ctx: MsgContext, name: str) -> Any:
    """The value of the first header named ``name``, or nil."""
    return ctx.msg.get(name)


@m.export(("str",), ret="xval")
def gete(ctx: MsgContext, name: str) -> Any:
    """Like get, but an empty string when absent."""
    v = ctx.msg.get(name)
    return "" if v is None else v


@m.export(("str",), ret="xval")
def getw(ctx: MsgContext, name: str) -> Any:
    """Like get, but "<null>" when absent."""
    v = ctx.msg.get(name)
    return "<null>" if v is None else v


@m.export(("str", "int"), ret="xval")
def get_idx(ctx: MsgContext, name: str, idx: int) -> Any:
    """The value of the idx-th header named ``name`` (0 first, -1 last), or nil."""
    values = ctx.msg.get_all(name)
    try:
        return values[idx]
    except IndexError:
        return None


@m.export(("str",))
def append_to_reply(ctx: MsgContext, text: str) -> int:
    """Add a header to the next reply this server generates for the request."""
    if not _line(text):
        return -1
    ctx.reply_headers.append(_line(text))
    return 1


@m.export(("str",))
def count(ctx: MsgContext, name: str) -> int:
    """How many headers named ``name`` the message has (trio-sip addition)."""
    key = header_key(name)
    return sum(1 for h in ctx.msg.headers if h.key == key)


MODULE = m.build()
