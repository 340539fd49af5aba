"""DELETE /api/user/data erases the user's data and stops routing the number at once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import jwt
import psycopg
import trio

from enrich.app import create_app
from enrich.cli_tools import build_form
from enrich.core.signature import compute_signature
from enrich.server import serve_app
from tests.conftest import make_settings

SECRET = "jwt-secret-for-account-deletion-tests-0123456789"
PHONE = "+15556667777"


async def test_delete_account_data(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    settings = make_settings(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url,
                             JWT_SECRET=SECRET, RECOVERY_INTERVAL_SECONDS="0.1")
    app = create_app(settings)
    stop = trio.Event()
    binds = await nursery.start(lambda task_status: serve_app(
        app, settings, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
        task_status=task_status))
    user = uuid.uuid4()
    other = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
                     " VALUES (%s, %s, true), (%s, '+15550009999', true)", (user, PHONE, other))
        conn.execute("INSERT INTO enrichment_items (user_id, message_sid, item_index, item_type,"
                     " value, source) VALUES (%s, 'SMother', 0, 'tag', 'kept', 'sms')", (other,))

    async def webhook(http: httpx.AsyncClient) -> str:
        form = build_form(account_sid=settings.twilio_account_sid or "", sender=PHONE,
                          to="+15550000000", body="Met Sarah Johnson in Portland", media=[])
        sig = compute_signature(settings.twilio_auth_token or "",
                                settings.effective_public_url + "/api/sms/webhook", form)
        r = await http.post("/api/sms/webhook", data=dict(form),
                            headers={"X-Twilio-Signature": sig})
        return r.headers["X-Enrich-Outcome"]

    token = jwt.encode({"sub": str(user), "exp": int(time.time()) + 300}, SECRET,
                       algorithm="HS256")
    async with httpx.AsyncClient(base_url=binds[0]) as http:
        assert await webhook(http) == "accepted"
        with trio.fail_after(10):
            while True:
                with psycopg.connect(database_url) as conn:
                    n = conn.execute("SELECT count(*) FROM enrichment_items WHERE user_id = %s",
                                     (user,)).fetchone()
                if n and n[0]:
                    break
                await trio.sleep(0.05)
        r = await http.delete("/api/user/data")
        assert r.status_code == 401
        r = await http.delete("/api/user/data", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        body = r.json()["data"]
        assert body["deleted"] is True and body["items"] >= 1 and body["messages"] == 1
        # The cached lookup was invalidated: the number is unknown right away.
        assert await webhook(http) == "unknown_sender"
    with psycopg.connect(database_url) as conn:
        mine = conn.execute("SELECT (SELECT count(*) FROM enrichment_items WHERE user_id = %s),"
                            " (SELECT count(*) FROM inbound_messages WHERE user_id = %s)",
                            (user, user)).fetchone()
        kept = conn.execute("SELECT count(*) FROM enrichment_items WHERE user_id = %s",
                            (other,)).fetchone()
    assert mine == (0, 0)
    assert kept == (1,)  # nobody else's data is touched
    stop.set()
