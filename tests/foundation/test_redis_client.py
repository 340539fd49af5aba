"""The Redis layer: calls, statistics, and deadlines when Redis does not answer."""

from __future__ import annotations

import pytest
import trio

from enrich.redis_client import RedisClient, RedisUnavailable


async def test_calls_and_stats(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=2, max_size=4, timeout=1.0)
    await client.open()
    assert client.stats()["total"] >= 2
    await client.run(lambda c: c.set("k", "v"))
    assert await client.run(lambda c: c.get("k")) == b"v"
    stats = client.stats()
    assert (stats["inUse"], stats["waiting"], stats["max"]) == (0, 0, 4)
    await client.close()


async def test_concurrency_is_bounded_by_the_limiter(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=3, timeout=1.0)
    results: list[int] = []

    async def incr() -> None:
        results.append(await client.run(lambda c: c.incr("counter")))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(incr)
    assert sorted(results) == list(range(1, 101))
    assert client.stats()["total"] <= 3
    await client.close()


async def test_silent_server_raises_unavailable_at_the_deadline(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def swallow(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, swallow, [listener])
    client = RedisClient(f"redis://127.0.0.1:{port}/0", min_size=0, max_size=2, timeout=0.3)
    with pytest.raises(RedisUnavailable):
        await client.run(lambda c: c.ping(), timeout=0.5)
    nursery.cancel_scope.cancel()


async def test_refused_connection_raises_unavailable() -> None:
    client = RedisClient("redis://127.0.0.1:1/0", min_size=0, max_size=1, timeout=0.3)
    with pytest.raises(RedisUnavailable):
        await client.run(lambda c: c.ping())


async def test_deadline_returns_early_and_the_connection_comes_back(redis_url: str) -> None:
    """Conformance of the thread strategy: the caller returns at its deadline; the
    abandoned thread finishes its call (bounded by the socket timeout) and returns the
    connection and the limiter token."""
    client = RedisClient(redis_url, min_size=0, max_size=1, timeout=3.0)
    start = trio.current_time()
    with pytest.raises(RedisUnavailable):
        await client.run(lambda c: c.blpop(["never-filled"], timeout=1), timeout=0.2)
    assert trio.current_time() - start < 0.9  # well before the 1 s BLPOP ends
    with trio.fail_after(5):
        while client.stats()["inUse"]:
            await trio.sleep(0.05)
    assert await client.run(lambda c: c.ping()) is True  # the only connection is usable
    await client.close()
