"""The same Lua routes file on Kamailio 5.6 (app_lua) and on trio-sip, side by side.

For each of routes/default.lua and routes/kemi-compat.lua the same traffic goes through
Kamailio (tests/support/kamailio.py, bench/kamailio/kamailio-lua.cfg) and through trio-sip
(in-process, in the test's Trio loop, as tests/e2e/test_stateless_sipp.py runs it), and the
outcomes must be equal:

* SIPp: 200 calls at 100 cps from a SIPp UAC through the proxy to a SIPp UAS all succeed
  on both, over UDP and over TCP; the UAS sees a Record-Route on every INVITE, and with
  kemi-compat "X-Route: kemi-compat" on every INVITE, on both;
* single requests from a tiny UDP client (and a tiny UDP UAS behind the proxy): the status
  the caller gets, and what the callee receives (method, R-URI, Max-Forwards, Via count,
  Record-Route parameters, Route, X-Route), reduced to what both servers must agree on;
  statuses and the presence of our headers are compared, not bytes.

Neither server may log a script error while doing so (trio-sip: ``script_errors`` stat;
Kamailio: no ERROR line in its log but those the route writes itself with ``KSR.err``).

Differences by design between the two servers, which the comparison leaves out:

* the reason phrase of replies the route did not choose (``options_reply()``, ``sanity``);
* header order, the branch and tag values, Kamailio's ``Server:`` header, the order of
  Record-Route parameters (``;lr;ftag=..;kc=1``: names are compared as a set);
* a Lua error in a route: trio-sip answers 500, Kamailio nothing
  (test_lua_error_in_a_route_differs_by_design);
* KSR functions only trio-sip has (test_trio_sip_only_functions_are_missing_in_kamailio).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.support.kamailio import Kamailio, kamailio_missing
from tests.support.ports import LOOPBACK, free_port_both
from tests.support.sipp import Sipp, Transport, sipp_binary
from trio_sip.config import config_from_dict
from trio_sip.runtime.server import Server, serve

REPO = Path(__file__).resolve().parent.parent.parent
ROUTES = {
    "default": REPO / "routes" / "default.lua",
    "kemi-compat": REPO / "routes" / "kemi-compat.lua",
}
SERVERS = ("kamailio", "trio-sip")

# With $CI set a missing binary fails instead of skipping: CI must install sipp
# (scripts/test and .ci/run do) and kamailio + kamailio-lua-modules.
requires_kamailio = pytest.mark.skipif(
    kamailio_missing() is not None and not os.environ.get("CI"),
    reason=kamailio_missing() or "",
)
requires_sipp = pytest.mark.skipif(
    sipp_binary() is None and not os.environ.get("CI"),
    reason="sipp not installed (Debian package sip-tester; scripts/test installs it)",
)
pytestmark = [pytest.mark.sipp, pytest.mark.kamailio, requires_kamailio]

# How long a probe waits for the final reply, and then for a stray forwarded request.
REPLY_WAIT_S = 3.0
STRAY_WAIT_S = 0.25


# --- the two servers -----------------------------------------------------------------------


@dataclass
class Proxy:
    """A running proxy under test: its port and how to read its script errors."""

    name: str
    port: int
    script_errors: Callable[[], list[str]]
    describe: Callable[[], str]
    cpu_seconds: Callable[[], float] | None = None


@asynccontextmanager
async def trio_sip_proxy(routes: Path) -> AsyncIterator[Proxy]:
    port = free_port_both()
    data: dict[str, dict[str, object]] = {
        "mi": {"listen": ""},
        "core": {
            "listen": [f"udp:{LOOPBACK}:{port}", f"tcp:{LOOPBACK}:{port}"],
            "log_level": "warning",
        },
        "lua": {"routes": str(routes)},
    }
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config_from_dict(data))
        try:
            yield Proxy(
                "trio-sip",
                server.address("udp").port,
                script_errors=lambda: (
                    [f"script_errors={server.core.stats['script_errors']}"]
                    if server.core.stats["script_errors"]
                    else []
                ),
                describe=lambda: f"trio-sip stats: {dict(server.core.stats)}",
            )
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def kamailio_proxy(routes: Path) -> AsyncIterator[Proxy]:
    async with Kamailio(routes, free_port_both(), children=1) as k:
        yield Proxy(
            "kamailio",
            k.port,
            script_errors=k.log_errors,
            describe=k.describe,
            cpu_seconds=k.cpu_seconds,
        )


def running(server: str, routes: Path):  # type: ignore[no-untyped-def]
    return kamailio_proxy(routes) if server == "kamailio" else trio_sip_proxy(routes)


# --- a little SIP, just enough to compare -----------------------------------------------------

_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
}


@dataclass
class Msg:
    first_line: str
    headers: list[tuple[str, str]]  # (lower-case long name, value)

    @classmethod
    def parse(cls, data: bytes) -> Msg:
        head = data.decode(errors="replace").split("\r\n\r\n", 1)[0]
        lines = head.split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded line
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((_COMPACT.get(name, name), value.strip()))
        return cls(lines[0], headers)

    def all(self, name: str) -> list[str]:
        """Every value of header ``name``, comma-separated values split (outside <> and "")."""
        out: list[str] = []
        for n, v in self.headers:
            if n == name:
                out.extend(_split_commas(v))
        return out

    def get(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return values[0] if values else None

    @property
    def is_reply(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split()[1])

    @property
    def method(self) -> str:
        return self.first_line.split()[0]

    @property
    def ruri(self) -> str:
        return self.first_line.split()[1]

    @property
    def call_id(self) -> str | None:
        return self.get("call-id")


def _split_commas(value: str) -> list[str]:
    parts, depth, quoted, cur = [], 0, False, ""
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _uri_params(nameaddr: str) -> dict[str, str]:
    m = re.search(r"<([^>]*)>", nameaddr)
    uri = m.group(1) if m else nameaddr
    params = {}
    for p in uri.split(";")[1:]:
        k, _, v = p.partition("=")
        params[k.strip().lower()] = v.strip()
    return params


def _hostport(nameaddr: str) -> str:
    m = re.search(r"<([^>]*)>", nameaddr)
    uri = (m.group(1) if m else nameaddr).split(";")[0]
    return uri.split(":", 1)[1].split("@")[-1]


def _tag(value: str | None) -> str | None:
    if value is None:
        return None
    m = re.search(r";\s*tag=([^;>\s]+)", value)
    return m.group(1) if m else None


# --- what a probe sees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    """The request as the callee received it, reduced to what both servers must agree on."""

    method: str
    ruri: str
    max_forwards: str | None
    vias: int
    top_via_is_proxy: bool
    record_route: tuple[frozenset[str], ...]  # parameter names of each Record-Route entry
    record_route_is_proxy: bool
    rr_ftag_is_from_tag: bool | None
    routes: int
    x_route: tuple[str, ...]


@dataclass(frozen=True)
class Seen:
    """What caller and callee saw for one request."""

    status: int | None  # final status the caller got (None: no answer)
    reply_vias: int | None  # Via entries in that reply (the proxy took its own off)
    forwarded: Forwarded | None  # None: the callee got nothing


def _reduce(req: Msg, proxy_port: int) -> Forwarded:
    me = f"{LOOPBACK}:{proxy_port}"
    vias = req.all("via")
    rr = req.all("record-route")
    ftag = _uri_params(rr[0]).get("ftag") if rr else None
    return Forwarded(
        method=req.method,
        ruri=req.ruri,
        max_forwards=req.get("max-forwards"),
        vias=len(vias),
        top_via_is_proxy=bool(vias) and vias[0].split()[1].split(";")[0] == me,
        record_route=tuple(frozenset(_uri_params(r)) for r in rr),
        record_route_is_proxy=bool(rr) and _hostport(rr[0]) == me,
        rr_ftag_is_from_tag=None if ftag is None else ftag == _tag(req.get("from")),
        routes=len(req.all("route")),
        x_route=tuple(req.all("x-route")),
    )


class Uas:
    """A UDP callee: records every request and answers it 200 (no answer to ACK)."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.received: dict[str, list[Msg]] = {}
        self.port = 0

    async def bind(self) -> None:
        await self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]

    async def serve(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(65535)
            msg = Msg.parse(data)
            if msg.is_reply:
                continue
            self.received.setdefault(msg.call_id or "", []).append(msg)
            if msg.method == "ACK":
                continue
            lines = ["SIP/2.0 200 OK"]
            for name in ("via", "from", "to", "call-id", "cseq"):
                for n, v in msg.headers:
                    if n == name:
                        if name == "to" and _tag(v) is None:
                            v += ";tag=uas" + uuid.uuid4().hex[:8]
                        lines.append(f"{name.title()}: {v}")
            lines += [f"Contact: <sip:uas@{LOOPBACK}:{self.port}>", "Content-Length: 0", "", ""]
            await self.sock.sendto("\r\n".join(lines).encode(), addr)


@dataclass(frozen=True)
class Case:
    """One request. ``ruri``: "self" (the proxy) or "uas" (the callee), with a user."""

    name: str
    method: str
    user: str | None
    to: str = "uas"
    max_forwards: int | None = 70
    to_tag: bool = False
    route_to_proxy: bool = False
    cseq_method: str | None = None
    extra: tuple[str, ...] = ()
    # what must hold on both servers (besides being equal on both)
    status: int | None = None
    forwarded: bool | None = None
    check: Callable[[Forwarded], None] | None = field(default=None, compare=False)

    def build(self, proxy: int, uas: int, client: int, call_id: str) -> bytes:
        hostport = f"{LOOPBACK}:{proxy if self.to == 'self' else uas}"
        ruri = f"sip:{self.user}@{hostport}" if self.user else f"sip:{hostport}"
        lines = [
            f"{self.method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {LOOPBACK}:{client};branch=z9hG4bK{uuid.uuid4().hex};rport",
            f"From: <sip:caller@{LOOPBACK}:{client}>;tag=c{uuid.uuid4().hex[:10]}",
            f"To: <{ruri}>" + (";tag=callee1" if self.to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: 1 {self.cseq_method or self.method}",
            f"Contact: <sip:caller@{LOOPBACK}:{client}>",
        ]
        if self.route_to_proxy:
            lines.append(f"Route: <sip:{LOOPBACK}:{proxy};lr>")
        if self.max_forwards is not None:
            lines.append(f"Max-Forwards: {self.max_forwards}")
        lines += [*self.extra, "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()


async def exchange(
    case: Case, proxy: int, uas: Uas, reply_wait: float = REPLY_WAIT_S
) -> tuple[Msg | None, list[Msg]]:
    """Send the case's request to the proxy: (the final reply or None, what the UAS got)."""
    call_id = f"parity-{case.name}-{uuid.uuid4().hex}"
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
        await s.bind((LOOPBACK, 0))
        await s.sendto(case.build(proxy, uas.port, s.getsockname()[1], call_id), (LOOPBACK, proxy))
        final: Msg | None = None
        with trio.move_on_after(reply_wait):
            while final is None:
                msg = Msg.parse(await s.recv(65535))
                if msg.is_reply and msg.call_id == call_id and msg.status >= 200:
                    final = msg
        await trio.sleep(STRAY_WAIT_S)  # a request forwarded by mistake shows up meanwhile
    return final, uas.received.get(call_id, [])


async def probe(case: Case, proxy: int, uas: Uas) -> Seen:
    final, got = await exchange(case, proxy, uas)
    return Seen(
        status=final.status if final else None,
        reply_vias=len(final.all("via")) if final else None,
        forwarded=_reduce(got[0], proxy) if got else None,
    )


# --- the cases -------------------------------------------------------------------------------------


def _invite_checks(routes: str) -> Callable[[Forwarded], None]:
    def check(f: Forwarded) -> None:
        assert f.max_forwards == "69"
        assert f.vias == 2 and f.top_via_is_proxy
        assert f.record_route_is_proxy and len(f.record_route) == 1
        want = {"lr", "ftag"} | ({"kc"} if routes == "kemi-compat" else set())
        assert f.record_route[0] == want
        assert f.rr_ftag_is_from_tag  # rr append_fromtag=1 on both
        assert f.x_route == (("kemi-compat",) if routes == "kemi-compat" else ())

    return check


def _no_rr_no_x(f: Forwarded) -> None:
    assert f.record_route == () and f.x_route == ()


def _cases(routes: str) -> list[Case]:
    cases = [
        Case("options-self", "OPTIONS", None, to="self", status=200, forwarded=False),
        Case("maxfwd-0", "INVITE", "alice", max_forwards=0, status=483, forwarded=False),
        Case(
            "maxfwd-0-options-self",
            "OPTIONS",
            None,
            to="self",
            max_forwards=0,
            status=483,
            forwarded=False,
        ),
        Case("invite", "INVITE", "alice", status=200, forwarded=True, check=_invite_checks(routes)),
        Case("maxfwd-missing", "INVITE", "alice", max_forwards=None, status=200, forwarded=True),
        Case("maxfwd-above-limit", "INVITE", "alice", max_forwards=255, status=200, forwarded=True),
        Case("message", "MESSAGE", "alice", status=200, forwarded=True, check=_no_rr_no_x),
        Case("myself-with-user", "INVITE", "bob", to="self", status=404, forwarded=False),
        Case("in-dialog-no-route", "BYE", "alice", to_tag=True, status=404, forwarded=False),
        Case(
            "in-dialog-routed",
            "BYE",
            "alice",
            to_tag=True,
            route_to_proxy=True,
            status=200,
            forwarded=True,
        ),
        Case(
            "cseq-method-mismatch",
            "INVITE",
            "alice",
            cseq_method="BYE",
            status=400,
            forwarded=False,
        ),
    ]
    if routes == "kemi-compat":
        cases += [
            Case("busy", "INVITE", "busy", status=486, forwarded=False),
            Case("busy-options", "OPTIONS", "busy", status=486, forwarded=False),
            Case(
                "x-route-replaced",
                "INVITE",
                "alice",
                extra=("X-Route: spoofed",),
                status=200,
                forwarded=True,
                check=_invite_checks(routes),
            ),
            Case("rewrite-00", "INVITE", "0049301234", status=200, forwarded=True),
            Case(
                "options-forwarded",
                "OPTIONS",
                "carol",
                status=200,
                forwarded=True,
                check=_no_rr_no_x,
            ),
        ]
    return cases


CASES = [(r, c) for r in ROUTES for c in _cases(r)]


@pytest.mark.parametrize(("routes", "case"), CASES, ids=[f"{r}-{c.name}" for r, c in CASES])
async def test_single_request_same_on_both(routes: str, case: Case) -> None:
    seen: dict[str, Seen] = {}
    uas = Uas()
    with uas.sock:
        await uas.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uas.serve)
            for server in SERVERS:
                async with running(server, ROUTES[routes]) as proxy:
                    seen[server] = await probe(case, proxy.port, uas)
                    errors = proxy.script_errors()
                    assert not errors, f"{server}: script errors {errors}\n{proxy.describe()}"
            nursery.cancel_scope.cancel()
    k, t = seen["kamailio"], seen["trio-sip"]
    print(f"{routes} {case.name}: kamailio {k}\n{routes} {case.name}: trio-sip {t}")
    assert k == t, f"{case.name}: kamailio and trio-sip differ\n  kamailio: {k}\n  trio-sip: {t}"
    # and both do what the route says
    if case.status is not None:
        assert t.status == case.status, t
    if case.forwarded is not None:
        assert (t.forwarded is not None) == case.forwarded, t
    if t.forwarded is not None:
        assert t.reply_vias == 1, t  # the proxy took its Via off the callee's reply
        if case.check is not None:
            case.check(t.forwarded)
    if case.name == "rewrite-00":
        assert t.forwarded is not None and t.forwarded.ruri.startswith("sip:+49301234@")
    if case.name == "in-dialog-routed":
        assert t.forwarded is not None and t.forwarded.routes == 0  # our Route consumed


# --- SIPp through each server ---------------------------------------------------------------------

CALLS = 200
RATE = 100


@dataclass(frozen=True)
class CallsOutcome:
    successful: int
    failed: int
    invites_at_uas: int
    x_route_at_uas: int
    record_routed_invites: int


def _count_at_uas(messages: str) -> tuple[int, int, int]:
    """INVITEs the UAS received, with "X-Route: kemi-compat", with a Record-Route."""
    # SIPp's -trace_msg file: each message is "-----... <timestamp>", then a line
    # "UDP message received [N] bytes :" (or "... message sent (N bytes):"), a blank line,
    # then the message.
    invites = x_route = rr = 0
    for block in re.split(r"^-{10,} .*$", messages.replace("\r\n", "\n"), flags=re.M)[1:]:
        what, _, text = block.strip().partition("\n")
        text = text.strip()
        if "message received" not in what or not text.startswith("INVITE "):
            continue
        invites += 1
        head = text.split("\n\n", 1)[0]
        if re.search(r"^X-Route:\s*kemi-compat\s*$", head, flags=re.M | re.I):
            x_route += 1
        if re.search(r"^Record-Route:", head, flags=re.M | re.I):
            rr += 1
    return invites, x_route, rr


@requires_sipp
@pytest.mark.parametrize("transport", ["u1", "t1"])
@pytest.mark.parametrize("routes", list(ROUTES))
async def test_sipp_calls_same_on_both(routes: str, transport: Transport) -> None:
    outcomes: dict[str, CallsOutcome] = {}
    for server in SERVERS:
        async with running(server, ROUTES[routes]) as proxy:
            async with Sipp(
                "uas.xml", transport=transport, calls=CALLS, timeout=60, trace_msg=True
            ).running() as uas:
                cpu0 = proxy.cpu_seconds() if proxy.cpu_seconds else None
                t0 = time.monotonic()
                result = await Sipp(
                    "uac.xml",
                    remote=uas.port,
                    via=proxy.port,
                    transport=transport,
                    rate=RATE,
                    calls=CALLS,
                    limit=CALLS,
                    timeout=60,
                ).run_async()
                elapsed = time.monotonic() - t0
                cpu = (
                    (proxy.cpu_seconds() - cpu0) if proxy.cpu_seconds and cpu0 is not None else None
                )
            assert result.ok, f"{server}: {result.describe()}\n{proxy.describe()}"
            assert uas.result is not None
            errors = proxy.script_errors()
            assert not errors, f"{server}: script errors {errors}\n{proxy.describe()}"
        invites, x_route, rr = _count_at_uas(uas.result.messages)
        outcomes[server] = CallsOutcome(result.successful, result.failed, invites, x_route, rr)
        if cpu is not None:
            print(
                f"{server} {routes} {transport}: {CALLS} calls in {elapsed:.2f} s, "
                f"{cpu * 1e6 / CALLS:.0f} CPU us/call (all processes)"
            )
    k, t = outcomes["kamailio"], outcomes["trio-sip"]
    assert k == t, f"kamailio and trio-sip differ\n  kamailio: {k}\n  trio-sip: {t}"
    assert t.successful == CALLS and t.failed == 0
    assert t.invites_at_uas >= CALLS  # (a retransmitted INVITE would be counted too)
    assert t.record_routed_invites == t.invites_at_uas
    if routes == "kemi-compat":
        assert t.x_route_at_uas == t.invites_at_uas
    else:
        assert t.x_route_at_uas == 0


# --- differences by design ----------------------------------------------------------------------

LUA_ERROR_ROUTES = """
function ksr_request_route()
    if KSR.is_OPTIONS() and KSR.is_myself_ruri() then
        KSR.sl.sl_send_reply(200, "OK")  -- readiness ping
        KSR.x.exit()
    end
    local missing = nil
    KSR.info("never logged: " .. missing)  -- line 8: a Lua runtime error
end
"""


async def test_lua_error_in_a_route_differs_by_design(tmp_path: Path) -> None:
    """A Lua error in a route: both log it with file:line and forward nothing, but trio-sip
    answers the request 500 (README: "the request is answered 500") while Kamailio 5.6
    (app_lua_run_ex returns -1, the request is dropped) sends no reply at all, so the caller
    retransmits until its timer fires."""
    routes = tmp_path / "lua_error.lua"
    routes.write_text(LUA_ERROR_ROUTES)
    case = Case("lua-error", "INVITE", "alice")
    uas = Uas()
    with uas.sock:
        await uas.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uas.serve)
            async with kamailio_proxy(routes) as proxy:
                k_final, k_fwd = await exchange(case, proxy.port, uas, reply_wait=1.0)
                k_errors = proxy.script_errors()
            async with trio_sip_proxy(routes) as proxy:
                t_final, t_fwd = await exchange(case, proxy.port, uas, reply_wait=1.0)
                t_errors = proxy.script_errors()
            nursery.cancel_scope.cancel()
    assert k_fwd == [] and t_fwd == []
    assert k_final is None
    assert any("error from Lua" in e and "lua_error.lua:8:" in e for e in k_errors), k_errors
    assert t_final is not None and t_final.status == 500
    assert t_errors  # counted in trio-sip's script_errors


# Functions trio-sip has that Kamailio 5.6.3 does not (with the modules of
# bench/kamailio/kamailio-lua.cfg): a routes file meant for both must not call them.
TRIO_SIP_ONLY = ("drop", "revert_uri", "sl.send_reply_error", "hdr.count")
SURFACE_ROUTES = """
local NAMES = { @NAMES@ }
function ksr_request_route()
    local missing = {}
    for _, name in ipairs(NAMES) do
        local ok, f = pcall(function()
            local t = KSR
            for part in string.gmatch(name, "[^.]+") do t = t[part] end
            return t
        end)
        if not ok or f == nil then
            table.insert(missing, name)
        end
    end
    KSR.sl.sl_send_reply(200, "missing:" .. table.concat(missing, ","))
    KSR.x.exit()
end
""".replace(
    "@NAMES@", ", ".join(f'"{n}"' for n in (*TRIO_SIP_ONLY, "forward", "hdr.append", "kx.get_ruri"))
)


async def test_trio_sip_only_functions_are_missing_in_kamailio(tmp_path: Path) -> None:
    """The KSR names trio-sip exports beyond Kamailio 5.6.3: KSR.drop (5.6 has
    KSR.set_drop and KSR.x.drop), KSR.revert_uri, KSR.sl.send_reply_error, and
    KSR.hdr.count (a documented trio-sip addition). Everything else our routes use is on
    both (checked here for a few: forward, hdr.append, kx.get_ruri)."""
    routes = tmp_path / "surface.lua"
    routes.write_text(SURFACE_ROUTES)
    case = Case("surface", "OPTIONS", None, to="self")
    missing: dict[str, list[str]] = {}
    uas = Uas()
    with uas.sock:
        await uas.bind()
        for server in SERVERS:
            async with running(server, routes) as proxy:
                final, _ = await exchange(case, proxy.port, uas)
                assert not proxy.script_errors(), proxy.describe()
            assert final is not None and final.status == 200, final
            reason = final.first_line.split(" ", 2)[2]
            assert reason.startswith("missing:"), reason
            missing[server] = [n for n in reason[len("missing:") :].split(",") if n]
    assert missing["trio-sip"] == []
    assert missing["kamailio"] == list(TRIO_SIP_ONLY)
