"""Embedded PostgreSQL and Valkey: start, reuse, crash survival, data kept, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from enrich.embedded import EmbeddedPostgres, EmbeddedRedis, pid_alive

pytestmark = pytest.mark.slow


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def test_postgres_reuse_crash_restart_and_stop(server_tmp: Path) -> None:
    tmp_path = server_tmp
    pg = EmbeddedPostgres(tmp_path)
    first = pg.start()
    try:
        assert first.started
        with psycopg.connect(first.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives')")
        # A second start (another process after ours crashed) reuses the running server.
        again = EmbeddedPostgres(tmp_path).start()
        assert (again.started, again.pid) == (False, first.pid)
        # The server itself is killed hard: the next start restarts it on the same data.
        os.kill(first.pid, signal.SIGKILL)
        _wait_gone(first.pid)
        restarted = EmbeddedPostgres(tmp_path).start()
        assert restarted.started and restarted.pid != first.pid
        with psycopg.connect(restarted.url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
    finally:
        pg.stop()
    assert pg.running_pid() is None


def test_postgres_survives_a_killed_owner_process(server_tmp: Path) -> None:
    tmp_path = server_tmp
    """Our process dies with kill -9 while it holds the server: the next start reuses it."""
    code = (
        "import sys, time; from pathlib import Path; from enrich.embedded import EmbeddedPostgres;"
        f"r = EmbeddedPostgres(Path({str(tmp_path)!r})).start(); print(r.pid, flush=True);"
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        proc.kill()
        proc.wait()
        pg = EmbeddedPostgres(tmp_path)
        reused = pg.start()
        assert (reused.started, reused.pid) == (False, pid)
    finally:
        proc.kill()
        EmbeddedPostgres(tmp_path).stop()


def test_redis_reuse_data_kept_and_stop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    first = server.start()
    try:
        client = redis.Redis.from_url(first.url)
        client.set("kept", "yes")
        client.close()
        assert EmbeddedRedis(tmp_path).start().pid == first.pid
        server.stop()  # clean stop writes the append-only file
        _wait_gone(first.pid)
        second = EmbeddedRedis(tmp_path).start()
        assert second.started
        client = redis.Redis.from_url(second.url)
        assert client.get("kept") == b"yes"
        client.close()
        os.kill(second.pid, signal.SIGKILL)
        _wait_gone(second.pid)
        third = EmbeddedRedis(tmp_path).start()
        assert third.started and third.pid != second.pid
    finally:
        server.stop()
    assert server.running_pid() is None


def test_long_data_dir_uses_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    pg = EmbeddedPostgres(deep)
    assert len(str(pg.socket_dir / ".s.PGSQL.5432")) <= 107
    rs = EmbeddedRedis(deep)
    assert len(str(rs.socket_path)) <= 107
