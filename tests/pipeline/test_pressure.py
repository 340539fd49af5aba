"""Acks first across processes: the ack-pressure beat (web side), its reader (worker), and
a worker holding back while a web process is slow."""

from __future__ import annotations

import httpx
import trio

from enrich.metrics import Metrics
from enrich.pipeline.pressure import KEEP_MS, KEY, AckPressurePublisher, AckPressureReader
from enrich.redis_client import RedisClient
from tests.webhook.helpers import (
    OUTCOME,
    Apps,
    message_form,
    sid_of,
    wait_for_status,
    wait_until,
)


def test_the_peak_is_the_slowest_answer_since_the_last_reading() -> None:
    metrics = Metrics()
    assert metrics.take_ack_peak() == 0.0  # nothing answered
    for seconds in (0.010, 0.030, 0.002):
        metrics.webhook_answered("accepted", seconds)
    assert metrics.take_ack_peak() == 0.030
    assert metrics.take_ack_peak() == 0.0  # a new window
    metrics.webhook_answered("accepted", 0.004)
    metrics.reset()
    assert metrics.take_ack_peak() == 0.0


async def _no_lag() -> float:
    return 0.0


async def test_the_worst_web_process_is_what_workers_read(redis_url: str) -> None:
    redis = RedisClient(redis_url)
    slow, fast = Metrics(), Metrics()
    slow_web = AckPressurePublisher(redis, slow, _no_lag)
    fast_web = AckPressurePublisher(redis, fast, _no_lag)
    for seconds in (0.080, 0.010):
        slow.webhook_answered("accepted", seconds)
        fast.webhook_answered("accepted", seconds / 40)
    reader = AckPressureReader(redis, interval_s=0)
    assert await reader.probe() == 0.0  # nobody published yet: no pressure

    await slow_web.beat()
    await fast_web.beat()  # smaller: does not replace the standing value
    assert abs(await reader.probe() - 0.080) < 1e-6
    assert (slow_web.last_ms, fast_web.last_ms) == (80.0, 2.0)  # the slowest of each

    await trio.sleep(KEEP_MS / 1000 + 0.2)  # the slow process recovered (no more beats)
    assert await reader.probe() == 0.0
    await fast_web.beat()  # an empty window: 0
    fast.webhook_answered("accepted", 0.003)
    await fast_web.beat()
    assert abs(await reader.probe() - 0.003) < 1e-6
    await redis.close()


async def test_loop_lag_counts_when_it_is_the_larger(redis_url: str) -> None:
    redis = RedisClient(redis_url)
    metrics = Metrics()

    async def lagging() -> float:
        return 0.045

    publisher = AckPressurePublisher(redis, metrics, lagging)
    metrics.webhook_answered("accepted", 0.002)
    await publisher.beat()
    assert abs(await AckPressureReader(redis, interval_s=0).probe() - 0.045) < 1e-6
    await redis.execute("DEL", KEY)
    await redis.close()


async def test_redis_away_means_no_pressure_and_no_error() -> None:
    redis = RedisClient("redis://127.0.0.1:1/0", min_size=0, timeout=0.2)  # nothing listens
    metrics = Metrics()
    metrics.webhook_answered("accepted", 0.5)
    publisher = AckPressurePublisher(redis, metrics, _no_lag)
    await publisher.beat()  # skipped, not raised
    assert publisher.published == 0
    reader = AckPressureReader(redis, interval_s=0)
    assert await reader.probe() == 0.0
    assert reader.unavailable


async def test_a_worker_holds_back_while_the_web_processes_are_under_pressure(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    worker = await apps.start(role="worker")
    web = await apps.start(role="web")
    await web.link()
    assert web.settings.redis_url and web.settings.database_url
    runner = worker.state.runner
    assert runner is not None and runner.pacing.target_lag_s == 0.010
    redis = RedisClient(web.settings.redis_url)

    async def standing_pressure() -> None:
        # As if a web process kept reporting acks taking 400 ms (the web's own beats are
        # smaller and cannot replace it: the worst one stands).
        while True:
            await redis.execute("SET", KEY, "400", "PX", 60_000)
            await trio.sleep(0.05)

    async def throttled() -> bool:
        return runner.pacing.limit == 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(standing_pressure)
        await wait_until(throttled, timeout=10)
        most_in_flight = 0

        async def watch() -> None:
            nonlocal most_in_flight
            while True:
                most_in_flight = max(most_in_flight, runner.in_flight)
                await trio.sleep(0)

        nursery.start_soon(watch)
        forms = [message_form(f"Met Person{i} at the expo") for i in range(6)]
        for form in forms:
            r = await web.post(http, form)
            assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"
        # Paused, but one job still starts every PAUSE_TRICKLE_S: the backlog moves.
        await wait_for_status(web.settings.database_url, [sid_of(f) for f in forms], "done",
                              timeout=30)
        assert most_in_flight == 1
        nursery.cancel_scope.cancel()

    await redis.execute("DEL", KEY)  # the acks recovered: concurrency grows back

    async def recovered() -> bool:
        return runner.pacing.limit > 4

    await wait_until(recovered, timeout=10)
    assert web.state.extras["ack_pressure"].published > 0  # the web side beats too
    await redis.close()


async def test_error_replies_read_as_no_pressure_and_are_not_raised(redis_url: str) -> None:
    redis = RedisClient(redis_url)
    await redis.execute("HSET", KEY, "not", "a string")  # GET now answers WRONGTYPE
    metrics = Metrics()
    publisher = AckPressurePublisher(redis, metrics, _no_lag)
    metrics.webhook_answered("accepted", 0.5)
    await publisher.beat()  # the script's GET fails: skipped, not raised
    assert publisher.published == 0
    reader = AckPressureReader(redis, interval_s=0)
    assert await reader.probe() == 0.0 and reader.unavailable
    await redis.execute("DEL", KEY)
    await publisher.beat()
    assert publisher.published == 1
    await redis.close()


def test_failed_webhooks_count_for_the_peak() -> None:
    metrics = Metrics()
    metrics.webhook_answered("accepted", 0.004)
    metrics.webhook_failed(2.5)  # a 503 after waiting on a pool: the slowest of all
    assert metrics.take_ack_peak() == 2.5
    assert sum(metrics.webhooks.values()) == 1  # no outcome for it
