"""A real PostgreSQL server for tests: its own cluster in a temporary directory, on
127.0.0.1 and a free port, started and stopped by the test, never left behind.

Theory of operation
-------------------
:class:`Postgres` finds the server binaries (``$TRIO_SIP_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin`` of Debian's ``postgresql`` package, else ``initdb`` on
PATH), then

1. ``initdb`` a cluster into a fresh directory (trust authentication, superuser
   ``trio``, ``--no-sync``: tests do not need durability);
2. ``pg_ctl start`` it listening on 127.0.0.1 only, on a free port, with its unix
   socket in the same directory (never /var/run/postgresql), fsync off, waiting
   (``-w``, bounded) until it accepts connections;
3. creates the database ``trio`` (the URL is ``postgresql://trio@127.0.0.1:PORT/trio``);
4. on leaving the block: ``pg_ctl stop -m immediate`` (bounded; then SIGKILL of the
   postmaster by its pid file), and the directory is removed.

PostgreSQL refuses to run as root. As root (CI) the cluster belongs to the ``postgres``
system user (created by the Debian package) and every server command runs through
``runuser -u postgres``; the directory is made in /tmp, owned by that user. As any other
user the commands run directly.

:func:`postgres_missing` says why a server cannot be started here (no binaries; root
without a ``postgres`` user or ``runuser``), or None; tests skip with that reason, and
fail instead when ``$CI`` is set, since CI installs the package (.ci/run).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .ports import LOOPBACK, free_port

__all__ = ["Postgres", "PostgresError", "pg_bin_dir", "postgres_missing"]

#: seconds for initdb, start and stop
TIMEOUT = 60.0


class PostgresError(RuntimeError):
    """The server could not be set up; the message carries its log."""


def pg_bin_dir() -> Path | None:
    """The directory of initdb/pg_ctl, or None."""
    env = os.environ.get("TRIO_SIP_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "initdb").is_file() else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name)
                        if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _run_as() -> list[str]:
    """The prefix that runs a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def postgres_missing() -> str | None:
    """Why no server can be started here, or None."""
    if pg_bin_dir() is None:
        return "PostgreSQL server binaries not found (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class Postgres:
    """``with Postgres() as pg: pg.url`` -- a server of our own on 127.0.0.1."""

    def __init__(self, *, database: str = "trio", user: str = "trio") -> None:
        self.database = database
        self.user = user
        self.port = 0
        self.dir: Path | None = None
        self._bin = pg_bin_dir()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def _cmd(self, name: str, *args: str) -> list[str]:
        assert self._bin is not None
        return [*_run_as(), str(self._bin / name), *args]

    def _call(self, cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{cmd[-1]}: timed out\n{self.log()}") from exc
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(cmd)} exited {done.returncode}:\n"
                                f"{done.stdout}{done.stderr}\n{self.log()}")
        return done.stdout

    def log(self) -> str:
        if self.dir is None:
            return ""
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        why = postgres_missing()
        if why is not None:
            raise PostgresError(why)
        self.dir = Path(tempfile.mkdtemp(prefix="trio-sip-pg-"))
        try:
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._call(self._cmd("initdb", "-D", str(self.data), "-A", "trust", "-U",
                                 self.user, "-E", "UTF8", "--no-sync", "--no-instructions"))
            self.port = free_port("tcp")
            opts = (f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.dir} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            self._call(self._cmd("pg_ctl", "-D", str(self.data), "-l",
                                 str(self.dir / "server.log"), "-o", opts, "-w", "-t",
                                 str(int(TIMEOUT)), "start"))
            self._call(self._cmd("createdb", "-h", LOOPBACK, "-p", str(self.port), "-U",
                                 self.user, self.database))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(PostgresError):
                    self._call(self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate",
                                         "-w", "-t", "20", "stop"))
                self._kill_leftover()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill_leftover(self) -> None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # bounded wait for it to go
                os.kill(pid, 0)
                time.sleep(0.05)

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
