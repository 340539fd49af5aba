"""In-process TTL caches with per-key single flight and hit statistics.

``cachetools.cached`` on an ``async def`` caches the coroutine object, not its result
(DESIGN.md §4), so the TTLCache is driven by hand. Entries expire a fixed time after
they were *stored* (absolute TTL: TTLCache never extends an entry on read), and time is
trio's clock so tests can move it with ``MockClock``.

Single flight: when many tasks miss the same key at once, one runs the loader and the
others wait for its result, so 100 concurrent misses make one query.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio
from cachetools import TTLCache

from enrich.batching import own_copy

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


def _trio_now() -> float:
    return trio.current_time()


@dataclass(frozen=True, slots=True)
class CacheStats:
    size: int
    max: int
    hits: int
    misses: int
    loads: int

    @property
    def hit_rate(self) -> float:
        """Hits as a percentage of lookups, 0-100 (0 before any lookup)."""
        lookups = self.hits + self.misses
        return round(100.0 * self.hits / lookups, 2) if lookups else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "max": self.max,
            "hits": self.hits,
            "misses": self.misses,
            "hitRate": self.hit_rate,
        }


class _Flight:
    """One in-progress load that other tasks can wait for."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = _MISSING
        self.error: Exception | None = None


class AsyncTTLCache(Generic[K, V]):
    def __init__(self, name: str, *, maxsize: int, ttl: float) -> None:
        self.name = name
        self.maxsize = maxsize
        self.ttl = ttl
        self._cache: TTLCache[K, V] = TTLCache(maxsize=maxsize, ttl=max(ttl, 1e-9), timer=_trio_now)
        self._flights: dict[K, _Flight] = {}
        self._generation = 0  # bumped by clear(): loads that began before it don't store
        self.hits = 0
        self.misses = 0
        self.loads = 0

    def peek(self, key: K) -> V | None:
        """The cached value or None, counting a hit or a miss."""
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return None
        self.hits += 1
        return value  # type: ignore[no-any-return]

    async def get_or_load(self, key: K, loader: Callable[[], Awaitable[V]]) -> V:
        value = self._cache.get(key, _MISSING)
        if value is not _MISSING:
            self.hits += 1
            return value  # type: ignore[no-any-return]
        self.misses += 1
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                # Each waiter raises its own copy (caused by the loader's error): one
                # exception object raised in several tasks would gather all their frames.
                raise own_copy(flight.error)
            return flight.value  # type: ignore[no-any-return]
        flight = _Flight()
        self._flights[key] = flight
        generation = self._generation
        try:
            self.loads += 1
            result = await loader()
        except BaseException as exc:
            # Waiters see the same failure (a cancellation becomes a plain error for them).
            flight.error = exc if isinstance(exc, Exception) else RuntimeError("load cancelled")
            raise
        else:
            flight.value = result
            if self.ttl > 0 and generation == self._generation and self._flights.get(key) is flight:
                self._cache[key] = result
            return result
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()

    def set(self, key: K, value: V) -> None:
        if self.ttl > 0:
            self._cache[key] = value

    def invalidate(self, key: K) -> None:
        self._cache.pop(key, None)
        # A load in flight may carry the old value: don't let it store.
        self._flights.pop(key, None)

    def clear(self) -> None:
        self._cache.clear()
        self._flights.clear()
        self._generation += 1

    def reset_stats(self) -> None:
        self.hits = self.misses = self.loads = 0

    def stats(self) -> CacheStats:
        self._cache.expire()
        return CacheStats(
            size=len(self._cache),
            max=self.maxsize,
            hits=self.hits,
            misses=self.misses,
            loads=self.loads,
        )
