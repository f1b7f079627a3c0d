"""KSR.sanity: message sanity checks (Kamailio ``sanity`` module).

The parser already refuses what cannot be framed or matched (RFC 4475); these
checks are the ones a Kamailio script asks for on top, with Kamailio's bit
values. A failed check sends its reply (400, 416, 420, 505) and returns -1.

Message checks (``mflags``): 1 R-URI SIP version, 2 R-URI scheme, 4 required
headers, 8 Via SIP version, 32 CSeq method, 64 CSeq value, 128 Content-Length,
256 Expires value, 512 Proxy-Require, 1024 URIs parse (which ones: ``uflags``
1 R-URI, 2 From, 4 To, 8 Contact), 4096 duplicated From/To tags. Default 3047.

Checks 1, 8, 64 and 128 (and 32, also done here) are the parser's job: a request
failing them is answered 400 or 505 before any route runs.
"""

from __future__ import annotations

import logging

from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..sip.errors import BadMessage
from ..sip.headers import parse_uint_untrusted
from ..sip.message import SipRequest

log = logging.getLogger("trio_sip.script")

m = ModuleBuilder("sanity", "Message sanity checks.")

DEFAULT_MSG_CHECKS = 3047
DEFAULT_URI_CHECKS = 7
_SCHEMES = ("sip", "sips", "tel", "tels")
_ROUTES = RouteType.REQUEST | RouteType.CORE_REPLY | RouteType.ONREPLY


def _fail(ctx: MsgContext, code: int, reason: str, why: str, headers: tuple[str, ...] = ()) -> int:
    log.info("sanity check failed: %s", why)
    ctx.last_error = code
    if isinstance(ctx.msg, SipRequest) and ctx.msg.method != "ACK":
        ctx.core.send_reply(ctx, code, reason, headers)
    return -1


def _check(ctx: MsgContext, mflags: int, uflags: int) -> int:
    msg = ctx.msg
    req = msg if isinstance(msg, SipRequest) else None
    if req is not None:
        if mflags & 2:
            scheme = req.ruri_view.scheme  # read only: no copy of the parse
            if scheme not in _SCHEMES:
                return _fail(ctx, 416, "Unsupported URI Scheme in Request URI",
                             f"R-URI scheme {scheme!r}")
        if mflags & 4:
            for h in ("via", "from", "to", "call-id", "cseq"):
                if not msg.has(h):
                    return _fail(ctx, 400, "Missing Required Header in Request", f"no {h}")
        if mflags & 32 and req.cseq_method != req.method:
            return _fail(ctx, 400, "CSeq method does not match request method", "CSeq method")
        if mflags & 256:
            try:
                exp = msg.get("expires")
                if exp is not None:
                    parse_uint_untrusted(exp, "Expires", 2**32 - 1)
            except BadMessage as exc:
                return _fail(ctx, 400, "Bad Expires Header", exc.reason)
        if mflags & 512 and msg.has("proxy-require"):  # (most requests have none)
            tags = [t.strip() for v in msg.get_all("proxy-require") for t in v.split(",")]
            tags = [t for t in tags if t]
            if tags:
                return _fail(ctx, 420, "Bad Extension", f"Proxy-Require {tags}",
                             (f"Unsupported: {', '.join(tags)}",))
        if mflags & 1024:
            try:
                if uflags & 1:
                    _ = req.ruri_view
                # the tags parse From/To if not done yet (BadMessage if they do not parse)
                # without copying the parser's shared parse, as .from_/.to do
                if uflags & 2:
                    _ = msg.from_tag
                if uflags & 4:
                    _ = msg.to_tag
                if uflags & 8 and req.method in ("INVITE", "REGISTER", "SUBSCRIBE", "REFER"):
                    msg.contacts()
            except BadMessage as exc:
                return _fail(ctx, 400, "Bad URI", exc.reason)
        if mflags & 4096:
            try:
                for which, na in (("From", msg.from_view), ("To", msg.to_view)):
                    if sum(1 for k, _ in na.params if k.lower() == "tag") > 1:
                        return _fail(ctx, 400, f"Many {which} Tag Params",
                                     f"duplicated {which} tag")
            except BadMessage as exc:
                return _fail(ctx, 400, "Bad URI", exc.reason)
    return 1


@m.export(("int", "int"), routes=_ROUTES)
def sanity_check(ctx: MsgContext, mflags: int, uflags: int) -> int:
    """Run the checks in ``mflags``/``uflags``; 1 if the message passes, else -1 (replied)."""
    return _check(ctx, mflags, uflags)


@m.export(routes=_ROUTES)
def sanity_check_defaults(ctx: MsgContext) -> int:
    """sanity_check with the default flags (3047, 7)."""
    return _check(ctx, DEFAULT_MSG_CHECKS, DEFAULT_URI_CHECKS)


@m.export(routes=_ROUTES)
def sanity_reply(ctx: MsgContext) -> int:
    """Kamailio sends the failure reply from sanity_reply when autodrop is off; trio-sip
    always replies at once, so this only reports whether a reply was sent."""
    return 1 if ctx.replied else -1


MODULE = m.build()
