"""Acks first across processes: web processes say how their acks are doing, workers pace.

A ``--role worker`` process answers no webhooks, but on a shared machine its jobs, and the
database writes they make, take CPU and I/O from the processes that do. Measured on this
2-core machine at 500 webhooks/s: a worker processing at full speed, even niced (or
SCHED_IDLE), raised the web process's ack p50 from 7 ms to 185-575 ms. The OS scheduler
cannot see that the database work the worker causes delays the web's INSERTs.

So every process that answers webhooks (roles ``web`` and ``all``) publishes its *ack
pressure* every PUBLISH_INTERVAL_S: the larger of its event loop's lag and its slowest
webhook answer in the interval. The slowest, not the mean: the goal is a short tail, and
paced on the mean a worker let a 171 ms p99 through behind an 8 ms p50 at 300/s. Redis
keeps the largest value any of them published in the last KEEP_MS (one key, max-merged by
a script: no list of web processes to keep). Workers read it and steer their job
concurrency with the same AIMD as the single-process pacing (``enrich.core.pacing``),
against PROCESSING_TARGET_ACK_MS: the backlog waits, durable, in PostgreSQL while the
webhooks need the machine.

If Redis cannot be reached, the worker reads "no pressure" (it must not stall forever on a
signal it cannot get); the web side skips the beat.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from enrich.metrics import Metrics
from enrich.redis_client import RedisClient, RedisUnavailable
from enrich.resp import RespError

log = logging.getLogger(__name__)

KEY = "enrich:ack-pressure"
PUBLISH_INTERVAL_S = 0.1
#: How long a published value stands unless a larger one replaces it: two beats, so that
#: one slow answer is read about twice by a worker (each read can halve its concurrency).
KEEP_MS = 250
#: Redis calls here are a heartbeat: short deadlines, never a pile-up.
CALL_TIMEOUT_S = 0.25

# Keep the larger of the standing value and the new one; a value lives KEEP_MS, so the
# key follows the worst web process of the last quarter second.
MAX_MERGE_LUA = """
local standing = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) >= standing then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


class AckPressurePublisher:
    """Runs in processes that answer webhooks."""

    def __init__(
        self,
        redis: RedisClient,
        metrics: Metrics,
        lag_probe: Callable[[], Awaitable[float]],
        *,
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        metrics.take_ack_peak()  # start a fresh window
        self.lag_probe = lag_probe
        self.interval_s = interval_s
        self._script = redis.script(MAX_MERGE_LUA)
        self.published = 0
        self.last_ms = 0.0

    async def beat(self) -> None:
        """Measure and publish once."""
        lag = await self.lag_probe()
        self.last_ms = round(max(lag, self.metrics.take_ack_peak()) * 1000, 1)
        try:
            with trio.move_on_after(CALL_TIMEOUT_S):
                await self._script([KEY], [self.last_ms, KEEP_MS])
                self.published += 1
        except (RedisUnavailable, RespError):
            # Unreachable, or an error reply (LOADING, READONLY after a failover, OOM):
            # the next beat tries again; workers read "no pressure" meanwhile.
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            started = trio.current_time()
            await self.beat()
            await trio.sleep_until(started + self.interval_s)


class AckPressureReader:
    """Runs in worker processes: the job runner's pacing probe."""

    def __init__(self, redis: RedisClient, *, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.unavailable = False

    async def probe(self) -> float:
        """Wait one interval, then the standing pressure in seconds (0 if none or unknown)."""
        await trio.sleep(self.interval_s)
        try:
            value = await self.redis.execute("GET", KEY, timeout=CALL_TIMEOUT_S)
        except (RedisUnavailable, RespError) as exc:
            if not self.unavailable:
                log.warning("ack pressure unreadable: pacing paused",
                            extra={"error": str(exc)[:200]})
            self.unavailable = True
            return 0.0
        self.unavailable = False
        try:
            return max(0.0, float(value) / 1000) if value is not None else 0.0
        except (TypeError, ValueError):
            return 0.0


__all__ = ["KEY", "AckPressurePublisher", "AckPressureReader"]
