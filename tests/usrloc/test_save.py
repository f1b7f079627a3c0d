"""save() rules checked directly on process_register (no network): outbound, Path modes,
matching modes, instance handling, NAT flag, the shipped routes file."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from trio_sip.sip.message import SipRequest
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.testing import build_message
from trio_sip.usrloc import (
    Domain,
    RegisterRequest,
    RegistrarParams,
    SaveResult,
    UsrlocParams,
    process_register,
)
from trio_sip.usrloc.save import contact_expires

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


def request(*contacts: str, expires: str | None = "600", call_id: str = "c1", cseq: int = 1,
            headers: list[tuple[str, str]] | None = None, vias: int = 1) -> SipRequest:
    hdrs = [("Via", f"SIP/2.0/UDP 127.0.0.{9 - i}:5060;branch=z9hG4bKs{i}")
            for i in range(vias)]
    hdrs += [("From", "<sip:alice@example.com>;tag=1"), ("To", "<sip:alice@example.com>"),
             ("Call-ID", call_id), ("CSeq", f"{cseq} REGISTER")]
    hdrs += [("Contact", c) for c in contacts]
    if expires is not None:
        hdrs.append(("Expires", expires))
    hdrs += headers or []
    msg = parse_message_untrusted(build_message("REGISTER sip:example.com SIP/2.0", hdrs))
    assert isinstance(msg, SipRequest)
    return msg


class Registrar:
    def __init__(self, ul: UsrlocParams | None = None, **reg: Any) -> None:
        self.domain = Domain("location")
        self.ul = ul or UsrlocParams(db_url="none")
        self.reg = RegistrarParams(**reg)
        self.now = 1000.0

    def save(self, req: SipRequest, **kw: Any) -> SaveResult:
        return process_register(self.domain, self.ul, self.reg, RegisterRequest(req, **kw),
                                new_ruid=lambda: f"r{next(_ids)}", now=self.now,
                                epoch=1_800_000_000.0, rng=lambda: 0.5)

    def uris(self, aor: str = "alice") -> list[str]:
        return [c.uri for c in self.domain.valid(aor, self.now)]


def header(result: SaveResult, name: str) -> str | None:
    for h in result.headers:
        n, _, v = h.partition(":")
        if n.lower() == name.lower():
            return v.strip()
    return None


def test_outbound_modes() -> None:
    r = Registrar()
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Require", "outbound")]))
    assert (res.code, res.reason, res.rc) == (420, "Bad Extension", -1)
    assert header(res, "Unsupported") == "outbound"
    r = Registrar(outbound_mode=2)
    res = r.save(request("<sip:a@10.0.0.1>"))
    assert (res.code, res.reason) == (421, "Extension Required")
    assert header(res, "Require") == "outbound"
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Supported", "outbound, path")]))
    assert res.code == 200 and header(res, "Require") == "outbound"
    assert header(res, "Supported") == "outbound"
    r = Registrar(outbound_mode=1, flow_timer=25)
    res = r.save(request("<sip:a@10.0.0.1>"))
    assert header(res, "Require") is None and header(res, "Supported") == "outbound"
    res = r.save(request('<sip:a@10.0.0.1>;+sip.instance="<urn:x>";reg-id=1',
                         headers=[("Supported", "outbound")], cseq=2))
    assert header(res, "Require") == "outbound" and header(res, "Flow-Timer") == "25"
    assert r.domain.valid("alice", r.now)[-1].reg_id == 1
    # not the first hop, and no ;ob on the edge proxy's Path: reg-id is ignored
    res = r.save(request('<sip:b@10.0.0.1>;+sip.instance="<urn:y>";reg-id=1',
                         headers=[("Supported", "outbound")], vias=2, call_id="c9"))
    assert [c.reg_id for c in r.domain.valid("alice", r.now) if c.uri == "sip:b@10.0.0.1"] \
        == [0]


def test_reg_id_must_be_a_positive_number() -> None:
    r = Registrar()
    res = r.save(request('<sip:a@10.0.0.1>;+sip.instance="<urn:x>";reg-id=0'))
    assert res.code == 400 and header(res, "P-Registrar-Error") == "Invalid Reg-Id number"


def test_path_modes_and_path_received() -> None:
    path = "<sip:edge.example.com;lr;received=sip:198.51.100.7:3456>"
    r = Registrar(use_path=1, path_mode=1, path_use_received=1)
    r.ul = UsrlocParams(db_url="none", nat_bflag=6)
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Path", path)]))
    assert res.code == 200 and header(res, "Path") is None  # lazy: not supported by the UA
    c = r.domain.valid("alice", r.now)[0]
    assert c.path == path and c.received == "sip:198.51.100.7:3456"
    assert c.cflags == 1 << 6  # the NAT branch flag
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Path", path), ("Supported", "path")],
                         cseq=2))
    assert header(res, "Path") == path
    r = Registrar(use_path=1, path_mode=0)
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Path", path), ("Supported", "path")]))
    assert res.code == 200 and header(res, "Path") is None
    res = r.save(request("<sip:a@10.0.0.1>", headers=[("Path", "<not a uri")], cseq=3))
    assert res.code == 400 and header(res, "P-Registrar-Error") == "Path parse error"
    # without use_path, Path is ignored
    r = Registrar()
    r.save(request("<sip:a@10.0.0.1>", headers=[("Path", path)]))
    assert r.domain.valid("alice", r.now)[0].path == ""


def test_matching_mode_1_matches_on_call_id_too() -> None:
    r = Registrar()
    r.ul = UsrlocParams(db_url="none", matching_mode=1)
    r.save(request("<sip:a@10.0.0.1>", call_id="one"))
    res = r.save(request("<sip:a@10.0.0.1>", call_id="two"))
    assert res.rc == 1 and r.uris() == ["sip:a@10.0.0.1", "sip:a@10.0.0.1"]
    r.now += 30
    res = r.save(request("<sip:a@10.0.0.1>", call_id="one", cseq=0))
    assert res.code == 400  # matched by Call-ID: the CSeq check applies


def test_a_new_call_id_for_an_instance_drops_its_other_bindings() -> None:
    r = Registrar()
    inst = '+sip.instance="<urn:uuid:1>"'
    r.save(request(f"<sip:a@10.0.0.1>;{inst};reg-id=1", call_id="boot1"))
    r.save(request(f"<sip:a@10.0.0.2>;{inst};reg-id=2", call_id="boot1", cseq=2))
    assert r.uris() == ["sip:a@10.0.0.1", "sip:a@10.0.0.2"]
    r.now += 1
    res = r.save(request(f"<sip:a@10.0.0.3>;{inst};reg-id=1", call_id="boot2"))
    assert res.rc == 2 and r.uris() == ["sip:a@10.0.0.3"]


def test_other_errors() -> None:
    r = Registrar(contact_max_size=30)
    res = r.save(request("<sip:a-very-long-user-name@10.0.0.1:5060>"))
    assert header(res, "P-Registrar-Error") == "Contact/received too long"
    res = r.save(request("<sip:a@10.0.0.1", expires="60"))
    assert header(res, "P-Registrar-Error") == "Contact parse error"
    res = r.save(request('<sip:a@10.0.0.1>;methods="IN VITE"'))
    assert header(res, "P-Registrar-Error") == "Message parse error"
    res = r.save(request("<sip:a@10.0.0.1>", call_id="x" * 300))
    assert header(res, "P-Registrar-Error") == "Callid too long"
    assert r.domain.aors() == []


def test_expires_ranges_and_no_variation() -> None:
    from trio_sip.sip.headers import parse_name_addr_untrusted

    reg = RegistrarParams(expires_range=20, default_expires_range=50, min_expires=0)
    na = parse_name_addr_untrusted("<sip:a@10.0.0.1>")
    assert contact_expires(na, 1000, reg, rng=lambda: 0.0) == 800
    assert contact_expires(na, 1000, reg, rng=lambda: 0.999) == 998
    assert contact_expires(na, None, reg, rng=lambda: 0.0) == 1800
    assert contact_expires(na, 1000, reg, novariation=True) == 1000
    assert contact_expires(na, 0, reg) == 0


def test_the_shipped_routes_pass_the_static_checks() -> None:
    from trio_sip.modules import builtin_modules, htable, registrar, usrloc
    from trio_sip.script.check import check_routes

    mods = builtin_modules()
    names = {m.name for m in mods}
    mods += [m for m in (registrar.MODULE, usrloc.MODULE, htable.MODULE) if m.name not in names]
    assert check_routes(str(REPO / "routes" / "registrar.lua"), mods) == []
