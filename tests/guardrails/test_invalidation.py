"""Invalidation reaches other processes: two app instances share PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from enrich import invalidation
from enrich.app import create_app
from enrich.cli_tools import build_form
from enrich.core.signature import compute_signature
from enrich.server import serve_app
from enrich.state import get_state
from tests.conftest import make_settings

PHONE = "+15553334444"


async def _instance(tmp: Path, database_url: str, redis_url: str, name: str,
                    nursery: trio.Nursery) -> tuple[Any, str, Any]:
    settings = make_settings(tmp / name, DATABASE_URL=database_url, REDIS_URL=redis_url,
                             INSTANCE_ID=name)
    app = create_app(settings)
    stop = trio.Event()
    binds = await nursery.start(lambda task_status: serve_app(
        app, settings, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
        task_status=task_status))
    return app, binds[0], settings


async def _post(url: str, settings: Any) -> str:
    form = build_form(account_sid=settings.twilio_account_sid, sender=PHONE, to="+15550000000",
                      body="hello", media=[])
    sig = compute_signature(settings.twilio_auth_token,
                            settings.effective_public_url + "/api/sms/webhook", form)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/api/sms/webhook", data=dict(form),
                            headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200
    return r.headers["X-Enrich-Outcome"]


async def test_verification_change_reaches_the_other_instance(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    a, url_a, settings_a = await _instance(tmp_path, database_url, redis_url, "a", nursery)
    b, url_b, settings_b = await _instance(tmp_path, database_url, redis_url, "b", nursery)
    owner = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                     " VALUES (%s, %s, false)", (owner, PHONE))
    # Both instances look the number up and cache "unverified".
    assert await _post(url_a, settings_a) == "unverified"
    assert await _post(url_b, settings_b) == "unverified"
    assert get_state(b).ingest.phone_cache.stats().size == 1

    # Instance A verifies the number: DB change, local invalidation, and a broadcast.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE user_phone_numbers SET verified = true WHERE phone_number = %s",
                     (PHONE,))
    state_a = get_state(a)
    state_a.ingest.invalidate(PHONE)
    await invalidation.publish(state_a.services.redis, PHONE)

    with trio.fail_after(5):
        while get_state(b).ingest.phone_cache.stats().size:
            await trio.sleep(0.02)
    assert await _post(url_b, settings_b) == "accepted"
    assert await _post(url_a, settings_a) == "accepted"


async def test_unlink_stops_routing_everywhere(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    a, url_a, settings_a = await _instance(tmp_path, database_url, redis_url, "a", nursery)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                     " VALUES (%s, %s, true)", (uuid.uuid4(), PHONE))
    assert await _post(url_a, settings_a) == "accepted"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM user_phone_numbers WHERE phone_number = %s", (PHONE,))
    # Another process (the CLI here) announces the change.
    await trio.to_thread.run_sync(invalidation.publish_invalidation_sync,
                                  settings_a.redis_url, PHONE)
    with trio.fail_after(5):
        while get_state(a).ingest.phone_cache.stats().size:
            await trio.sleep(0.02)
    assert await _post(url_a, settings_a) == "unknown_sender"
