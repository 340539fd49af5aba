"""Migrations are idempotent and concurrent-safe; the hot queries use the indexes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import trio

from enrich.db.migrate import load_migrations, migrate
from enrich.db.pool import ConnectionPool

SEED_INDEXES = {
    "idx_user_phone_numbers_phone_verified": (
        "CREATE INDEX idx_user_phone_numbers_phone_verified ON public.user_phone_numbers "
        "USING btree (phone_number, verified) WHERE (verified = true)"
    ),
    "idx_enrichment_items_user_status": (
        "CREATE INDEX idx_enrichment_items_user_status ON public.enrichment_items "
        "USING btree (user_id, status)"
    ),
    "idx_enrichment_items_created_at": (
        "CREATE INDEX idx_enrichment_items_created_at ON public.enrichment_items "
        "USING btree (created_at DESC)"
    ),
    "idx_enrichment_items_user_source_status": (
        "CREATE INDEX idx_enrichment_items_user_source_status ON public.enrichment_items "
        "USING btree (user_id, source, status)"
    ),
    "idx_enrichment_items_pending": (
        "CREATE INDEX idx_enrichment_items_pending ON public.enrichment_items "
        "USING btree (user_id, created_at DESC) WHERE (status = 'pending'::text)"
    ),
}


def test_migrations_are_numbered_and_unique() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert migrations[0].version == 1


async def test_migrate_is_idempotent_and_safe_concurrently(database_url: str) -> None:
    # The test database was cloned from a migrated template: nothing left to apply.
    pool = ConnectionPool(database_url, min_size=0, max_size=4)
    results: list[list[int]] = []

    async def run() -> None:
        async with pool.connection() as conn:
            results.append(await migrate(conn))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(run)
    assert results == [[], [], []]
    await pool.close()


async def test_fresh_database_migrates_once_under_concurrency(pg_server: str) -> None:
    from tests.conftest import _with_database

    admin = _with_database(pg_server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "t_fresh_migrate" WITH (FORCE)')
        conn.execute('CREATE DATABASE "t_fresh_migrate"')
    try:
        url = _with_database(pg_server, "t_fresh_migrate")
        pools = [ConnectionPool(url, min_size=0, max_size=1) for _ in range(2)]
        results: list[list[int]] = []

        async def run(pool: ConnectionPool) -> None:
            async with pool.connection() as conn:
                results.append(await migrate(conn))

        async with trio.open_nursery() as nursery:
            for pool in pools:
                nursery.start_soon(run, pool)
        assert sorted(results) == [[], [m.version for m in load_migrations()]]
        for pool in pools:
            await pool.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "t_fresh_migrate" WITH (FORCE)')


def test_seed_indexes_exist_with_their_definitions(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    defs = dict(rows)
    for name, definition in SEED_INDEXES.items():
        assert defs.get(name) == definition


def test_status_values_are_constrained(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO enrichment_items (user_id, message_sid, item_index, item_type,"
                " value, status, source) VALUES (gen_random_uuid(), 'SMx', 0, 'tag', 'v',"
                " 'maybe', 'sms')"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            for _ in range(2):
                conn.execute(
                    "INSERT INTO enrichment_items (user_id, message_sid, item_index, item_type,"
                    " value, source) VALUES (gen_random_uuid(), 'SMy', 0, 'tag', 'v', 'sms')"
                )


def _seed(conn: psycopg.Connection[Any]) -> None:
    """Enough rows that the planner prefers an index to a scan (DESIGN.md §8.17)."""
    conn.execute(
        """
        INSERT INTO user_phone_numbers (user_id, phone_number, verified)
        SELECT gen_random_uuid(), '+1555' || lpad(g::text, 7, '0'), g % 10 <> 0
        FROM generate_series(1, 20000) g
        """
    )
    conn.execute(
        """
        INSERT INTO inbound_messages (message_sid, from_number, status, completed_at)
        SELECT 'SM' || md5(g::text), '+1555' || lpad((g % 20000)::text, 7, '0'), 'done', now()
        FROM generate_series(1, 20000) g
        """
    )
    conn.execute(
        """
        INSERT INTO notifications (message_sid, kind, to_number, body, status, sent_at)
        SELECT 'SM' || md5(g::text), 'confirmation', '+15550000000', 'Saved 1 item',
               CASE WHEN g % 500 = 0 THEN 'pending' ELSE 'sent' END, now()
        FROM generate_series(1, 20000) g
        """
    )
    conn.execute(
        """
        INSERT INTO enrichment_items (user_id, message_sid, item_index, item_type, value,
                                      status, source, created_at)
        SELECT u.user_id, 'SM' || md5(g::text), 0, 'tag', 'v' || g,
               (ARRAY['pending','approved','rejected'])[1 + g % 3],
               (ARRAY['sms','mms'])[1 + g % 2],
               now() - (g || ' seconds')::interval
        FROM generate_series(1, 60000) g
        JOIN LATERAL (SELECT user_id FROM user_phone_numbers
                      WHERE id = 1 + (g % 2000)) u ON true
        """
    )
    conn.execute("ANALYZE")


def _plan(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> str:
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    return json.dumps(row[0])


def test_hot_queries_use_indexes(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed(conn)
        user = conn.execute("SELECT user_id FROM user_phone_numbers WHERE id = 5").fetchone()
        assert user is not None
        uid = user[0]
        cases = [
            (
                "SELECT user_id FROM user_phone_numbers WHERE phone_number = %s AND verified",
                ("+15550000123",),
                {"idx_user_phone_numbers_phone_verified", "user_phone_numbers_phone_key"},
            ),
            (
                "SELECT * FROM enrichment_items WHERE user_id = %s AND status = 'pending'"
                " ORDER BY created_at DESC LIMIT 50",
                (uid,),
                {"idx_enrichment_items_pending"},
            ),
            (
                "SELECT * FROM enrichment_items WHERE user_id = %s AND status = 'approved'",
                (uid,),
                {"idx_enrichment_items_user_status", "idx_enrichment_items_user_source_status"},
            ),
            (
                "SELECT * FROM enrichment_items WHERE user_id = %s AND source = 'mms'"
                " AND status = 'approved'",
                (uid,),
                {"idx_enrichment_items_user_source_status", "idx_enrichment_items_user_status"},
            ),
            (
                "SELECT * FROM enrichment_items ORDER BY created_at DESC LIMIT 20",
                (),
                {"idx_enrichment_items_created_at"},
            ),
            (
                "SELECT id FROM inbound_messages WHERE status IN ('received', 'processing')"
                " AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 16",
                (),
                {"idx_inbound_messages_open"},
            ),
            (  # the runner's batched claim
                "SELECT id FROM inbound_messages WHERE id = ANY(%s)"
                " AND status IN ('received', 'processing') AND next_attempt_at <= now()"
                " FOR UPDATE SKIP LOCKED",
                ([1, 2, 3],),
                {"inbound_messages_pkey", "idx_inbound_messages_open"},
            ),
            (  # the outbox's claim
                "SELECT id FROM notifications WHERE status IN ('pending', 'sending')"
                " AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 20"
                " FOR UPDATE SKIP LOCKED",
                (),
                {"idx_notifications_open"},
            ),
            (
                "SELECT status FROM inbound_messages WHERE message_sid = %s",
                ("SM" + "0" * 32,),
                {"inbound_messages_message_sid_key"},
            ),
        ]
        for sql, params, expected in cases:
            plan = _plan(conn, sql, params)
            assert '"Seq Scan"' not in plan, sql
            assert any(f'"Index Name": "{name}"' in plan for name in expected), (sql, plan)
