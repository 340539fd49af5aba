"""The write paths against real PostgreSQL: the webhook's batched INSERT (each row answered
in place) and the job's completion (one statement, all or nothing, guarded by the lease,
idempotent by schema)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from functools import partial

import psycopg
import pytest
import trio

from enrich.config import Settings
from enrich.core.inbound import InboundMessage, parse_inbound
from enrich.db.pool import ConnectionPool
from enrich.ingest import Ingest
from enrich.redis_client import RedisClient
from enrich.store import (
    ItemInsert,
    Job,
    LeaseLost,
    NewMessage,
    Owner,
    claim_message,
    complete_message,
    insert_message,
    insert_messages,
    link_phone,
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



def _inbound(sid: str, body: str = "hi") -> InboundMessage:
    return parse_inbound([("MessageSid", sid), ("AccountSid", "AC" + "a" * 32),
                          ("From", SENDER), ("To", "+15550000000"), ("Body", body),
                          ("NumMedia", "0")])


async def test_batch_insert_answers_each_row_in_place(pool: ConnectionPool,
                                                      database_url: str) -> None:
    stored = _inbound(random_sid())
    first = await insert_message(pool, stored, from_e164=SENDER, user_id=None)
    assert first is not None
    fresh, twice = random_sid(), random_sid()
    rows = [
        NewMessage(_inbound(twice), SENDER, None),
        NewMessage(stored, SENDER, None),  # delivered before
        NewMessage(_inbound(fresh, "émoji 🎉 ' \\"), SENDER, uuid.uuid4(), status="rejected",
                   last_error="rate_limited"),
        NewMessage(_inbound(twice), SENDER, None),  # the same SID again in this batch
    ]
    ids = await insert_messages(pool, rows)
    assert ids[1] is None and ids[3] is None
    assert ids[0] is not None and ids[2] is not None and ids[0] != ids[2]
    with psycopg.connect(database_url) as conn:
        rows_by_id = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, message_sid, body, status, last_error, completed_at IS NOT NULL,"
            " user_id FROM inbound_messages WHERE id = ANY(%s)", ([ids[0], ids[2]],)
        ).fetchall()}
    # Each id belongs to its own row (the batch is sent in SID order; answers follow rows).
    assert rows_by_id[ids[0]][:5] == (twice, "hi", "received", None, False)
    assert rows_by_id[ids[0]][5] is None
    assert rows_by_id[ids[2]][:5] == (fresh, "émoji 🎉 ' \\", "rejected", "rate_limited", True)
    assert await insert_messages(pool, []) == []


async def test_one_refused_row_does_not_fail_its_batch(
    pool: ConnectionPool, database_url: str, redis_url: str
) -> None:
    """The webhook's INSERT batcher: a row PostgreSQL refuses gets its own error; the
    messages that shared its batch are stored and answered."""
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": "t", "DATABASE_URL": database_url,
                                  "REDIS_URL": redis_url})
    redis = RedisClient(redis_url)
    ingest = Ingest(settings, pool, redis)
    good = [_inbound(random_sid()) for _ in range(20)]
    # PostgreSQL text cannot hold NUL (the parser refuses it; these got past it). Two of
    # them, apart, so the batch is halved more than once.
    bad = [dataclasses.replace(_inbound(random_sid()), body="a\x00b") for _ in range(2)]
    results: dict[str, object] = {}

    async def submit(msg: InboundMessage) -> None:
        try:
            results[msg.message_sid] = await ingest.inserts.submit(
                NewMessage(msg, SENDER, None))
        except psycopg.DataError as exc:
            results[msg.message_sid] = exc

    async with trio.open_nursery() as nursery:
        for msg in [*good[:3], bad[0], *good[3:15], bad[1], *good[15:]]:
            nursery.start_soon(submit, msg)
    errors = [results.pop(msg.message_sid) for msg in bad]
    assert all(isinstance(e, psycopg.DataError) for e in errors) and errors[0] is not errors[1]
    assert all(isinstance(v, int) for v in results.values()) and len(results) == 20
    assert len(set(results.values())) == 20  # each its own row
    assert ingest.inserts.stats()["largestBatch"] > 2  # they did share a batch
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM inbound_messages WHERE message_sid = ANY(%s)",
                             ([m.message_sid for m in good],)).fetchone()
    assert count == (20,)
    await redis.close()


async def test_concurrent_owner_lookups_share_statements(
    pool: ConnectionPool, database_url: str, redis_url: str
) -> None:
    """Phone-cache misses at once (a restart under load) go to PostgreSQL together: each
    caller gets its own sender's owner (or None), in fewer statements than senders, and
    the answers are cached."""
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": "t", "DATABASE_URL": database_url,
                                  "REDIS_URL": redis_url})
    redis = RedisClient(redis_url)
    ingest = Ingest(settings, pool, redis)
    base = 7_000_000 + uuid.uuid4().int % 1_000_000 * 10
    linked = {f"+1555{base + i:07d}": (uuid.uuid4(), i % 2 == 0) for i in range(12)}
    for phone, (user, verified) in linked.items():
        await link_phone(pool, user, phone, verified=verified)
    strangers = [f"+1556{base + i:07d}" for i in range(4)]
    results: dict[str, Owner | None] = {}

    async def look(phone: str) -> None:
        results[phone] = await ingest.owner(phone)

    async with trio.open_nursery() as nursery:
        for phone in [*linked, *strangers]:
            nursery.start_soon(look, phone)
    assert results == {
        **{phone: Owner(user_id=user, verified=verified)
           for phone, (user, verified) in linked.items()},
        **dict.fromkeys(strangers),
    }
    stats = ingest.lookups.stats()
    assert stats["items"] == 16 and stats["batches"] < 16 and stats["largestBatch"] > 1
    await ingest.owner(next(iter(linked)))
    await ingest.owner(strangers[0])
    assert ingest.lookups.stats()["items"] == 16  # both answered from the cache
    await redis.close()


async def test_failed_owner_lookups_fail_each_caller_and_cache_nothing(
    database_url: str, redis_url: str
) -> None:
    """PostgreSQL unreachable (a server that hangs up on every connection): every
    caller of a shared lookup gets its own error, promptly, and nothing is cached, so
    the next message asks again."""
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": "t", "DATABASE_URL": database_url,
                                  "REDIS_URL": redis_url})

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    errors: list[BaseException] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as server:
            listeners = await server.start(
                partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            # The hang-up comes after a wait, so the callers that arrive meanwhile queue
            # behind the busy lanes and fail together, in a shared batch.
            pool = ConnectionPool(f"postgresql://enrich@127.0.0.1:{port}/enrich",
                                  min_size=0, max_size=2, connect_timeout=2)
            redis = RedisClient(redis_url)
            ingest = Ingest(settings, pool, redis)

            async def look(phone: str) -> None:
                try:
                    await ingest.owner(phone)
                except psycopg.OperationalError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(look, f"+1555444{i:04d}")
            server.cancel_scope.cancel()
    assert len(errors) == 6 and len({id(e) for e in errors}) == 6
    assert ingest.lookups.stats()["largestBatch"] > 1  # a shared lookup failed
    assert ingest.phone_cache.stats().size == 0
    await pool.close()
    await redis.close()


async def test_one_row_and_a_batch_store_the_same_columns(pool: ConnectionPool,
                                                          database_url: str) -> None:
    """A lone row goes as scalars, a batch through unnest: both store the same thing."""

    def with_media(sid: str) -> InboundMessage:
        return parse_inbound([("MessageSid", sid), ("AccountSid", "AC" + "a" * 32),
                              ("From", SENDER), ("To", "+15550000000"), ("Body", "card ' \\"),
                              ("NumMedia", "1"), ("MediaUrl0", "https://api.twilio.com/m/1"),
                              ("MediaContentType0", "image/jpeg")])

    user = uuid.uuid4()
    kinds = [dict(user_id=user), dict(user_id=None),
             dict(user_id=user, status="rejected", last_error="rate_limited")]
    alone, batched = [], []
    for kind in kinds:
        one = NewMessage(with_media(random_sid()), SENDER, **kind)  # type: ignore[arg-type]
        (id_,) = await insert_messages(pool, [one])
        assert id_ is not None
        assert await insert_messages(pool, [one]) == [None]  # delivered again: deduped
        alone.append(id_)
    batch = [NewMessage(with_media(random_sid()), SENDER, **kind)  # type: ignore[arg-type]
             for kind in kinds]
    batched = await insert_messages(pool, batch)
    assert None not in batched
    query = ("SELECT id, account_sid, user_id, from_number, to_number, body, num_media,"
             " media, status, last_error, completed_at IS NOT NULL"
             " FROM inbound_messages WHERE id = ANY(%s)")
    with psycopg.connect(database_url) as conn:
        def stored(ids: list[int | None]) -> list[tuple[object, ...]]:
            by_id = {row[0]: row[1:] for row in conn.execute(query, (ids,))}
            return [by_id[i] for i in ids]

        assert stored(alone) == stored(batched)
        received, _, rejected = stored(alone)
    assert received[1] == user and received[5] == 1 and received[9] is False
    assert received[6] == [{"index": 0, "url": "https://api.twilio.com/m/1",
                            "contentType": "image/jpeg"}]
    assert rejected[7:] == ("rejected", "rate_limited", True)
