"""``trio-sip ctl`` end to end: a server run as ``python -m trio_sip run`` in a
subprocess, the ctl as another, and the server stopped with SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from mi_helpers import real_server

from tests.support.ports import free_port
from trio_sip.cli import main
from trio_sip.mi.client import parse_param, run_ctl, url_from_listen

TOKEN = "ctl-token-0123456789abcdef"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRIO_SIP_MI_URL", None)
    env.pop("TRIO_SIP_MI_TOKEN", None)
    return env


def _wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the server exited with {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail("the management interface did not come up")


class Running:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, routes: Path) -> None:
        self.proc = proc
        self.url = url
        self.routes = routes

    def ctl(self, *args: str, url: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "trio_sip", "ctl"]
        if url:
            cmd += ["--url", self.url]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                              env=env if env is not None else _env())


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    sip_port, mi_port = free_port("udp"), free_port("tcp")
    routes = tmp_path / "routes.lua"
    routes.write_text('function ksr_request_route()\n  KSR.sl.sl_send_reply(200, "v1")\nend\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_sip", "run", "--listen", f"udp:127.0.0.1:{sip_port}",
         "--routes", str(routes), "--set", f"mi.listen=127.0.0.1:{mi_port}",
         "--set", f"mi.token={TOKEN}", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    try:
        _wait_listening(mi_port, proc)
        yield Running(proc, f"http://127.0.0.1:{mi_port}/", routes)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_ctl_against_a_running_server(running: Running, tmp_path: Path) -> None:
    r = running.ctl("--token", TOKEN, "--json", "tm.stats")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["current"] == 0 and "rpl_received" in stats
    assert r.stdout.startswith("{\n  ")  # pretty
    r = running.ctl("--token", TOKEN, "tm.stats")  # readable: "key: value" lines
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["current:", "0"] and "rpl_received:" in r.stdout

    r = running.ctl("--token", TOKEN, "--list")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert "tm.stats" in names and "app_lua.reload" in names and names == sorted(names)

    r = running.ctl("--token", TOKEN, "stats.get_statistics", "script:generation")
    assert r.stdout == "script:generation = 1\n"

    running.routes.write_text('function ksr_request_route()\n'
                              '  KSR.sl.sl_send_reply(200, "v2")\nend\n')
    r = running.ctl("--token", TOKEN, "--json", "app_lua.reload")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generation"] == 2

    running.routes.write_text("function ksr_request_route(\n")
    r = running.ctl("--token", TOKEN, "app_lua.reload")
    assert r.returncode == 1
    assert r.stderr.startswith("error -32000: reload failed, the old routes stay")

    r = running.ctl("--token", TOKEN, "no.such.method")
    assert (r.returncode, r.stderr) == (1, "error -32601: Method not found: no.such.method\n")

    r = running.ctl("--token", TOKEN, "--json", "--params", '{"limit": 1}', "tm.list")
    assert r.returncode == 0 and json.loads(r.stdout)["count"] == 0

    r = running.ctl("tm.stats")  # no token
    assert r.returncode == 2 and "HTTP 401" in r.stderr

    # the token and the URL from the environment, then from a config file
    env = {**_env(), "TRIO_SIP_MI_URL": running.url, "TRIO_SIP_MI_TOKEN": TOKEN}
    r = running.ctl("core.version", url=False, env=env)
    assert r.returncode == 0 and r.stdout.startswith("trio-sip")
    port = running.url.rsplit(":", 1)[1].strip("/")
    config = tmp_path / "trio-sip.toml"
    config.write_text(f'[mi]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    r = running.ctl("--config", str(config), "core.uptime", url=False)
    assert r.returncode == 0, r.stderr

    # SIGTERM: a clean stop
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=20) == 0


def test_ctl_usage_and_connection_errors(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port("tcp")  # nothing listens there
    assert main(["ctl", "--url", f"http://127.0.0.1:{port}/", "tm.stats"]) == 2
    assert "cannot reach the management interface" in capsys.readouterr().err
    assert main(["ctl"]) == 2
    assert "name a method" in capsys.readouterr().err
    assert main(["ctl", "--list", "tm.stats"]) == 2
    assert main(["ctl", "--params", "[1", "tm.list"]) == 2
    assert main(["ctl", "--params", "5", "tm.list"]) == 2
    assert main(["ctl", "--params", "[1]", "tm.list", "2"]) == 2
    assert main(["ctl", "--url", "ftp://x/", "tm.stats"]) == 2
    assert main(["ctl", "--config", "/nonexistent/trio-sip.toml", "tm.stats"]) == 2


def test_param_parsing() -> None:
    values: list[Any] = [parse_param(p) for p in
                         ("5", "true", "abc", "s:5", '{"a": 1}', "[1, 2]", "core:", "-3")]
    assert values == [5, True, "abc", "5", {"a": 1}, [1, 2], "core:", -3]
    assert url_from_listen("127.0.0.1:5099") == "http://127.0.0.1:5099/"
    assert url_from_listen("0.0.0.0:5099") == "http://127.0.0.1:5099/"
    assert url_from_listen("[::]:7") == "http://[::1]:7/"


def test_run_ctl_prints_to_the_streams_given() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_ctl(None, [], out=out, err=err) == 2
    assert "name a method" in err.getvalue() and out.getvalue() == ""


def test_readable_output() -> None:
    from trio_sip.mi.client import format_result

    assert format_result({"current": 0, "waiting": 12, "ok": True, "none": None}) == (
        "current: 0\nwaiting: 12\nok:      true\nnone:    -")
    assert format_result({"group": {"a": 1, "bb": {"c": "x"}}, "empty": []}) == (
        "group:\n  a:  1\n  bb:\n    c: x\nempty: (none)")
    # a list of records is a table; numbers right-aligned, text left-aligned
    assert format_result([{"index": 1, "call_id": "abc"}, {"index": 22, "call_id": "x"}]) == (
        "INDEX  CALL_ID\n    1  abc\n   22  x")
    assert format_result(["core:a = 1", "tm:b = 2"]) == "core:a = 1\ntm:b = 2"
    assert format_result([{"a": {"b": 1}}, [1, 2]]) == "- a:\n    b: 1\n- 1\n  2"
    assert format_result("text\nwith lines") == "text\nwith lines"
    assert format_result({"doc": "two\nlines"}) == "doc:\n  two\n  lines"
    assert format_result({"params": ["group", "name?"], "n": 1}) == "params: group, name?\nn:      1"
    long = [f"item-{i:03}" for i in range(10)]
    assert format_result({"k": long}) == "k:\n" + "\n".join(f"  {x}" for x in long)


async def test_run_ctl_json_and_readable() -> None:
    """--json and the readable default against a real management interface."""
    async with real_server() as server:
        url = f"http://{server.mi_address}/"

        async def ctl(method: str, as_json: bool) -> str:
            out, err = io.StringIO(), io.StringIO()
            code = await trio.to_thread.run_sync(partial(
                run_ctl, method, [], url=url, as_json=as_json, out=out, err=err))
            assert code == 0, err.getvalue()
            return out.getvalue()

        assert json.loads(await ctl("tm.list", True)) == {"count": 0, "transactions": []}
        assert await ctl("tm.list", False) == "count:        0\ntransactions: (none)\n"
        info = await ctl("core.info", False)
        assert "version:" in info and "{" not in info
