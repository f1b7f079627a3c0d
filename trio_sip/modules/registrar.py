"""KSR.registrar: REGISTER processing and location lookups (Kamailio ``registrar``).

``save(table, flags)`` applies a REGISTER to the location table (trio_sip/usrloc/save.py
has the RFC 3261 §10.3 rules) and answers it: 200 OK listing every binding with its
remaining expiry and a Date, or the error Kamailio sends (400, 420, 421, 423 with
Min-Expires, 500, 503 with P-Registrar-Error). Every change is in the SQLite file before
the answer leaves: when a write is queued, save() waits for it (the route resumes at the
next line, other calls are served meanwhile; the REGISTER gets a transaction, so its
retransmissions are absorbed).

``lookup(table)`` rewrites the R-URI to the best binding of the R-URI's AoR (highest q,
then the most recently registered), sets $du to its Path or received address, and
appends the other bindings as branches for t_relay to fork to.

Return codes are Kamailio's: save 1 inserted / 2 updated / 3 deleted / 4 returned, -1
error, -2 too many contacts; lookup 1 found, -1 none, -2 found but the method is not
allowed (method_filtering), -3 error.

Differences from Kamailio:

* save() always answers (unless flag 0x02), also when the AoR cannot be parsed
  (Kamailio returns -1 without a reply there);
* a REGISTER is checked whole before any binding changes;
* flag 0x04 (one contact per AoR) applies to a new AoR too;
* ``min_expires_mode`` defaults to 1 (423), Kamailio's to 0 (raise silently);
* bindings of equal q: the most recent first (Kamailio: the oldest, unless
  usrloc ``desc_time_order``);
* Path: $du is the first Path URI, and the Path is kept in the branch, but the Route
  headers it implies are not added yet (tm has no per-branch Route set);
* not implemented: GRUU, registered_flags/registered_action, lookup_xavp,
  reg_from_user, xavp_cfg/xavp_rcd, the usrloc:contact-expired event, TCP connection
  lifetimes, sock_flag/sock_hdr_name.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ..script import pv
from ..script.context import Branch, MsgContext
from ..script.exports import ANY_ROUTE, ModuleBuilder, RouteType
from ..script.modparams import modparams_of
from ..script.ops import AsyncOp
from ..sip.errors import BadMessage
from ..sip.headers import parse_name_addr_list_untrusted
from ..sip.message import SipRequest
from ..usrloc import Contact, Domain, RegistrarParams, Usrloc, aor_of_text, aor_of_uri
from ..usrloc.aor import AorError
from ..usrloc.save import (
    SAVE_NO_REPLY,
    SAVE_PREPARE_REPLY,
    RegisterRequest,
    SaveResult,
    process_register,
)
from .usrloc import usrloc_for

log = logging.getLogger("trio_sip.registrar")

m = ModuleBuilder("registrar", "REGISTER processing (save) and location lookups (lookup).",
                  params=RegistrarParams)

R = RouteType
_SAVE_ROUTES = R.REQUEST | R.FAILURE | R.EVENT
_LOOKUP_ROUTES = R.REQUEST | R.FAILURE | R.EVENT
_ALL_FLAGS = 0x1F
_REPLY_KEY = "\0registrar:reply"
_Q_KEY = "\0registrar:q"
_ULC_KEY = "\0registrar:ulc:"


def _params(ctx: MsgContext) -> RegistrarParams:
    return modparams_of(ctx.core, "registrar", RegistrarParams)


def _table(ul: Usrloc, table: str) -> Domain | None:
    try:
        return ul.domain(table)
    except ValueError as exc:
        log.error("registrar: %s", exc)
        return None


# -- save ----------------------------------------------------------------------------


class SaveOp(AsyncOp):
    """Wait until the location file holds the REGISTER's changes, then answer it."""

    name = "registrar.save"

    def __init__(self, ul: Usrloc, result: SaveResult, flags: int) -> None:
        self.ul = ul
        self.result = result
        self.flags = flags

    async def run(self, ctx: MsgContext) -> Any:
        await self.ul.flush()
        _answer(ctx, self.result, self.flags)
        return self.result.rc


def _save(ctx: MsgContext, table: str, flags: int, uri: str | None) -> Any:
    req = ctx.msg
    if not isinstance(req, SipRequest) or flags & ~_ALL_FLAGS:
        if flags & ~_ALL_FLAGS:
            log.error("registrar.save: bad flags 0x%x", flags)
        return -1
    ul = usrloc_for(ctx.core)
    domain = _table(ul, table)
    if domain is None:
        return -1
    reg = _params(ctx)
    received = ""
    if reg.received_avp:
        value = pv.get(ctx, reg.received_avp)
        received = str(value) if value not in (None, 0, "") else ""
    rr = RegisterRequest(
        req, aor_uri=uri, socket=f"{ctx.transport.proto}:{ctx.transport.local}",
        received=received, bflags=ctx.bflags,
        conn_id=ctx.conn_id if ctx.conn_id is not None else -1, flags=flags,
        q_override=ctx.vars.get(_Q_KEY))
    result = process_register(domain, ul.params, reg, rr, new_ruid=ul.new_ruid,
                              now=ul.clock.now(), epoch=ul.clock.wall(), rng=random.random)
    ul.stats["accepted_regs" if result.code == 200 else "rejected_regs"] += 1
    if ul.dirty:
        if ul.writer is not None and ul.writer.running:
            return SaveOp(ul, result, flags)
        if ul.writer is not None:
            ul.writer.flush_sync()  # the service is not running (first use, tests)
    _answer(ctx, result, flags)
    return result.rc


def _answer(ctx: MsgContext, result: SaveResult, flags: int) -> None:
    if flags & SAVE_NO_REPLY:
        ctx.vars[_REPLY_KEY] = result
        if flags & SAVE_PREPARE_REPLY:
            ctx.reply_headers.extend(h + "\r\n" for h in result.headers)
        return
    if ctx.route_type & (R.REQUEST | R.FAILURE | R.EVENT):
        _send(ctx, result)


def _send(ctx: MsgContext, result: SaveResult) -> bool:
    tx = ctx.transaction
    if tx is not None:
        return bool(tx.reply_local(result.code, result.reason, headers=result.headers))
    return bool(ctx.core.send_reply(ctx, result.code, result.reason, result.headers))


@m.export(("str", "int"), min_args=1, is_async=True, routes=_SAVE_ROUTES)
def save(ctx: MsgContext, table: str, flags: int | None = 0) -> Any:
    """Apply the REGISTER to the location table and answer it (waits for the write).
    Flags: 0x01 memory only, 0x02 no reply (reg_send_reply() sends it), 0x04 one contact
    per AoR, 0x08 no expires_range variation, 0x10 with 0x02: the headers go to the
    script's reply. Returns 1 inserted, 2 updated, 3 deleted, 4 bindings returned, -1
    error, -2 too many contacts."""
    return _save(ctx, table, flags or 0, None)


@m.export(("str", "int", "str"), is_async=True, routes=_SAVE_ROUTES)
def save_uri(ctx: MsgContext, table: str, flags: int, uri: str) -> Any:
    """save() with the AoR taken from ``uri`` instead of the To header."""
    if not uri:
        return -1
    return _save(ctx, table, flags, uri)


@m.export(routes=R.REQUEST | R.FAILURE)
def reg_send_reply(ctx: MsgContext) -> int:
    """Send the reply a save() with flag 0x02 prepared. 1, or -1 if there is none."""
    result = ctx.vars.get(_REPLY_KEY)
    if not isinstance(result, SaveResult):
        return -1
    return 1 if _send(ctx, result) else -1


@m.export(("str",), routes=_SAVE_ROUTES)
def set_q_override(ctx: MsgContext, q: str) -> int:
    """Use q ``q`` ("0.5") for the contacts of the next save() of this message."""
    try:
        value = float(q)
    except ValueError:
        return -1
    if not 0 <= value <= 1:
        return -1
    ctx.vars[_Q_KEY] = round(value * 1000)
    return 1


@m.export(("str",), routes=R.REQUEST)
def add_sock_hdr(ctx: MsgContext, hdr_name: str) -> int:
    """Add a header ``hdr_name`` holding the receiving socket (proto:ip:port)."""
    if not hdr_name or not isinstance(ctx.msg, SipRequest):
        return -1
    ctx.msg.append_header(f"{hdr_name}: {ctx.transport.proto}:{ctx.transport.local}")
    return 1


# -- lookup -------------------------------------------------------------------------


def _aor(ctx: MsgContext, ul: Usrloc, text: str | None) -> str | None:
    """The AoR of ``text``, or of the R-URI (requests) / To URI (replies)."""
    reg = _params(ctx)
    use_domain, case = bool(ul.params.use_domain), bool(reg.case_sensitive)
    try:
        msg = ctx.msg
        if not text and isinstance(msg, SipRequest):
            text = msg.current_uri
        if text:
            return aor_of_text(text, use_domain=use_domain, case_sensitive=case,
                               realm_prefix=reg.realm_prefix)
        to_uri = msg.to.uri
        if to_uri is None:
            return None
        return aor_of_uri(to_uri, use_domain=use_domain, case_sensitive=case,
                          realm_prefix=reg.realm_prefix)
    except (AorError, BadMessage) as exc:
        log.error("registrar: no AoR in %r: %s", text or "the message", exc)
        return None


def _dst(ctx: MsgContext, c: Contact, reg: RegistrarParams) -> str | None:
    """Where to send a request for this binding: its first Path hop, else its received
    address, else the contact itself (None)."""
    if c.path:
        try:
            hops = [na.uri for na in parse_name_addr_list_untrusted(c.path) if na.uri]
        except BadMessage:
            hops = []
        if hops and reg.path_check_local:
            first = hops[0]
            if ctx.core.is_myself(first.host_bare, first.port, first.transport):
                hops = hops[1:]
        if hops:
            return str(hops[0])
    return c.received or None


def _branch(ctx: MsgContext, c: Contact, reg: RegistrarParams) -> Branch:
    return Branch(c.uri, _dst(ctx, c, reg), path=c.path or None, q=c.q, flags=c.cflags,
                  socket=c.socket or None, instance=c.instance or None, ruid=c.ruid)


def _found(ctx: MsgContext, table: str, uri: str | None) -> tuple[int, list[Contact]]:
    """(return code, the live bindings allowed for the request, best first)."""
    ul = usrloc_for(ctx.core)
    domain = _table(ul, table)
    if domain is None:
        return -3, []
    aor = _aor(ctx, ul, uri)
    if aor is None:
        return -3, []
    live = domain.valid(aor, ul.clock.now())
    if not live:
        return -1, []
    req = ctx.msg
    if _params(ctx).method_filtering and isinstance(req, SipRequest) and not req.to_tag:
        live = [c for c in live if c.allows(req.method)]
        if not live:
            return -2, []
    return 1, live


def _lookup(ctx: MsgContext, table: str, uri: str | None, rewrite: bool) -> int:
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    rc, live = _found(ctx, table, uri)
    if rc < 0:
        return rc
    reg = _params(ctx)
    rest = live
    if rewrite:
        first, rest = live[0], live[1:]
        req.new_uri = first.uri
        req.dst_uri = _dst(ctx, first, reg)
        ctx.bflags |= first.cflags
    if reg.append_branches:
        ctx.branches.extend(_branch(ctx, c, reg) for c in rest)
    return 1


@m.export(("str",), routes=_LOOKUP_ROUTES)
def lookup(ctx: MsgContext, table: str) -> int:
    """Rewrite the R-URI to the best binding of its AoR and append the others as branches.
    1 found, -1 none, -2 found but none allows the method, -3 error."""
    return _lookup(ctx, table, None, True)


@m.export(("str", "str"), routes=_LOOKUP_ROUTES)
def lookup_uri(ctx: MsgContext, table: str, uri: str) -> int:
    """lookup() for the AoR of ``uri`` instead of the R-URI's."""
    return _lookup(ctx, table, uri or None, True)


@m.export(("str", "str"), routes=_LOOKUP_ROUTES)
def lookup_to_dset(ctx: MsgContext, table: str, uri: str) -> int:
    """Append every binding of the AoR of ``uri`` (or of the R-URI when empty) as a
    branch, leaving the R-URI alone."""
    return _lookup(ctx, table, uri or None, False)


@m.export(("str",), routes=_LOOKUP_ROUTES)
def lookup_branches(ctx: MsgContext, table: str) -> int:
    """lookup() for the R-URI and for every branch that has only a URI. 1 if any was
    found, else the R-URI's return code."""
    req = ctx.msg
    if not isinstance(req, SipRequest):
        return -1
    before = ctx.branches
    ctx.branches = []
    ret = _lookup(ctx, table, None, True)
    if not before:
        ctx.branches = before + ctx.branches
        return ret
    found = ret > 0
    appended = ctx.branches
    out: list[Branch] = []
    reg = _params(ctx)
    for b in before:
        if b.dst_uri or b.path or b.socket or b.flags:
            out.append(b)
            continue
        rc, live = _found(ctx, table, b.uri)
        if rc < 0:
            out.append(b)
            continue
        found = True
        out.append(_branch(ctx, live[0], reg))
        if reg.append_branches:
            appended.extend(_branch(ctx, c, reg) for c in live[1:])
    ctx.branches = out + appended
    return 1 if found else ret


@m.export(("str",))
def registered(ctx: MsgContext, table: str) -> int:
    """1 if the AoR of the R-URI (To URI in replies) has a live binding, else -1."""
    rc, _ = _found(ctx, table, None)
    return 1 if rc == 1 or rc == -2 else -1


@m.export(("str", "str"))
def registered_uri(ctx: MsgContext, table: str, uri: str) -> int:
    """registered() for the AoR of ``uri``."""
    rc, _ = _found(ctx, table, uri or None)
    return 1 if rc == 1 or rc == -2 else -1


@m.export(("str", "str"))
def unregister(ctx: MsgContext, table: str, uri: str) -> int:
    """Remove every binding of the AoR of ``uri``. 1, or -1 if ``uri`` gives no AoR."""
    if not uri:
        return -1
    ul = usrloc_for(ctx.core)
    domain = _table(ul, table)
    aor = _aor(ctx, ul, uri)
    if domain is None or aor is None:
        return -1
    domain.delete_aor(aor)
    return 1


@m.export(("str", "str", "str"))
def unregister_ruid(ctx: MsgContext, table: str, uri: str, ruid: str) -> int:
    """Remove the binding with record id ``ruid`` (of the AoR of ``uri`` if given).
    1, -1 bad arguments, -3 not found."""
    if not ruid:
        return -1
    ul = usrloc_for(ctx.core)
    domain = _table(ul, table)
    if domain is None:
        return -1
    c = domain.by_ruid(ruid)
    if uri:
        aor = _aor(ctx, ul, uri)
        if aor is None:
            return -1
        if c is not None and c.aor != aor:
            c = None
    if c is None:
        return -3
    domain.delete(c)
    return 1


# -- $ulc ---------------------------------------------------------------------------


@m.export(("str", "str", "str"), routes=_LOOKUP_ROUTES)
def reg_fetch_contacts(ctx: MsgContext, table: str, uri: str, profile: str) -> int:
    """Copy the live bindings of the AoR of ``uri`` into $ulc(profile=>...). 1, or -1 if
    it has none."""
    ul = usrloc_for(ctx.core)
    domain = _table(ul, table)
    aor = _aor(ctx, ul, uri or None)
    if domain is None or aor is None:
        return -1
    now = ul.clock.now()
    live = domain.valid(aor, now)
    if not live:
        ctx.vars.pop(_ULC_KEY + profile, None)
        return -1
    rows = [_contact_attrs(ul, c, now) for c in live]
    ctx.vars[_ULC_KEY + profile] = {"aor": aor, "domain": table, "count": len(rows),
                                    "aorhash": hash(aor) & 0xFFFFFFFF, "contacts": rows}
    return 1


@m.export(("str",), routes=_LOOKUP_ROUTES)
def reg_free_contacts(ctx: MsgContext, profile: str) -> int:
    """Forget $ulc(profile)."""
    ctx.vars.pop(_ULC_KEY + profile, None)
    return 1


def _contact_attrs(ul: Usrloc, c: Contact, now: float) -> dict[str, Any]:
    return {
        "addr": c.uri, "path": c.path or None, "received": c.received or None,
        "expires": int(ul.clock.to_epoch(c.expires)), "callid": c.callid, "q": c.q,
        "cseq": c.cseq, "flags": c.flags, "cflags": c.cflags, "user_agent": c.user_agent,
        "socket": c.socket or None, "modified": int(ul.clock.to_epoch(c.last_modified)),
        "methods": c.methods, "ruid": c.ruid, "regid": c.reg_id,
        "instance": c.instance or None, "conid": c.conn_id if c.conn_id >= 0 else None,
        "server_id": c.server_id,
    }


def _ulc(ctx: MsgContext, profile: str, attr: str, idx: int) -> Any:
    rec = ctx.vars.get(_ULC_KEY + profile)
    if not isinstance(rec, dict):
        return None
    if attr in ("aor", "domain", "count", "aorhash"):
        return rec[attr]
    contacts = rec["contacts"]
    if not 0 <= idx < len(contacts):
        return None
    return contacts[idx].get(attr)


@m.export(("str", "str"), ret="xval", routes=ANY_ROUTE)
def ulc_rget(ctx: MsgContext, rid: str, attr: str) -> Any:
    """A record attribute of $ulc(rid): aor, domain, aorhash, count."""
    return _ulc(ctx, rid, attr, 0)


@m.export(("str", "str", "int"), ret="xval", routes=ANY_ROUTE)
def ulc_cget(ctx: MsgContext, rid: str, attr: str, idx: int) -> Any:
    """A contact attribute of $ulc(rid) at index ``idx``: addr, path, received, expires,
    callid, q, cseq, flags, cflags, user_agent, socket, modified, methods, ruid, regid,
    instance, conid, server_id."""
    return _ulc(ctx, rid, attr, idx)


def _ulc_pv(ctx: MsgContext, arg: str) -> Any:
    profile, sep, attr = arg.partition("=>")
    if not sep:
        raise pv.PvError(f"$ulc({arg}): expected $ulc(profile=>attribute)")
    return _ulc(ctx, profile.strip(), attr.strip(), 0)


MODULE = m.build()

pv.register("ulc", _ulc_pv, needs_arg=True)
