"""The trio-native PostgreSQL pool: connections always come back, deadlines hold.

Conformance of the driver strategy (private psycopg generator API, pinned minor
version): a trio deadline around a slow query returns at the deadline, not when the
query ends, and the connection is reusable or replaced.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import trio
from psycopg import sql

from enrich.db.pool import ConnectionPool, PoolTimeout

SLOW_QUERY_S = 5.0


@pytest.fixture
async def pool(database_url: str) -> ConnectionPool:
    p = ConnectionPool(database_url, min_size=1, max_size=3, acquire_timeout=0.5)
    await p.open()
    yield p  # type: ignore[misc]
    await p.close()


async def test_query_and_stats(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 40 + %s", (2,))
        assert await cur.fetchone() == (42,)
        assert pool.stats().inUse == 1
    stats = pool.stats()
    assert (stats.inUse, stats.waiting, stats.total, stats.max) == (0, 0, 1, 3)


async def test_an_already_cancelled_borrower_runs_no_statement(pool: ConnectionPool) -> None:
    """A free slot and the connection's lock are taken without a yield, but a borrower
    cancelled before it asks must not have its statement run."""
    table = sql.Identifier(f"cancelled_probe_{uuid.uuid4().hex[:12]}")
    async with pool.connection() as conn:
        await conn.execute(sql.SQL("CREATE TABLE {} (n int)").format(table))
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with pool.connection() as conn:
                await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
        assert scope.cancelled_caught
        async with pool.connection() as conn:
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
            assert (await cur.fetchone()) == (0,)
        assert pool.stats().inUse == 0
    finally:
        async with pool.connection() as conn:
            await conn.execute(sql.SQL("DROP TABLE {}").format(table))


async def test_deadline_interrupts_a_slow_query_and_connection_is_reusable(
    pool: ConnectionPool,
) -> None:
    start = trio.current_time()
    with trio.move_on_after(0.2) as scope:
        async with pool.connection() as conn:
            await conn.execute(f"SELECT pg_sleep({SLOW_QUERY_S})")
    elapsed = trio.current_time() - start
    assert scope.cancelled_caught
    # The deadline fired: we are back long before the query would have ended.
    assert elapsed < SLOW_QUERY_S / 2
    assert pool.stats().inUse == 0
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        # The backend is no longer running the cancelled query.
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%'"
        )
        assert await cur.fetchone() == (0,)


async def test_cancel_inside_transaction_returns_connection(pool: ConnectionPool) -> None:
    with trio.move_on_after(0.2):
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE t(x int)")
            await conn.execute(f"SELECT pg_sleep({SLOW_QUERY_S})")
    assert pool.stats().inUse == 0
    async with pool.connection() as conn:
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_error_returns_connection_with_transaction_rolled_back(
    pool: ConnectionPool,
) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT * FROM no_such_table")
    assert pool.stats().inUse == 0
    async with pool.connection() as conn:
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_exhausted_pool_times_out_with_a_clear_error(pool: ConnectionPool) -> None:
    holders_ready = trio.Event()
    release = trio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        async with pool.connection():
            held += 1
            if held == pool.max_size:
                holders_ready.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(pool.max_size):
            nursery.start_soon(hold)
        await holders_ready.wait()
        assert pool.stats().available == 0
        with pytest.raises(PoolTimeout, match="DATABASE_POOL_MAX=3"):
            async with pool.connection(timeout=0.1):
                pass
        release.set()
    assert pool.stats().inUse == 0
    assert pool.stats().total <= pool.max_size


async def test_waiting_is_counted(pool: ConnectionPool) -> None:
    release = trio.Event()

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with pool.connection():
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(pool.max_size):
            await nursery.start(hold)

        async def wait_for_one() -> None:
            async with pool.connection(timeout=5):
                pass

        nursery.start_soon(wait_for_one)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.stats().waiting == 1
        release.set()
    assert pool.stats().waiting == 0


async def test_many_concurrent_tasks_never_exceed_max(pool: ConnectionPool) -> None:
    seen_backends: set[int] = set()

    async def work(i: int) -> None:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT pg_backend_pid(), %s::int", (i,), prepare=True)
            row = await cur.fetchone()
            assert row is not None and row[1] == i
            seen_backends.add(row[0])

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(work, i)
    assert len(seen_backends) <= pool.max_size
    assert pool.stats().total <= pool.max_size


async def test_prepared_statements_are_used(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        for i in range(3):
            await conn.execute("SELECT %s::int + 1", (i,), prepare=True)
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        row = await cur.fetchone()
        assert row is not None and row[0] >= 1


async def test_broken_connection_is_replaced(pool: ConnectionPool, database_url: str) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        victim = row[0]
    # Kill the idle connection's backend from outside.
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
    await trio.sleep(0.1)
    with pytest.raises(psycopg.OperationalError):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
    assert pool.stats().inUse == 0


async def test_connect_timeout_against_a_silent_server(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def swallow(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, swallow, [listener])
    silent = ConnectionPool(
        f"postgresql://u@127.0.0.1:{port}/x", min_size=0, max_size=1, connect_timeout=0.3
    )
    with pytest.raises(trio.TooSlowError):
        async with silent.connection():
            pass
    assert silent.stats().inUse == 0
    nursery.cancel_scope.cancel()


async def test_trim_idle_keeps_min(database_url: str) -> None:
    p = ConnectionPool(database_url, min_size=1, max_size=4, idle_timeout=0.0)

    async def use() -> None:
        async with p.connection():
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(use)
    assert p.stats().total == 4
    await trio.sleep(0.01)
    closed = await p.trim_idle()
    assert closed == 3
    assert p.stats().total == 1
    await p.close()
