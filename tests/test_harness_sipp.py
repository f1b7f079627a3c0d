"""The SIPp harness proven against real peers: SIPp against SIPp, and SIPp against tiny
in-test SIP elements (a registrar, a stateless record-routing relay) running in the same
Trio loop, as the server under test will. Loopback only; every run bounded by -timeout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio

from tests.support import sipp as sipp_support
from tests.support.ports import LOOPBACK, free_port, free_port_block
from tests.support.sipp import (
    EXIT_SOME_FAILED,
    Sipp,
    SippError,
    Transport,
    parse_sipp_duration,
    parse_stats_csv,
    sipp_binary,
)

_SIPP_MISSING = sipp_binary() is None
# CI installs sipp (scripts/test): there a missing binary must fail, not skip.
requires_sipp = pytest.mark.skipif(
    _SIPP_MISSING and not os.environ.get("CI"),
    reason="sipp not installed (Debian package sip-tester; scripts/test installs it as root)",
)


# --- no SIPp needed -----------------------------------------------------------------------


def test_command_line_names_uas_and_sends_to_proxy() -> None:
    s = Sipp(
        "uac.xml",
        remote=5080,
        via=5070,
        local_port=5999,
        transport="t1",
        rate=50,
        calls=50,
        limit=10,
        lost=5,
        pause_ms=100,
        service="alice",
        auto_answer=True,
        timeout=12.5,
        binary="/usr/bin/sipp",
    )
    cmd = s.command()
    joined = " ".join(cmd)
    assert cmd[0] == "/usr/bin/sipp"
    assert cmd[1] == "-sf" and cmd[2].endswith("tests/sipp/uac.xml")
    assert cmd[3] == "127.0.0.1:5080"  # R-URI / To: the UAS
    assert "-rsa 127.0.0.1:5070" in joined  # packets: the proxy
    for part in (
        "-i 127.0.0.1 -p 5999 -t t1",
        "-r 50",
        "-m 50",
        "-l 10",
        "-lost 5",
        "-d 100",
        "-s alice",
        "-aa",
        "-timeout 12.5s -timeout_error",
        "-nostdin",
        "-trace_stat -stf",
        "-trace_err -error_file",
    ):
        assert part in joined, part
    assert Sipp("uas", binary="/usr/bin/sipp").command()[1:3] == ["-sn", "uas"]


def test_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Sipp("uac.xml", remote=("192.0.2.1", 5060))
    with pytest.raises(ValueError, match="loopback"):
        Sipp("uac.xml", remote=5060, via=("10.0.0.1", 5060))
    with pytest.raises(FileNotFoundError):
        Sipp("no-such-scenario.xml", binary="/usr/bin/sipp").command()


def test_parse_stats_csv_takes_last_row() -> None:
    text = (
        "StartTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);ResponseTime1(C);\n"
        "2026-11-29\t20:05:03.5;0;0;0;00:00:00:000000;\n"
        "2026-11-29\t20:05:04.5;48;2;3;00:00:00:012500;\n"
    )
    stats = parse_stats_csv(text)
    assert stats["SuccessfulCall(C)"] == "48"
    assert stats["FailedCall(C)"] == "2"
    assert parse_sipp_duration(stats["ResponseTime1(C)"]) == pytest.approx(0.0125)
    assert parse_sipp_duration("01:02:03") == 3723.0
    assert parse_stats_csv("only;a;header;\n") == {}


# --- SIPp against SIPp ----------------------------------------------------------------------


@pytest.mark.sipp
@requires_sipp
@pytest.mark.parametrize(
    ("uas_transport", "uac_transport"), [("u1", "u1"), ("t1", "t1"), ("t1", "tn")]
)
async def test_uac_against_uas_50_calls(uas_transport: Transport, uac_transport: Transport) -> None:
    uas = Sipp("uas.xml", calls=50, transport=uas_transport, timeout=30)
    async with uas.running() as server:
        uac = Sipp(
            "uac.xml",
            remote=server.port,
            transport=uac_transport,
            calls=50,
            rate=50,
            limit=50,
            timeout=30,
        )
        result = await uac.run_async()
        uas_result = await server.wait()
    assert result.ok, result.describe()
    assert (result.successful, result.failed, result.returncode) == (50, 0, 0), result.describe()
    assert result.response_time() is not None
    assert uas_result.ok, uas_result.describe()
    assert uas_result.successful == 50, uas_result.describe()


@pytest.mark.sipp
@requires_sipp
def test_uac_against_busy_uas_counts_failures_sync() -> None:
    with Sipp("uas_busy.xml", calls=10, timeout=20).start() as uas:
        uas.wait_ready()
        result = Sipp("uac.xml", remote=uas.port, calls=10, rate=50, timeout=20).run()
        uas_result = uas.wait()
    assert result.returncode == EXIT_SOME_FAILED, result.describe()
    assert (result.successful, result.failed) == (0, 10), result.describe()
    assert result.unexpected_messages == 10, result.describe()
    assert "486 Busy Here" in result.errors
    assert not result.ok
    # SIPp's UAC ACKs the 486 when it aborts, so the busy UAS completes every call.
    assert uas_result.ok and uas_result.successful == 10, uas_result.describe()


@pytest.mark.sipp
@requires_sipp
async def test_cancel_against_ringing_uas() -> None:
    async with Sipp("uas_ring_forever.xml", calls=5, timeout=20).running() as uas:
        result = await Sipp(
            "uac_cancel_expected.xml", remote=uas.port, calls=5, rate=20, pause_ms=50, timeout=20
        ).run_async()
        uas_result = await uas.wait()
    assert result.ok and result.successful == 5, result.describe()
    assert uas_result.ok and uas_result.successful == 5, uas_result.describe()


@pytest.mark.sipp
@requires_sipp
async def test_cancellation_kills_sipp() -> None:
    proc = None
    with trio.CancelScope() as scope:
        async with Sipp("uas.xml", timeout=60).running() as uas:
            proc = uas
            scope.cancel()
            await trio.sleep_forever()
    assert proc is not None
    assert proc.process.returncode is not None  # gone, not orphaned
    assert proc.result is None  # killed on cancel: no result collected


@pytest.mark.sipp
@requires_sipp
async def test_ready_fails_fast_when_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local port the caller fixed that is taken: one start, no run again (only the
    ports chosen here can be lost to a race)."""
    starts: list[int] = []
    start = sipp_support.AsyncSippProcess._start

    async def counting(self: sipp_support.AsyncSippProcess) -> None:
        starts.append(self.sipp.port)
        await start(self)

    monkeypatch.setattr(sipp_support.AsyncSippProcess, "_start", counting)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as blocker:
        await blocker.bind((LOOPBACK, 0))
        port = blocker.getsockname()[1]
        with pytest.raises(SippError, match="exited with 254"):
            async with Sipp("uas.xml", local_port=port, timeout=10).running(ready_within=5):
                pass  # pragma: no cover
    assert starts == [port]


@pytest.mark.sipp
@requires_sipp
async def test_lost_media_port_race_is_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIPp binds -mp and -mp + 2: a run that finds -mp + 2 taken (the CI failure of stop 13)
    exits 254 before binding its SIP port; running() starts it again on new ports."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as blocker:
        await blocker.bind((LOOPBACK, 0))
        video = blocker.getsockname()[1]
        chosen: list[int] = []

        def first_one_collides(span: int, proto: str = "udp") -> int:
            base = video - 2 if not chosen else free_port_block(span)
            chosen.append(base)
            return base

        monkeypatch.setattr(sipp_support, "free_port_block", first_one_collides)
        async with Sipp("uas.xml", timeout=10).running(ready_within=5) as uas:
            assert uas.sipp.media_port == chosen[-1] != video - 2
        assert len(chosen) == 2


# --- SIPp against in-test SIP elements in the same Trio loop ------------------------------


def _split(data: bytes) -> tuple[list[str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("utf-8", "replace").split("\r\n"), body


def _join(lines: list[str], body: bytes) -> bytes:
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def _header(lines: list[str], name: str) -> tuple[int, str] | None:
    for i, line in enumerate(lines[1:], start=1):
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return i, v.strip()
    return None


def _hostport(uri_or_via: str) -> tuple[str, int]:
    """host:port of 'sip:user@h:p;params', '<sip:h:p;lr>' or 'SIP/2.0/UDP h:p;branch=...'."""
    s = uri_or_via.strip().strip("<>")
    if s.upper().startswith("SIP/2.0/"):
        s = s.split(None, 1)[1]
    else:
        s = s.split(":", 1)[1]  # drop the scheme
        s = s.split("@", 1)[-1]
    s = s.split(";", 1)[0].split(">", 1)[0]
    host, _, port = s.partition(":")
    return host, int(port or 5060)


@dataclass
class Element:
    """A tiny stateless SIP element on a loopback UDP socket, for harness tests only."""

    port: int
    seen: list[list[str]] = field(default_factory=list)

    async def serve(
        self,
        handle: Callable[[trio.socket.SocketType, bytes, tuple[str, int]], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind((LOOPBACK, self.port))
            task_status.started()
            while True:
                data, addr = await sock.recvfrom(65535)
                await handle(sock, data, addr)


async def _registrar(sock: trio.socket.SocketType, data: bytes, addr: tuple[str, int]) -> None:
    lines, _ = _split(data)
    if not lines[0].startswith("REGISTER "):
        return
    keep = [
        line
        for line in lines[1:]
        if line.split(":", 1)[0].strip().lower()
        in ("via", "from", "to", "call-id", "cseq", "contact")
    ]
    keep = [line + ";tag=reg1" if line.lower().startswith("to:") else line for line in keep]
    await sock.sendto(_join(["SIP/2.0 200 OK", *keep, "Content-Length: 0"], b""), addr)


@pytest.mark.sipp
@requires_sipp
async def test_register_against_in_loop_registrar(nursery: trio.Nursery) -> None:
    reg = Element(free_port("udp"))
    await nursery.start(reg.serve, _registrar)
    result = await Sipp(
        "reg.xml", remote=reg.port, calls=20, rate=100, service="alice", timeout=20
    ).run_async()
    assert result.ok and result.successful == 20, result.describe()


def _call_ids(msgs: list[list[str]]) -> set[str]:
    return {h[1] for m in msgs if (h := _header(m, "Call-ID")) is not None}


class Relay(Element):
    """Stateless record-routing relay (RFC 3261 §16.11 in miniature, loopback only):
    requests are forwarded to their Route, else their Request-URI, with our Via on top
    (branch derived from the received one, so a CANCEL matches its INVITE) and, on an
    initial INVITE, our Record-Route; responses lose our Via and go to the next Via."""

    async def handle(
        self, sock: trio.socket.SocketType, data: bytes, _addr: tuple[str, int]
    ) -> None:
        lines, body = _split(data)
        self.seen.append(list(lines))
        if lines[0].startswith("SIP/2.0 "):
            # Drop our Via value. SIPp's [last_Via:] joins all Vias into one line
            # ("Via: ours, theirs"), so the top value may share a line with the next.
            top = _header(lines, "Via")
            if top is None:
                return
            _ours, _, rest = top[1].partition(",")
            if rest.strip():
                lines[top[0]] = "Via: " + rest.strip()
            else:
                del lines[top[0]]
            via = _header(lines, "Via")
            if via is None:
                return
            target = _hostport(via[1].split(",")[0])
        else:
            method, ruri, _v = lines[0].split(" ", 2)
            route = _header(lines, "Route")
            if route and _hostport(route[1].split(",")[0]) == (LOOPBACK, self.port):
                others = route[1].split(",", 1)[1:]
                if others:
                    lines[route[0]] = "Route: " + others[0].strip()
                else:
                    del lines[route[0]]
                route = _header(lines, "Route")
            target = _hostport(route[1].split(",")[0] if route else ruri)
            top_via = _header(lines, "Via")
            assert top_via is not None
            branch = hashlib.md5(top_via[1].encode()).hexdigest()[:16]
            lines.insert(1, f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{branch}")
            to = _header(lines, "To")
            if method == "INVITE" and to is not None and ";tag=" not in to[1]:
                lines.insert(2, f"Record-Route: <sip:{LOOPBACK}:{self.port};lr>")
        if target[0] != LOOPBACK:
            return  # never send anywhere but loopback
        await sock.sendto(_join(lines, body), target)

    def requests(self, method: str) -> list[list[str]]:
        return [m for m in self.seen if m[0].startswith(method + " ")]


@pytest.mark.sipp
@requires_sipp
async def test_uac_through_record_routing_relay(nursery: trio.Nursery) -> None:
    relay = Relay(free_port("udp"))
    await nursery.start(relay.serve, relay.handle)
    async with Sipp("uas.xml", calls=10, timeout=20).running() as uas:
        result = await Sipp(
            "uac.xml", remote=uas.port, via=relay.port, calls=10, rate=50, timeout=20
        ).run_async()
        uas_result = await uas.wait()
    assert result.ok and result.successful == 10, result.describe()
    assert uas_result.ok and uas_result.successful == 10, uas_result.describe()
    # R-URI named the UAS while the packets went to the relay (-rsa) ...
    invites = relay.requests("INVITE")
    assert len(_call_ids(invites)) == 10  # (a slow run may add retransmissions)
    assert all(f"sip:service@127.0.0.1:{uas.port}" in m[0] for m in invites)
    # ... and ACK and BYE followed the Record-Route: they came back with our Route.
    for method in ("ACK", "BYE"):
        msgs = relay.requests(method)
        assert len(_call_ids(msgs)) == 10, method
        assert all(_header(m, "Route") for m in msgs), method


@pytest.mark.sipp
@requires_sipp
async def test_cancel_through_relay_keeps_the_via_stack(nursery: trio.Nursery) -> None:
    relay = Relay(free_port("udp"))
    await nursery.start(relay.serve, relay.handle)
    async with Sipp("uas_ring_forever.xml", calls=3, timeout=20).running() as uas:
        result = await Sipp(
            "uac_cancel_expected.xml", remote=uas.port, via=relay.port, calls=3, rate=20,
            timeout=20,
        ).run_async()  # fmt: skip
        uas_result = await uas.wait()
    # The UAC got its 487 only if the UAS answered with the INVITE's two Vias.
    assert result.ok and result.successful == 3, result.describe()
    assert uas_result.ok, uas_result.describe()
