"""``trio-sip ctl`` against a running server (a subprocess) after real SIPp traffic:
registrations (tests/sipp/reg.xml) and calls (uac.xml -> the proxy -> uas.xml), then
core.uptime, tm.stats, ul.dump, ul.lookup, stats and /metrics as an operator sees them."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from mi_helpers import spawn_server

from tests.e2e.test_stateless_sipp import requires_sipp
from tests.support.sipp import Sipp

REPO = Path(__file__).resolve().parents[2]
REGISTRAR = str(REPO / "routes" / "registrar.lua")
TOKEN = "ctl-sipp-token-0123456789"
CALLS = 5

pytestmark = [requires_sipp, pytest.mark.sipp]


def _register(proxy: int, user: str, contact: str) -> str:
    """One REGISTER from a plain UDP socket; the status line of its final answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto((f"REGISTER sip:127.0.0.1:{proxy} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKctl1;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     f"From: <sip:{user}@127.0.0.1>;tag=ctl1\r\nTo: <sip:{user}@127.0.0.1>\r\n"
                     "Call-ID: ctl-reg-1@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
                     f"Contact: <{contact}>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
                     ).encode(), ("127.0.0.1", proxy))
        while True:
            line = sock.recv(65535).split(b"\r\n", 1)[0].decode()
            if not line.startswith("SIP/2.0 1"):
                return line


def test_ctl_after_sipp_registrations_and_calls(tmp_path: Path) -> None:
    with spawn_server(REGISTRAR, TOKEN, f"core.data_dir={tmp_path}") as server:
        proxy = server.sip_port
        r = server.ctl("core.uptime")
        assert r.returncode == 0, r.stderr
        assert [line.split(":", 1)[0] for line in r.stdout.splitlines()] == [
            "now", "up_since", "uptime"]

        reg = Sipp("reg.xml", remote=proxy, service="alice", calls=3, rate=10,
                   timeout=20).run()
        assert reg.ok and reg.successful == 3, reg.describe()
        with Sipp("uas.xml", calls=CALLS, timeout=40).start() as uas:
            assert _register(proxy, "bob", f"sip:bob@127.0.0.1:{uas.port}") == \
                "SIP/2.0 200 OK"
            calls = Sipp("uac.xml", remote=proxy, service="bob", calls=CALLS, rate=10,
                         timeout=40).run()
            uas_result = uas.wait()
        assert calls.ok and calls.successful == CALLS, calls.describe()
        assert uas_result.successful == CALLS, uas_result.describe()

        # tm.stats: every INVITE and BYE was a transaction answered 2xx by the UAS
        r = server.ctl("--json", "tm.stats")
        assert r.returncode == 0, r.stderr
        tm = json.loads(r.stdout)
        assert tm["2xx"] >= 2 * CALLS and tm["total"] >= 2 * CALLS
        assert tm["rpl_received"] >= 2 * CALLS  # the UAS's 180s and 200s
        assert tm["rpl_sent"] >= 2 * CALLS
        r = server.ctl("tm.stats")  # readable: one "key: value" line per statistic
        assert r.returncode == 0 and "2xx:" in r.stdout and "{" not in r.stdout

        # ul.dump: both AoRs with their contacts
        r = server.ctl("--json", "ul.dump")
        assert r.returncode == 0, r.stderr
        dump = r.stdout
        assert "alice" in dump and "bob" in dump and f"127.0.0.1:{uas.port}" in dump
        r = server.ctl("ul.dump")
        assert r.returncode == 0 and "alice" in r.stdout and "{" not in r.stdout
        r = server.ctl("--json", "ul.lookup", "location", "bob")
        assert r.returncode == 0, r.stderr
        assert f"sip:bob@127.0.0.1:{uas.port}" in r.stdout
        r = server.ctl("ul.lookup", "location", "nobody")
        assert (r.returncode, r.stderr) == (1, "error -32000: AOR not found\n")

        # runtime settings from the command line
        r = server.ctl("cfg.set", "tm", "fr_inv_timer", "60000")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[2:] == ["old:   120000", "new:   60000"]
        r = server.ctl("cfg.set", "tm", "fr_inv_timer", "999999")
        assert r.returncode == 1 and "must be <= tm.max_inv_lifetime" in r.stderr
        r = server.ctl("--json", "debug.level")
        assert json.loads(r.stdout) == {"level": "warning", "debug": 0}

        # the same counters for Prometheus
        req = urllib.request.Request(server.url + "metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith("trio_sip_tm_2xx_transactions_total "))
        assert int(line.split()[1]) == tm["2xx"]


SLEEPING = """
VERSION = "{version}"
function ksr_request_route()
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.is_ACK() then KSR.tm.t_relay() return end
  if KSR.is_INVITE() then
    KSR.async.sleep(1)  -- the calls in flight wait here when the reload lands
    local n = "$shv(" .. VERSION .. ")"
    KSR.pv.seti(n, (KSR.pv.get(n) or 0) + 1)
  end
  KSR.tm.t_relay()
end
"""


def test_reload_during_sipp_calls_loses_none(tmp_path: Path) -> None:
    """Real time: SIPp calls through a route that sleeps 1 s; app_lua.reload (ctl) while
    calls wait in it and more keep coming: every call completes, the ones that started
    before the reload finish on the old routes, the later ones run the new routes."""
    import time

    calls = 30
    routes = tmp_path / "routes.lua"
    routes.write_text(SLEEPING.format(version="v1"))
    with spawn_server(str(routes), TOKEN, "modparams.app_lua.mi_runstring=true") as server:
        with Sipp("uas.xml", calls=calls, timeout=60).start() as uas, \
                Sipp("uac.xml", remote=uas.port, via=server.sip_port, rate=10, calls=calls,
                     timeout=60).start() as uac:
            deadline = time.monotonic() + 20
            while True:  # a few calls are waiting in the route (no fixed sleep)
                r = server.ctl("--json", "tm.stats")
                assert r.returncode == 0, r.stderr
                if json.loads(r.stdout)["current"] >= 3:
                    break
                assert time.monotonic() < deadline, "no call arrived"
                time.sleep(0.05)
            routes.write_text(SLEEPING.format(version="v2"))
            r = server.ctl("--json", "app_lua.reload")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["generation"] == 2
            result = uac.wait()
            uas_result = uas.wait()
        assert result.ok and result.successful == calls, result.describe()
        assert uas_result.successful == calls, uas_result.describe()
        # which routes each INVITE ran, asked with app_lua.runstring (enabled above)
        r = server.ctl("--json", "app_lua.runstring",
                       'return (KSR.pv.get("$shv(v1)") or 0) .. " " .. '
                       '(KSR.pv.get("$shv(v2)") or 0)')
        assert r.returncode == 0, r.stderr
        v1, v2 = (int(x) for x in json.loads(r.stdout)["result"].split())
        assert v1 >= 3 and v2 >= 1 and v1 + v2 == calls, (v1, v2)
        r = server.ctl("--json", "app_lua.list")
        # nothing of generation 1 waits any more; its transactions may still linger (wt)
        assert all(o["pending_coroutines"] == 0 for o in json.loads(r.stdout)["older"])
