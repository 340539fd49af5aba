"""enrich.db.prepared: statements straight through libpq, on a real PostgreSQL.

The webhook's INSERT goes this way; what it relies on: one PREPARE per connection,
recovery when the server forgot the statement, psycopg's exception types, NUL refused
before anything is sent, and a cancelled statement leaving the connection usable.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
import trio

from enrich.db import prepared
from enrich.db.pool import ConnectionPool
from enrich.db.prepared import Statement


@pytest.fixture
async def pool(database_url: str) -> ConnectionPool:
    p = ConnectionPool(database_url, min_size=1, max_size=1)
    await p.open()
    yield p  # type: ignore[misc]
    await p.close()


def _name() -> str:
    return f"enrich_test_{uuid.uuid4().hex[:12]}"


async def _prepared_on_server(pool: ConnectionPool) -> set[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT name FROM pg_prepared_statements")
        return {str(row[0]) for row in await cur.fetchall()}


async def test_prepared_once_per_connection_then_reused(pool: ConnectionPool) -> None:
    stmt = Statement(_name(), "SELECT $1::int + $2::int, $3::text IS NULL")
    for n in range(3):
        async with pool.connection() as conn:
            result = await prepared.execute(conn, stmt, [str(n), "40", None])
        assert (result.get_value(0, 0), result.get_value(0, 1)) == (str(n + 40).encode(), b"t")
    assert stmt.name in await _prepared_on_server(pool)
    async with pool.connection() as conn:
        assert stmt.name in conn.prepared_here
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s",
                                 (stmt.name,))
        assert await cur.fetchone() == (1,)


async def test_a_statement_the_server_forgot_is_prepared_again(pool: ConnectionPool) -> None:
    stmt = Statement(_name(), "SELECT upper($1)")
    async with pool.connection() as conn:
        await prepared.execute(conn, stmt, ["a"])
        await conn.execute("DEALLOCATE ALL")
        assert stmt.name in conn.prepared_here  # we still believe it is there
        result = await prepared.execute(conn, stmt, ["b"])
    assert result.get_value(0, 0) == b"B"
    assert stmt.name in await _prepared_on_server(pool)


async def test_errors_are_psycopgs_and_the_connection_stays_usable(
    pool: ConnectionPool,
) -> None:
    table = f"prepared_probe_{uuid.uuid4().hex[:12]}"
    async with pool.connection() as conn:
        await conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY)")
    try:
        insert = Statement(_name(), f"INSERT INTO {table} (k) VALUES ($1)")  # noqa: S608
        async with pool.connection() as conn:
            await prepared.execute(conn, insert, ["x"])
            with pytest.raises(psycopg.errors.UniqueViolation):
                await prepared.execute(conn, insert, ["x"])
            bad_cast = Statement(_name(), "SELECT $1::uuid")
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                await prepared.execute(conn, bad_cast, ["not a uuid"])
            # Still idle and in step: psycopg's own path works on it next.
            assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
            assert await cur.fetchone() == (1,)
        with pytest.raises(ValueError, match="enrich_"):
            Statement("insert_messages", "SELECT 1")
    finally:
        async with pool.connection() as conn:
            await conn.execute(f"DROP TABLE {table}")


async def test_nul_is_refused_before_anything_is_sent(pool: ConnectionPool) -> None:
    """libpq would send 'a' for 'a\\x00b' (text parameters are C strings)."""
    stmt = Statement(_name(), "SELECT $1::text")
    async with pool.connection() as conn:
        with pytest.raises(psycopg.DataError, match="NUL"):
            await prepared.execute(conn, stmt, ["a\x00b"])
        assert stmt.name not in conn.prepared_here
        result = await prepared.execute(conn, stmt, ["ab"])
    assert result.get_value(0, 0) == b"ab"


async def test_a_cancelled_statement_returns_at_the_deadline_and_the_pool_recovers(
    pool: ConnectionPool,
) -> None:
    stmt = Statement(_name(), "SELECT pg_sleep($1::float8)")
    started = time.monotonic()
    with trio.move_on_after(0.3) as scope:
        async with pool.connection() as conn:
            await prepared.execute(conn, stmt, ["5"])
    assert scope.cancelled_caught
    assert time.monotonic() - started < 3.0  # not the 5 s the statement asked for
    async with pool.connection() as conn:
        result = await prepared.execute(conn, Statement(_name(), "SELECT $1::int * 2"), ["21"])
    assert result.get_value(0, 0) == b"42"
    assert pool.stats().inUse == 0
