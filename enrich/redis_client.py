"""Redis access for trio: redis-py's sync client in worker threads, behind a limiter.

Driver choice (DESIGN.md §4 and §8.9, measured): redis-py sync in threads ran ~3k
pipelines/s on this machine, redis.asyncio through trio-asyncio ~2k/s. Our calls are
short (one EVALSHA per webhook), so threads win. A thread cannot be interrupted, so:

* the trio side waits with ``abandon_on_cancel=True``: a cancelled caller returns at its
  deadline, and the thread finishes its call in the background and gives the connection
  back to redis-py's pool itself;
* every socket has a timeout (REDIS_TIMEOUT_MS) below the callers' trio deadlines, which
  bounds how long an abandoned thread can hold a connection;
* the trio ``CapacityLimiter`` (REDIS_POOL_MAX) is the pool's front door: trio releases a
  token only when its thread really ends, so the limiter never lends more threads than
  redis-py has connections, and its statistics are the pool's statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import trio

T = TypeVar("T")


class RedisUnavailable(ConnectionError):
    """Redis did not answer in time or refused the connection."""


class RedisClient:
    def __init__(
        self, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 1.0
    ) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.pool: redis.BlockingConnectionPool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_size,
            timeout=timeout,  # wait for a free connection (never long: the limiter fronts it)
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.limiter = trio.CapacityLimiter(max_size)

    async def run(self, fn: Callable[[redis.Redis], T], *, timeout: float | None = None) -> T:
        """Run ``fn(client)`` in a worker thread under a trio deadline.

        Raises RedisUnavailable on timeouts and connection errors, so callers can tell
        "Redis is down" from a programming error.
        """
        limit = self.timeout * 2 if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                return await trio.to_thread.run_sync(
                    fn, self.client, limiter=self.limiter, abandon_on_cancel=True
                )
        except trio.TooSlowError as exc:
            raise RedisUnavailable(f"redis did not answer within {limit:.2f}s") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailable(str(exc)) from exc

    async def open(self) -> None:
        """Open REDIS_POOL_MIN connections now so the first webhooks don't pay for them."""

        def warm(_: redis.Redis) -> None:
            conns = [self.pool.get_connection() for _ in range(self.min_size)]  # type: ignore[no-untyped-call]
            for conn in conns:
                conn.connect()
            for conn in conns:
                self.pool.release(conn)  # type: ignore[no-untyped-call]

        if self.min_size:
            await self.run(warm, timeout=self.timeout * 3)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.pool.disconnect)

    async def ping(self, timeout: float = 1.0) -> float:
        start = time.perf_counter()
        await self.run(lambda c: c.ping(), timeout=timeout)
        return time.perf_counter() - start

    def stats(self) -> dict[str, int]:
        in_use = int(self.limiter.borrowed_tokens)
        # redis-py keeps created connections in _connections (a stable private attribute).
        total = len(getattr(self.pool, "_connections", ()))
        return {
            "total": total,
            "available": int(self.limiter.available_tokens),
            "inUse": in_use,
            "waiting": self.limiter.statistics().tasks_waiting,
            "idle": max(total - in_use, 0),
            "min": self.min_size,
            "max": self.max_size,
        }

    def register_script(self, source: str) -> Any:
        """A redis-py Script object (EVALSHA with automatic EVAL fallback on NOSCRIPT)."""
        return self.client.register_script(source)
