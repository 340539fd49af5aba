"""Batch versus row-by-row inserts of enrichment items, on a real PostgreSQL.

Three ways to store the items of each message, through the app's own pool and driver
(enrich.db.pool over the trio-native psycopg connection), each on fresh messages:

* ``batch``: ``enrich.store.complete_message``, what the job runner does: one
  transaction that marks the message done and inserts every item with one
  ``executemany`` (psycopg pipelines it: one round trip for the lot);
* ``row_by_row``: the seed's "before": one autocommit INSERT per item, each borrowing a
  connection from the pool, then the done mark;
* ``row_by_row_tx``: one INSERT statement per item awaited in turn, inside one transaction.

    python -m bench.inserts [--messages 300] [--items 8] [--quick]

uses DATABASE_URL, or starts an embedded PostgreSQL in a temp dir when it is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from bench.common import OUT_DIR, machine_info
from enrich.db.migrate import migrate
from enrich.db.pool import ConnectionPool
from enrich.store import ItemInsert, Job, complete_message

OWNER = "bench-inserts"
ITEM_SQL = """
    INSERT INTO enrichment_items
        (user_id, message_id, message_sid, item_index, item_type, field_name,
         value, status, source, source_metadata)
    VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s::jsonb)
    ON CONFLICT (message_sid, item_index) DO NOTHING
"""
DONE_SQL = """
    UPDATE inbound_messages SET status = 'done', completed_at = now(), updated_at = now(),
        lease_owner = NULL, lease_expires_at = NULL
    WHERE id = %s AND status = 'processing' AND lease_owner = %s
"""
_TYPES = ["contact", "organization", "location", "tag", "email", "phone", "date", "note"]


def items_for(n: int) -> list[ItemInsert]:
    return [ItemInsert(item_index=i, item_type=_TYPES[i % len(_TYPES)],
                       field_name="name" if i % len(_TYPES) == 0 else None,
                       value=f"value {i} of a typical enrichment",
                       metadata={"origin": "body", "from": "***0001", "context": "met at"})
            for i in range(n)]


async def claimed_jobs(pool: ConnectionPool, count: int, label: str) -> list[Job]:
    """``count`` inbound messages in status processing, leased to OWNER."""
    user = uuid.uuid4()
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            INSERT INTO inbound_messages (message_sid, user_id, from_number, body, status,
                                          attempts, lease_owner, lease_expires_at)
            SELECT %s || g::text || '-' || md5(random()::text), %s, '+15550000001',
                   'bench', 'processing', 1, %s, now() + interval '1 hour'
            FROM generate_series(1, %s) AS g
            RETURNING id, message_sid, user_id, from_number, body, media, attempts,
                      received_at
            """,
            (f"SMbench{label}", user, OWNER, count),
        )
        rows = await cur.fetchall()
    return [Job(int(r[0]), str(r[1]), r[2], str(r[3]), str(r[4]), tuple(r[5] or ()),
                int(r[6]), r[7]) for r in rows]


def _params(job: Job, it: ItemInsert) -> tuple[Any, ...]:
    return (job.user_id, job.id, job.message_sid, it.item_index, it.item_type, it.field_name,
            it.value, "sms", json.dumps(it.metadata))


async def store_batch(pool: ConnectionPool, job: Job, items: list[ItemInsert]) -> None:
    await complete_message(pool, job, OWNER, items, source="sms", notification=None)


async def store_row_by_row(pool: ConnectionPool, job: Job, items: list[ItemInsert]) -> None:
    for it in items:
        async with pool.connection() as conn:
            await conn.execute(ITEM_SQL, _params(job, it), prepare=True)
    async with pool.connection() as conn:
        await conn.execute(DONE_SQL, (job.id, OWNER), prepare=True)


async def store_row_by_row_tx(pool: ConnectionPool, job: Job, items: list[ItemInsert]) -> None:
    async with pool.connection() as conn, conn.transaction():
        for it in items:
            await conn.execute(ITEM_SQL, _params(job, it), prepare=True)
        await conn.execute(DONE_SQL, (job.id, OWNER), prepare=True)


METHODS = {"batch": store_batch, "row_by_row": store_row_by_row,
           "row_by_row_tx": store_row_by_row_tx}


async def run(database_url: str, *, messages: int, items: int, rounds: int = 3
              ) -> dict[str, Any]:
    pool = ConnectionPool(database_url, min_size=1, max_size=2, acquire_timeout=30)
    batch = items_for(items)
    seconds = dict.fromkeys(METHODS, 0.0)
    try:
        async with pool.connection(timeout=30) as conn:
            await migrate(conn)
        # Warm-up: connections, prepared statements, the table's first pages.
        for name, method in METHODS.items():
            for job in await claimed_jobs(pool, 5, f"warm{name}"):
                await method(pool, job, batch)
        # Rounds interleave the methods, so a neighbour's load spike hits all of them.
        per_round = max(1, messages // rounds)
        for r in range(rounds):
            for name, method in METHODS.items():
                jobs = await claimed_jobs(pool, per_round, f"{name}{r}")
                started = time.perf_counter()
                for job in jobs:
                    await method(pool, job, batch)
                seconds[name] += time.perf_counter() - started
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM enrichment_items WHERE message_sid LIKE 'SMbench%%'")
            row = await cur.fetchone()
        stored = int(row[0]) if row else 0
    finally:
        await pool.close()
    total_messages = per_round * rounds
    result: dict[str, Any] = {
        "messages_per_method": total_messages, "items_per_message": items,
        "rows_stored": stored, "machine": machine_info(), "methods": {},
    }
    for name, secs in seconds.items():
        result["methods"][name] = {
            "seconds": round(secs, 4),
            "ms_per_message": round(1000 * secs / total_messages, 3),
            "items_per_s": round(total_messages * items / secs, 1),
        }
    result["ratio_row_by_row_vs_batch"] = round(seconds["row_by_row"] / seconds["batch"], 2)
    result["ratio_row_by_row_tx_vs_batch"] = round(
        seconds["row_by_row_tx"] / seconds["batch"], 2)
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"=== Inserts: {r['messages_per_method']} messages x {r['items_per_message']} items "
             "per method ==="]
    for name, m in r["methods"].items():
        lines.append(f"  {name:14s} {m['ms_per_message']:8.3f} ms/message  "
                     f"{m['items_per_s']:10,.0f} items/s")
    lines.append(f"  batch is {r['ratio_row_by_row_vs_batch']:.1f}x faster than row-by-row "
                 f"autocommit, {r['ratio_row_by_row_tx_vs_batch']:.1f}x faster than row-by-row "
                 "in one transaction")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inserts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="30 messages, one round")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    messages, rounds = (30, 1) if args.quick else (args.messages, 3)
    url = os.environ.get("DATABASE_URL")
    root = None
    embedded = None
    try:
        if not url:
            from enrich.embedded import EmbeddedPostgres

            root = Path(tempfile.mkdtemp(prefix="enrich-bench-pg-"))
            embedded = EmbeddedPostgres(root)
            url = embedded.start().url
        result = trio.run(lambda: run(url, messages=messages, items=args.items, rounds=rounds))
    finally:
        if embedded is not None:
            embedded.stop()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    print(format_result(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"inserts-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
