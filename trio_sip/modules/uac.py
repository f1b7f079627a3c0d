"""KSR.uac: requests sent by the server itself (Kamailio uac ``uac_req_send``), and the
tm management commands that send and cancel them (``tm.t_uac_start``/``t_uac_wait``,
``tm.t_uac_cancel``).

From a route, as in Kamailio::

    KSR.pv.sets("$uac_req(method)", "MESSAGE")
    KSR.pv.sets("$uac_req(ruri)", "sip:alice@127.0.0.1:5080")
    KSR.pv.sets("$uac_req(furi)", "sip:server@example.com")
    KSR.pv.sets("$uac_req(hdrs)", "Content-Type: text/plain\\r\\n")
    KSR.pv.sets("$uac_req(body)", "hello")
    KSR.pv.seti("$uac_req(evroute)", 1)      -- the reply goes to the event callback
    KSR.uac.uac_req_send()

``$uac_req(name)`` fields: ``method``, ``ruri``, ``furi`` and ``turi`` (default: the
R-URI), ``ouri`` (outbound proxy: where the packet goes, the R-URI kept), ``callid``,
``hdrs`` (extra header lines; Content-Type with a body), ``body``, ``sock``
(``proto:host:port``: which of our transports sends; only its protocol matters, one
socket per protocol), ``auser`` and ``apasswd`` (digest credentials: a 401/407 is
answered once with the request again, authenticated, CSeq + 1; runtime/uac.py),
``evroute``, ``evparam`` (up to 128 characters, for the callback), ``evcode`` and
``evtype`` (set for the callback), ``all`` (``$null`` resets every field). The fields
belong to the message being processed (like ``$var``), not to the process: routes that
wait concurrently never see each other's fields. Kamailio's ``flags`` field is not
implemented (setting it is an error).

The reply goes to the **event callback** when ``$uac_req(evroute)`` is set: an
integer other than 0 calls the function named by ``[modparams.uac] event_callback``
(Kamailio's KEMI ``event_callback``), a string names the function itself (trio-sip).
It is called with ``"uac:reply"`` in an event route, once, with the final outcome:
``$uac_req(evcode)`` is the status, ``$uac_req(evtype)`` 1 when a reply was
received (the reply is the message: ``$rs``, ``$rr``, ``$hdr(...)``, ``$rb`` work)
or 2 for a local outcome (408 timeout, 477 send failure; the message is the request
that was sent), and the other fields are those of the request. The callback may wait.

trio-sip's in-place form yields until the final outcome, then goes on::

    local code, reason, body = KSR.uac.uac_req_wait()

(in routes that can wait: request, failure, onreply, branch-failure, event and
timer routes). A negative code means nothing was sent (-1: bad fields). If the
route is cancelled while it waits (its transaction ended), a pending INVITE is
CANCELled; any other request completes unread.

Retransmissions and timeouts are tm's (runtime/uac.py): Timer A/E with ``[tm]
retr_timer1``/``retr_timer2``, a local 408 at ``fr_timer`` (an INVITE that rang:
``fr_inv_timer``), Kamailio's defaults. Statistics: the ``uac`` group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from ..mi.registry import COMMAND_FAILED, InvalidParams, MiContext, MiError, add_module_stats
from ..runtime.uac import LocalUac, UacError, UacRequest, UacResult, local_uacs
from ..script import pv
from ..script.context import MsgContext
from ..script.exports import ModuleBuilder, RouteType
from ..script.modparams import modparams_of
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.headers import header_key, parse_header_lines_untrusted, parse_name_addr_untrusted

log = logging.getLogger("trio_sip.uac")


@dataclass(frozen=True)
class UacParams:
    """``[modparams.uac]``."""

    #: the Lua function called with "uac:reply" for a request sent with
    #: $uac_req(evroute) set to a number (Kamailio's KEMI event_callback)
    event_callback: str = ""
    #: trio-sip: local transactions pending at most; beyond it a send fails (-1, the
    #: MI commands answer 503), counted as "refused"
    max_pending: int = 10_000

    def validate(self) -> None:
        if self.max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if self.event_callback and not self.event_callback.replace("_", "a").replace(
                ".", "a").isalnum():
            raise ValueError(f"event_callback {self.event_callback!r} is not a function name")

    def route_functions(self) -> list[tuple[str, RouteType, str]]:
        """The config-named callback, for the route checks (``trio-sip check``)."""
        if not self.event_callback:
            return []
        return [(self.event_callback, RouteType.EVENT, "modparams.uac.event_callback")]


m = ModuleBuilder("uac", "Requests sent by the server (Kamailio uac uac_req_send), with "
                         "tm's retransmissions and timeouts.", params=UacParams)

R = RouteType
#: routes where uac_req_wait may wait (branch routes and the core reply route cannot)
WAIT_ROUTES: Final = (R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH_FAILURE | R.EVENT
                      | R.TIMER)
_KEY: Final = "\0uac_req"
_LAST: Final = "\0uac_req:last"
#: Kamailio's size limits (uac_send.c MAX_URI_SIZE, MAX_UACH_SIZE, MAX_UACB_SIZE...)
_LIMITS: Final = {"method": 32, "ruri": 1024, "furi": 1024, "turi": 1024, "ouri": 1024,
                  "callid": 128, "hdrs": 2048, "body": 4086, "sock": 1024, "evparam": 128,
                  "auser": 128, "apasswd": 64}
_STR_FIELDS: Final = frozenset(_LIMITS)
_INT_FIELDS: Final = frozenset({"evcode", "evtype"})


# -- $uac_req ------------------------------------------------------------------------------


def _fields(ctx: MsgContext) -> dict[str, Any]:
    f = ctx.vars.get(_KEY)
    if f is None:
        f = ctx.vars[_KEY] = {}
    return f


def _uac_req_get(ctx: MsgContext, name: str) -> Any:
    f = ctx.vars.get(_KEY) or {}
    if name in _INT_FIELDS:
        return int(f.get(name, 0))
    if name == "evroute":
        return f.get("evroute", 0)
    if name in _STR_FIELDS:
        v = f.get(name)
        return v if v else None  # Kamailio: an empty field is $null
    raise pv.PvError(f"$uac_req({name}): unknown field")


def _uac_req_set(ctx: MsgContext, name: str, value: Any) -> None:
    f = _fields(ctx)
    if name == "all":
        if value is not None:
            raise pv.PvError("$uac_req(all) can only be reset ($null)")
        f.clear()
        return
    if value is None:
        f.pop(name, None)
        if name not in _STR_FIELDS and name not in _INT_FIELDS and name != "evroute":
            raise pv.PvError(f"$uac_req({name}): unknown field")
        return
    if name in _STR_FIELDS:
        text = str(value)
        if len(text) >= _LIMITS[name]:
            raise pv.PvError(f"$uac_req({name}): value too long ({len(text)} characters, "
                             f"at most {_LIMITS[name] - 1})")
        f[name] = text
    elif name in _INT_FIELDS:
        f[name] = _int(name, value)
    elif name == "evroute":
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            f[name] = value.strip()  # trio-sip: the callback function's name
        else:
            f[name] = _int(name, value)
    else:
        raise pv.PvError(f"$uac_req({name}): unknown field")


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise pv.PvError(f"$uac_req({name}) takes an integer, not {value!r}") from None


pv.register("uac_req", _uac_req_get, _uac_req_set, needs_arg=True)


def _request_of(fields: dict[str, Any]) -> UacRequest:
    method = fields.get("method")
    ruri = fields.get("ruri")
    if not method or not ruri:
        raise UacError("$uac_req(method) and $uac_req(ruri) are required")
    sock = fields.get("sock")
    outbound = fields.get("ouri") or None
    if sock:
        proto = sock.split(":", 1)[0].lower()
        if proto not in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
            raise UacError(f"$uac_req(sock) {sock!r}: want proto:host:port")
    body = fields.get("body") or ""
    return UacRequest(
        method=method, ruri=ruri, from_uri=fields.get("furi") or None,
        to_uri=fields.get("turi") or None, call_id=fields.get("callid") or None,
        headers=fields.get("hdrs") or "", body=body.encode("latin-1"),
        outbound=outbound, transport=(sock.split(":", 1)[0].lower() if sock else None),
        auth_user=fields.get("auser") or None, auth_password=fields.get("apasswd") or None)


# -- sending -----------------------------------------------------------------------------


def _send(ctx: MsgContext) -> LocalUac | int:
    fields = dict(ctx.vars.get(_KEY) or {})
    try:
        uac = local_uacs(ctx.core).send(_request_of(fields))
    except UacError as exc:
        log.error("uac_req_send: %s", exc.message)
        local_uacs(ctx.core).stats["send_errors"] += 1
        return -1
    evroute = fields.get("evroute")
    if evroute:
        fn = evroute if isinstance(evroute, str) else _event_callback(ctx.core)
        if fn:
            uac.on_final.append(lambda u: _start_event(ctx.core, fn, fields, u))
        else:
            log.warning("uac_req_send: $uac_req(evroute) is set but [modparams.uac] "
                        "event_callback is not: the reply is not delivered")
    return uac


def _event_callback(core: Any) -> str:
    return modparams_of(core, "uac", UacParams).event_callback


def _start_event(core: Any, fn: str, fields: dict[str, Any], uac: LocalUac) -> None:
    nursery = core.tm.nursery
    if nursery is not None:
        nursery.start_soon(_run_event, core, fn, fields, uac)


async def _run_event(core: Any, fn_name: str, fields: dict[str, Any], uac: LocalUac) -> None:
    """The event callback (Kamailio event_route[uac:reply]) with the outcome."""
    result = uac.result
    assert result is not None
    engine = core.engine
    fn = engine.function(fn_name)
    stats = local_uacs(core).stats
    if fn is None:
        log.error("uac: the event callback %s() does not exist in the routes", fn_name)
        stats["callback_errors"] += 1
        return
    msg = result.reply if result.reply is not None else uac.request
    ctx = MsgContext(msg, uac.dest, uac.transport, None, RouteType.EVENT, core)
    ctx.vars[_KEY] = dict(fields, evcode=result.code, evtype=1 if result.reply else 2)
    stats["callbacks"] += 1
    try:
        step = await core._drive(ctx, engine.start(fn, ctx, "uac:reply"))
        await core.flush(ctx)
    except Exception:  # a bug here must not take the server's nursery down
        log.exception("uac event callback %s() could not run", fn_name)
        stats["callback_errors"] += 1
        return
    if step.failed:
        stats["callback_errors"] += 1
        core.stats["script_errors"] += 1
        log.error("uac event callback %s() failed: %s", fn_name, step.traceback or step.value)


@m.export((), routes=R(sum(R)))
def uac_req_send(ctx: MsgContext) -> int:
    """Send the request described by $uac_req(...) as a local UAC transaction (tm
    retransmissions and timeouts). 1 when it was sent, -1 when it cannot be (missing
    method or ruri, a bad field, no route to the next hop). With $uac_req(evroute) the
    final outcome goes to the event callback (see the module doc)."""
    r = _send(ctx)
    return r if isinstance(r, int) else 1


@dataclass(repr=False)
class UacWaitOp(AsyncOp):
    """``KSR.uac.uac_req_wait()``: wait for the final outcome of a local request."""

    uac: LocalUac
    name: str = "uac_req_wait"

    async def run(self, ctx: MsgContext) -> Any:
        done = False
        try:
            result = await self.uac.wait()
            done = True
        finally:
            if not done:
                self.uac.abandon()
        ctx.vars[_LAST] = result
        return result.code


@m.export((), ret="xval", routes=WAIT_ROUTES, name="_wait_start")
def _wait_start(ctx: MsgContext) -> Any:
    """Internal: the Python side of ``KSR.uac.uac_req_wait`` (an operation, or -1)."""
    ctx.vars.pop(_LAST, None)
    r = _send(ctx)
    return r if isinstance(r, int) else UacWaitOp(r)


@m.export((), ret="xval", routes=WAIT_ROUTES, name="_wait_result")
def _wait_result(ctx: MsgContext) -> Any:
    """Internal: code, reason, body of the last uac_req_wait of this message."""
    result = ctx.vars.get(_LAST)
    if not isinstance(result, UacResult):
        return -1, "", ""
    return result.code, result.reason, result.body.decode("latin-1")


m.lua_export(
    "uac_req_wait",
    "function() local r = KSR.uac._wait_start() "
    "if type(r) == 'number' then return r, '', '' end "
    "local c = coroutine.yield(r) "
    "if type(c) == 'number' and c < 0 then return c, '', '' end "
    "return KSR.uac._wait_result() end",
    routes=WAIT_ROUTES, ret="xval",
    doc="trio-sip: send the request described by $uac_req(...) like uac_req_send() and "
        "wait, in place, for its final outcome: returns code, reason, body (a local "
        "408 on timeout, 477 when it could not be sent on the way). -1 (and two empty "
        "strings) when nothing was sent; -2 when KSR.async.set_timeout() cut the wait "
        "(a pending INVITE is then CANCELled). Waits only where a route can wait.",
)


# -- management commands (Kamailio tm RPC, OpenSIPS t_uac_dlg) -----------------------------

_START_PARAMS = ("method", "ruri", "nexthop?", "socket?", "headers?", "body?")


def _mi_request(params: dict[str, Any]) -> UacRequest:
    """tm.t_uac_start's params: ``method ruri nexthop socket headers [body]`` (Kamailio
    ``t_uac_start``, OpenSIPS ``t_uac_dlg``; "." for an empty nexthop/socket). From and
    To come from ``headers`` (required by Kamailio; here they default to the R-URI),
    as do Call-ID and CSeq when given (Via, Max-Forwards and Content-Length are ours
    and dropped); the other header lines are sent as they are. The lines are checked as
    :func:`~trio_sip.sip.headers.parse_header_lines_untrusted` says (folded lines
    joined, compact names understood): a bad one is refused as invalid params naming the
    line (MI -32602, as tm.reply answers a bad header line)."""
    def text(name: str) -> str:
        v = params.get(name)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise InvalidParams(f"{name} must be a string")
        return "" if v.strip() == "." else v

    method, ruri = text("method").strip(), text("ruri").strip()
    if not method or not ruri:
        raise InvalidParams("method and ruri are required")
    socket = text("socket").strip()
    proto = socket.split(":", 1)[0].lower() if socket else None
    from_uri = to_uri = call_id = None
    cseq: int | None = None
    extra: list[str] = []
    try:
        lines = parse_header_lines_untrusted(text("headers"))
    except BadMessage as exc:
        # invalid params, like every other bad field here (MI -32602, as tm.reply
        # answers a bad header line); t_uac_send logs it and returns -1
        raise InvalidParams(f"bad {exc.reason}") from None
    for name, value in lines:
        key = header_key(name)
        if key == "from":
            from_uri = value
        elif key == "to":
            to_uri = value
        elif key == "call-id":
            call_id = value
        elif key == "cseq":
            num = value.split()[0] if value.split() else ""
            if not num.isdigit():
                raise InvalidParams(f"bad CSeq {value!r}")
            cseq = int(num)
        elif key in ("content-length", "via", "max-forwards"):
            continue  # computed or added by us
        else:
            extra.append(f"{name}: {value}")
    for what, v in (("From", from_uri), ("To", to_uri)):
        if v is not None:
            try:
                parse_name_addr_untrusted(v)
            except BadMessage as exc:
                raise InvalidParams(f"bad {what} {v!r}: {exc.reason}") from None
    return UacRequest(method=method, ruri=ruri, from_uri=from_uri, to_uri=to_uri,
                      call_id=call_id, cseq=cseq, headers="\r\n".join(extra),
                      body=text("body").encode("utf-8"), outbound=text("nexthop").strip() or None,
                      transport=proto)


def tm_uac_send(ctx: MsgContext, method: str, ruri: str, nexthop: str, socket: str,
                headers: str, body: str | None) -> int:
    """Kamailio's ``KSR.tm.t_uac_send`` (declared in modules/tm.py): the MI
    t_uac_start's fields from a route. 1 sent, -1 not (logged)."""
    params = {"method": method, "ruri": ruri, "nexthop": nexthop, "socket": socket,
              "headers": headers, "body": body or ""}
    try:
        local_uacs(ctx.core).send(_mi_request(params))
    except (UacError, MiError) as exc:
        log.error("t_uac_send: %s", exc.message)
        local_uacs(ctx.core).stats["send_errors"] += 1
        return -1
    return 1


def _start(params: dict[str, Any], ctx: MiContext) -> LocalUac:
    try:
        return local_uacs(ctx.core).send(_mi_request(params))
    except UacError as exc:
        raise MiError(COMMAND_FAILED, f"{exc.status} {exc.message}") from None


def _ident(uac: LocalUac) -> dict[str, Any]:
    return {"method": uac.method, "callid": uac.call_id, "cseq": uac.cseq,
            "branch": uac.branch.branch_id if uac.branch is not None else None}


def _reply_json(result: UacResult) -> dict[str, Any]:
    out: dict[str, Any] = {"code": result.code, "reason": result.reason,
                           "local": result.local}
    if result.reply is not None:
        out["headers"] = [f"{h.name}: {h.text}" for h in result.reply.headers]
        out["body"] = result.reply.body.decode("utf-8", "replace")
    return out


@m.mi("tm.t_uac_start", params=_START_PARAMS)
def t_uac_start(params: dict[str, Any], ctx: MiContext) -> Any:
    """Send a request as a local UAC transaction and return at once (Kamailio
    tm.t_uac_start, OpenSIPS t_uac_dlg): method, ruri, nexthop ("." none), socket
    ("." or proto:host:port), headers (From, To, Call-ID, CSeq are taken from them),
    body. Returns method, callid, cseq and branch (for tm.t_uac_cancel)."""
    return _ident(_start(params, ctx))


@m.mi("tm.t_uac_wait", params=_START_PARAMS, is_async=True, timeout=3600.0)
async def t_uac_wait(params: dict[str, Any], ctx: MiContext) -> Any:
    """As tm.t_uac_start, then wait for the final reply: code, reason, local (true for
    a local 408/477), and the reply's headers and body. The request's own timers bound
    the wait (fr_timer, fr_inv_timer, max_inv_lifetime)."""
    uac = _start(params, ctx)
    done = False
    try:
        result = await uac.wait()
        done = True
    finally:
        if not done:
            uac.abandon()
    return {**_ident(uac), **_reply_json(result)}


@m.mi("tm.t_uac_cancel", params=("callid", "cseq", "reason?"))
def t_uac_cancel(params: dict[str, Any], ctx: MiContext) -> Any:
    """CANCEL a pending local INVITE (tmx/OpenSIPS t_uac_cancel) found by Call-ID and
    CSeq number: sent at once if it rang, else as soon as it does. ``reason`` is an
    RFC 3326 Reason value for the CANCEL."""
    try:
        cseq = int(params["cseq"])
    except (TypeError, ValueError):
        raise InvalidParams("cseq must be a number") from None
    uac = local_uacs(ctx.core).find(str(params["callid"]), cseq)
    if uac is None or uac.result is not None:
        raise MiError(COMMAND_FAILED, "481 No such transaction")
    reason = params.get("reason")
    if not uac.cancel(str(reason) if reason else None):
        raise MiError(COMMAND_FAILED, f"400 a {uac.method} cannot be cancelled")
    return {**_ident(uac), "status": "cancelling"}


@m.on_init
def _init(core: Any) -> None:
    """Refuse to start when event_callback names no function of the routes."""
    fn = _event_callback(core)
    engine = getattr(core, "engine", None)
    if fn and engine is not None and engine.function(fn) is None:
        raise ValueError(f"[modparams.uac] event_callback: no function {fn}() in the routes")
    add_module_stats(core, "uac", lambda: _statistics(core), gauges=["pending"])


def _statistics(core: Any) -> dict[str, int]:
    """The "uac" statistics group: the local UAC layer's counters and ``pending``."""
    layer = local_uacs(core)
    return {**layer.stats, "pending": len(layer.pending)}


MODULE = m.build()

__all__ = ["MODULE", "UacParams", "UacWaitOp", "tm_uac_send"]
