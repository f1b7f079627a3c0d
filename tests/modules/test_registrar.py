"""KSR.registrar end to end on the simulated network, in virtual time: save() and every
RFC 3261 §10.3 rule, Kamailio's return codes and error replies, lookup() forking to the
registered devices, persistence across a server restart."""

from __future__ import annotations

import email.utils
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from module_helpers import OUT_LUA, PROXY, UAC, Env, outs, serving

from tests.usrloc.helpers import ensure_modules
from trio_sip.modules import registrar as regmod
from trio_sip.modules.usrloc import usrloc_for
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.storage.sqlite import Clock
from trio_sip.testing import SimNetwork, SimUA, build_message, start_server
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
DEV1 = Address("127.0.0.3", 5060)
DEV2 = Address("127.0.0.4", 5060)
_ids = itertools.count(1)

ROUTES = OUT_LUA + """
function ksr_request_route()
  if KSR.is_REGISTER() then
    local flags = tonumber(KSR.hdr.get("X-Flags") or "0")
    local rc
    if KSR.hdr.is_present("X-Received") > 0 then
      KSR.pv.sets("$avp(RECEIVED)", KSR.hdr.get("X-Received"))
    end
    if KSR.hdr.is_present("X-Q") > 0 then
      KSR.registrar.set_q_override(KSR.hdr.get("X-Q"))
    end
    if KSR.hdr.is_present("X-Uri") > 0 then
      rc = KSR.registrar.save_uri("location", flags, KSR.hdr.get("X-Uri"))
    else
      rc = KSR.registrar.save("location", flags)
    end
    KSR.pv.seti("$shv(rc)", rc)
    if KSR.hdr.is_present("X-Send") > 0 then
      KSR.hdr.append_to_reply("X-Script: yes\\r\\n")
      KSR.pv.seti("$shv(sent)", KSR.registrar.reg_send_reply())
    end
    return
  end
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.is_ACK() then KSR.tm.t_relay() return end
  if KSR.is_MESSAGE() then
    local op = KSR.hdr.get("X-Op")
    local uri = KSR.hdr.get("X-Uri") or ""
    if op == "registered" then out("rc", KSR.registrar.registered("location"))
    elseif op == "registered_uri" then out("rc", KSR.registrar.registered_uri("location", uri))
    elseif op == "unregister" then out("rc", KSR.registrar.unregister("location", uri))
    elseif op == "unregister_ruid" then
      out("rc", KSR.registrar.unregister_ruid("location", uri, KSR.hdr.get("X-Ruid")))
    elseif op == "fetch" then
      out("rc", KSR.registrar.reg_fetch_contacts("location", uri, "p"))
      out("count", KSR.registrar.ulc_rget("p", "count"))
      out("aor", KSR.registrar.ulc_rget("p", "aor"))
      out("addr1", KSR.registrar.ulc_cget("p", "addr", 1))
      out("ruid0", KSR.registrar.ulc_cget("p", "ruid", 0))
      out("pv", KSR.pv.get("$ulc(p=>addr)"))
      out("none", KSR.registrar.ulc_cget("p", "addr", 7))
      out("freed", KSR.registrar.reg_free_contacts("p"))
      out("after", KSR.registrar.ulc_rget("p", "count"))
    elseif op == "dset" then
      out("rc", KSR.registrar.lookup_to_dset("location", uri))
      out("ru", KSR.pv.get("$ru"))
    elseif op == "lookup_uri" then
      out("rc", KSR.registrar.lookup_uri("location", uri))
      out("ru", KSR.pv.get("$ru"))
      out("du", KSR.pv.get("$du"))
    elseif op == "sock" then
      out("rc", KSR.registrar.add_sock_hdr("X-Sock"))
    elseif op == "badtable" then
      out("rc", KSR.registrar.lookup("no-such table"))
    end
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  local rc = KSR.registrar.lookup("location")
  KSR.pv.seti("$shv(lookup)", rc)
  if rc == -2 then KSR.sl.sl_send_reply(405, "Method Not Allowed") return end
  if rc < 0 then KSR.sl.sl_send_reply(404, "Not Found") return end
  KSR.tm.t_relay()
end
"""


@pytest.fixture(autouse=True)
def _modules(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_modules(monkeypatch)


@pytest.fixture
def routes(write_routes: Any) -> str:
    return str(write_routes(ROUTES))


def cfg(tmp_path: Path, **modparams: dict[str, Any]) -> dict[str, Any]:
    return {"core": {"data_dir": str(tmp_path)}, "modparams": modparams}


def register(ua: SimUA, *contacts: str, user: str = "alice", expires: str | None = None,
             call_id: str = "reg-1", cseq: int = 1,
             headers: list[tuple[str, str]] | None = None) -> bytes:
    n = next(_ids)
    hdrs = [("Via", f"SIP/2.0/UDP {ua.local};branch=z9hG4bKreg{n};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@127.0.0.1>;tag=rf{n}"),
            ("To", f"<sip:{user}@127.0.0.1>"),
            ("Call-ID", call_id), ("CSeq", f"{cseq} REGISTER")]
    hdrs += [("Contact", c) for c in contacts]
    if expires is not None:
        hdrs.append(("Expires", expires))
    hdrs += headers or []
    return build_message("REGISTER sip:127.0.0.1 SIP/2.0", hdrs)


async def send(env: Env, data: bytes, ua: SimUA | None = None) -> SipResponse:
    """Send from ``ua`` (the UAC) to the proxy; the final response to that request."""
    ua = ua or env.uac
    start = len(ua.received)
    await ua.send(data, PROXY)
    branch = data.split(b";branch=", 1)[1].split(b";", 1)[0].decode()
    got = await ua.wait_for(
        lambda r: isinstance(r.msg, SipResponse) and r.msg.status >= 200
        and r.msg.via1 is not None and r.msg.via1.branch == branch, start=start)
    assert isinstance(got.msg, SipResponse)
    return got.msg


def bindings(resp: SipResponse) -> dict[str, int]:
    """{contact URI: expires} of a REGISTER's 200 OK."""
    out = {}
    for na in resp.contacts():
        out[str(na.uri)] = int(na.param("expires") or -1)
    return out


def rc(env: Env, name: str = "rc") -> Any:
    return env.server.core.shv.get(name)


def message(ua: SimUA, op: str, ruri: str = "sip:alice@127.0.0.1",
            headers: list[tuple[str, str]] | None = None) -> bytes:
    return ua.request("MESSAGE", ruri, headers=[("X-Op", op), *(headers or [])])


# -- save: the 200 OK ----------------------------------------------------------------


async def test_register_is_answered_with_the_binding_and_date(autojump_clock: Any,
                                                              routes: str,
                                                              tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        resp = await send(env, register(env.uac, "<sip:alice@127.0.0.2:5060>", expires="60"))
        assert (resp.status, resp.reason) == (200, "OK")
        assert rc(env) == 1
        assert bindings(resp) == {"sip:alice@127.0.0.2:5060": 60}
        date = resp.get("Date")
        assert date is not None and date.endswith(" GMT")
        assert email.utils.parsedate_to_datetime(date).tzname() == "UTC"
        assert resp.to_tag  # a registrar's reply gets a To tag
        # a refresh updates the binding (2) and restarts its expiry
        await trio.sleep(10)
        resp = await send(env, register(env.uac, "<sip:alice@127.0.0.2:5060>", expires="60",
                                         cseq=2))
        assert rc(env) == 2 and bindings(resp) == {"sip:alice@127.0.0.2:5060": 60}
        # a second device: 200 lists both, each with its remaining expiry
        await trio.sleep(10)
        resp = await send(env, register(env.uac, "<sip:alice@127.0.0.9:5060>", expires="300",
                                        call_id="reg-2"))
        assert rc(env) == 1
        assert bindings(resp) == {"sip:alice@127.0.0.2:5060": 50,
                                  "sip:alice@127.0.0.9:5060": 300}


async def test_expiry_comes_from_the_contact_then_the_header_then_the_default(
        autojump_clock: Any, routes: str, tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;expires=120",
                                        "<sip:b@127.0.0.2>", expires="300"))
        assert bindings(resp) == {"sip:a@127.0.0.2": 120, "sip:b@127.0.0.2": 300}
        resp = await send(env, register(env.uac, "<sip:c@127.0.0.2>", user="bob"))
        assert bindings(resp) == {"sip:c@127.0.0.2": 3600}  # default_expires
        # a contact expires that is not a number: default_expires (Kamailio)
        resp = await send(env, register(env.uac, "<sip:d@127.0.0.2>;expires=soon",
                                        user="carol", expires="100"))
        assert bindings(resp) == {"sip:d@127.0.0.2": 3600}
        resp = await send(env, register(env.uac, "<sip:d@127.0.0.2>", user="dave",
                                        expires="never"))
        assert resp.status == 400
        assert resp.get("P-Registrar-Error") == "Expires parse error"


async def test_too_brief_is_423_with_min_expires(autojump_clock: Any, routes: str,
                                                  tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        resp = await send(env, register(env.uac, "<sip:alice@127.0.0.2>", expires="30"))
        assert (resp.status, resp.reason) == (423, "Interval Too Brief")
        assert resp.get("Min-Expires") == "60"
        assert resp.get("P-Registrar-Error") == "Interval too brief"
        assert rc(env) == -1
        assert env.server.core.usrloc.lookup("location", "alice") is None
        # one short contact refuses the whole REGISTER
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>",
                                        "<sip:b@127.0.0.2>;expires=5", expires="600"))
        assert resp.status == 423
        assert env.server.core.usrloc.lookup("location", "alice") is None


async def test_min_expires_mode_0_raises_and_max_expires_caps(autojump_clock: Any,
                                                               routes: str,
                                                               tmp_path: Path) -> None:
    config = cfg(tmp_path, registrar={"min_expires_mode": 0, "max_expires": 1800,
                                      "min_expires": 120})
    async with serving(routes, config=config) as env:
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;expires=30",
                                        "<sip:b@127.0.0.2>", expires="7200"))
        assert bindings(resp) == {"sip:a@127.0.0.2": 120, "sip:b@127.0.0.2": 1800}


async def test_expires_zero_removes_the_binding(autojump_clock: Any, routes: str,
                                                tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", "<sip:b@127.0.0.2>",
                                 expires="600"))
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;expires=0", cseq=2))
        assert resp.status == 200 and rc(env) == 3
        assert bindings(resp) == {"sip:b@127.0.0.2": 600}
        # removing an unknown contact is fine (nothing to do: return 1)
        resp = await send(env, register(env.uac, "<sip:zz@127.0.0.2>", expires="0", cseq=3))
        assert resp.status == 200 and rc(env) == 1
        assert bindings(resp) == {"sip:b@127.0.0.2": 600}


async def test_star_removes_every_binding_only_with_expires_zero(autojump_clock: Any,
                                                                 routes: str,
                                                                 tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", "<sip:b@127.0.0.2>",
                                 expires="600"))
        resp = await send(env, register(env.uac, "*", cseq=2))
        assert resp.status == 400 and rc(env) == -1
        assert resp.get("P-Registrar-Error") == "* used in contact and expires is not zero"
        resp = await send(env, register(env.uac, "*", expires="60", cseq=3))
        assert resp.status == 400
        resp = await send(env, register(env.uac, "*", "<sip:c@127.0.0.2>", expires="0",
                                        cseq=4))
        assert resp.status == 400
        assert resp.get("P-Registrar-Error") == "* used in contact and more than 1 contact"
        assert len(env.server.core.usrloc.lookup("location", "alice") or []) == 2
        resp = await send(env, register(env.uac, "*", expires="0", cseq=5))
        assert resp.status == 200 and rc(env) == 3
        assert resp.get("Contact") is None
        assert env.server.core.usrloc.lookup("location", "alice") is None


async def test_register_without_contact_returns_the_bindings(autojump_clock: Any,
                                                             routes: str,
                                                             tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        resp = await send(env, register(env.uac))
        assert resp.status == 200 and rc(env) == 4 and resp.get("Contact") is None
        await send(env, register(env.uac, "<sip:a@127.0.0.2>;q=0.5", expires="600",
                                 cseq=2))
        await trio.sleep(100)
        resp = await send(env, register(env.uac, call_id="other", cseq=1))
        assert rc(env) == 4
        assert resp.get("Contact") == "<sip:a@127.0.0.2>;q=0.5;expires=500"


# -- save: ordering and limits ----------------------------------------------------------


async def test_call_id_and_cseq_ordering(autojump_clock: Any, routes: str,
                                         tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="600", cseq=5))
        # same Call-ID, lower CSeq: out of order
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="0", cseq=4))
        assert (resp.status, rc(env)) == (400, -1)
        assert resp.get("P-Registrar-Error") == "Invalid CSeq number"
        assert bindings(resp) == {"sip:a@127.0.0.2": 600}  # the current bindings
        # same CSeq within cseq_delay (20 s): taken for a retransmission, skipped
        await trio.sleep(19)
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="0", cseq=5))
        assert (resp.status, rc(env)) == (200, 1)
        assert bindings(resp) == {"sip:a@127.0.0.2": 581}
        # ... and after it: out of order
        await trio.sleep(2)
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="0", cseq=5))
        assert resp.status == 400
        # another Call-ID may have any CSeq
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="60",
                                        call_id="new-device-boot", cseq=1))
        assert (resp.status, rc(env)) == (200, 2)
        assert bindings(resp) == {"sip:a@127.0.0.2": 60}


async def test_max_contacts_is_503_and_minus_2(autojump_clock: Any, routes: str,
                                               tmp_path: Path) -> None:
    config = cfg(tmp_path, registrar={"max_contacts": 2, "retry_after": 30})
    async with serving(routes, config=config) as env:
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", "<sip:b@127.0.0.2>",
                                        "<sip:c@127.0.0.2>", expires="600"))
        assert (resp.status, resp.reason, rc(env)) == (503, "Service Unavailable", -2)
        assert resp.get("P-Registrar-Error") == "Too many registered contacts"
        assert resp.get("Retry-After") == "30"
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", "<sip:b@127.0.0.2>",
                                 expires="600"))
        resp = await send(env, register(env.uac, "<sip:c@127.0.0.2>", expires="600", cseq=2))
        assert (resp.status, rc(env)) == (503, -2)
        # replacing one is fine: removed and added in the same REGISTER
        resp = await send(env, register(env.uac, "<sip:c@127.0.0.2>",
                                        "<sip:a@127.0.0.2>;expires=0", expires="600", cseq=3))
        assert resp.status == 200
        assert bindings(resp) == {"sip:b@127.0.0.2": 600, "sip:c@127.0.0.2": 600}


async def test_flag_0x04_keeps_one_contact_per_aor(autojump_clock: Any, routes: str,
                                                   tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        flags = [("X-Flags", "4")]
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="600", headers=flags))
        resp = await send(env, register(env.uac, "<sip:b@127.0.0.2>", expires="600",
                                        call_id="two", headers=flags))
        assert rc(env) == 1
        assert bindings(resp) == {"sip:b@127.0.0.2": 600}
        resp = await send(env, register(env.uac, "<sip:x@127.0.0.2>", "<sip:y@127.0.0.2>",
                                        expires="600", call_id="three", headers=flags))
        assert bindings(resp) == {"sip:x@127.0.0.2": 600}


async def test_flag_0x02_leaves_the_reply_to_the_script(autojump_clock: Any, routes: str,
                                                        tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="600",
                                        headers=[("X-Flags", "2"), ("X-Send", "1")]))
        assert resp.status == 200 and rc(env) == 1 and rc(env, "sent") == 1
        assert resp.get("X-Script") == "yes"
        assert bindings(resp) == {"sip:a@127.0.0.2": 600}
        # 0x02 without reg_send_reply: no answer at all
        start = len(env.uac.received)
        await env.uac.send(register(env.uac, "<sip:a@127.0.0.2>", expires="600", cseq=2,
                                    headers=[("X-Flags", "2")]), PROXY)
        await trio.sleep(1)
        assert len(env.uac.received) == start and rc(env) == 2
        # bad flags: -1, and nothing is answered
        await env.uac.send(register(env.uac, "<sip:a@127.0.0.2>", cseq=3,
                                    headers=[("X-Flags", "256")]), PROXY)
        await trio.sleep(1)
        assert len(env.uac.received) == start and rc(env) == -1


async def test_flag_0x01_keeps_the_binding_out_of_the_file(autojump_clock: Any,
                                                           routes: str,
                                                           tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:disk@127.0.0.2>", user="bob", expires="600"))
        await send(env, register(env.uac, "<sip:mem@127.0.0.2>", expires="600",
                                 headers=[("X-Flags", "1")]))
        assert env.server.core.usrloc.lookup("location", "alice") is not None
        await env.server.core.usrloc.flush()
    with sqlite3.connect(tmp_path / "location.sqlite") as conn:
        assert [r[0] for r in conn.execute("SELECT contact FROM location")] == [
            "sip:disk@127.0.0.2"]


# -- save: what else is stored -------------------------------------------------------


async def test_received_path_instance_and_q(autojump_clock: Any, routes: str,
                                            tmp_path: Path) -> None:
    config = cfg(tmp_path, registrar={"received_avp": "$avp(RECEIVED)", "use_path": 1})
    async with serving(routes, config=config) as env:
        resp = await send(env, register(
            env.uac, '<sip:alice@10.0.0.1:5060>;+sip.instance="<urn:uuid:00000000-1>";'
            "reg-id=1", expires="600", headers=[("X-Received", "sip:127.0.0.9:5062")]))
        assert resp.get("Contact") == (
            '<sip:alice@10.0.0.1:5060>;expires=600;received="sip:127.0.0.9:5062";'
            '+sip.instance="<urn:uuid:00000000-1>";reg-id=1')
        # the same instance and reg-id from a new address: updated, not added (RFC 5626)
        resp = await send(env, register(
            env.uac, '<sip:alice@10.0.0.2:5060>;+sip.instance="<urn:uuid:00000000-1>";'
            "reg-id=1", expires="600", cseq=2))
        assert rc(env) == 2
        assert list(bindings(resp)) == ["sip:alice@10.0.0.2:5060"]
        # q from the contact, or from set_q_override()
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;q=0.7", user="bob",
                                        expires="600"))
        assert resp.get("Contact") == "<sip:a@127.0.0.2>;q=0.7;expires=600"
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;q=0.7", user="bob",
                                        expires="600", cseq=2, headers=[("X-Q", "0.25")]))
        assert resp.get("Contact") == "<sip:a@127.0.0.2>;q=0.25;expires=600"
        resp = await send(env, register(env.uac, "<sip:a@127.0.0.2>;q=2", user="bob",
                                        cseq=3))
        assert resp.status == 400 and resp.get("P-Registrar-Error") == \
            "Invalid q param in contact"
        # Path: strict mode needs "Supported: path"
        resp = await send(env, register(env.uac, "<sip:c@10.0.0.3>", user="carol",
                                        expires="600",
                                        headers=[("Path", "<sip:127.0.0.4;lr>")]))
        assert (resp.status, resp.reason) == (420, "Bad Extension")
        assert resp.get("Unsupported") == "path"
        resp = await send(env, register(env.uac, "<sip:c@10.0.0.3>", user="carol",
                                        expires="600", cseq=2,
                                        headers=[("Path", "<sip:127.0.0.4;lr>"),
                                                 ("Supported", "path")]))
        assert resp.status == 200 and resp.get("Path") == "<sip:127.0.0.4;lr>"
        ul = env.server.core.usrloc
        carol = (ul.lookup("location", "carol") or [])[0]
        assert carol["Path"] == "<sip:127.0.0.4;lr>"
        assert carol["Socket"] == "udp:127.0.0.1:5060"


async def test_aor_from_save_uri_and_use_domain(autojump_clock: Any, routes: str,
                                                tmp_path: Path) -> None:
    config = cfg(tmp_path, usrloc={"use_domain": 1})
    async with serving(routes, config=config) as env:
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", user="Alice", expires="600"))
        await send(env, register(env.uac, "<sip:b@127.0.0.2>", expires="600",
                                 headers=[("X-Uri", "sip:Bob@Example.COM")]))
        ul = env.server.core.usrloc
        assert sorted(a["AoR"] for a in ul.dump()["Domains"][0]["AoRs"]) == [
            "alice@127.0.0.1", "bob@example.com"]
        resp = await send(env, register(env.uac, "<sip:b@127.0.0.2>", cseq=2,
                                        headers=[("X-Uri", "no uri")]))
        assert resp.status == 400
        assert resp.get("P-Registrar-Error") == "Error while parsing AOR"


async def test_the_reply_leaves_only_once_the_binding_is_on_disk(autojump_clock: Any,
                                                                 routes: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:a@127.0.0.2>", expires="600"))
        await trio.sleep(1)  # the location service runs now: the next save() waits for it
        writer = env.server.core.usrloc.writer
        assert writer is not None and writer.running
        events: list[str] = []
        commit = writer._commit

        def spy(batch: list[Any]) -> None:
            events.append("commit " + " ".join(sql.split()[0] for sql, _ in batch))
            commit(batch)

        monkeypatch.setattr(writer, "_commit", spy)
        transport = env.server.core.transports["udp"]
        real_send = transport.send

        async def send_spy(data: bytes, dest: Address, **kw: Any) -> bool:
            events.append("send " + data.split(b"\r\n", 1)[0].decode())
            return bool(await real_send(data, dest, **kw))

        monkeypatch.setattr(transport, "send", send_spy)
        resp = await send(env, register(env.uac, "<sip:b@127.0.0.2>", expires="600", cseq=2))
        assert resp.status == 200 and rc(env) == 1
        assert events == ["commit INSERT", "send SIP/2.0 200 OK"]
        with sqlite3.connect(tmp_path / "location.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM location").fetchone() == (2,)


# -- lookup -------------------------------------------------------------------------------


def answer(ua: SimUA, code: int) -> None:
    def on_request(u: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            u.send_soon(source, u.response_to(req, 180, "Ringing"),
                        *([u.response_to(req, code, "R")] if code else []))
        elif req.method in ("CANCEL", "BYE"):
            u.send_soon(source, u.response_to(req, 200, "OK"))

    ua.on_request = on_request


async def test_lookup_forks_to_every_registered_device(autojump_clock: Any, routes: str,
                                                       tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        dev1, dev2 = env.uas, env.hop  # 127.0.0.3 and 127.0.0.4
        await send(env, register(dev1, "<sip:alice@127.0.0.3:5060>;q=0.5", expires="600",
                                 call_id="d1"), dev1)
        await send(env, register(dev2, "<sip:alice@127.0.0.4:5060>;q=1", expires="600",
                                 call_id="d2"), dev2)
        answer(dev1, 0)  # rings forever
        answer(dev2, 200)
        invite = env.uac.request("INVITE", "sip:alice@127.0.0.1", body=b"v=0\r\n")
        await env.uac.send(invite, PROXY)
        ok = await env.uac.expect_response(200, method="INVITE")
        assert ok.get("Contact") == "<sip:uas@127.0.0.4:5060>"
        assert rc(env, "lookup") == 1
        inv1 = (await dev1.expect_request("INVITE")).msg
        inv2 = (await dev2.expect_request("INVITE")).msg
        assert isinstance(inv1, SipRequest) and isinstance(inv2, SipRequest)
        # the q=1 device is the R-URI branch, the other an appended branch
        assert inv2.ruri_text == "sip:alice@127.0.0.4:5060"
        assert inv1.ruri_text == "sip:alice@127.0.0.3:5060"
        assert inv2.via1 is not None and inv2.via1.branch.endswith(".1")
        # the ringing device is cancelled once the other answered
        await dev1.expect_request("CANCEL")


async def test_lookup_sends_to_the_received_address(autojump_clock: Any, routes: str,
                                                    tmp_path: Path) -> None:
    config = cfg(tmp_path, registrar={"received_avp": "$avp(RECEIVED)"})
    async with serving(routes, config=config) as env:
        # the device is behind a NAT: its Contact is private, it is reachable at .4
        await send(env, register(env.uac, "<sip:alice@10.0.0.7:5060>", expires="600",
                                 headers=[("X-Received", "sip:127.0.0.4:5060")]))
        answer(env.hop, 200)
        await env.uac.send(env.uac.request("INVITE", "sip:alice@127.0.0.1"), PROXY)
        got = await env.hop.expect_request("INVITE")
        assert isinstance(got.msg, SipRequest)
        assert got.msg.ruri_text == "sip:alice@10.0.0.7:5060"
        await env.uac.expect_response(200, method="INVITE")


async def test_lookup_after_expiry_and_for_nobody_is_404(autojump_clock: Any, routes: str,
                                                         tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        start = trio.current_time()
        await send(env, register(env.uac, "<sip:alice@127.0.0.3:5060>", expires="60"))
        answer(env.uas, 200)
        await trio.sleep_until(start + 59)
        resp = await send(env, env.uac.request("INVITE", "sip:alice@127.0.0.1"))
        assert resp.status == 200
        await trio.sleep_until(start + 60)
        resp = await send(env, env.uac.request("INVITE", "sip:alice@127.0.0.1"))
        assert resp.status == 404 and rc(env, "lookup") == -1
        resp = await send(env, env.uac.request("INVITE", "sip:nobody@127.0.0.1"))
        assert resp.status == 404


async def test_method_filtering(autojump_clock: Any, routes: str, tmp_path: Path) -> None:
    config = cfg(tmp_path, registrar={"method_filtering": 1})
    async with serving(routes, config=config) as env:
        await send(env, register(env.uac, "<sip:alice@127.0.0.3:5060>", expires="600",
                                 headers=[("Allow", "MESSAGE, OPTIONS")]))
        resp = await send(env, env.uac.request("INVITE", "sip:alice@127.0.0.1"))
        assert resp.status == 405 and rc(env, "lookup") == -2
        await send(env, register(env.uac, '<sip:alice@127.0.0.4:5060>;methods="INVITE"',
                                 expires="600", call_id="two"))
        answer(env.hop, 200)
        resp = await send(env, env.uac.request("INVITE", "sip:alice@127.0.0.1"))
        assert resp.status == 200


async def test_registered_unregister_fetch_and_dset(autojump_clock: Any, routes: str,
                                                    tmp_path: Path) -> None:
    async with serving(routes, config=cfg(tmp_path)) as env:
        await send(env, register(env.uac, "<sip:alice@127.0.0.3:5060>;q=1",
                                 "<sip:alice@127.0.0.4:5060>;q=0.5", expires="600"))
        r = outs(await send(env, message(env.uac, "registered")))
        assert r["rc"] == "number:1"
        r = outs(await send(env, message(env.uac, "registered", "sip:bob@127.0.0.1")))
        assert r["rc"] == "number:-1"
        r = outs(await send(env, message(env.uac, "registered_uri", "sip:x@127.0.0.1",
                                         [("X-Uri", "sip:alice@example.com")])))
        assert r["rc"] == "number:1"
        r = outs(await send(env, message(env.uac, "fetch", headers=[
            ("X-Uri", "sip:alice@127.0.0.1")])))
        assert r["rc"] == "number:1" and r["count"] == "number:2" and r["aor"] == \
            "string:alice"
        assert r["addr1"] == "string:sip:alice@127.0.0.4:5060"
        assert r["pv"] == "string:sip:alice@127.0.0.3:5060"
        assert r["none"] == "nil:nil" and r["freed"] == "number:1"
        assert r["after"] == "nil:nil"
        ruid = r["ruid0"].split(":", 1)[1]
        r = outs(await send(env, message(env.uac, "dset", headers=[
            ("X-Uri", "sip:alice@127.0.0.1")])))
        assert r["rc"] == "number:1" and r["ru"] == "string:sip:alice@127.0.0.1"
        r = outs(await send(env, message(env.uac, "lookup_uri", "sip:x@127.0.0.1", headers=[
            ("X-Uri", "sip:alice@127.0.0.1")])))
        assert r["rc"] == "number:1" and r["ru"] == "string:sip:alice@127.0.0.3:5060"
        assert r["du"] == "nil:nil"
        r = outs(await send(env, message(env.uac, "unregister_ruid", headers=[
            ("X-Uri", "sip:bob@127.0.0.1"), ("X-Ruid", ruid)])))
        assert r["rc"] == "number:-3"  # not bob's
        r = outs(await send(env, message(env.uac, "unregister_ruid", headers=[
            ("X-Uri", "sip:alice@127.0.0.1"), ("X-Ruid", ruid)])))
        assert r["rc"] == "number:1"
        assert [c["Address"] for c in env.server.core.usrloc.lookup("location", "alice")
                or []] == ["sip:alice@127.0.0.4:5060"]
        r = outs(await send(env, message(env.uac, "unregister", headers=[
            ("X-Uri", "sip:alice@127.0.0.1")])))
        assert r["rc"] == "number:1"
        assert env.server.core.usrloc.lookup("location", "alice") is None
        r = outs(await send(env, message(env.uac, "badtable")))
        assert r["rc"] == "number:-3"


async def test_add_sock_hdr(autojump_clock: Any, write_routes: Any, tmp_path: Path) -> None:
    routes = write_routes(
        "function ksr_request_route()\n"
        "  KSR.registrar.add_sock_hdr('X-Sock')\n"
        "  KSR.forward()\n"
        "end\n")
    async with serving(routes, config=cfg(tmp_path)) as env:
        await env.uac.send(env.uac.request("MESSAGE", "sip:bob@127.0.0.3"), PROXY)
        got = await env.uas.expect_request("MESSAGE")
        assert got.msg.get("X-Sock") == "udp:127.0.0.1:5060"


async def test_bindings_survive_a_server_restart(autojump_clock: Any, routes: str,
                                                 tmp_path: Path) -> None:
    config = cfg(tmp_path)
    clock = Clock(lambda: 1_800_000_000.0 + trio.current_time())  # wall time moves too
    async with SimNetwork(seed=7) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, config=config)
        usrloc_for(server.core, clock=clock)
        dev = SimUA(net, DEV1)
        env = Env(net, server, SimUA(net, UAC), dev, dev)
        await send(env, register(dev, "<sip:alice@127.0.0.3:5060>", expires="600"), dev)
        await trio.sleep(1)
        await send(env, register(dev, "<sip:bob@127.0.0.3:5060>", user="bob", expires="60"),
                   dev)
        nursery.cancel_scope.cancel()
    await trio.sleep(100)  # down for 100 s: bob's binding expired meanwhile
    async with SimNetwork(seed=8) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, config=config)
        ul = usrloc_for(server.core, clock=clock)
        dev = SimUA(net, DEV1)
        env = Env(net, server, SimUA(net, UAC), dev, dev)
        looked = ul.lookup("location", "alice")
        assert looked is not None and looked[0]["Expires"] == 499
        assert ul.lookup("location", "bob") is None
        answer(dev, 200)
        resp = await send(env, env.uac.request("INVITE", "sip:alice@127.0.0.1"))
        assert resp.status == 200
        resp = await send(env, env.uac.request("INVITE", "sip:bob@127.0.0.1"))
        assert resp.status == 404
        nursery.cancel_scope.cancel()


# -- the export table -----------------------------------------------------------------------


def test_exports_follow_the_kemi_signatures() -> None:
    sigs = json.loads((REPO / "docs" / "kemi-signatures.json").read_text())["modules"]
    exports = {e.name: e for e in regmod.MODULE.exports}
    for name, export in exports.items():
        assert name in sigs["registrar"], name
        assert list(export.params) == sigs["registrar"][name]["params"], name
        assert export.doc, name
    assert exports["save"].is_async and exports["save_uri"].is_async
    assert not exports["lookup"].is_async
    assert sigs["usrloc"] == {}
