"""The job's write path (store.complete_message) against real PostgreSQL: one statement,
all or nothing, guarded by the lease, idempotent by schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from enrich.core.inbound import parse_inbound
from enrich.db.pool import ConnectionPool
from enrich.store import (
    ItemInsert,
    Job,
    LeaseLost,
    claim_message,
    complete_message,
    insert_message,
)
from tests.conftest import random_sid

SENDER = "+15556660000"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[ConnectionPool]:
    p = ConnectionPool(database_url, min_size=1, max_size=2)
    await p.open()
    yield p
    await p.close()


async def _claimed(pool: ConnectionPool, owner: str) -> tuple[int, str, Job]:
    sid = random_sid()
    msg = parse_inbound([("MessageSid", sid), ("AccountSid", "AC" + "a" * 32),
                         ("From", SENDER), ("To", "+15550000000"), ("Body", "hi"),
                         ("NumMedia", "0")])
    message_id = await insert_message(pool, msg, from_e164=SENDER, user_id=uuid.uuid4())
    assert message_id is not None
    job = await claim_message(pool, message_id, owner, 60)
    assert job is not None
    return message_id, sid, job


ITEMS = (
    ItemInsert(0, "contact", "name", "Sarah Johnson", {"context": "coffee", "n": 1}),
    ItemInsert(1, "tag", None, "hiking", {}),
    ItemInsert(2, "note", None, "quote ' and \\ and \"json\" and émoji 🎉", {"k": [1, 2]}),
)


def _rows(database_url: str, sid: str) -> tuple[list[tuple[object, ...]], int, str]:
    with psycopg.connect(database_url) as conn:
        items = conn.execute(
            "SELECT item_index, item_type, field_name, value, status, source, source_metadata"
            " FROM enrichment_items WHERE message_sid = %s ORDER BY item_index", (sid,)
        ).fetchall()
        replies = conn.execute(
            "SELECT count(*) FROM notifications WHERE message_sid = %s", (sid,)).fetchone()
        status = conn.execute(
            "SELECT status FROM inbound_messages WHERE message_sid = %s", (sid,)).fetchone()
    assert replies is not None and status is not None
    return items, int(replies[0]), str(status[0])


async def test_completion_writes_items_reply_and_done_once(
    pool: ConnectionPool, database_url: str
) -> None:
    _, sid, job = await _claimed(pool, "owner-a")
    await complete_message(pool, job, "owner-a", ITEMS, source="mms",
                           notification=("confirmation", "Saved 3 items"))
    items, replies, status = _rows(database_url, sid)
    assert status == "done" and replies == 1
    assert items == [
        (0, "contact", "name", "Sarah Johnson", "pending", "mms", {"context": "coffee", "n": 1}),
        (1, "tag", None, "hiking", "pending", "mms", {}),
        (2, "note", None, ITEMS[2].value, "pending", "mms", {"k": [1, 2]}),
    ]
    # A second completion (a stale worker) changes nothing and says so.
    with pytest.raises(LeaseLost):
        await complete_message(pool, job, "owner-a", ITEMS, source="mms",
                               notification=("confirmation", "Saved 3 items"))
    assert _rows(database_url, sid) == (items, 1, "done")


async def test_lost_lease_writes_nothing(pool: ConnectionPool, database_url: str) -> None:
    message_id, sid, job = await _claimed(pool, "owner-a")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE inbound_messages SET lease_owner = 'owner-b' WHERE id = %s",
                     (message_id,))
    with pytest.raises(LeaseLost):
        await complete_message(pool, job, "owner-a", ITEMS, source="sms",
                               notification=("confirmation", "x"))
    assert _rows(database_url, sid) == ([], 0, "processing")


async def test_no_items_and_no_reply(pool: ConnectionPool, database_url: str) -> None:
    _, sid, job = await _claimed(pool, "owner-a")
    await complete_message(pool, job, "owner-a", (), source="sms",
                           notification=None)
    assert _rows(database_url, sid) == ([], 0, "done")

