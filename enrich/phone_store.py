"""SQL for the user phone-number API (``enrich.web.phone_api``).

Each operation is one transaction that locks the rows it decides about (``FOR UPDATE``),
reads the database clock once (``now()`` is fixed for the whole transaction, so every
timestamp it writes and compares is the same instant on the one clock all processes
share), asks ``enrich.core.verification`` what to do, and applies the answer. The SMS
with a code is queued in the outbox in that same transaction, so a code is stored if
and only if its text will be sent.

Two requests racing for a number nobody has yet both find no row to lock; one insert
then fails on a unique constraint (or PostgreSQL breaks a lock cycle with a deadlock
error). The transaction is simply run again: the winner's row is visible by then and
the loser gets the answer the rules give (PHONE_NUMBER_ALREADY_LINKED and so on).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import errors as pg_errors

from enrich.core.verification import (
    RESEND_COOLDOWN_S,
    Claim,
    LinkAction,
    LinkDecision,
    VerifyAction,
    VerifyDecision,
    decide_link,
    decide_verify,
)
from enrich.db.pool import ConnectionPool

# Racing transactions lose to a unique violation or a deadlock; the rerun sees the
# winner's row. Two reruns cover any realistic race; a third failure is a real error.
_ATTEMPTS = 3
_RETRYABLE = (pg_errors.UniqueViolation, pg_errors.DeadlockDetected,
              pg_errors.SerializationFailure)

VERIFICATION_KIND = "verification"

_COLUMNS = """user_id, phone_number, verified, verification_code_hash,
    verification_expires_at, verification_attempts, verification_sent_at, verified_at,
    created_at, updated_at"""


def _claim(row: Sequence[Any]) -> Claim:
    return Claim(
        user_id=row[0],
        phone=str(row[1]),
        verified=bool(row[2]),
        code_hash=row[3],
        expires_at=row[4],
        attempts=int(row[5]),
        sent_at=row[6],
        verified_at=row[7],
        created_at=row[8],
        updated_at=row[9],
    )


@dataclass(frozen=True, slots=True)
class LinkResult:
    decision: LinkDecision
    claim: Claim | None  # the caller's row after the change (None when refused)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    decision: VerifyDecision
    claim: Claim | None  # the caller's row after the change (None when not found)


async def _now(conn: Any) -> datetime:
    cur = await conn.execute("SELECT now()")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


async def _locked(conn: Any, where: str, value: object) -> Claim | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM user_phone_numbers WHERE {where} = %s FOR UPDATE",  # noqa: S608
        (value,),
    )
    row = await cur.fetchone()
    return _claim(row) if row else None


async def get_phone(pool: ConnectionPool, user_id: uuid.UUID) -> Claim | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM user_phone_numbers WHERE user_id = %s",  # noqa: S608
            (user_id,),
            prepare=True,
        )
        row = await cur.fetchone()
    return _claim(row) if row else None


async def request_code(
    pool: ConnectionPool,
    user_id: uuid.UUID,
    phone: str,
    *,
    code_hash: str,
    sms_body: str,
    expiry_s: float,
    cooldown_s: float = RESEND_COOLDOWN_S,
) -> LinkResult:
    """Link ``phone`` to ``user_id`` unverified and queue ``sms_body`` (carrying the code
    whose hash is ``code_hash``), when the rules allow; see ``decide_link``."""
    for attempt in range(_ATTEMPTS):
        try:
            return await _request_code_once(
                pool, user_id, phone, code_hash=code_hash, sms_body=sms_body,
                expiry_s=expiry_s, cooldown_s=cooldown_s,
            )
        except _RETRYABLE:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _request_code_once(
    pool: ConnectionPool,
    user_id: uuid.UUID,
    phone: str,
    *,
    code_hash: str,
    sms_body: str,
    expiry_s: float,
    cooldown_s: float,
) -> LinkResult:
    async with pool.connection() as conn, conn.transaction():
        now = await _now(conn)
        mine = await _locked(conn, "user_id", user_id)
        # A user has at most one row: when it is another number the rules refuse
        # without looking at who holds this one, so lock nothing more.
        holder = mine if mine is not None else await _locked(conn, "phone_number", phone)
        decision = decide_link(user_id, phone, mine=mine, holder=holder, now=now,
                               cooldown_s=cooldown_s)
        if not decision.action.sends_code:
            claim = mine if decision.action == LinkAction.ALREADY_VERIFIED else None
            return LinkResult(decision, claim)
        expires_at = now + timedelta(seconds=expiry_s)
        if decision.action == LinkAction.INSERT:
            cur = await conn.execute(
                f"""
                INSERT INTO user_phone_numbers
                    (user_id, phone_number, verified, verification_code_hash,
                     verification_expires_at, verification_attempts, verification_sent_at,
                     created_at, updated_at)
                VALUES (%s, %s, false, %s, %s, 0, %s, %s, %s)
                RETURNING {_COLUMNS}
                """,  # noqa: S608
                (user_id, phone, code_hash, expires_at, now, now, now),
            )
        else:
            # RESEND keeps the row; TAKE_OVER hands the lapsed claim to the caller as if
            # it were new (created_at too: the previous claimant's history is not ours).
            take_over = decision.action == LinkAction.TAKE_OVER
            cur = await conn.execute(
                f"""
                UPDATE user_phone_numbers
                SET user_id = %s, verified = false, verified_at = NULL,
                    verification_code_hash = %s, verification_expires_at = %s,
                    verification_attempts = 0, verification_sent_at = %s,
                    created_at = CASE WHEN %s THEN %s ELSE created_at END, updated_at = %s
                WHERE phone_number = %s
                RETURNING {_COLUMNS}
                """,  # noqa: S608
                (user_id, code_hash, expires_at, now, take_over, now, now, phone),
            )
        row = await cur.fetchone()
        assert row is not None
        # message_sid is NULL: the outbox's (message_sid, kind) key treats NULLs as
        # distinct, so every code sent is its own row.
        await conn.execute(
            "INSERT INTO notifications (message_sid, kind, to_number, body) "
            "VALUES (NULL, %s, %s, %s)",
            (VERIFICATION_KIND, phone, sms_body),
        )
    return LinkResult(decision, _claim(row))


async def check_code(
    pool: ConnectionPool, user_id: uuid.UUID, phone: str, code: str, *, secret: str
) -> VerifyResult:
    """Check ``code`` for ``phone`` on behalf of ``user_id``: count a wrong guess, or
    mark the number verified (clearing the code, so it cannot be used twice)."""
    async with pool.connection() as conn, conn.transaction():
        now = await _now(conn)
        claim = await _locked(conn, "phone_number", phone)
        decision = decide_verify(user_id, claim, code, now=now, secret=secret)
        action = decision.action
        if action == VerifyAction.NOT_FOUND:
            return VerifyResult(decision, None)
        if action == VerifyAction.VERIFIED:
            cur = await conn.execute(
                f"""
                UPDATE user_phone_numbers
                SET verified = true, verified_at = %s, verification_code_hash = NULL,
                    verification_expires_at = NULL, verification_attempts = 0,
                    updated_at = %s
                WHERE phone_number = %s
                RETURNING {_COLUMNS}
                """,  # noqa: S608
                (now, now, phone),
            )
        elif action.counts_attempt:
            cur = await conn.execute(
                f"""
                UPDATE user_phone_numbers
                SET verification_attempts = verification_attempts + 1, updated_at = %s
                WHERE phone_number = %s
                RETURNING {_COLUMNS}
                """,  # noqa: S608
                (now, phone),
            )
        else:
            return VerifyResult(decision, claim)
        row = await cur.fetchone()
        assert row is not None
    return VerifyResult(decision, _claim(row))


async def unlink_phone(pool: ConnectionPool, user_id: uuid.UUID) -> str | None:
    """Remove the user's number (verified or not); return it, or None if there was none."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM user_phone_numbers WHERE user_id = %s RETURNING phone_number",
            (user_id,),
        )
        row = await cur.fetchone()
    return str(row[0]) if row else None


@dataclass(frozen=True, slots=True)
class DeletedData:
    phone: str | None
    items: int
    messages: int


async def delete_account_data(pool: ConnectionPool, user_id: uuid.UUID) -> DeletedData:
    """Erase everything stored for ``user_id`` in one transaction: the phone link, the
    enrichment items, the inbound messages and any replies still queued to the number."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "DELETE FROM user_phone_numbers WHERE user_id = %s RETURNING phone_number",
            (user_id,),
        )
        row = await cur.fetchone()
        phone = str(row[0]) if row else None
        cur = await conn.execute("DELETE FROM enrichment_items WHERE user_id = %s", (user_id,))
        items = cur.rowcount
        cur = await conn.execute(
            "DELETE FROM inbound_messages WHERE user_id = %s RETURNING message_sid", (user_id,)
        )
        sids = [r[0] for r in await cur.fetchall()]
        if sids:
            await conn.execute("DELETE FROM notifications WHERE message_sid = ANY(%s)", (sids,))
        if phone is not None:
            await conn.execute(
                "DELETE FROM notifications WHERE to_number = %s AND status <> 'sent'", (phone,)
            )
    return DeletedData(phone=phone, items=items, messages=len(sids))
