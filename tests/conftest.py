"""Shared fixtures: a real PostgreSQL and a real Redis for the whole run, fresh data per test.

PostgreSQL: the embedded server (or TEST_DATABASE_URL). Migrations run once into a
template database; every test gets its own database cloned from it, so tests never see
each other's rows and can run the app's own migrations idempotently.
Redis: the embedded Valkey (or TEST_REDIS_URL), flushed before each test.
Servers started here are stopped at the end of the run; none are left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import trio

from enrich.config import Settings
from enrich.embedded import EmbeddedPostgres, EmbeddedRedis

TEMPLATE_DB = "enrich_test_template"
_db_counter = itertools.count()

FIXTURES = Path(__file__).parent / "fixtures"
MEDIA = FIXTURES / "media"


def _with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def server_dir(prefix: str) -> Iterator[Path]:
    """A private directory for an embedded server's data, outside pytest's tmp tree.

    As root, PostgreSQL runs as an unprivileged user that must traverse the parents of
    its data directory; pytest resets /tmp/pytest-of-<user> to 0700 whenever a session
    starts, which would lock a running server out of its own files.
    """
    path = Path(tempfile.mkdtemp(prefix=f"enrich-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_tmp() -> Iterator[Path]:
    with server_dir("t") as path:
        yield path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a PostgreSQL server (database name is replaced per test)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    with server_dir("pg") as root:
        server = EmbeddedPostgres(root)
        running = server.start()
        try:
            yield running.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """Create and migrate the template database once per run."""
    from enrich.db.migrate import migrate
    from enrich.db.pool import ConnectionPool

    admin = _with_database(pg_server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')

    async def run() -> None:
        pool = ConnectionPool(_with_database(pg_server, TEMPLATE_DB), min_size=0, max_size=1)
        async with pool.connection() as conn:
            await migrate(conn)
        await pool.close()

    trio.run(run)
    return TEMPLATE_DB


@pytest.fixture
def database_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    admin = _with_database(pg_server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}" STRATEGY FILE_COPY')
    try:
        yield _with_database(pg_server, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    with server_dir("redis") as root:
        server = EmbeddedRedis(root)
        running = server.start()
        try:
            yield running.url
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings for a test instance: real URLs, small pools, a temp data dir."""
    base = {
        "ENRICH_DATA_DIR": str(tmp_path / "data"),
        "TWILIO_AUTH_TOKEN": "test-auth-token-" + "0" * 16,
        "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
        "TWILIO_PHONE_NUMBER": "+15550000000",
        "DATABASE_POOL_MIN": "1",
        "DATABASE_POOL_MAX": "5",
        "REDIS_POOL_MIN": "1",
        "REDIS_POOL_MAX": "5",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "LOG_FORMAT": "json",
        "PUBLIC_URL": "http://testserver.local",
    }
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)


@pytest.fixture
async def served(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[dict[str, Any]]:
    """A real hypercorn server running the app on 127.0.0.1:<free port>."""
    from enrich.app import create_app
    from enrich.server import serve_app

    app = create_app(settings)
    stop = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve_app(
            app,
            settings,
            host="127.0.0.1",
            port=0,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
    )
    yield {"app": app, "url": binds[0], "stop": stop, "settings": settings}
    stop.set()


def random_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)
