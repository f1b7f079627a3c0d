"""Helpers for the management interface tests: a server on the simulated network
(virtual time) or on real loopback sockets, a raw HTTP exchange, JSON-RPC calls."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_sip.config import config_from_dict
from trio_sip.mi.registry import MiContext, MiRegistry
from trio_sip.runtime.server import Server, serve
from trio_sip.sip.message import SipResponse
from trio_sip.testing import SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)

#: a route that answers every request with its own reason phrase: which routes run
ROUTES_V = """
function ksr_request_route()
  KSR.sl.sl_send_reply(200, "{version}")
end
"""


def rewrite(path: str, text: str | None) -> None:
    """Replace (or, with None, delete) a routes file: what an operator does before a
    reload (sync: ruff's ASYNC240 keeps blocking file calls out of async tests)."""
    p = Path(path)
    if text is None:
        p.unlink()
    else:
        p.write_text(text)


@dataclass
class SimEnv:
    net: SimNetwork
    server: Server
    uac: SimUA

    @property
    def mi(self) -> MiContext:
        assert self.server.mi is not None
        return self.server.mi

    @property
    def registry(self) -> MiRegistry:
        assert self.server.registry is not None
        return self.server.registry

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.registry.call(method, params, self.mi)

    async def ask(self, method: str = "OPTIONS", ruri: str = "sip:bob@127.0.0.1",
                  status: int | None = None) -> SipResponse:
        start = len(self.uac.received)
        await self.uac.send(self.uac.request(method, ruri), PROXY)
        got = await self.uac.wait_for(
            lambda r: isinstance(r.msg, SipResponse)
            and (status is None or r.msg.status == status), start=start)
        assert isinstance(got.msg, SipResponse)
        return got.msg


@asynccontextmanager
async def sim_server(routes: str, *, seed: int = 1,
                     config: Mapping[str, Any] | None = None) -> AsyncIterator[SimEnv]:
    """The server with ``routes`` on the simulated network (no MI socket) and a UAC."""
    async with SimNetwork(seed=seed) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=routes, config=config)
        yield SimEnv(net, server, SimUA(net, UAC))
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def real_server(mi: Mapping[str, Any] | None = None, routes: str | None = None,
                      modparams: Mapping[str, Any] | None = None) -> AsyncIterator[Server]:
    """The server on a real UDP socket with its management interface on a real
    loopback TCP port (both chosen by the OS)."""
    data: dict[str, Any] = {
        "core": {"listen": ["udp:127.0.0.1:0"], "log_level": "warning"},
        "mi": {"listen": "127.0.0.1:0", **(mi or {})},
    }
    if routes is not None:
        data["lua"] = {"routes": routes}
    if modparams is not None:
        data["modparams"] = dict(modparams)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config_from_dict(data)))
        assert server.mi_address is not None
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http(address: Address, method: str, path: str, body: bytes | None,
          headers: Mapping[str, str]) -> HttpReply:
    conn = http.client.HTTPConnection(address.host, address.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        data = resp.read()
        return HttpReply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


async def http_request(address: Address, method: str = "POST", path: str = "/",
                       body: bytes | None = None,
                       headers: Mapping[str, str] | None = None) -> HttpReply:
    """One request with Python's http.client, in a worker thread."""
    hdrs = dict(headers if headers is not None else {"Content-Type": "application/json"})
    return await trio.to_thread.run_sync(_http, address, method, path, body, hdrs)


async def rpc(address: Address, payload: Any, *, token: str | None = None) -> HttpReply:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await http_request(address, body=body, headers=headers)


async def raw_exchange(address: Address, data: bytes, *, half_close: bool = True,
                       limit: float = 10.0) -> bytes:
    """Send raw bytes on a new TCP connection and read until the server closes it."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        with trio.fail_after(limit):
            try:
                await stream.send_all(data)
                if half_close:
                    await stream.send_eof()
            except trio.BrokenResourceError:
                pass  # the server answered and closed before taking it all: read the answer
            out = bytearray()
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
    return bytes(out)


def status_of(raw: bytes) -> int:
    """The status code of the first response in raw bytes."""
    line = raw.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), raw[:200]
    return int(line.split()[1])


# -- a server in a subprocess, for trio-sip ctl ---------------------------------------------


def ctl_env() -> dict[str, str]:
    """The environment for ctl subprocesses, without a URL or token from outside."""
    import os

    env = dict(os.environ)
    env.pop("TRIO_SIP_MI_URL", None)
    env.pop("TRIO_SIP_MI_TOKEN", None)
    return env


@dataclass
class ServerProcess:
    """``python -m trio_sip run`` in a subprocess; ``ctl(...)`` runs ``trio-sip ctl``."""

    proc: Any
    url: str
    sip_port: int
    token: str

    def ctl(self, *args: str) -> Any:
        import subprocess
        import sys

        return subprocess.run(
            [sys.executable, "-m", "trio_sip", "ctl", "--url", self.url, "--token",
             self.token, *args], capture_output=True, text=True, timeout=60, env=ctl_env())


def spawn_server(routes: str, token: str, *sets: str) -> Any:
    """A context manager: the server running ``routes`` on a free UDP port, its
    management interface on a free loopback port with ``token``; stopped with SIGTERM
    (a clean stop, exit status 0, is asserted)."""
    import contextlib
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.support.ports import free_port

    @contextlib.contextmanager
    def running() -> Any:
        sip_port, mi_port = free_port("udp"), free_port("tcp")
        cmd = [sys.executable, "-m", "trio_sip", "run", "--listen",
               f"udp:127.0.0.1:{sip_port}", "--routes", routes,
               "--set", f"mi.listen=127.0.0.1:{mi_port}", "--set", f"mi.token={token}",
               "--log-level", "warning"]
        for s in sets:
            cmd += ["--set", s]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=ctl_env())
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    raise AssertionError(f"the server exited with {proc.returncode}: {out}")
                try:
                    with socket.create_connection(("127.0.0.1", mi_port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError("the management interface did not come up") \
                            from None
                    time.sleep(0.05)
            yield ServerProcess(proc, f"http://127.0.0.1:{mi_port}/", sip_port, token)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    return running()
