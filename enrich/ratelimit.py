"""Per-sender sliding-hour rate limit: atomic in Redis, with an in-process fallback.

The check and the count happen in one Lua script (one round trip, atomic), so a burst of
concurrent messages from one sender cannot slip past the limit. The window is a sorted
set of message SIDs scored by Redis's own clock (TIME), so several processes agree, and
a repeated delivery of an already counted SID is never counted twice.

A sender over the limit is remembered in the local rate-limit status cache until the
moment they may send again: repeat offenders are answered without calling Redis.

If Redis is down, an in-process sliding window takes over (never fail-open); a counter
and a log line say so. It limits per process, which is the best that can be done alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from enrich.batching import Batcher
from enrich.caching import AsyncTTLCache
from enrich.redis_client import RedisClient, RedisUnavailable
from enrich.resp import RespError

log = logging.getLogger(__name__)

WINDOW_S = 3600.0
STATUS_CACHE_SIZE = 1000
STATUS_CACHE_TTL_S = 60.0
# Concurrent checks share a pipelined round trip (enrich.batching); see Ingest's INSERTs.
CHECK_BATCH_MAX = 64
CHECK_LANES = 2

SLIDING_WINDOW_LUA = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local member = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZSCORE', key, member) then
  return {1, redis.call('ZCARD', key), 0, 0}
end
local count = redis.call('ZCARD', key)
if count >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, count, tonumber(oldest[2]) + window - now, 0}
end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, window)
return {1, count + 1, 0, 1}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    count: int
    limit: int
    retry_after_s: float
    source: str  # "redis" | "cache" | "fallback"
    added: bool = False  # this call counted the message (it was not in the window yet)


class SlidingWindow:
    """Pure in-process sliding-window log (the fallback), bounded in senders tracked."""

    def __init__(self, limit: int, window_s: float = WINDOW_S, max_senders: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_senders = max_senders
        self._events: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def check(self, sender: str, member: str, now: float) -> tuple[bool, int, float]:
        events = self._events.get(sender)
        if events is None:
            events = deque()
            self._events[sender] = events
            if len(self._events) > self.max_senders:
                self._events.popitem(last=False)
        self._events.move_to_end(sender)
        while events and events[0][0] <= now - self.window_s:
            events.popleft()
        if any(m == member for _, m in events):
            return True, len(events), 0.0
        if len(events) >= self.limit:
            return False, len(events), events[0][0] + self.window_s - now
        events.append((now, member))
        return True, len(events), 0.0

    def counts(self, sender: str, member: str) -> bool:
        """Is ``member`` in ``sender``'s window (as of the last check)?"""
        return any(m == member for _, m in self._events.get(sender, ()))

    def uncount(self, sender: str, member: str) -> None:
        events = self._events.get(sender)
        if events is not None:
            kept = [e for e in events if e[1] != member]
            events.clear()
            events.extend(kept)


class RateLimiter:
    def __init__(self, redis: RedisClient, limit: int, *, key_prefix: str = "enrich:rl:") -> None:
        self.redis = redis
        self.limit = limit
        self.key_prefix = key_prefix
        self._script = redis.script(SLIDING_WINDOW_LUA)
        # A batch may take two round trips (EVALSHA, then EVAL if the script was lost),
        # each under the client's own deadline.
        self.batcher: Batcher[tuple[str, str], Any] = Batcher(
            self._run_checks, max_batch=CHECK_BATCH_MAX, lanes=CHECK_LANES,
            timeout=2 * redis.timeout + 1.0,
        )
        self.status_cache: AsyncTTLCache[str, float] = AsyncTTLCache(
            "rateLimit", maxsize=STATUS_CACHE_SIZE, ttl=STATUS_CACHE_TTL_S
        )
        self.fallback = SlidingWindow(limit)
        self.fallback_engaged = False
        self.fallback_decisions = 0
        self.rejections = 0

    async def check(self, sender: str, message_sid: str) -> Decision:
        """Count ``message_sid`` for ``sender`` if under the limit; say when to retry if not."""
        now = trio.current_time()
        blocked_until = self.status_cache.peek(sender)
        if blocked_until is not None and blocked_until > now:
            self.rejections += 1
            return Decision(False, self.limit, self.limit, blocked_until - now, "cache")
        try:
            allowed, count, retry_ms, added = await self._ask_redis(sender, message_sid)
        except (RedisUnavailable, trio.TooSlowError) as exc:
            if not self.fallback_engaged:
                log.warning(
                    "Redis unavailable: rate limiting in-process",
                    extra={"event_kind": "ratelimit_fallback", "error": str(exc)[:200]},
                )
            self.fallback_engaged = True
            self.fallback_decisions += 1
            counted = self.fallback.counts(sender, message_sid)
            ok, count, retry_s = self.fallback.check(sender, message_sid, now)
            decision = Decision(ok, count, self.limit, retry_s, "fallback",
                                added=ok and not counted)
        else:
            if self.fallback_engaged:
                log.info("Redis is back: rate limiting in Redis again")
                self.fallback_engaged = False
            decision = Decision(
                bool(allowed), int(count), self.limit, int(retry_ms) / 1000, "redis",
                added=bool(added),
            )
        if not decision.allowed:
            self.rejections += 1
            # Remember until they may send again (capped by the status cache's own TTL).
            self.status_cache.set(sender, now + min(decision.retry_after_s, STATUS_CACHE_TTL_S))
        return decision

    async def _ask_redis(self, sender: str, message_sid: str) -> Any:
        # The client's deadline bounds this caller's whole wait, queue included: when
        # Redis hangs, every check falls back in time, not only the batch in flight.
        return await self.batcher.call((sender, message_sid), timeout=self.redis.timeout)

    async def _run_checks(self, checks: Sequence[tuple[str, str]]) -> list[outcome.Outcome[Any]]:
        window_ms = int(WINDOW_S * 1000)
        replies = await self._script.run_many(
            [([self.key_prefix + sender], [window_ms, self.limit, sid]) for sender, sid in checks]
        )
        return [outcome.Error(r) if isinstance(r, RespError) else outcome.Value(r)
                for r in replies]

    def forget(self, sender: str) -> None:
        self.status_cache.invalidate(sender)

    async def uncount(self, sender: str, message_sid: str) -> None:
        """Take back a message this limiter counted (a redelivery of a message that was
        rejected the first time: it is answered as before and must not use a slot)."""
        self.fallback.uncount(sender, message_sid)
        # Redis down: the fallback was counting, and has been corrected above.
        with contextlib.suppress(RedisUnavailable):
            await self.redis.execute("ZREM", self.key_prefix + sender, message_sid)


def retry_phrase(seconds: float) -> str:
    """'in 12 minutes' style wording for the reply to a limited sender."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes >= 60:
        return "in about an hour"
    return f"in {minutes} minute{'s' if minutes != 1 else ''}"
