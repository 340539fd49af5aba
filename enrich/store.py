"""SQL for the webhook, the job runner and the outbox, in one place.

Every function takes the pool and borrows a connection for exactly one statement or one
transaction. Hot statements run with ``prepare=True`` (server-side prepared after the
first use on a connection).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from enrich.core.inbound import InboundMessage
from enrich.db import prepared
from enrich.db.pool import ConnectionPool
from enrich.db.prepared import Statement


class LeaseLost(Exception):
    """Another worker took the message over (our lease expired); nothing was written."""


@dataclass(frozen=True, slots=True)
class Owner:
    user_id: uuid.UUID
    verified: bool


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed inbound message."""

    id: int
    message_sid: str
    user_id: uuid.UUID | None
    from_number: str
    body: str
    media: tuple[dict[str, Any], ...]
    attempts: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ItemInsert:
    item_index: int
    item_type: str
    field_name: str | None
    value: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    message_sid: str | None
    kind: str
    to_number: str
    body: str
    attempts: int


# --- webhook ----------------------------------------------------------------------------


async def lookup_owners(
    pool: ConnectionPool, phones: Sequence[str], *, timeout: float | None = None
) -> dict[str, Owner]:
    """The owners of those of ``phones`` that are linked, in one statement (``timeout``:
    the wait for a pool connection, default DATABASE_ACQUIRE_TIMEOUT_MS)."""
    async with pool.connection(timeout=timeout) as conn:
        cur = await conn.execute(
            "SELECT phone_number, user_id, verified FROM user_phone_numbers"
            " WHERE phone_number = ANY(%s)",
            (list(phones),),
            prepare=True,
        )
        rows = await cur.fetchall()
    return {str(row[0]): Owner(user_id=row[1], verified=bool(row[2])) for row in rows}


async def message_status(pool: ConnectionPool, message_sid: str) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status FROM inbound_messages WHERE message_sid = %s",
            (message_sid,),
            prepare=True,
        )
        row = await cur.fetchone()
    return str(row[0]) if row else None


def _media_json(msg: InboundMessage) -> str:
    return json.dumps(
        [{"index": m.index, "url": m.url, "contentType": m.content_type} for m in msg.media]
    )


@dataclass(frozen=True, slots=True)
class NewMessage:
    """An inbound message the webhook decided to store."""

    msg: InboundMessage
    from_e164: str
    user_id: uuid.UUID | None
    status: str = "received"  # or "rejected" (rate limited: counted, never processed)
    last_error: str | None = None


# One statement for any number of messages: the webhook's batcher (enrich.ingest) sends
# every INSERT that queued while the previous one ran, as one multi-row VALUES prepared
# per batch size (at most INSERT_BATCH_MAX statements per connection). It goes through
# enrich.db.prepared, not psycopg's cursor: this is the one statement every webhook
# waits for, and the cursor's parameter adaptation cost the CPU-bound webhook loop more
# than the round trip (see that module). Parameters are text; the casts name the rest.
_INSERT_COLUMNS = 10  # parameters per row (status is used twice, for completed_at)


def _insert_row_sql(first: int) -> str:
    p = [f"${first + k}" for k in range(_INSERT_COLUMNS)]
    return (f"({p[0]}, {p[1]}, {p[2]}::uuid, {p[3]}, {p[4]}, {p[5]}, {p[6]}::int, "
            f"{p[7]}::jsonb, {p[8]}, {p[9]}, CASE WHEN {p[8]} = 'rejected' THEN now() END)")


@functools.lru_cache(maxsize=256)
def insert_statement(rows: int) -> Statement:
    """The INSERT for ``rows`` messages (named by its size, prepared once each)."""
    if rows < 1:
        raise ValueError(f"an INSERT needs at least one row, not {rows}")
    values = ",\n       ".join(_insert_row_sql(1 + r * _INSERT_COLUMNS) for r in range(rows))
    return Statement(
        name=f"enrich_insert_messages_{rows}",
        # Only "$n" placeholders are formatted in: the values travel as parameters.
        sql=f"""
INSERT INTO inbound_messages
    (message_sid, account_sid, user_id, from_number, to_number, body,
     num_media, media, status, last_error, completed_at)
VALUES {values}
ON CONFLICT (message_sid) DO NOTHING
RETURNING id, message_sid
""",  # noqa: S608
    )


def _row_params(row: NewMessage) -> tuple[str | None, ...]:
    m = row.msg
    return (m.message_sid, m.account_sid, None if row.user_id is None else str(row.user_id),
            row.from_e164, m.to_number, m.body, str(m.num_media), _media_json(m), row.status,
            row.last_error)


async def insert_messages(pool: ConnectionPool, rows: Sequence[NewMessage]) -> list[int | None]:
    """Store messages durably in one statement (one transaction).

    Returns each row's id, or None where its MessageSid was already stored (by an
    earlier delivery, or by an earlier row of this same batch).
    """
    if not rows:
        return []
    params: list[str | None] = []
    # In SID order: two batches holding the same SIDs (an original and Twilio's retry,
    # in two processes) then wait for each other in one order, never deadlock. Answers
    # are matched by SID, so the order callers see does not change.
    ordered = sorted(rows, key=lambda r: r.msg.message_sid) if len(rows) > 1 else rows
    for row in ordered:
        params.extend(_row_params(row))
    async with pool.connection() as conn:
        result = await prepared.execute(conn, insert_statement(len(rows)), params)
    inserted: dict[str, int] = {}
    for i in range(result.ntuples):
        id_, sid = result.get_value(i, 0), result.get_value(i, 1)
        assert id_ is not None and sid is not None  # both NOT NULL columns
        inserted[sid.decode()] = int(id_)
    ids: list[int | None] = []
    for row in rows:
        # pop: a SID repeated within the batch gets its id once, like a redelivery.
        ids.append(inserted.pop(row.msg.message_sid, None))
    return ids


async def insert_message(
    pool: ConnectionPool,
    msg: InboundMessage,
    *,
    from_e164: str,
    user_id: uuid.UUID | None,
    status: str = "received",
    last_error: str | None = None,
) -> int | None:
    """Store one message; return its id, or None when the SID was already stored."""
    row = NewMessage(msg, from_e164, user_id, status, last_error)
    return (await insert_messages(pool, [row]))[0]


# --- job runner -------------------------------------------------------------------------

def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=int(row[0]),
        message_sid=str(row[1]),
        user_id=row[2],
        from_number=str(row[3]),
        body=str(row[4]),
        media=tuple(row[5] or ()),
        attempts=int(row[6]),
        received_at=row[7],
    )


async def due_message_ids(pool: ConnectionPool, limit: int) -> list[int]:
    """Open messages whose time has come: new, retry due, or lease expired (a crash)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            SELECT id FROM inbound_messages
            WHERE status IN ('received', 'processing') AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT %s
            """,
            (limit,),
            prepare=True,
        )
        return [int(r[0]) for r in await cur.fetchall()]


async def claim_message(
    pool: ConnectionPool, message_id: int, owner: str, lease_s: float
) -> Job | None:
    """Take the lease on one message (see :func:`claim_messages`)."""
    jobs = await claim_messages(pool, [message_id], owner, lease_s)
    return jobs[0] if jobs else None


async def claim_messages(
    pool: ConnectionPool, message_ids: Sequence[int], owner: str, lease_s: float
) -> list[Job]:
    """Take the lease on each of these messages that is due and has no live lease.

    One statement for the whole batch: the runner claims what arrived while its previous
    claim was in flight, so claims never become a serial bottleneck. ``next_attempt_at``
    doubles as the lease expiry while processing, so one partial index serves new work,
    due retries and expired leases alike. SKIP LOCKED lets several processes race for the
    same rows without waiting on each other.
    """
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            UPDATE inbound_messages m
            SET status = 'processing', attempts = m.attempts + 1, lease_owner = %s,
                lease_expires_at = now() + make_interval(secs => %s),
                next_attempt_at = now() + make_interval(secs => %s), updated_at = now()
            FROM (
                SELECT id FROM inbound_messages
                WHERE id = ANY(%s) AND status IN ('received', 'processing')
                  AND next_attempt_at <= now()
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE m.id = due.id
            RETURNING m.id, m.message_sid, m.user_id, m.from_number, m.body, m.media,
                      m.attempts, m.received_at
            """,
            (owner, lease_s, lease_s, list(message_ids)),
            prepare=True,
        )
        rows = await cur.fetchall()
    return [_job(row) for row in rows]


async def extend_lease(pool: ConnectionPool, job: Job, owner: str, lease_s: float) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            UPDATE inbound_messages
            SET lease_expires_at = now() + make_interval(secs => %s),
                next_attempt_at = now() + make_interval(secs => %s), updated_at = now()
            WHERE id = %s AND status = 'processing' AND lease_owner = %s
            """,
            (lease_s, lease_s, job.id, owner),
            prepare=True,
        )
        return cur.rowcount == 1


async def complete_message(
    pool: ConnectionPool,
    job: Job,
    owner: str,
    items: Sequence[ItemInsert],
    *,
    source: str,
    notification: tuple[str, str] | None,
) -> None:
    """Mark done (only if we still hold the lease), insert every item, queue the reply:
    all in ONE statement, so one round trip and atomic without an explicit transaction.

    The items travel as one jsonb array expanded by ``jsonb_to_recordset`` (a batch
    insert, whatever the count); the data-modifying CTEs only write when ``done`` matched,
    so a lost lease writes nothing and raises LeaseLost.
    """
    rows = json.dumps([
        {"i": it.item_index, "t": it.item_type, "f": it.field_name, "v": it.value,
         "m": it.metadata}
        for it in items
    ])
    kind, body = notification if notification is not None else (None, None)
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            WITH done AS (
                UPDATE inbound_messages
                SET status = 'done', completed_at = now(), updated_at = now(),
                    last_error = NULL, lease_owner = NULL, lease_expires_at = NULL
                WHERE id = %(id)s AND status = 'processing' AND lease_owner = %(owner)s
                RETURNING id
            ), items AS (
                INSERT INTO enrichment_items
                    (user_id, message_id, message_sid, item_index, item_type, field_name,
                     value, status, source, source_metadata)
                SELECT %(user)s, done.id, %(sid)s, x.i, x.t, x.f, x.v, 'pending',
                       %(source)s, x.m
                FROM done, jsonb_to_recordset(%(rows)s::jsonb)
                    AS x(i integer, t text, f text, v text, m jsonb)
                ON CONFLICT (message_sid, item_index) DO NOTHING
            ), reply AS (
                INSERT INTO notifications (message_sid, kind, to_number, body)
                SELECT %(sid)s, %(kind)s, %(to)s, %(body)s
                FROM done WHERE %(kind)s::text IS NOT NULL
                ON CONFLICT (message_sid, kind) DO NOTHING
            )
            SELECT count(*) FROM done
            """,
            {"id": job.id, "owner": owner, "user": job.user_id, "sid": job.message_sid,
             "source": source, "rows": rows, "kind": kind, "to": job.from_number,
             "body": body},
            prepare=True,
        )
        row = await cur.fetchone()
    if row is None or row[0] != 1:
        raise LeaseLost(job.message_sid)


async def retry_message(
    pool: ConnectionPool, job: Job, owner: str, error: str, delay_s: float
) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            UPDATE inbound_messages
            SET status = 'received', lease_owner = NULL, lease_expires_at = NULL,
                next_attempt_at = now() + make_interval(secs => %s), last_error = %s,
                updated_at = now()
            WHERE id = %s AND status = 'processing' AND lease_owner = %s
            """,
            (delay_s, error[:1000], job.id, owner),
        )
        return cur.rowcount == 1


async def fail_message(
    pool: ConnectionPool,
    job: Job,
    owner: str | None,
    error: str,
    notification: tuple[str, str] | None,
) -> bool:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            """
            UPDATE inbound_messages
            SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL,
                last_error = %s, completed_at = now(), updated_at = now()
            WHERE id = %s AND status = 'processing'
              AND (%s::text IS NULL OR lease_owner = %s)
            """,
            (error[:1000], job.id, owner, owner),
        )
        if cur.rowcount != 1:
            return False
        if notification is not None:
            await _queue_notification(conn, job.message_sid, notification[0], job.from_number,
                                      notification[1])
    return True


# --- outbox -----------------------------------------------------------------------------


async def _queue_notification(conn: Any, message_sid: str | None, kind: str, to: str,
                              body: str) -> None:
    await conn.execute(
        """
        INSERT INTO notifications (message_sid, kind, to_number, body)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (message_sid, kind) DO NOTHING
        """,
        (message_sid, kind, to, body),
    )


async def queue_notification(
    pool: ConnectionPool, *, message_sid: str | None, kind: str, to: str, body: str
) -> None:
    async with pool.connection() as conn:
        await _queue_notification(conn, message_sid, kind, to, body)


async def claim_notifications(
    pool: ConnectionPool, owner: str, lease_s: float, limit: int
) -> list[Notification]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            UPDATE notifications n
            SET status = 'sending', attempts = n.attempts + 1, lease_owner = %s,
                lease_expires_at = now() + make_interval(secs => %s),
                next_attempt_at = now() + make_interval(secs => %s)
            FROM (
                SELECT id FROM notifications
                WHERE status IN ('pending', 'sending') AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT %s
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE n.id = due.id
            RETURNING n.id, n.message_sid, n.kind, n.to_number, n.body, n.attempts
            """,
            (owner, lease_s, lease_s, limit),
            prepare=True,
        )
        rows = await cur.fetchall()
    return [
        Notification(int(r[0]), r[1], str(r[2]), str(r[3]), str(r[4]), int(r[5])) for r in rows
    ]


async def mark_all_sent(
    pool: ConnectionPool, sent: Sequence[tuple[Notification, str]]
) -> None:
    """Record a batch of sent replies in one statement."""
    if not sent:
        return
    async with pool.connection() as conn:
        await conn.execute(
            """
            UPDATE notifications n
            SET status = 'sent', provider_sid = s.sid, sent_at = now(), last_error = NULL,
                lease_owner = NULL, lease_expires_at = NULL,
                -- a sent verification code has no business staying readable
                body = CASE WHEN n.kind = 'verification' THEN '[verification code sent]'
                            ELSE n.body END
            FROM unnest(%s::bigint[], %s::text[]) AS s(id, sid)
            WHERE n.id = s.id
            """,
            ([note.id for note, _ in sent], [sid for _, sid in sent]),
            prepare=True,
        )


async def mark_unsent(
    pool: ConnectionPool, note: Notification, error: str, *, retry_in_s: float | None
) -> None:
    """Retry later (``retry_in_s``) or give up (None)."""
    async with pool.connection() as conn:
        await conn.execute(
            """
            UPDATE notifications
            SET status = CASE WHEN %s::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                next_attempt_at = now() + make_interval(secs => coalesce(%s::float8, 0)),
                last_error = %s, lease_owner = NULL, lease_expires_at = NULL
            WHERE id = %s
            """,
            (retry_in_s, retry_in_s, error[:1000], note.id),
        )


# --- phone numbers (CLI and API) --------------------------------------------------------


async def link_phone(
    pool: ConnectionPool, user_id: uuid.UUID, phone: str, *, verified: bool
) -> None:
    """Link ``phone`` to ``user_id`` (replacing the user's previous number)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM user_phone_numbers WHERE user_id = %s", (user_id,))
        await conn.execute(
            """
            INSERT INTO user_phone_numbers (user_id, phone_number, verified, verified_at)
            VALUES (%s, %s, %s, CASE WHEN %s THEN now() END)
            ON CONFLICT (phone_number) DO UPDATE
            SET user_id = EXCLUDED.user_id, verified = EXCLUDED.verified,
                verified_at = EXCLUDED.verified_at, updated_at = now(),
                verification_code_hash = NULL, verification_attempts = 0
            """,
            (user_id, phone, verified, verified),
        )


async def list_phones(pool: ConnectionPool) -> list[tuple[uuid.UUID, str, bool]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT user_id, phone_number, verified FROM user_phone_numbers ORDER BY created_at"
        )
        return [(r[0], str(r[1]), bool(r[2])) for r in await cur.fetchall()]


async def release_message(pool: ConnectionPool, job: Job, owner: str) -> bool:
    """Give a claimed message back untouched (shutdown): due now, attempt not counted."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            UPDATE inbound_messages
            SET status = 'received', lease_owner = NULL, lease_expires_at = NULL,
                attempts = greatest(attempts - 1, 0), next_attempt_at = now(),
                updated_at = now()
            WHERE id = %s AND status = 'processing' AND lease_owner = %s
            """,
            (job.id, owner),
        )
        return cur.rowcount == 1
