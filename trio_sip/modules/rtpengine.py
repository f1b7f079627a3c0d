"""KSR.rtpengine: media relaying through rtpengine, Kamailio's API, without blocking.

A route calls ``KSR.rtpengine.rtpengine_offer("replace-origin trust-address")`` and
carries on at the next line once rtpengine has answered; meanwhile the server serves
other calls (Kamailio blocks a worker process for each command: ~5 s per command
with a dead node). The exports are async: each returns an :class:`RtpengineOp` that
the runtime awaits in the transaction's nursery (script/ops.py).

What a command carries, as Kamailio's ``rtpp_function_call`` builds it: ``call-id``,
``from-tag``/``to-tag`` by direction (below), ``via-branch`` when asked, the SDP for
offer/answer, ``supports: ["load limit"]``, and what the flag
string says (rtpengine/flags.py); a flag string also adds ``received-from`` (the
message's source address) unless it names one. Tags:

* a request (not an answer), a reply's delete or answer, or a ``directional``
  command: ``from-tag`` = From tag, ``to-tag`` = To tag when there is one (a delete
  sends the To tag only with the ``to-tag`` flag);
* otherwise (an answer in a request, e.g. ACK/PRACK with SDP; an offer or query in
  a reply): ``from-tag`` = To tag, ``to-tag`` = From tag.

On success offer/answer replace the SDP (the body, or the SDP part of a multipart
body) with rtpengine's and fix Content-Length; every export returns 1. On any
failure (no node, timeout, ``result: error``, no SDP...) it logs why and returns -1,
as Kamailio does. ``rtpengine_manage`` picks offer/answer/delete from the message as
Kamailio documents (rtpengine README, rtpengine_manage()).

Differences from Kamailio (deliberate or not yet done):

* the ``*2`` variants parse the flags here, with the second argument as the
  ``via-branch`` value (Kamailio 5.8+ sends them raw as ``rtpp-flags``, which
  rtpengine 10.5 does not know);
* via-branch ``extra``/``next`` (and ``auto-extra``/``auto-next`` in requests) are
  not supported: the command fails with a log line;
* branch routes cannot wait in trio-sip (they run inside t_relay), so the exports
  are allowed in request, failure, onreply, branch-failure and event routes only;
* not implemented: read_sdp_pv/write_sdp_pv, extra_id_pv, setid_avp, the MOS
  variables, $rtpstat, DB-provisioned nodes, DMQ, ws/unix nodes, DTMF events.

The ng client (rtpengine/client.py) is made on first use from
``[modparams.rtpengine]`` and runs in the server's nursery, as ``core.rtpengine``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError
from ..rtpengine.client import ClientConfig, RtpengineClient
from ..rtpengine.flags import FlagError, FlagTranslation, translate_flags
from ..rtpengine.nodes import SockError, parse_rtpengine_sock
from ..rtpengine.protocol import NgError, wire_bytes
from ..script import pv as pvmod
from ..script.context import MsgContext
from ..script.exports import ANY_ROUTE, ModuleBuilder, RouteType
from ..script.modparams import modparams_of
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.message import SipMessage, SipResponse
from ..sip.sdp import SdpLocation, find_sdp, has_sdp, replace_sdp

log = logging.getLogger("trio_sip.rtpengine")

__all__ = [
    "MODULE",
    "CommandError",
    "RtpengineOp",
    "RtpengineParams",
    "build_command",
    "client_for",
    "manage_operation",
]

#: Routes where the exports may wait. Branch routes run synchronously inside t_relay
#: and the core reply route in the receive loop: neither can wait.
WAIT_ROUTES = (RouteType.REQUEST | RouteType.FAILURE | RouteType.ONREPLY
               | RouteType.BRANCH_FAILURE | RouteType.EVENT)


@dataclass(frozen=True)
class RtpengineParams:
    """``[modparams.rtpengine]``: Kamailio's rtpengine modparams that apply here."""

    #: node sets, Kamailio syntax; a string or an array of strings
    rtpengine_sock: tuple[str, ...] = ()
    rtpengine_tout_ms: int = 1000
    rtpengine_retr: int = 5
    rtpengine_disable_tout: int = 60
    hash_table_tout: int = 3600
    #: accepted for Kamailio configs (its bucket count); unused here
    hash_table_size: int = 256
    #: trio-sip: bound of the call -> node table
    hash_table_max: int = 100_000
    hash_algo: int = 0
    queried_nodes_limit: int = 30
    setid_default: int = 0
    rtpengine_allow_op: int = 0
    ping_interval: int = 60
    ping_mode: int = 1
    #: Kamailio's default is 1 (and pings inline); here 0, and only a background probe
    aggressive_redetection: int = 0
    #: trio-sip: commands waiting for a reply at most
    max_pending: int = 10_000
    #: trio-sip: SO_RCVBUF of the client socket
    rcvbuf: int = 4 * 1024 * 1024

    @classmethod
    def from_modparams(cls, raw: Mapping[str, object]) -> RtpengineParams:
        """Validate ``[modparams.rtpengine]``; ConfigError names the key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            key = f"modparams.rtpengine.{name}"
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                rule = (f"unknown rtpengine param; did you mean {close[0]!r}?" if close
                        else f"unknown rtpengine param (known: {', '.join(fields)})")
                raise ConfigError(key, value, rule)
            if name == "rtpengine_sock":
                values = (value,) if isinstance(value, str) else value
                if not isinstance(values, (tuple, list)) or not all(
                        isinstance(v, str) for v in values):
                    raise ConfigError(key, value, "expected a string or an array of strings")
                try:
                    parse_rtpengine_sock(values)
                except SockError as exc:
                    raise ConfigError(key, value, str(exc)) from None
                kwargs[name] = tuple(values)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, value, "expected an integer")
            else:
                kwargs[name] = value
        params = cls(**kwargs)
        try:
            params.client_config()
        except ValueError as exc:
            raise ConfigError("modparams.rtpengine", dict(raw), str(exc)) from None
        return params

    def client_config(self) -> ClientConfig:
        return ClientConfig(
            sock=self.rtpengine_sock, tout_ms=self.rtpengine_tout_ms,
            retr=self.rtpengine_retr, disable_tout=float(self.rtpengine_disable_tout),
            hash_table_tout=float(self.hash_table_tout), hash_table_max=self.hash_table_max,
            hash_algo=self.hash_algo, queried_nodes_limit=self.queried_nodes_limit,
            setid_default=self.setid_default, allow_op=self.rtpengine_allow_op,
            ping_interval=float(self.ping_interval), ping_mode=self.ping_mode,
            aggressive_redetection=self.aggressive_redetection,
            max_pending=self.max_pending, rcvbuf=self.rcvbuf,
        )


def client_for(core: Any) -> RtpengineClient:
    """The server's client, made and started in its nursery on first use (until the
    module registry starts modules). Raises ConfigError or NgError."""
    client = getattr(core, "rtpengine", None)
    if isinstance(client, RtpengineClient):
        return client
    params = modparams_of(core, "rtpengine", RtpengineParams)
    if not params.rtpengine_sock:
        raise NgError("no rtpengine node: set [modparams.rtpengine] rtpengine_sock")
    nursery = core.tm.nursery
    if nursery is None:
        raise NgError("the server is not running")
    client = RtpengineClient(params.client_config(), guard=core.guard)
    nursery.start_soon(_run_client, client)
    core.rtpengine = client
    return client


async def _run_client(client: RtpengineClient) -> None:
    """The client's task in the server's nursery: a failure (a socket that cannot be
    bound) is logged and ends the client, never the server."""
    try:
        await client.run()
    except Exception:
        log.exception("the rtpengine client stopped")


# -- commands from messages -----------------------------------------------------------


class CommandError(Exception):
    """The message or the flags do not allow the command (logged, -1)."""


#: export stem -> ng command
NG_COMMANDS = {
    "offer": "offer", "answer": "answer", "delete": "delete", "query": "query",
    "start_recording": "start recording", "stop_recording": "stop recording",
    "block_dtmf": "block DTMF", "unblock_dtmf": "unblock DTMF",
    "block_media": "block media", "unblock_media": "unblock media",
    "silence_media": "silence media", "unsilence_media": "unsilence media",
    "play_media": "play media", "stop_media": "stop media",
}
#: commands that send tags only when made directional (from-tag=... or directional)
_DIRECTIONAL_ONLY = ("block DTMF", "unblock DTMF", "block media", "unblock media",
                     "silence media", "unsilence media", "start forwarding",
                     "stop forwarding")


@dataclass
class Built:
    """A command ready for the client, and where its answer's SDP goes."""

    command: dict[str, Any]
    op: str
    call_id: str
    via_branch: str
    sdp: SdpLocation | None


def _wire(value: Any) -> Any:
    """SIP text is latin-1 str here: send the original octets."""
    if isinstance(value, str):
        return value.encode("latin-1", "replace")
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    return value


def _via_branch(msg: SipMessage, mode: str) -> str:
    is_reply = isinstance(msg, SipResponse)
    if mode == "auto":
        mode = "2" if is_reply else "1"
    elif mode in ("auto-next", "next-auto", "auto-extra", "extra-auto") and is_reply:
        mode = "1"
    if mode not in ("1", "2"):
        raise CommandError(f"via-branch={mode} is not supported (only 1, 2 and auto)")
    try:
        vias = msg.vias
    except BadMessage as exc:
        raise CommandError(f"can't get Via branch: {exc.reason}") from None
    index = int(mode) - 1
    branch = vias[index].branch if len(vias) > index else None
    if not branch:
        raise CommandError(f"can't get Via branch (Via #{mode})")
    return branch


def build_command(ctx: MsgContext, op: str, flags: str | None, viabranch: str | None = None,
                  sdp_in: bytes | None = None) -> Built:
    """The ng command for ``op`` (a key of NG_COMMANDS) on the message in ``ctx``.
    ``flags`` None is Kamailio's flag-less variant (no flags, no received-from);
    ``sdp_in`` replaces the message's SDP (the second set of a two-set call)."""
    msg = ctx.msg
    is_reply = isinstance(msg, SipResponse)
    try:
        call_id = msg.call_id
        from_tag = msg.from_tag
        to_tag = msg.to_tag
    except BadMessage as exc:
        raise CommandError(f"can't parse From/To: {exc.reason}") from None
    if not call_id:
        raise CommandError("can't get Call-Id field")
    if not from_tag:
        raise CommandError("can't get From tag")
    ng_op = NG_COMMANDS[op]
    try:
        t = translate_flags(flags, op=ng_op) if flags is not None else FlagTranslation()
    except FlagError as exc:
        raise CommandError(str(exc)) from None
    if t.force_answer:
        op, ng_op = "answer", "answer"
    command: dict[str, Any] = {"supports": ["load limit"]}
    sdp: SdpLocation | None = None
    if op in ("offer", "answer"):
        sdp = find_sdp(msg)
        if sdp is None or sdp.end <= sdp.start:
            raise CommandError("can't extract body from the message (no SDP)")
        command["sdp"] = sdp_in if sdp_in is not None else sdp.of(msg.body)
    include_to = op != "delete" or t.include_to_tag
    if t.call_id is not None:
        call_id = t.call_id
    if t.from_tag is not None:
        from_tag = t.from_tag
    if t.to_tag is not None:
        to_tag = t.to_tag
    command.update(t.ng)
    if flags is not None and "received-from" not in command:
        host = ctx.source.host
        try:
            family = "IP6" if ipaddress.ip_address(host).version == 6 else "IP4"
        except ValueError:
            family = "?"
        command["received-from"] = [family, host]
    command["call-id"] = call_id
    mode = t.via_branch
    if mode is None and viabranch is not None and viabranch not in ("", "none"):
        mode = viabranch
    branch = _via_branch(msg, mode) if mode is not None else ""
    if branch:
        command["via-branch"] = branch
    if ng_op in _DIRECTIONAL_ONLY:
        if t.directional:
            command["from-tag"] = from_tag
            if include_to and to_tag:
                command["to-tag"] = to_tag
    elif (not is_reply and op != "answer") or (is_reply and op in ("delete", "answer")) \
            or t.directional:
        command["from-tag"] = from_tag
        if include_to and to_tag:
            command["to-tag"] = to_tag
    else:
        if not to_tag:
            raise CommandError("No to-tag present")
        command["from-tag"] = to_tag
        command["to-tag"] = from_tag
    command["command"] = ng_op
    # Kamailio 5.8+ also sends "sip-message-type"; rtpengine 10.5 logs a warning for
    # it on every command ("Unknown dictionary key encountered"), so it is left out.
    return Built(_wire(command), op, call_id, branch, sdp)


def manage_operation(ctx: MsgContext) -> str | None:
    """What rtpengine_manage() does with this message: "offer", "answer", "delete",
    "nothing" (branch-failure route: the failure route deletes), or None (-1)."""
    if ctx.route_type == RouteType.BRANCH_FAILURE:
        return "nothing"
    msg = ctx.msg
    method = msg.cseq_method.upper()
    if method not in ("INVITE", "ACK", "CANCEL", "BYE", "UPDATE", "PRACK"):
        return None
    if method in ("CANCEL", "BYE"):
        return "delete"
    sdp = has_sdp(msg)
    if not isinstance(msg, SipResponse):
        if method in ("ACK", "PRACK") and sdp:
            return "answer"
        if method == "UPDATE" and sdp:
            return "offer"
        if method == "INVITE" and sdp:
            return "delete" if ctx.route_type == RouteType.FAILURE else "offer"
        return None
    if msg.status >= 300:
        return "delete"
    if sdp:
        if method == "UPDATE":
            return "answer"
        tx = ctx.transaction
        request = getattr(tx, "request", None) if tx is not None else None
        if request is None or has_sdp(request):
            return "answer"
        return "offer"
    return None


# -- the operation ------------------------------------------------------------------------

_SET_KEY = "\x00rtpengine.sets"


def _selected_sets(ctx: MsgContext, direction: int) -> list[int | None]:
    """The set(s) for this message, in the order of ``direction`` (1 offer-like, 2
    answer); [None] for the default set. Kamailio resets the choice per message."""
    chosen = ctx.vars.get(_SET_KEY)
    if not chosen or chosen[0] is not ctx.msg:
        return [None]
    _, first, second = chosen
    if second is None or second == first:
        return [first]
    return [second, first] if direction == 2 else [first, second]


class RtpengineOp(AsyncOp):
    """One rtpengine export call, awaited by the runtime."""

    timeout_result = -1

    def __init__(self, export: str, op: str, flags: str | None, viabranch: str | None,
                 *, query_v: tuple[str, str] | None = None) -> None:
        self.name = f"rtpengine.{export}"
        self.export = export
        self.op = op
        self.flags = flags
        self.viabranch = viabranch
        self.query_v = query_v
        self.timeout = None

    async def run(self, ctx: MsgContext) -> Any:
        try:
            client = client_for(ctx.core)
        except (ConfigError, NgError) as exc:
            log.error("%s: %s", self.export, exc)
            return -1
        op = self.op
        if op == "manage":
            decided = manage_operation(ctx)
            if decided is None:
                return -1
            if decided == "nothing":
                return 1
            op = decided
        sets = _selected_sets(ctx, 2 if op == "answer" else 1)
        try:
            return await self._run_sets(ctx, client, op, sets)
        except CommandError as exc:
            log.error("%s: %s", self.export, exc)
            return -1
        except NgError as exc:
            log.error("%s: %s", self.export, exc)
            return -1

    async def _run_sets(self, ctx: MsgContext, client: RtpengineClient, op: str,
                        sets: list[int | None]) -> int:
        sdp_in: bytes | None = None
        built: Built | None = None
        reply: dict[str, Any] = {}
        for set_id in sets:
            built = build_command(ctx, op, self.flags, self.viabranch, sdp_in)
            reply = await client.request(built.command, call_id=built.call_id,
                                         via_branch=built.via_branch, set_id=set_id)
            if built.op in ("offer", "answer"):
                sdp = reply.get("sdp")
                if not isinstance(sdp, str):
                    raise CommandError("failed to extract sdp body from proxy reply")
                sdp_in = wire_bytes(sdp)
            elif reply.get("result") != "ok":
                raise CommandError(f"proxy didn't return \"ok\" result ({reply.get('result')})")
        assert built is not None
        if sdp_in is not None and built.sdp is not None:
            replace_sdp(ctx.msg, built.sdp, sdp_in)
        if self.query_v is not None:
            fmt, dpv = self.query_v
            text = json.dumps(reply, indent=4 if fmt[1:2] in ("p", "P") else None,
                              separators=None if fmt[1:2] in ("p", "P") else (",", ":"),
                              ensure_ascii=False)
            try:
                pvmod.set_(ctx, dpv, text)
            except Exception as exc:  # a PvError or a read-only PV: the route's fault
                log.error("%s: cannot set %s: %s", self.export, dpv, exc)
                return -1
        return 1


# -- the exports --------------------------------------------------------------------------

m = ModuleBuilder("rtpengine", "Media relaying through rtpengine (Kamailio's rtpengine "
                               "module); the exports wait without blocking the server.",
                  params=RtpengineParams)


def _declare(stem: str, op: str, *, variants: tuple[int, ...] = (0, 1, 2),
             doc: str) -> None:
    for n in variants:
        if n == 0:
            def f0(ctx: MsgContext, _o: str = op, _e: str = f"{stem}0") -> Any:
                return RtpengineOp(_e, _o, None, None)
            name = f"{stem}0" if 1 in variants else stem
            f0.__doc__ = f"{doc} Without flags."
            m.export((), is_async=True, routes=WAIT_ROUTES, name=name)(f0)
        elif n == 1:
            def f1(ctx: MsgContext, flags: str, _o: str = op, _e: str = stem) -> Any:
                return RtpengineOp(_e, _o, flags, None)
            f1.__doc__ = f"{doc} ``flags``: Kamailio's flag string."
            m.export(("str",), is_async=True, routes=WAIT_ROUTES, name=stem)(f1)
        else:
            def f2(ctx: MsgContext, flags: str, viabranch: str, _o: str = op,
                   _e: str = f"{stem}2") -> Any:
                return RtpengineOp(_e, _o, flags, viabranch)
            f2.__doc__ = (f"{doc} ``flags``: Kamailio's flag string; ``viabranch``: "
                          "1, 2, auto or none.")
            m.export(("str", "str"), is_async=True, routes=WAIT_ROUTES, name=f"{stem}2")(f2)


_declare("rtpengine_offer", "offer",
         doc="Send the SDP of the message to rtpengine as an offer and put rtpengine's "
             "SDP in its place. 1 on success, -1 on failure.")
_declare("rtpengine_answer", "answer",
         doc="Send the SDP of the message as an answer and put rtpengine's in its place.")
_declare("rtpengine_delete", "delete",
         doc="Delete the call (or the branch, with via-branch) on rtpengine.")
_declare("rtpengine_query", "query", doc="Query the call on rtpengine (1 if it exists).")
_declare("rtpengine_manage", "manage",
         doc="offer, answer or delete, decided from the message (Kamailio's "
             "rtpengine_manage).")
for _stem in ("block_dtmf", "unblock_dtmf", "block_media", "unblock_media",
              "silence_media", "unsilence_media", "stop_media"):
    _declare(_stem, _stem, doc=f"rtpengine '{NG_COMMANDS[_stem]}' for the call.")
_declare("play_media", "play_media", variants=(1, 2),
         doc="rtpengine 'play media' (flags name the file, e.g. file=/x.wav).")
_declare("start_recording", "start_recording", variants=(0,),
         doc="rtpengine 'start recording' for the call.")
_declare("stop_recording", "stop_recording", variants=(0,),
         doc="rtpengine 'stop recording' for the call.")


@m.export(("str", "str"), is_async=True, routes=WAIT_ROUTES)
def rtpengine_query_v(ctx: MsgContext, fmt: str, dpv: str) -> Any:
    """Query the call and store rtpengine's reply as JSON in the PV ``dpv`` (``fmt``
    "j" compact, "jp" pretty). 1 on success, -1 on failure."""
    if fmt[:1] not in ("j", "J"):
        log.error("rtpengine_query_v: invalid format parameter value: %s", fmt)
        return -1
    return RtpengineOp("rtpengine_query_v", "query", None, None, query_v=(fmt, dpv))


def _set_sets(ctx: MsgContext, first: int, second: int | None) -> int:
    try:
        client = client_for(ctx.core)
    except (ConfigError, NgError) as exc:
        log.error("set_rtpengine_set: %s", exc)
        return -1
    active = 0
    for set_id in (first, second):
        if set_id is None:
            continue
        members = client.sets.get(set_id)
        if members is None:
            log.error("set_rtpengine_set: could not locate rtpengine set %d", set_id)
            return -1
        active = sum(1 for n in members if n.usable)
        if not active:
            log.warning("set_rtpengine_set: set %d has no active node", set_id)
            ctx.vars[_SET_KEY] = (ctx.msg, first, second)
            return -2
    ctx.vars[_SET_KEY] = (ctx.msg, first, second)
    return 1


@m.export(("int",), routes=ANY_ROUTE)
def set_rtpengine_set(ctx: MsgContext, r1: int) -> int:
    """Use set ``r1`` for the following rtpengine commands on this message. 1, or -1 for
    an unknown set, -2 when it has no active node."""
    return _set_sets(ctx, r1, None)


@m.export(("int", "int"), routes=ANY_ROUTE)
def set_rtpengine_set2(ctx: MsgContext, r1: int, r2: int) -> int:
    """Two sets: offers go through ``r1`` then ``r2`` (answers the other way), each
    rtpengine rewriting the SDP of the one before."""
    return _set_sets(ctx, r1, r2)


MODULE = m.build()
