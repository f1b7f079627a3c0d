"""``trio-sip run --workers N`` (trio_sip/runtime/workers.py): the refusals (a bad count,
a port taken, a worker that cannot start), where Via and Record-Route point, a worker
killed and restarted on the same sockets. Real processes on 127.0.0.1; the SIPp runs are
in tests/e2e/test_workers_sipp.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.test_workers_sipp import REPO, STATEFUL, _mi_base, running_workers, workers_command
from tests.support.ports import free_port
from trio_sip.cli import main
from trio_sip.config import config_from_dict, load_config
from trio_sip.modules.rtimer import timers_for
from trio_sip.runtime.server import serve
from trio_sip.runtime.workers import (
    MAX_RESTARTS,
    StartError,
    WorkerSockets,
    bind_sockets,
    mi_listen_for,
)


@pytest.mark.parametrize(("value", "why"), [
    ("0", "core.workers = 0: must be between 1 and 64"),
    ("65", "core.workers = 65: must be between 1 and 64"),
    ("two", 'core.workers = "two": expected an integer'),
])
def test_a_bad_workers_value_is_refused(capsys: pytest.CaptureFixture[str], value: str,
                                        why: str) -> None:
    assert main(["run", "--workers", value, "--listen", "udp:127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert why in err, err


def test_worker_ports_past_65535_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workers", "4", "--set", "core.worker_port_base=65533"]) == 2
    assert "core.worker_port_base = 65533: the workers' ports would end at 65536" in \
        capsys.readouterr().err


def _run_fail(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_sip", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_taken_listen_port_stops_the_start(reuseport: bool) -> None:
    """Taken by anyone: also by a socket in a SO_REUSEPORT group of our own user (an
    old instance still running), which a plain SO_REUSEPORT bind would silently join."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        if reuseport:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        done = _run_fail(["--workers", "2", "--listen", f"udp:127.0.0.1:{port}",
                          "--set", "mi.listen="])
    assert done.returncode == 1, done.stderr
    assert (f"cannot start: cannot listen on udp:127.0.0.1:{port} (in use by another "
            "process): Address already in use") in done.stderr, done.stderr
    assert "serving" not in done.stderr  # no worker was started


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_modparam_is_a_config_error_with_or_without_workers(workers: str) -> None:
    """Checked when the server builds its modules (in each worker): exit 2, the key named,
    no traceback."""
    done = _run_fail(["--workers", workers, "--listen", "udp:127.0.0.1:0", "--set",
                      "mi.listen=", "--set", "modparams.rtimer.timer=name=t"])
    assert done.returncode == 2, done.stderr
    assert "config error: modparams.rtimer" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_taken_worker_port_names_worker_port_base() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        base = held.getsockname()[1] - 1  # worker 1's own port is taken
        config = load_config(None, ["core.workers=2", f"core.worker_port_base={base}",
                                    f"core.listen=udp:127.0.0.1:{free_port('udp')}"])
        with pytest.raises(StartError, match=re.escape(
                f"cannot listen on udp:127.0.0.1:{base + 1} (worker 1's own port, "
                "core.worker_port_base): Address already in use")):
            bind_sockets(config, 2)


def test_bind_sockets_makes_one_group_and_a_port_per_worker() -> None:
    config = load_config(None, ["core.workers=3", "core.listen=udp:127.0.0.1:0,tcp:127.0.0.1:0"])
    groups = bind_sockets(config, 3)
    try:
        udp, tcp = groups
        assert len(udp.shared) == len(tcp.shared) == 3 and len(udp.own) == 3 and not tcp.own
        assert len({s.getsockname()[1] for s in udp.shared}) == 1  # one port, 3 sockets
        assert len({s.getsockname()[1] for s in tcp.shared}) == 1
        own = {s.getsockname()[1] for s in udp.own}
        assert len(own) == 3 and udp.shared[0].getsockname()[1] not in own
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in udp.shared)
    finally:
        for g in groups:
            g.close()


def test_each_worker_has_its_management_port() -> None:
    assert mi_listen_for("127.0.0.1:8090", 0) == "127.0.0.1:8090"
    assert mi_listen_for("127.0.0.1:8090", 3) == "127.0.0.1:8093"
    assert mi_listen_for("[::1]:8090", 1) == "[::1]:8091"
    assert mi_listen_for("127.0.0.1:0", 2) == "127.0.0.1:0"
    assert mi_listen_for("", 1) == ""


def test_a_worker_that_cannot_start_stops_them_all() -> None:
    """Worker 1's management port is taken: the start fails as a whole, exit 1, and the
    error names the worker and the reason."""
    mi_base = _mi_base(2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", mi_base + 1))
        held.listen(1)
        cmd = workers_command(STATEFUL, free_port("udp"), mi_base, 2)
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90,
                              check=False)
    assert done.returncode == 1, done.stderr
    assert "cannot start: worker 1:" in done.stderr, done.stderr
    assert "Address already in use" in done.stderr
    assert "all workers stopped" in done.stderr


# -- Via, Record-Route and an in-dialog request, with raw UDP peers ---------------------


def _own_ports(log: str) -> dict[int, int]:
    out = {}
    for m in re.finditer(r"worker (\d+) \(pid \d+\) serving: \S+; own udp:127\.0\.0\.1:(\d+)",
                         log):
        out[int(m.group(1))] = int(m.group(2))
    return out


def _headers(data: bytes, name: str) -> list[str]:
    lines = data.decode("latin-1").split("\r\n")
    return [ln.split(":", 1)[1].strip() for ln in lines[1:]
            if ln.lower().startswith(name.lower() + ":")]


async def _recv(sock: trio.socket.SocketType, within: float = 5.0) -> tuple[bytes, int]:
    with trio.fail_after(within):
        data, addr = await sock.recvfrom(65535)
    return data, addr[1]


async def test_via_names_the_worker_and_record_route_the_shared_port(tmp_path: Path) -> None:
    async with running_workers(tmp_path) as w:
        own = _own_ports(w.log())
        assert set(own) == {0, 1} and w.port not in own.values()
        uac = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        uas = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with uac, uas:
            await uac.bind(("127.0.0.1", 0))
            await uas.bind(("127.0.0.1", 0))
            a, b = uac.getsockname()[1], uas.getsockname()[1]
            invite = (
                f"INVITE sip:bob@127.0.0.1:{b} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{a};branch=z9hG4bK-w1;rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:alice@127.0.0.1:{a}>;tag=a1\r\n"
                f"To: <sip:bob@127.0.0.1:{b}>\r\n"
                "Call-ID: workers-via-1\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:alice@127.0.0.1:{a}>\r\nContent-Length: 0\r\n\r\n")
            await uac.sendto(invite.encode(), ("127.0.0.1", w.port))
            fwd, src = await _recv(uas)
            via = _headers(fwd, "via")[0]
            via_port = int(re.search(r"127\.0\.0\.1:(\d+)", via).group(1))  # type: ignore[union-attr]
            # sent from a worker's own socket, which its Via names ...
            assert via_port in own.values() and src == via_port, (via, src, own)
            # ... and the Record-Route names the shared listener
            rr = _headers(fwd, "record-route")
            assert rr and f"127.0.0.1:{w.port};lr" in rr[0], rr
            worker = next(i for i, p in own.items() if p == via_port)

            # the callee answers to the Via: the worker that relayed it gets it
            head = fwd.decode("latin-1").split("\r\n\r\n", 1)[0].split("\r\n")
            vias = [ln for ln in head if ln.lower().startswith("via:")]
            ok = ("SIP/2.0 200 OK\r\n" + "\r\n".join(vias) + "\r\n"
                  f"Record-Route: {rr[0]}\r\n"
                  f"From: <sip:alice@127.0.0.1:{a}>;tag=a1\r\n"
                  f"To: <sip:bob@127.0.0.1:{b}>;tag=b1\r\n"
                  "Call-ID: workers-via-1\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:bob@127.0.0.1:{b}>\r\nContent-Length: 0\r\n\r\n")
            await uas.sendto(ok.encode(), ("127.0.0.1", via_port))
            while True:  # a 100 Trying may come first
                resp, src = await _recv(uac)
                if resp.startswith(b"SIP/2.0 200"):
                    break
            assert src == w.port  # answered from the port the caller sent to
            stats = await w.ami(worker, "core.stats")
            assert stats["core"]["rcv_replies"] >= 1, stats

            # an in-dialog request of the callee follows the Record-Route to the shared
            # port: a new transaction, which whichever worker gets it relays
            bye = (f"BYE sip:alice@127.0.0.1:{a} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{b};branch=z9hG4bK-w2;rport\r\n"
                   f"Route: {rr[0]}\r\nMax-Forwards: 70\r\n"
                   f"From: <sip:bob@127.0.0.1:{b}>;tag=b1\r\n"
                   f"To: <sip:alice@127.0.0.1:{a}>;tag=a1\r\n"
                   "Call-ID: workers-via-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
            await uas.sendto(bye.encode(), ("127.0.0.1", w.port))
            got, src = await _recv(uac)
            assert got.startswith(b"BYE sip:alice@"), got
            assert src in own.values()
            assert not _headers(got, "route")  # our Route entry was consumed


def _serving_at_least(index: int, times: int, log: str) -> bool:
    return len(re.findall(rf"worker {index} \(pid \d+\) serving", log)) >= times


async def test_a_killed_worker_is_restarted_on_the_same_sockets(tmp_path: Path) -> None:
    async with running_workers(tmp_path) as w:
        own_before = _own_ports(w.log())
        pids = w.worker_pids()
        os.kill(pids[1], signal.SIGKILL)
        await w.wait_log(partial(_serving_at_least, 1, 2))
        log = w.log()
        assert f"worker 1 (pid {pids[1]}) exited with signal SIGKILL" in log, log
        assert "restarting worker 1" in log
        new_pids = w.worker_pids()
        assert new_pids[0] == pids[0] and new_pids[1] != pids[1]
        assert _own_ports(log) == own_before  # the same own port: the same socket
        uptime = await w.ami(1, "core.uptime")  # and it serves
        assert uptime


# -- one worker in this process, on sockets bound as the supervisor binds them ----------


@pytest.mark.parametrize("index", [0, 1])
async def test_rtimer_runs_in_worker_0_only(autojump_clock: Any, write_routes: Any,
                                            index: int) -> None:
    routes = write_routes("function ksr_request_route() end\nfunction tick() end\n")
    config = config_from_dict({
        "core": {"listen": ["udp:127.0.0.1:0"], "workers": 2, "log_level": "warning"},
        "mi": {"listen": ""}, "lua": {"routes": routes},
        "modparams": {"rtimer": {"timer": ["name=t;interval=1"], "exec": ["timer=t;route=tick"]}},
    })
    groups = bind_sockets(config, 2)
    try:
        sockets = WorkerSockets(index, 2, [(g.spec, g.shared[index], g.own[index])
                                           for g in groups], "")
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, config, worker=sockets))
            await trio.sleep(5.5)
            core = server.core
            assert (core.worker_index, core.workers) == (index, 2)
            runs = timers_for(core).statistics()["runs"]
            # the worker's own socket sends (Via), the shared one is ours too (is_myself)
            shared_port = groups[0].shared[0].getsockname()[1]
            own_port = groups[0].own[index].getsockname()[1]
            assert core.transport_for("udp").local.port == own_port
            assert core.is_myself("127.0.0.1", shared_port)
            assert core.record_route_address(core.transport_for("udp")) == \
                ("127.0.0.1", shared_port)
            assert core.advertised(core.transport_for("udp")) == ("127.0.0.1", own_port)
            nursery.cancel_scope.cancel()
    finally:
        for g in groups:
            g.close()
    assert runs == (5 if index == 0 else 0)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's reaper may be slow)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:].split()[0] != "Z"


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    async with running_workers(tmp_path, check_exit=False) as w:
        pids = w.worker_pids()
        assert all(_running(p) for p in pids)
        os.kill(w.proc.pid, signal.SIGKILL)
        await w.proc.wait()
        for _ in range(200):  # at most 20 s
            if not any(_running(p) for p in pids):
                break
            await trio.sleep(0.1)
        assert not any(_running(p) for p in pids), w.log()
    assert w.log().count("the supervisor is gone: shutting down") == 2, w.log()


async def test_a_worker_that_keeps_dying_stops_the_server(tmp_path: Path) -> None:
    """More than MAX_RESTARTS deaths of one worker within RESTART_WINDOW: no crash loop,
    the server stops (exit 1) and says why."""
    async with running_workers(tmp_path, check_exit=False) as w:
        for k in range(MAX_RESTARTS + 1):
            await w.wait_log(partial(_serving_at_least, 1, k + 1))
            os.kill(w.worker_pids()[1], signal.SIGKILL)
        with trio.fail_after(30):
            code = await w.proc.wait()
    log = w.log()
    assert code == 1, log
    assert f"worker 1 exited {MAX_RESTARTS + 1} times within 60s: giving up" in log, log
    assert "all workers stopped" in log


async def _worker_of(w: Any, sock: trio.socket.SocketType) -> int:
    """Which worker the kernel gives datagrams from ``sock``: an OPTIONS to the proxy
    (answered 200 by routes/stateful.lua) and the worker whose request count moved."""
    before = [requests_of(await w.ami(i, "core.stats")) for i in range(2)]
    port = sock.getsockname()[1]
    options = (f"OPTIONS sip:127.0.0.1:{w.port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-probe{port};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1:{port}>;tag=p\r\n"
               f"To: <sip:127.0.0.1:{w.port}>\r\nCall-ID: probe-{port}\r\n"
               "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    await sock.sendto(options.encode(), ("127.0.0.1", w.port))
    reply, _ = await _recv(sock)
    assert reply.startswith(b"SIP/2.0 200"), reply
    after = [requests_of(await w.ami(i, "core.stats")) for i in range(2)]
    moved = [i for i in range(2) if after[i] > before[i]]
    assert len(moved) == 1, (before, after)
    return moved[0]


def requests_of(stats: dict[str, Any]) -> int:
    return int(stats.get("core", {}).get("rcv_requests", 0))


async def test_a_cancel_from_another_source_port_misses_the_transaction(
        tmp_path: Path) -> None:
    """The documented limit (docs/workers.md): a CANCEL sent from a socket the kernel maps
    to another worker does not find the INVITE and routes/stateful.lua drops it; the same
    CANCEL from the INVITE's socket cancels the call."""
    async with running_workers(tmp_path) as w:
        uas = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await uas.bind(("127.0.0.1", 0))
        socks = []
        try:
            a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(a)
            await a.bind(("127.0.0.1", 0))
            owner = await _worker_of(w, a)
            other = None
            for _ in range(40):  # each new socket: 1 in 2 to land on the other worker
                s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                await s.bind(("127.0.0.1", 0))
                if await _worker_of(w, s) != owner:
                    other = s
                    break
            assert other is not None
            pa, pb = a.getsockname()[1], uas.getsockname()[1]
            common = (f"Via: SIP/2.0/UDP 127.0.0.1:{pa};branch=z9hG4bK-lim;rport\r\n"
                      "Max-Forwards: 70\r\n"
                      f"From: <sip:alice@127.0.0.1:{pa}>;tag=a1\r\n"
                      f"To: <sip:bob@127.0.0.1:{pb}>\r\nCall-ID: workers-limit-1\r\n")
            await a.sendto((f"INVITE sip:bob@127.0.0.1:{pb} SIP/2.0\r\n" + common +
                            f"CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:{pa}>\r\n"
                            "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", w.port))
            fwd, via_port = await _recv(uas)
            assert fwd.startswith(b"INVITE ")
            # ringing (a proxy holds a CANCEL until the branch has a provisional reply)
            head = fwd.decode("latin-1").split("\r\n\r\n", 1)[0].split("\r\n")
            vias = "\r\n".join(ln for ln in head if ln.lower().startswith("via:"))
            ringing = (f"SIP/2.0 180 Ringing\r\n{vias}\r\n"
                       f"From: <sip:alice@127.0.0.1:{pa}>;tag=a1\r\n"
                       f"To: <sip:bob@127.0.0.1:{pb}>;tag=b1\r\nCall-ID: workers-limit-1\r\n"
                       "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
            await uas.sendto(ringing.encode(), ("127.0.0.1", via_port))
            for _ in range(5):
                data, _ = await _recv(a)
                if data.startswith(b"SIP/2.0 180"):
                    break
            cancel = (f"CANCEL sip:bob@127.0.0.1:{pb} SIP/2.0\r\n" + common +
                      "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n").encode()
            await other.sendto(cancel, ("127.0.0.1", w.port))
            with trio.move_on_after(1.0) as missed:
                while True:  # the INVITE's retransmissions may come; a CANCEL must not
                    data, _ = await uas.recvfrom(65535)
                    assert not data.startswith(b"CANCEL"), data
            assert missed.cancelled_caught
            await a.sendto(cancel, ("127.0.0.1", w.port))
            for _ in range(10):
                data, _ = await _recv(a)
                if data.startswith(b"SIP/2.0 200") and b"CANCEL" in data:
                    break  # the CANCEL's own 200, from the owner
            for _ in range(10):
                data, _ = await _recv(uas)
                if data.startswith(b"CANCEL"):
                    break
            else:
                raise AssertionError("the CANCEL from the INVITE's socket was not relayed")
        finally:
            uas.close()
            for s in socks:
                s.close()
