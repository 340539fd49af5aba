"""Per-sender rate limit: exact under concurrency, idempotent per SID, never fail-open."""

from __future__ import annotations

import os
import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from enrich.app import get_state
from enrich.cli_tools import build_form
from enrich.core.signature import compute_signature
from enrich.embedded import EmbeddedRedis
from enrich.ratelimit import RateLimiter, SlidingWindow, retry_phrase
from enrich.redis_client import RedisClient
from tests.conftest import make_settings, random_sid

SENDER = "+15557770000"


def test_sliding_window_is_exact_and_slides() -> None:
    w = SlidingWindow(limit=3, window_s=3600)
    assert [w.check(SENDER, f"m{i}", now=float(i))[0] for i in range(5)] == [
        True, True, True, False, False]
    ok, _, retry = w.check(SENDER, "m9", now=10.0)
    assert not ok and retry == pytest.approx(3600 - 10)
    assert w.check(SENDER, "m1", now=10.0)[0]  # an already counted SID is not counted again
    assert w.check(SENDER, "late", now=3600.5)[0]  # the first event slid out


def test_retry_phrase() -> None:
    assert retry_phrase(30) == "in 1 minute"
    assert retry_phrase(610) == "in 11 minutes"
    assert retry_phrase(3599) == "in about an hour"


async def test_exactly_the_limit_under_200_concurrent_checks(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=10)
    limiter = RateLimiter(client, limit=20)
    results: list[bool] = []

    async def one() -> None:
        results.append((await limiter.check(SENDER, random_sid())).allowed)

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
    assert results.count(True) == 20
    assert limiter.rejections == 180
    # Repeat offenders are answered from the local status cache, without Redis.
    decision = await limiter.check(SENDER, random_sid())
    assert (decision.allowed, decision.source) == (False, "cache")
    assert decision.retry_after_s > 0
    await client.close()


async def test_same_sid_counts_once(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=4)
    limiter = RateLimiter(client, limit=2)
    sid = random_sid()
    for _ in range(5):
        assert (await limiter.check(SENDER, sid)).allowed
    assert (await limiter.check(SENDER, random_sid())).allowed
    assert not (await limiter.check(SENDER, random_sid())).allowed
    await client.close()


async def test_two_processes_share_one_limit(redis_url: str) -> None:
    a = RateLimiter(RedisClient(redis_url, min_size=0), limit=10)
    b = RateLimiter(RedisClient(redis_url, min_size=0), limit=10)
    allowed = 0
    for i in range(30):
        limiter = a if i % 2 else b
        allowed += (await limiter.check(SENDER, random_sid())).allowed
    assert allowed == 10


async def test_fallback_when_redis_is_unreachable() -> None:
    client = RedisClient("redis://127.0.0.1:1/0", min_size=0, timeout=0.2)
    limiter = RateLimiter(client, limit=3)
    results = [(await limiter.check(SENDER, random_sid())) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert results[0].source == "fallback"
    assert limiter.fallback_engaged


async def test_a_hung_redis_sends_every_check_to_the_fallback_within_its_deadline() -> None:
    """Redis accepts connections and never answers. Checks share pipelined batches, and
    each caller's wait (queued behind other batches included) is bounded by the client's
    deadline: 200 concurrent checks all fall back within about one deadline, not one
    deadline per batch round (4 rounds of 64 here)."""
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        client = RedisClient(f"redis://127.0.0.1:{port}/0", min_size=0, timeout=0.5)
        limiter = RateLimiter(client, limit=1000)
        durations: list[float] = []

        async def check(i: int) -> None:
            started = trio.current_time()
            decision = await limiter.check(f"+1555000{i:04d}", random_sid())
            assert decision.source == "fallback" and decision.allowed
            durations.append(trio.current_time() - started)

        with trio.fail_after(10):
            async with trio.open_nursery() as checks:
                for i in range(200):
                    checks.start_soon(check, i)
        assert len(durations) == 200
        assert max(durations) < 1.5  # one 0.5 s deadline (and slack), not four rounds
        await client.close()
        nursery.cancel_scope.cancel()


def _sign(settings: Any, form: list[tuple[str, str]]) -> str:
    url = settings.effective_public_url + "/api/sms/webhook"
    return compute_signature(settings.twilio_auth_token, url, form)


async def test_redis_killed_mid_test_nothing_500s_and_limit_holds(
    tmp_path: Path, database_url: str, nursery: trio.Nursery
) -> None:
    from enrich.app import create_app
    from enrich.server import serve_app

    private = EmbeddedRedis(tmp_path / "redis-to-kill")
    running = private.start()
    try:
        settings = make_settings(tmp_path, DATABASE_URL=database_url, REDIS_URL=running.url,
                                 RATE_LIMIT_MESSAGES_PER_HOUR="4", REDIS_TIMEOUT_MS="200",
                                 REDIS_POOL_MIN="0")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                         " VALUES (%s, %s, true)", (uuid.uuid4(), SENDER))
        app = create_app(settings)
        stop = trio.Event()
        binds = await nursery.start(lambda task_status: serve_app(
            app, settings, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
            task_status=task_status))
        outcomes: list[str] = []
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as http:

            async def post() -> None:
                form = build_form(account_sid=settings.twilio_account_sid or "", sender=SENDER,
                                  to="+15550000000", body="hello", media=[])
                r = await http.post("/api/sms/webhook", data=dict(form),
                                    headers={"X-Twilio-Signature": _sign(settings, form)})
                assert r.status_code == 200, r.text
                outcomes.append(r.headers["X-Enrich-Outcome"])

            await post()
            await post()
            os.kill(running.pid, signal.SIGKILL)  # Redis dies mid-test
            for _ in range(6):
                await post()
        assert outcomes[:2] == ["accepted", "accepted"]
        # The in-process limiter took over: never fail-open, still at most 4 an hour here.
        assert outcomes.count("accepted") <= 6
        assert "rate_limited" in outcomes[2:]
        from enrich.state import get_state

        assert get_state(app).ingest.limiter.fallback_engaged
        stop.set()
    finally:
        private.stop()


async def test_200_concurrent_webhooks_from_one_sender_accept_exactly_the_limit(
    served: dict[str, Any], database_url: str
) -> None:
    settings = served["settings"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                     " VALUES (%s, %s, true)", (uuid.uuid4(), SENDER))
    outcomes: list[str] = []
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=served["url"], timeout=30, limits=limits) as http:

        async def post() -> None:
            form = build_form(account_sid=settings.twilio_account_sid, sender=SENDER,
                              to="+15550000000", body="note", media=[])
            r = await http.post("/api/sms/webhook", data=dict(form),
                                headers={"X-Twilio-Signature": _sign(settings, form)})
            assert r.status_code == 200
            outcomes.append(r.headers["X-Enrich-Outcome"])
            if r.headers["X-Enrich-Outcome"] == "rate_limited":
                assert "limit of 20 messages per hour" in r.text
                assert "send again in" in r.text

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(post)
    assert outcomes.count("accepted") == settings.rate_limit_messages_per_hour == 20
    assert outcomes.count("rate_limited") == 180
    with psycopg.connect(database_url) as conn:
        rejected = conn.execute(
            "SELECT count(*) FROM inbound_messages WHERE status = 'rejected'").fetchone()
    assert rejected == (180,)  # recorded, never processed


async def test_redelivery_of_a_rejected_message_replays_and_never_uses_a_slot(
    served: dict[str, Any], database_url: str, redis_url: str
) -> None:
    settings = served["settings"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                     " VALUES (%s, %s, true)", (uuid.uuid4(), SENDER))
    limit = settings.rate_limit_messages_per_hour
    async with httpx.AsyncClient(base_url=served["url"], timeout=30) as http:

        async def post(form: list[tuple[str, str]]) -> httpx.Response:
            r = await http.post("/api/sms/webhook", data=dict(form),
                                headers={"X-Twilio-Signature": _sign(settings, form)})
            assert r.status_code == 200
            return r

        forms = [build_form(account_sid=settings.twilio_account_sid, sender=SENDER,
                            to="+15550000000", body=f"note {i}", media=[])
                 for i in range(limit + 1)]
        for form in forms[:limit]:
            assert (await post(form)).headers["X-Enrich-Outcome"] == "accepted"
        first = await post(forms[limit])
        assert first.headers["X-Enrich-Outcome"] == "rate_limited"

        # Room frees up (one counted message leaves the window), then Twilio redelivers
        # the rejected message: it is answered as before and takes no slot.
        counted_sid = dict(forms[0])["MessageSid"]
        await trio.to_thread.run_sync(_zrem, redis_url, SENDER, counted_sid)
        get_state(served["app"]).ingest.limiter.forget(SENDER)  # drop the "blocked" memo
        again = await post(forms[limit])
        assert again.headers["X-Enrich-Outcome"] == "duplicate"
        assert "limit of 20 messages per hour" in again.text  # the same refusal again
        fresh = build_form(account_sid=settings.twilio_account_sid, sender=SENDER,
                           to="+15550000000", body="a new one", media=[])
        assert (await post(fresh)).headers["X-Enrich-Outcome"] == "accepted"


def _zrem(redis_url: str, sender: str, sid: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zrem("enrich:rl:" + sender, sid) == 1
    finally:
        client.close()
