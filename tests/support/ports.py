"""Free ports on 127.0.0.1.

A port is "free" when binding it (without SO_REUSEADDR) succeeds right now; the probe socket
is closed before returning, so another process can still take the port before the caller
binds it. That race is accepted: ports come from the kernel's ephemeral range, which is
large, and a caller that loses it gets an "address in use" error, never a silent mix-up.

Why not SO_REUSEADDR on the probe: on Linux a TCP socket bound with it could share a port
with a socket in TIME_WAIT, which is fine for a server but hides the conflict we probe for.
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

__all__ = [
    "LOOPBACK",
    "free_port",
    "free_port_block",
    "free_port_both",
    "free_ports",
    "is_port_free",
]

LOOPBACK = "127.0.0.1"

Proto = Literal["udp", "tcp"]

# Bounded retries for the searches below; each attempt is one bind() on loopback.
_MAX_ATTEMPTS = 200


def _sock_type(proto: Proto) -> int:
    if proto == "udp":
        return socket.SOCK_DGRAM
    if proto == "tcp":
        return socket.SOCK_STREAM
    raise ValueError(f"proto must be 'udp' or 'tcp', not {proto!r}")


def free_port(proto: Proto = "udp") -> int:
    """A port on 127.0.0.1 that the kernel just handed out for ``proto`` (bind port 0)."""
    with socket.socket(socket.AF_INET, _sock_type(proto)) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def is_port_free(port: int, proto: Proto = "udp") -> bool:
    """True if 127.0.0.1:``port`` can be bound for ``proto`` right now."""
    with socket.socket(socket.AF_INET, _sock_type(proto)) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def free_port_both() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (a SIP server listens on both).

    Takes a TCP port from the kernel, then checks UDP on the same number; bounded retries.
    """
    for _ in range(_MAX_ATTEMPTS):
        port = free_port("tcp")
        if is_port_free(port, "udp"):
            return port
    raise RuntimeError(f"no port free for both UDP and TCP after {_MAX_ATTEMPTS} attempts")


def free_port_block(span: int, proto: Proto = "udp") -> int:
    """A port ``p`` such that ``p`` .. ``p + span - 1`` are all free on 127.0.0.1 right now.

    For programs that bind a run of ports from one base (SIPp binds its ``-mp`` media port
    and ``-mp`` + 2 for video). The probes are held open until the whole run is checked;
    bounded retries, each starting from a port the kernel hands out.
    """
    if span < 1:
        raise ValueError("span must be >= 1")
    for _ in range(_MAX_ATTEMPTS):
        held: list[socket.socket] = []
        try:
            base = None
            first = socket.socket(socket.AF_INET, _sock_type(proto))
            held.append(first)
            first.bind((LOOPBACK, 0))
            base = first.getsockname()[1]
            if base + span - 1 > 65535:
                continue
            for port in range(base + 1, base + span):
                s = socket.socket(socket.AF_INET, _sock_type(proto))
                held.append(s)
                try:
                    s.bind((LOOPBACK, port))
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        break
                    raise
            else:
                return base
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no run of {span} free {proto} ports after {_MAX_ATTEMPTS} attempts")


def free_ports(n: int, proto: Proto | Literal["both"] = "udp") -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (``proto`` "udp", "tcp" or "both").

    All probe sockets are held open until the set is complete, so the kernel cannot hand
    the same port out twice within one call.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if proto == "both":
        ports: list[int] = []
        for _ in range(_MAX_ATTEMPTS):
            if len(ports) == n:
                break
            port = free_port_both()
            if port not in ports:
                ports.append(port)
        if len(ports) != n:
            raise RuntimeError(f"could not find {n} ports free for UDP and TCP")
        return ports
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, _sock_type(proto))
            held.append(s)
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()
