"""The real rtpengine (Debian rtpengine-daemon, userspace only) for the tests that need it.

Started with the shared start script (``$TRIO_SIP_SHARED/bin/start-rtpengine.sh`` or
``<repo>/../shared/bin/start-rtpengine.sh``), or, when that is not there, with the
rtpengine binary and the same flags (see :data:`RTPENGINE_FLAGS`). Loopback only,
its own ng port and a media port range checked to be free, stopped with SIGTERM
and reaped at the end of the session. Tests that use it are skipped when there is
no rtpengine binary.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The flags of start-rtpengine.sh (rtpengine.md §2): no config file (Debian's would
#: open more listeners and ask for kernel table 0), userspace only, foreground, log
#: to stderr, media and ng on loopback, calls freed at once on delete.
RTPENGINE_FLAGS = (
    "--config-file=none",
    "--table=-1",
    "--foreground",
    "--log-stderr",
    "--interface=127.0.0.1",
    "--delete-delay=0",
)
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


def start_script() -> Path | None:
    shared = os.environ.get("TRIO_SIP_SHARED")
    candidates = [Path(shared) / "bin" / "start-rtpengine.sh"] if shared else []
    candidates.append(REPO.parent / "shared" / "bin" / "start-rtpengine.sh")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def rtpengine_binary() -> str | None:
    return os.environ.get("RTPENGINE_BIN") or shutil.which("rtpengine") or (
        "/usr/bin/rtpengine" if os.access("/usr/bin/rtpengine", os.X_OK) else None)


def command(ng_port: int, port_min: int, port_max: int) -> list[str]:
    script = start_script()
    if script is not None:
        return [str(script), str(ng_port), str(port_min), str(port_max)]
    binary = rtpengine_binary()
    assert binary is not None
    level = os.environ.get("RTPENGINE_LOG_LEVEL", "6")
    return [binary, *RTPENGINE_FLAGS, f"--log-level={level}",
            f"--listen-ng=127.0.0.1:{ng_port}", f"--port-min={port_min}",
            f"--port-max={port_max}"]


def _udp_port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def free_port_range(size: int = 200) -> tuple[int, int]:
    """A media range that nothing binds now (rtpengine would share ports with another
    instance without complaint: rtpengine.md §9). Below the 30000 of other setups."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(50):
        low = rng.randrange(20000, 29800 - size, 2)
        if all(_udp_port_free(p) for p in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError("no free UDP port range for rtpengine")


def ping(port: int, timeout: float = 0.05) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        s.send(b"fixture_%d d7:command4:pinge" % os.getpid())
        data = s.recv(65535)
    except OSError:
        return False
    finally:
        s.close()
    return data.endswith(b"d6:result4:ponge")


@dataclass
class Rtpengine:
    """A running rtpengine: where its ng port is, its media range and its log."""

    ng_port: int
    port_min: int
    port_max: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def sock(self) -> str:
        return f"udp:127.0.0.1:{self.ng_port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_rtpengine(log: Path) -> Rtpengine:
    port_min, port_max = free_port_range()
    for _ in range(5):
        ng_port = free_udp_port()
        with open(log, "ab") as err:
            proc = subprocess.Popen(command(ng_port, port_min, port_max),
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        r = Rtpengine(ng_port, port_min, port_max, proc, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break  # the port was taken meanwhile: try another
            if ping(ng_port):
                return r
            time.sleep(0.005)
        stop_rtpengine(r)
    raise RuntimeError(f"rtpengine did not start; log:\n{r.log_tail()}")


def stop_rtpengine(r: Rtpengine) -> int | None:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        try:
            return r.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            return r.proc.wait(timeout=STOP_TIMEOUT)
    return r.proc.returncode


@pytest.fixture(scope="session")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    """One rtpengine for the session (~50 ms to start); never left running."""
    if rtpengine_binary() is None:
        # CI installs it (.ci/run): there a missing daemon is a failure, not a skip
        if os.environ.get("CI"):
            pytest.fail("no rtpengine binary (Debian package rtpengine-daemon)")
        pytest.skip("no rtpengine binary (Debian package rtpengine-daemon)")
    r = start_rtpengine(tmp_path_factory.mktemp("rtpengine") / "rtpengine.log")
    try:
        yield r
    finally:
        status = stop_rtpengine(r)
        assert status == 0, f"rtpengine exited with {status}; log:\n{r.log_tail()}"
