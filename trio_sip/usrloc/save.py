"""REGISTER processing (RFC 3261 §10.3), as Kamailio's registrar ``save()`` does it.

:func:`process_register` takes the request and what the route knows about it, changes
the location table, and returns the reply to send and the return code of ``save()``.
It does not send anything and does not wait: the module (modules/registrar.py) waits
for the file to be written, then replies.

Steps (§10.3 numbers):

* 4. the AoR is the To URI (or the ``uri`` argument of save_uri), user unescaped and
  lower-cased, with the domain only if usrloc ``use_domain`` is set;
* 6. ``Contact: *`` needs ``Expires: 0`` and no other contact (else 400), and removes
  every binding of the AoR (return 3); no Contact at all fetches the bindings (4);
* 7. each contact's expiry: its ``expires`` parameter, else the Expires header, else
  ``default_expires``; below ``min_expires`` it is 423 with Min-Expires
  (``min_expires_mode`` 1) or raised to it (0, Kamailio's default); capped at
  ``max_expires``. A binding of the same contact (or the same +sip.instance and
  reg-id, RFC 5626) with the same Call-ID and a CSeq not higher is out of order: 400
  "Invalid CSeq number", except an equal CSeq within ``cseq_delay`` seconds, taken for
  a retransmission and skipped. Expiry 0 removes; otherwise added (1) or updated (2);
  ``max_contacts`` exceeded is 503 and return -2;
* 8. 200 OK with every live binding and its remaining ``expires``, and Date.

Unlike Kamailio, a REGISTER is checked whole before anything changes: an error in its
third contact leaves the first two untouched.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sip.errors import BadMessage
from ..sip.headers import NameAddr, parse_name_addr_list_untrusted
from ..sip.message import SipRequest
from ..sip.uri import unescape
from .aor import AorError, aor_of_text, aor_of_uri
from .contact import FL_MEM, Contact, instance_key, q_text
from .domain import Domain
from .params import RegistrarParams, UsrlocParams

# save() flags (Kamailio registrar.h)
SAVE_MEMORY = 0x01
SAVE_NO_REPLY = 0x02
SAVE_REPLACE = 0x04
SAVE_NO_VARIATION = 0x08
SAVE_PREPARE_REPLY = 0x10

CALLID_MAX = 255
RECEIVED_MAX = 255
MAX_EXPIRES_VALUE = 2**32 - 1

_REASONS = {200: "OK", 400: "Bad Request", 420: "Bad Extension", 421: "Extension Required",
            423: "Interval Too Brief", 439: "First Hop Lacks Outbound Support",
            500: "Server Internal Error", 503: "Service Unavailable"}


class Rerr(enum.Enum):
    """Kamailio's rerrno values that can happen here: (status, P-Registrar-Error)."""

    INV_CSEQ = (400, "Invalid CSeq number")
    AOR_LEN = (500, "Address Of Record too long")
    AOR_PARSE = (400, "Error while parsing AOR")
    INV_Q = (400, "Invalid q param in contact")
    PARSE = (400, "Message parse error")
    PARSE_EXP = (400, "Expires parse error")
    PARSE_CONT = (400, "Contact parse error")
    STAR_EXP = (400, "* used in contact and expires is not zero")
    STAR_CONT = (400, "* used in contact and more than 1 contact")
    TOO_MANY = (503, "Too many registered contacts")
    CONTACT_LEN = (400, "Contact/received too long")
    CALLID_LEN = (400, "Callid too long")
    PARSE_PATH = (400, "Path parse error")
    PATH_UNSUP = (420, "No support for found Path indicated")
    OB_UNSUP = (421, "No support for Outbound indicated")
    OB_REQD = (420, "No support for Outbound on server")
    INV_REGID = (400, "Invalid Reg-Id number")
    LOW_EXP = (423, "Interval too brief")


class RegisterError(Exception):
    def __init__(self, err: Rerr) -> None:
        super().__init__(err.value[1])
        self.err = err


@dataclass
class RegisterRequest:
    """What save() needs besides the request: from the route's context."""

    req: SipRequest
    #: the save_uri argument, instead of the To URI
    aor_uri: str | None = None
    #: "udp:127.0.0.1:5060": where the REGISTER came in
    socket: str = ""
    #: the received_avp value ("" for none)
    received: str = ""
    #: branch flags of the message, saved with the bindings
    bflags: int = 0
    conn_id: int = -1
    #: save() flags
    flags: int = 0
    #: set_q_override() value, or None
    q_override: int | None = None


@dataclass
class SaveResult:
    """The reply (status, reason, extra header lines) and save()'s return code."""

    rc: int
    code: int
    reason: str
    headers: list[str] = field(default_factory=list)
    aor: str = ""


@dataclass
class _Plan:
    uri: str
    expires: int
    q: int
    instance: str
    reg_id: int
    methods: str | None
    received: str


def _status_reply(err: Rerr, reg: RegistrarParams) -> tuple[int, str, list[str]]:
    code, info = err.value
    headers = [f"P-Registrar-Error: {info}"]
    if 500 <= code < 600 and reg.retry_after:
        headers.append(f"Retry-After: {reg.retry_after}")
    if err is Rerr.LOW_EXP:
        headers.append(f"Min-Expires: {reg.min_expires}")
    return code, _REASONS.get(code, "Error"), headers


def _tokens(req: SipRequest, name: str) -> set[str]:
    out: set[str] = set()
    for value in req.get_all(name):
        out.update(t.strip().lower() for t in value.split(",") if t.strip())
    return out


def _unquote(value: str | None) -> str:
    if value is None:
        return ""
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v


def _expires_header(req: SipRequest) -> int | None:
    value = req.get("expires")
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise RegisterError(Rerr.PARSE_EXP)
    return min(int(text), MAX_EXPIRES_VALUE)


def _contacts(req: SipRequest, reg: RegistrarParams) -> tuple[list[NameAddr], bool]:
    """The Contact addresses and whether the first Contact header is ``*``."""
    try:
        per_header = [parse_name_addr_list_untrusted(h.value, allow_wildcard=True)
                      for h in req.headers if h.key == "contact"]
    except BadMessage:
        raise RegisterError(Rerr.PARSE_CONT) from None
    flat = [na for nas in per_header for na in nas]
    star = any(na.wildcard for na in flat)
    if star:
        if len(flat) != 1:
            raise RegisterError(Rerr.STAR_CONT)
        return [], True
    for na in flat:
        if na.uri is None or len(str(na.uri)) > reg.contact_max_size:
            raise RegisterError(Rerr.CONTACT_LEN)
        if len(_unquote(na.param("received"))) > RECEIVED_MAX:
            raise RegisterError(Rerr.CONTACT_LEN)
    return flat, False


def _q(na: NameAddr, reg: RegistrarParams, override: int | None) -> int:
    if override is not None:
        return override
    text = na.param("q")
    if text is None or text == "":
        return reg.default_q
    try:
        value = float(text)
    except ValueError:
        raise RegisterError(Rerr.INV_Q) from None
    if not 0 <= value <= 1 or not math.isfinite(value):
        raise RegisterError(Rerr.INV_Q)
    return round(value * 1000)


def _randomize(expires: int, pct: int, rng: Callable[[], float]) -> int:
    if not pct:
        return expires
    low = expires - pct / 100 * expires
    return int(low + int(rng() * 100) / 100 * (expires - low))


def contact_expires(na: NameAddr, header: int | None, reg: RegistrarParams, *,
                    novariation: bool = False,
                    rng: Callable[[], float] = random.random) -> int:
    """Seconds a contact asks for, after min/max (Kamailio calc_contact_expires). 0 means
    remove. RegisterError(LOW_EXP) when too short and ``min_expires_mode`` is 1."""
    param = na.param("expires")
    if param:
        if param.strip().isdigit():
            e, pct = min(int(param), MAX_EXPIRES_VALUE), reg.expires_range
        else:
            e, pct = reg.default_expires, reg.default_expires_range
    elif header is not None:
        e, pct = header, reg.expires_range
    else:
        e, pct = reg.default_expires, reg.default_expires_range
    if e == 0:
        return 0
    if e < reg.min_expires:
        if reg.min_expires_mode:
            raise RegisterError(Rerr.LOW_EXP)
        e = reg.min_expires
    if not novariation and pct:
        e = max(_randomize(e, pct, rng), reg.min_expires)
    if reg.max_expires and e > reg.max_expires:
        e = reg.max_expires
    return e


def _methods(na: NameAddr, req: SipRequest) -> str | None:
    param = na.param("methods")
    if param is not None:
        names = [m.strip().upper() for m in _unquote(param).split(",") if m.strip()]
        if not names or not all(m.isalpha() for m in names):
            raise RegisterError(Rerr.PARSE)
        return ",".join(names)
    allow = _tokens(req, "allow")
    return ",".join(sorted(m.upper() for m in allow)) if allow else None


def _path(req: SipRequest) -> tuple[str, str]:
    """The Path vector (every Path value, comma-separated) and the received parameter of
    its first URI."""
    values = [h.value.strip() for h in req.headers if h.key == "path"]
    if not values:
        return "", ""
    try:
        entries = [na for v in values for na in parse_name_addr_list_untrusted(v)]
    except BadMessage:
        raise RegisterError(Rerr.PARSE_PATH) from None
    if not entries or entries[0].uri is None:
        raise RegisterError(Rerr.PARSE_PATH)
    rcv = entries[0].uri.param("received")
    return ",".join(values), unescape(_unquote(rcv)) if rcv else ""


def contact_header(contacts: list[Contact], now: float, reg: RegistrarParams) -> str | None:
    """The Contact header of a 200 OK: every live binding with its remaining expiry
    (Kamailio build_contact)."""
    parts = []
    for c in contacts:
        if not c.valid(now):
            continue
        p = f"<{c.uri}>"
        if c.q >= 0:
            p += f";q={q_text(c.q)}"
        p += f";expires={c.remaining(now)}"
        if reg.received_param and c.received:
            p += f';{reg.received_param}="{c.received}"'
        if c.instance:
            p += f';+sip.instance="{c.instance}"'
        if c.reg_id > 0:
            p += f";reg-id={c.reg_id}"
        parts.append(p)
    return "Contact: " + ", ".join(parts) if parts else None


class _Context:
    """One save() call: the table, its params and the time."""

    def __init__(self, domain: Domain, ul: UsrlocParams, reg: RegistrarParams,
                 new_ruid: Callable[[], str], now: float) -> None:
        self.domain = domain
        self.ul = ul
        self.reg = reg
        self.new_ruid = new_ruid
        self.now = now
        #: the Path vector of the request (matching_mode 2)
        self.path = ""

    def find(self, current: list[Contact], plan: _Plan, callid: str, cseq: int
             ) -> tuple[int, Contact | None]:
        """Kamailio get_ucontact_by_instance: (0 found | 1 not found | -1 bad CSeq |
        -2 same CSeq within cseq_delay: skip, binding)."""
        if plan.instance:
            key = instance_key(plan.instance)
            for c in current:
                if c.instance and c.reg_id == plan.reg_id and c.bare_instance() == key:
                    return 0, c
            return 1, None
        mode = self.ul.matching_mode
        found = None
        for c in current:
            if c.uri != plan.uri:
                continue
            if mode == 1 and c.callid != callid:
                continue
            if mode == 2 and c.path != self.path:
                continue
            found = c
            break
        if found is None:
            return 1, None
        if mode == 1 or found.callid == callid:
            if cseq < found.cseq:
                return -1, found
            if cseq == found.cseq:
                if found.last_modified + self.ul.cseq_delay > self.now:
                    return -2, found
                return -1, found
        return 0, found


def process_register(domain: Domain, ul: UsrlocParams, reg: RegistrarParams,
                     rr: RegisterRequest, *, new_ruid: Callable[[], str], now: float,
                     epoch: float, rng: Callable[[], float] = random.random) -> SaveResult:
    """Apply a REGISTER to ``domain``; the result says what to answer."""
    ctx = _Context(domain, ul, reg, new_ruid, now)
    listing: list[Contact] = []
    aor = ""
    extra: list[str] = []
    try:
        req = rr.req
        try:
            if rr.aor_uri is not None:
                aor = aor_of_text(rr.aor_uri, use_domain=bool(ul.use_domain),
                                  case_sensitive=bool(reg.case_sensitive),
                                  realm_prefix=reg.realm_prefix)
            else:
                to_uri = req.to.uri
                if to_uri is None:
                    raise AorError(400, "Error while parsing AOR")
                aor = aor_of_uri(to_uri, use_domain=bool(ul.use_domain),
                                 case_sensitive=bool(reg.case_sensitive),
                                 realm_prefix=reg.realm_prefix)
        except (AorError, BadMessage) as exc:
            err = Rerr.AOR_LEN if isinstance(exc, AorError) and exc.status == 500 \
                else Rerr.AOR_PARSE
            raise RegisterError(err) from None
        expires_hdr = _expires_header(req)
        contacts, star = _contacts(req, reg)
        if star and expires_hdr != 0:
            raise RegisterError(Rerr.STAR_EXP)
        supported, require = _tokens(req, "supported"), _tokens(req, "require")
        if reg.outbound_mode == 2 and "outbound" not in supported:
            extra += ["Require: outbound", "Supported: outbound"]
            raise RegisterError(Rerr.OB_UNSUP)
        if "outbound" in require and reg.outbound_mode == 0:
            extra.append("Unsupported: outbound")
            raise RegisterError(Rerr.OB_REQD)
        use_regid = True
        if reg.outbound_mode and len(req.vias) > 1:
            first_path = req.get("path") or ""
            if ";ob" not in first_path.split(",")[0]:
                use_regid = False  # not the first hop and no outbound edge proxy
        path, path_received = ("", "")
        if reg.use_path:
            path, path_received = _path(req)
            if path and reg.path_mode == 2 and "path" not in supported:
                extra += ["Unsupported: path", f"Path: {path}"]
                raise RegisterError(Rerr.PATH_UNSUP)
        ctx.path = path
        # lazy expiry: an expired binding is gone, whatever the sweep has done yet
        for c in domain.all(aor):
            if not c.valid(now):
                domain.delete(c)
        existed = bool(domain.all(aor))
        if not contacts:
            if star:
                domain.delete_aor(aor)
                rc = 3
            else:
                rc = 4
        else:
            if len(req.call_id) > CALLID_MAX:
                raise RegisterError(Rerr.CALLID_LEN)
            try:
                rc = _add_contacts(ctx, aor, rr, contacts, expires_hdr, use_regid, path,
                                   path_received, rng)
            except RegisterError:
                if existed:
                    listing = domain.valid(aor, now)
                raise
        listing = domain.valid(aor, now)
    except BadMessage:  # a header save() needs does not parse (Via, Supported ...)
        code, reason, headers = _status_reply(Rerr.PARSE, reg)
        return SaveResult(-1, code, reason, headers, aor)
    except RegisterError as exc:
        code, reason, headers = _status_reply(exc.err, reg)
        contact = contact_header(listing, now, reg)
        out = [*extra, *headers] + ([contact] if contact else [])
        return SaveResult(-2 if exc.err is Rerr.TOO_MANY else -1, code, reason, out, aor)
    headers = []
    contact = contact_header(listing, now, reg)
    if contact:
        headers.append(contact)
    if path and reg.path_mode and (reg.path_mode == 2 or "path" in supported):
        headers.append(f"Path: {path}")
    if reg.outbound_mode:
        # Kamailio reg_reply_helper: outbound required, or supported and used by the UA
        if reg.outbound_mode == 2 or "outbound" in supported or "outbound" in require:
            headers.append("Require: outbound")
            if reg.flow_timer:
                headers.append(f"Flow-Timer: {reg.flow_timer}")
        headers.append("Supported: outbound")
    headers.append("Date: " + email.utils.formatdate(epoch, usegmt=True))
    return SaveResult(rc, 200, "OK", headers, aor)


def _add_contacts(ctx: _Context, aor: str, rr: RegisterRequest, contacts: list[NameAddr],
                  expires_hdr: int | None, use_regid: bool, path: str, path_received: str,
                  rng: Callable[[], float]) -> int:
    req, reg, domain, now = rr.req, ctx.reg, ctx.domain, ctx.now
    novariation = bool(rr.flags & SAVE_NO_VARIATION)
    plans: dict[str, _Plan] = {}
    for na in contacts:  # the last of duplicate contacts wins
        uri = str(na.uri)
        instance = _unquote(na.param("+sip.instance"))
        reg_id = 0
        if instance and use_regid:
            rid = na.param("reg-id")
            if rid is not None:
                if not rid.isdigit() or int(rid) == 0:
                    raise RegisterError(Rerr.INV_REGID)
                reg_id = int(rid)
        received = path_received or _unquote(na.param("received")) or rr.received
        plan = _Plan(uri, contact_expires(na, expires_hdr, reg, novariation=novariation,
                                          rng=rng),
                     _q(na, reg, rr.q_override), instance, reg_id, _methods(na, req), received)
        plans[f"i:{instance_key(instance)}:{reg_id}" if instance else f"u:{uri}"] = plan
    callid, cseq = req.call_id.strip(), req.cseq_num
    current = domain.all(aor)
    replace = bool(rr.flags & SAVE_REPLACE)
    # check everything first: out-of-order CSeq, then the number of bindings
    count = len(current)
    for plan in plans.values():
        status, _ = ctx.find(current, plan, callid, cseq)
        if status == -1:
            raise RegisterError(Rerr.INV_CSEQ)
        if status == 1 and plan.expires:
            count += 1
        elif status == 0 and not plan.expires:
            count -= 1
    if reg.max_contacts and count > reg.max_contacts and not (replace and current):
        raise RegisterError(Rerr.TOO_MANY)
    flags = FL_MEM if rr.flags & SAVE_MEMORY else 0
    cflags = rr.bflags
    if path_received and ctx.ul.nat_bflag >= 0:
        cflags |= 1 << ctx.ul.nat_bflag
    ua = req.get("user-agent") or "n/a"
    rc = 0
    for plan in plans.values():
        status, c = ctx.find(domain.all(aor), plan, callid, cseq)
        if status == -2:
            if plan.expires and replace:
                break
            continue
        if c is None:
            if not plan.expires:
                continue
            c = Contact(aor=aor, uri=plan.uri, expires=now + plan.expires, q=plan.q,
                        callid=callid, cseq=cseq, received=plan.received, path=path,
                        user_agent=ua, socket=rr.socket, methods=plan.methods,
                        instance=plan.instance, reg_id=plan.reg_id, flags=flags,
                        cflags=cflags, ruid=ctx.new_ruid(), last_modified=now,
                        conn_id=rr.conn_id)
            domain.insert(c)
            rc = 1
        elif not plan.expires:
            domain.delete(c)
            rc = 3
            continue
        else:
            if plan.instance and c.callid != callid:
                # a new Call-ID for this instance: its other bindings are stale (RFC 5626)
                for other in domain.all(aor):
                    if other is not c and other.bare_instance() == c.bare_instance():
                        domain.delete(other)
            c.uri, c.expires, c.q, c.callid, c.cseq = plan.uri, now + plan.expires, plan.q, \
                callid, cseq
            c.received, c.path, c.user_agent, c.socket = plan.received, path, ua, rr.socket
            c.methods, c.flags, c.cflags, c.last_modified = plan.methods, flags, cflags, now
            c.conn_id = rr.conn_id
            domain.update(c)
            rc = 2
        if replace:
            for other in domain.all(aor):
                if other is not c:
                    domain.delete(other)
            break
    return rc or 1
