"""TTL caches: hits, misses, absolute TTL on trio's clock, single flight, invalidation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from enrich.caching import AsyncTTLCache


async def test_hit_miss_and_absolute_ttl(autojump_clock: trio.testing.MockClock) -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache("t", maxsize=10, ttl=60)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert await cache.get_or_load("k", load) == 1  # miss
    await trio.sleep(30)
    assert await cache.get_or_load("k", load) == 1  # hit
    await trio.sleep(29)
    assert await cache.get_or_load("k", load) == 1  # hit, and reading did not extend it
    await trio.sleep(2)  # 61 s after it was stored: gone, though read 2 s ago
    assert await cache.get_or_load("k", load) == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.loads, stats.size) == (2, 2, 2, 1)
    assert stats.hit_rate == 50.0


async def test_maxsize_evicts() -> None:
    cache: AsyncTTLCache[int, int] = AsyncTTLCache("t", maxsize=3, ttl=60)
    for i in range(5):
        await cache.get_or_load(i, lambda i=i: _value(i))  # type: ignore[misc]
    assert cache.stats().size == 3


async def _value(i: int) -> int:
    await trio.lowlevel.checkpoint()
    return i


async def test_single_flight_makes_one_load_for_100_concurrent_misses() -> None:
    cache: AsyncTTLCache[str, str] = AsyncTTLCache("t", maxsize=10, ttl=60)
    loads = 0
    gate = trio.Event()

    async def load() -> str:
        nonlocal loads
        loads += 1
        await gate.wait()
        return "owner"

    results: list[str] = []

    async def get() -> None:
        results.append(await cache.get_or_load("+15550001111", load))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert loads == 1
    assert results == ["owner"] * 100


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: AsyncTTLCache[str, str] = AsyncTTLCache("t", maxsize=10, ttl=60)
    gate = trio.Event()

    async def load() -> str:
        await gate.wait()
        raise LookupError("db down")

    errors: list[BaseException] = []

    async def get() -> None:
        try:
            await cache.get_or_load("k", load)
        except LookupError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert len(errors) == 5
    assert cache.stats().size == 0
    # One loader error; each waiter raised its own copy of it, with its own traceback.
    assert len({id(e) for e in errors}) == 5
    assert all(str(e) == "db down" for e in errors)
    loader_error = next(e for e in errors if e.__cause__ is None)
    assert all(e.__cause__ is loader_error for e in errors if e is not loader_error)


async def test_invalidate_during_a_load_keeps_the_stale_value_out() -> None:
    cache: AsyncTTLCache[str, str] = AsyncTTLCache("t", maxsize=10, ttl=60)
    gate = trio.Event()

    async def old_owner() -> str:
        await gate.wait()
        return "old"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.get_or_load, "k", old_owner)
        await trio.testing.wait_all_tasks_blocked()
        cache.invalidate("k")  # ownership changed while the old value was being read
        gate.set()

    async def new_owner() -> str:
        return "new"

    assert await cache.get_or_load("k", new_owner) == "new"


async def test_clear_and_reset_stats() -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache("t", maxsize=10, ttl=60)
    cache.set("a", 1)
    assert cache.peek("a") == 1
    assert cache.peek("b") is None
    cache.clear()
    assert cache.peek("a") is None
    cache.reset_stats()
    assert (cache.hits, cache.misses) == (0, 0)


@pytest.mark.parametrize("ttl", [0])
async def test_zero_ttl_disables_caching(ttl: float) -> None:
    cache: AsyncTTLCache[str, int] = AsyncTTLCache("t", maxsize=10, ttl=ttl)
    n = 0

    async def load() -> int:
        nonlocal n
        n += 1
        return n

    assert await cache.get_or_load("k", load) == 1
    assert await cache.get_or_load("k", load) == 2
