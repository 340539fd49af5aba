"""Performance API, /metrics and the supervisor, on a real served app."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from enrich.app import create_app
from enrich.config import Settings
from enrich.core.alerts import Snapshot, evaluate
from enrich.server import serve_app
from enrich.state import get_state
from enrich.supervisor import clean_temp, instance_temp_dir
from tests.conftest import make_settings

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def _serve(settings: Settings, nursery: trio.Nursery) -> tuple[Any, str, trio.Event]:
    app = create_app(settings)
    stop = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve_app(app, settings, host="127.0.0.1", port=0,
                                      shutdown_trigger=stop.wait, task_status=task_status)
    )
    return app, binds[0], stop


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url,
                         ADMIN_TOKEN=ADMIN)


async def test_routes_need_the_admin_token(admin_settings: Settings, nursery: trio.Nursery) -> None:
    _, url, stop = await _serve(admin_settings, nursery)
    async with httpx.AsyncClient(base_url=url) as c:
        for path in ("stats", "cache", "database", "connections"):
            r = await c.get(f"/api/sms/performance/{path}")
            assert r.status_code == 401, path
            r = await c.get(f"/api/sms/performance/{path}",
                            headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await c.get(f"/api/sms/performance/{path}", headers=AUTH)
            assert r.status_code == 200 and r.json()["success"] is True
        # health is open
        r = await c.get("/api/sms/performance/health")
        assert r.status_code == 200
    stop.set()


async def test_routes_are_disabled_without_admin_token(served: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=served["url"]) as c:
        r = await c.get("/api/sms/performance/stats", headers=AUTH)
        assert r.status_code == 404
        r = await c.get("/api/sms/performance/health")
        assert r.status_code == 200  # still open


async def test_shapes_of_stats_cache_database_connections(
    admin_settings: Settings, nursery: trio.Nursery
) -> None:
    app, url, stop = await _serve(admin_settings, nursery)
    state = get_state(app)
    # Exercise a cache: one miss then one hit.
    await state.ingest.owner("+15550001234")
    await state.ingest.owner("+15550001234")
    # Allowed senders are misses of the rate-limit memo by design: not in the aggregate.
    for _ in range(3):
        state.ingest.limiter.status_cache.peek("+15550001234")
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
        stats = (await c.get("/api/sms/performance/stats")).json()["data"]
        assert set(stats) >= {"cache", "database", "connectionPools", "pipeline", "alerts",
                              "timestamp"}
        cache = (await c.get("/api/sms/performance/cache")).json()["data"]
        phone = cache["phoneNumberCache"]
        assert (phone["size"], phone["max"], phone["hitRate"]) == (1, 1000, 50.0)
        assert cache["verificationCache"]["max"] == 500
        assert cache["rateLimitCache"]["max"] == 1000
        assert set(cache["metrics"]) == {"cacheHits", "cacheMisses", "hitRate", "dbQueries",
                                         "avgQueryTime"}
        assert cache["metrics"]["dbQueries"] >= 1
        assert cache["rateLimitCache"]["misses"] == 3
        assert (cache["metrics"]["cacheHits"], cache["metrics"]["cacheMisses"],
                cache["metrics"]["hitRate"]) == (1, 1, 50.0)
        db = (await c.get("/api/sms/performance/database")).json()["data"]
        assert db["healthy"] is True
        assert db["maxConnections"] == admin_settings.database_pool_max
        assert {"totalConnections", "idleConnections", "activeConnections",
                "waitingClients"} <= set(db)
        pools = (await c.get("/api/sms/performance/connections")).json()["data"]
        for name in ("postgres", "redis", "speech", "twilio", "mediaDownloads",
                     "processing", "processingPaced"):
            assert pools[name] is not None
            assert {"total", "available", "inUse", "waiting"} <= set(pools[name]), name
        batching = stats["pipeline"]["batching"]
        assert batching["ownerLookups"]["batches"] >= 1  # the cache miss above
        # reset and clear
        assert (await c.post("/api/sms/performance/reset")).status_code == 200
        cache = (await c.get("/api/sms/performance/cache")).json()["data"]
        assert cache["metrics"]["cacheHits"] == 0
        batching = (await c.get("/api/sms/performance/stats")).json()["data"]["pipeline"][
            "batching"]
        for name, counters in batching.items():
            assert (counters["batches"], counters["items"], counters["largestBatch"]) == (
                0, 0, 0), name
        assert (await c.delete("/api/sms/performance/cache")).status_code == 200
        cache = (await c.get("/api/sms/performance/cache")).json()["data"]
        assert cache["phoneNumberCache"]["size"] == 0
        await state.ingest.owner("+15550001234")
        assert (await c.post("/api/sms/performance/cache/clear")).status_code == 200
        assert state.ingest.phone_cache.stats().size == 0
    stop.set()


async def test_cache_sizes_come_from_the_environment(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    """CACHE_*_SIZE bound the LRU caches: reported as max, and a fuller cache evicts."""
    settings = make_settings(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url,
                             ADMIN_TOKEN=ADMIN, CACHE_PHONE_LOOKUP_SIZE="2",
                             CACHE_VERIFICATION_SIZE="1")
    app, url, stop = await _serve(settings, nursery)
    state = get_state(app)
    for phone in ("+15550001001", "+15550001002", "+15550001003"):
        await state.ingest.owner(phone)
    await state.ingest.owner("+15550001001")  # evicted by the third: a miss again
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
        cache = (await c.get("/api/sms/performance/cache")).json()["data"]
    phone = cache["phoneNumberCache"]
    assert (phone["max"], phone["size"], phone["hits"], phone["misses"]) == (2, 2, 0, 4)
    assert cache["verificationCache"]["max"] == 1
    stop.set()


async def test_health_degrades_with_reasons_when_redis_is_down(
    admin_settings: Settings, nursery: trio.Nursery
) -> None:
    from enrich.redis_client import RedisClient

    app, url, stop = await _serve(admin_settings, nursery)
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/api/sms/performance/health")).json()["data"]["status"] == "healthy"
        get_state(app).services.redis = RedisClient("redis://127.0.0.1:1/0", min_size=0,
                                                    timeout=0.2)
        r = await c.get("/api/sms/performance/health")
        assert r.status_code == 503
        body = r.json()["data"]
        assert body["status"] == "degraded"
        assert any(reason.startswith("redis") for reason in body["reasons"])
    stop.set()


async def test_metrics_exposition(admin_settings: Settings, nursery: trio.Nursery) -> None:
    _, url, stop = await _serve(admin_settings, nursery)
    async with httpx.AsyncClient(base_url=url) as c:
        # one webhook answered (a 403) so the counters have a sample
        await c.post("/api/sms/webhook", data={"a": "b"})
        r = await c.get("/metrics")
    stop.set()
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("enrich_webhook_requests", "enrich_webhook_ack_seconds", "enrich_jobs",
                 "enrich_pool_slots", "enrich_cache_hits", "enrich_cache_misses",
                 "enrich_job_queue_depth", "enrich_media_bytes", "enrich_media_aborts",
                 "enrich_transcription_seconds", "enrich_breaker_state",
                 "enrich_rate_limit_rejections", "process_resident_memory_bytes"):
        assert name in families, name
    outcomes = {s.labels.get("outcome") for s in families["enrich_webhook_requests"].samples}
    assert "forbidden" in outcomes
    assert "+1555" not in r.text  # no phone numbers anywhere


async def test_supervisor_restarts_a_dead_task_and_readiness_reports_it(
    admin_settings: Settings, nursery: trio.Nursery
) -> None:
    app, url, stop = await _serve(admin_settings, nursery)
    state = get_state(app)
    supervisor = state.extras["supervisor"]
    crashed = trio.Event()
    runs = 0

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs == 1:
            await trio.sleep(0.05)
            crashed.set()
            raise RuntimeError("boom")
        await trio.sleep_forever()

    await app.nursery.start(supervisor.keep_running, "flaky", flaky)
    await crashed.wait()
    await trio.sleep(0.01)
    async with httpx.AsyncClient(base_url=url) as c:
        ready = await c.get("/health/ready")
        assert ready.status_code == 503
        assert "task:flaky" in ready.json()["failing"]
        with trio.fail_after(5):
            while state.tasks["flaky"].running is False:
                await trio.sleep(0.05)
        ready = await c.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["task:flaky"]["restarts"] == 1
    stop.set()


def test_temp_cleanup(tmp_path: Path) -> None:
    d = tmp_path / "tmp"
    d.mkdir()
    old = d / "old.bin"
    new = d / "new.bin"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    assert clean_temp(d, older_than_s=30 * 86400) == 1
    assert not old.exists() and new.exists()
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"z")
    assert clean_temp(d, older_than_s=None) == 2
    assert list(d.iterdir()) == []
    assert clean_temp(tmp_path / "missing", older_than_s=None) == 0


async def test_temp_dir_is_cleaned_at_start_and_shutdown(
    admin_settings: Settings, nursery: trio.Nursery
) -> None:
    app = create_app(admin_settings)
    mine = instance_temp_dir(get_state(app))
    mine.mkdir(parents=True)
    (mine / "left-by-crash.part").write_bytes(b"x")
    other = admin_settings.effective_temp_dir / "another-instance"
    other.mkdir(parents=True)
    (other / "theirs.part").write_bytes(b"y")
    stop = trio.Event()
    await nursery.start(lambda task_status: serve_app(
        app, admin_settings, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
        task_status=task_status))
    assert list(mine.iterdir()) == []
    (mine / "during.part").write_bytes(b"z")
    stop.set()
    with trio.fail_after(10):
        while (mine / "during.part").exists():
            await trio.sleep(0.05)
    assert (other / "theirs.part").exists()  # instances clean only their own


def test_alert_thresholds() -> None:
    quiet = Snapshot(cache_hits=0, cache_misses=0, db_waiting=0, avg_response_s=0.0,
                     responses=0, errors=0, events=0, pools={})
    assert evaluate(quiet) == []  # a fresh instance is healthy
    noisy = Snapshot(cache_hits=10, cache_misses=90, db_waiting=6, avg_response_s=6.0,
                     responses=10, errors=2, events=20,
                     pools={"postgres": {"total": 10, "available": 0, "waiting": 3}})
    names = {a.name for a in evaluate(noisy)}
    assert names == {"low_cache_hit_rate", "database_waiting_clients", "slow_responses",
                     "high_error_rate", "pool_exhausted:postgres"}
    edge = Snapshot(cache_hits=50, cache_misses=50, db_waiting=5, avg_response_s=5.0,
                    responses=10, errors=1, events=20, pools={})
    assert evaluate(edge) == []  # thresholds are strict inequalities
