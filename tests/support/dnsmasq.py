"""dnsmasq as a real DNS server in tests: NAPTR, SRV, A and AAAA records on 127.0.0.1.

``Dnsmasq(records).start()`` writes a config file (no ``/etc/dnsmasq.conf``, no
/etc/hosts, no upstream servers: only the records given, authoritative for their
zone through ``local=/zone/``, so an unknown name is NXDOMAIN at once), starts
``dnsmasq --no-daemon`` bound to 127.0.0.1 on a free high port (never 53: the
machine's own resolver is never touched), waits until it answers, and returns the
running server; ``stop()`` (or leaving the ``with`` block, or the pytest fixture
``dnsmasq`` in tests/dns/conftest.py) terminates it. The process is also given
``PR_SET_PDEATHSIG`` so it dies with the test process, whatever happens.

Every address record must be loopback (ValueError otherwise): a test must never
send SIP to a real host.

    records = DnsRecords(zone="example.test", ttl=30)
    records.host("a.example.test", "127.0.0.1")
    records.srv("_sip._udp.example.test", "a.example.test", 5070, priority=10, weight=50)
    records.naptr("example.test", 10, 10, "S", "SIP+D2U", "_sip._udp.example.test")
    with Dnsmasq(records).start() as server:
        ... nameserver "127.0.0.1:%d" % server.port ...
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.message
import dns.query
import dns.rcode

from .ports import LOOPBACK, free_port_both

__all__ = ["DNSMASQ", "DnsRecords", "Dnsmasq", "dnsmasq_binary"]

DNSMASQ = "/usr/sbin/dnsmasq"
_START_TIMEOUT = 5.0


def dnsmasq_binary() -> str | None:
    if os.access(DNSMASQ, os.X_OK):
        return DNSMASQ
    return shutil.which("dnsmasq")


def _check_loopback(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if not ip.is_loopback:
        raise ValueError(f"{addr}: test DNS records must point at loopback addresses")
    return str(ip)


@dataclass
class DnsRecords:
    """The records dnsmasq serves (config lines; see dnsmasq(8))."""

    zone: str = "example.test"
    ttl: int = 30
    lines: list[str] = field(default_factory=list)

    def host(self, name: str, *addrs: str) -> None:
        """A/AAAA records (``host-record``: one IPv4 and/or one IPv6 per line)."""
        v4 = [_check_loopback(a) for a in addrs if ":" not in a]
        v6 = [_check_loopback(a) for a in addrs if ":" in a]
        for i in range(max(len(v4), len(v6), 1)):
            parts = [name, *([v4[i]] if i < len(v4) else []), *([v6[i]] if i < len(v6) else [])]
            self.lines.append("host-record=" + ",".join(parts))

    def srv(self, name: str, target: str, port: int, *, priority: int = 10,
            weight: int = 0) -> None:
        self.lines.append(f"srv-host={name},{target},{port},{priority},{weight}")

    def naptr(self, name: str, order: int, preference: int, flags: str, service: str,
              replacement: str, regexp: str = "") -> None:
        self.lines.append(
            f"naptr-record={name},{order},{preference},{flags},{service},{regexp},{replacement}")

    def config(self, port: int) -> str:
        return "\n".join([
            f"port={port}", f"listen-address={LOOPBACK}", "bind-interfaces",
            "no-resolv", "no-hosts", "no-poll", "log-facility=-",
            f"local=/{self.zone}/",  # authoritative-like: unknown names are NXDOMAIN
            f"local-ttl={self.ttl}", f"neg-ttl={self.ttl}",
            *self.lines, ""])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Dnsmasq:
    """One dnsmasq process serving :class:`DnsRecords` on 127.0.0.1:``port``."""

    def __init__(self, records: DnsRecords, port: int | None = None) -> None:
        self.records = records
        self.port = port or free_port_both()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """For ``dns.nameservers``: ``"127.0.0.1:PORT"``."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Dnsmasq:
        binary = dnsmasq_binary()
        if binary is None:
            raise RuntimeError("dnsmasq is not installed (apt-get install dnsmasq-base)")
        self._dir = tempfile.TemporaryDirectory(prefix="trio-sip-dnsmasq-")
        conf = Path(self._dir.name) / "dnsmasq.conf"
        conf.write_text(self.records.config(self.port))
        log = open(Path(self._dir.name) / "dnsmasq.log", "wb")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [binary, "--no-daemon", f"--conf-file={conf}",
                 f"--pid-file={Path(self._dir.name) / 'pid'}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        q = dns.message.make_query(f"ready-probe.{self.records.zone}", "A")
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited ({self._proc.returncode}): {self.log()}")
            try:
                resp = dns.query.udp(q, LOOPBACK, port=self.port, timeout=0.2)
            except (dns.exception.Timeout, OSError):
                continue
            if resp.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR):
                return
        raise RuntimeError(f"dnsmasq did not answer on port {self.port}: {self.log()}")

    def log(self) -> str:
        if self._dir is None:
            return ""
        p = Path(self._dir.name) / "dnsmasq.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Dnsmasq:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def port_is_served(port: int) -> bool:
    """True if something answers DNS over UDP on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(dns.message.make_query("probe.test", "A").to_wire(), (LOOPBACK, port))
            s.recvfrom(512)
        except OSError:
            return False
    return True
