"""What the webhook decides, free of HTTP: verify, parse, dedupe, look up, limit, store.

Order (DESIGN.md §8.5): verify -> parse -> dedupe by MessageSid -> owner lookup -> rate
limit -> store. A repeated delivery is answered as the first was and never counts against
the limit. Nothing slow runs here: two or three PostgreSQL statements (prepared), one
Redis script, and in-process caches; processing happens later in the job runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import outcome
import psycopg

from enrich.batching import Batcher, own_copy
from enrich.caching import AsyncTTLCache
from enrich.config import Settings
from enrich.core.inbound import InboundMessage, InboundParseError, parse_inbound
from enrich.core.phone import InvalidPhoneNumber, mask_phone, normalize_e164
from enrich.core.signature import verify_signature
from enrich.core.twiml import render_message
from enrich.db.pool import ConnectionPool
from enrich.ratelimit import Decision, RateLimiter, retry_phrase
from enrich.redis_client import RedisClient, RedisUnavailable
from enrich.store import NewMessage, Owner, insert_messages, lookup_owners, message_status

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_SENDER = "unknown_sender"
    UNVERIFIED = "unverified"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer to one webhook delivery."""

    outcome: Outcome
    status: int
    twiml: str | None  # TwiML body for 200s
    reason: str | None = None  # for 4xx
    message_id: int | None = None
    message_sid: str | None = None


UNKNOWN_TEXT = (
    "This number isn't linked to an enrich account yet. Add it in the app to start "
    "saving notes by text."
)
UNVERIFIED_TEXT = (
    "Your number isn't verified yet. Enter the code we texted you in the app, then try again."
)


def limit_text(limit: int, retry_after_s: float | None) -> str:
    when = f" You can send again {retry_phrase(retry_after_s)}." if retry_after_s else ""
    return (
        f"You've reached the limit of {limit} messages per hour, so this one wasn't saved."
        + when
    )


# At most this many messages per INSERT, and one INSERT in flight at a time. A second
# lane bought nothing: the commits wait for each other anyway (the NOTIFY trigger takes
# a cluster-wide lock at commit), and two lanes split the queue into smaller batches and
# twice the wakeups. Measured on the pinned split deployment at 650-700/s open (20 s
# runs, alternated): ack p50 9-25 ms with one lane against 32-50 ms with two, the p99
# mostly lower too. The deadline bounds each webhook's whole wait for its INSERT
# (queue, pool, statement), under Twilio's 15 s: past it the answer is a 503 and Twilio
# delivers again.
INSERT_BATCH_MAX = 64
INSERT_LANES = 1
INSERT_DEADLINE_S = 10.0
# Owner lookups (phone-cache misses) are batched the same way: after a restart every
# sender misses at once, and one statement per sender would queue for the pool ahead
# of the INSERTs. Its deadline bounds the caller's whole wait, the batch's included
# (see Batcher), and leaves the INSERT's 10 s within Twilio's 15 s.
LOOKUP_DEADLINE_S = 4.0
LOOKUP_BATCH_MAX = 64
LOOKUP_LANES = 2
# A busy pool must fail the lookup with PoolTimeout (which says so) before the deadline.
LOOKUP_ACQUIRE_S = 3.0


class Ingest:
    def __init__(
        self,
        settings: Settings,
        db: ConnectionPool,
        redis: RedisClient,
        *,
        on_accepted: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.on_accepted = on_accepted
        self.phone_cache: AsyncTTLCache[str, Owner | None] = AsyncTTLCache(
            "phoneNumber", maxsize=settings.cache_phone_lookup_size,
            ttl=settings.cache_phone_lookup_ttl / 1000,
        )
        self.verification_cache: AsyncTTLCache[str, bool] = AsyncTTLCache(
            "verification", maxsize=settings.cache_verification_size,
            ttl=settings.cache_verification_ttl / 1000,
        )
        self.limiter = RateLimiter(redis, settings.rate_limit_messages_per_hour)
        self.lookups: Batcher[str, Owner | None] = Batcher(
            self._lookup_batch, max_batch=LOOKUP_BATCH_MAX, lanes=LOOKUP_LANES,
            timeout=LOOKUP_DEADLINE_S,
        )
        # Concurrent webhooks share INSERTs (enrich.batching): one statement stores every
        # message that queued while the previous statement ran.
        self.inserts: Batcher[NewMessage, int | None] = Batcher(
            self._insert_batch, max_batch=INSERT_BATCH_MAX, lanes=INSERT_LANES,
            timeout=INSERT_DEADLINE_S,
        )
        # Fallback for the unknown-sender reply throttle when Redis is down.
        self._replied_locally: AsyncTTLCache[str, bool] = AsyncTTLCache(
            "unknownReply", maxsize=10_000, ttl=float(settings.unknown_sender_reply_interval)
        )

    # --- the decision -------------------------------------------------------------------

    async def handle(
        self, url: str, params: Sequence[tuple[str, str]], signature: str | None
    ) -> Answer:
        token = self.settings.twilio_auth_token or ""
        if not verify_signature(token, url, params, signature):
            reason = "missing X-Twilio-Signature" if not signature else "invalid signature"
            return Answer(Outcome.FORBIDDEN, 403, None, reason=reason)
        try:
            msg = parse_inbound(params)
            sender = normalize_e164(msg.from_number)
        except InboundParseError as exc:
            return Answer(Outcome.BAD_REQUEST, 400, None, reason=exc.reason)
        except InvalidPhoneNumber:
            return Answer(Outcome.BAD_REQUEST, 400, None, reason="From is not a phone number")

        # Dedupe happens at the INSERT (ON CONFLICT DO NOTHING), not with a SELECT first:
        # one round trip fewer for every new message. The rate limiter is idempotent per
        # MessageSid (a SID already in the window is allowed and not counted again), so a
        # redelivery reaching it changes nothing; the one case where it would count (the
        # first delivery was rejected and there is room now) is taken back below.
        owner = await self.owner(sender)
        if owner is None:
            return await self._stranger(msg, sender, Outcome.UNKNOWN_SENDER, UNKNOWN_TEXT)
        if not await self.verified(sender, owner):
            return await self._stranger(msg, sender, Outcome.UNVERIFIED, UNVERIFIED_TEXT)

        decision = await self.limiter.check(sender, msg.message_sid)
        if not decision.allowed:
            # Recorded (counted, never processed), so a redelivery replays this answer.
            stored = await self.inserts.call(NewMessage(
                msg, sender, owner.user_id, status="rejected", last_error="rate_limited"
            ))
            if stored is None:
                return await self._redelivery(msg, sender, decision)
            log.info(
                "rate limited",
                extra={"message_sid": msg.message_sid, "from": mask_phone(sender),
                       "limit_source": decision.source},
            )
            text = limit_text(decision.limit, decision.retry_after_s)
            return Answer(Outcome.RATE_LIMITED, 200, render_message(text),
                          message_sid=msg.message_sid)

        message_id = await self.inserts.call(NewMessage(msg, sender, owner.user_id))
        if message_id is None:  # delivered before (or concurrently, and the other won)
            return await self._redelivery(msg, sender, decision)
        if self.on_accepted is not None:
            self.on_accepted(message_id)
        return Answer(Outcome.ACCEPTED, 200, self._ack(), message_id=message_id,
                      message_sid=msg.message_sid)

    async def _redelivery(self, msg: InboundMessage, sender: str, decision: Decision) -> Answer:
        """A MessageSid already stored: answer as the first delivery was answered."""
        status = await message_status(self.db, msg.message_sid) or "received"
        if status == "rejected" and decision.added:
            await self.limiter.uncount(sender, msg.message_sid)
        return self._replay(msg, status)

    def _ack(self) -> str:
        return render_message(self.settings.ack_message or None)

    def _replay(self, msg: InboundMessage, status: str) -> Answer:
        if status == "rejected":
            text = limit_text(self.settings.rate_limit_messages_per_hour, None)
            return Answer(Outcome.DUPLICATE, 200, render_message(text),
                          message_sid=msg.message_sid)
        return Answer(Outcome.DUPLICATE, 200, self._ack(), message_sid=msg.message_sid)

    async def _stranger(
        self, msg: InboundMessage, sender: str, outcome: Outcome, text: str
    ) -> Answer:
        """Answer unknown/unverified senders, at most once per interval each.

        A message stored before its sender was unlinked (or unverified) and delivered again
        now is a redelivery: it is answered as it was the first time. The lookup costs a
        query only on this rare path; the accepted path dedupes at its INSERT.
        """
        status = await message_status(self.db, msg.message_sid)
        if status is not None:
            return self._replay(msg, status)
        reply = await self._first_reply_in_interval(sender)
        log.info(outcome.value, extra={"message_sid": msg.message_sid, "from": mask_phone(sender)})
        return Answer(outcome, 200, render_message(text if reply else None),
                      message_sid=msg.message_sid)

    async def _first_reply_in_interval(self, sender: str) -> bool:
        interval = self.settings.unknown_sender_reply_interval
        if interval <= 0:
            return True
        key = f"enrich:unknown-reply:{sender}"
        try:
            reply = await self.redis.execute("SET", key, "1", "NX", "EX", interval)
            return bool(reply == "OK")
        except RedisUnavailable:
            if self._replied_locally.peek(sender):
                return False
            self._replied_locally.set(sender, True)
            return True

    async def _insert_batch(
        self, rows: Sequence[NewMessage]
    ) -> list[outcome.Outcome[int | None]]:
        try:
            return [outcome.Value(i) for i in await insert_messages(self.db, rows)]
        except (psycopg.DataError, psycopg.IntegrityError):
            if len(rows) == 1:
                raise
        # A row the database refuses must not fail the others in its batch: halve the
        # batch until each refused row stands alone, so only its webhook gets the error.
        # That is about 2·log2(n) statements per refused row rather than n, which matters
        # because the INSERT lane is the only one: everyone else waits behind it.
        middle = len(rows) // 2
        results: list[outcome.Outcome[int | None]] = []
        for half in (rows[:middle], rows[middle:]):
            try:
                results.extend(await self._insert_batch(half))
            except Exception as exc:  # this half's own failure is each of its rows' answer
                results.extend(outcome.Error(exc if len(half) == 1 else own_copy(exc))
                               for _ in half)
        return results

    # --- cached lookups -----------------------------------------------------------------

    async def owner(self, phone: str) -> Owner | None:
        return await self.phone_cache.get_or_load(phone, lambda: self.lookups.call(phone))

    async def _lookup_batch(
        self, phones: Sequence[str]
    ) -> list[outcome.Outcome[Owner | None]]:
        found = await lookup_owners(self.db, phones, timeout=LOOKUP_ACQUIRE_S)
        return [outcome.Value(found.get(phone)) for phone in phones]

    async def verified(self, phone: str, owner: Owner) -> bool:
        async def load() -> bool:
            return owner.verified

        return await self.verification_cache.get_or_load(phone, load)

    def invalidate(self, phone: str) -> None:
        self.phone_cache.invalidate(phone)
        self.verification_cache.invalidate(phone)
        self.limiter.forget(phone)

    def clear_caches(self) -> None:
        self.phone_cache.clear()
        self.verification_cache.clear()
        self.limiter.status_cache.clear()

