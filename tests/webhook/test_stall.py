"""A stalled database: webhooks answer 503 by the INSERT deadline, and nothing is lost.

INSERTs share one lane (enrich.ingest), so a statement that hangs holds every webhook
queued behind it. The deadline must still answer each of them in time (Twilio retries a
503), and the lane must be usable again once the stall clears.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest
import trio

import enrich.ingest
from tests.webhook.helpers import OUTCOME, Apps, message_form, query, sid_of

STALLED = 5


async def test_a_stalled_insert_answers_503_by_its_deadline_and_the_lane_recovers(
    apps: Apps, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short deadline keeps the test quick; the shipped one is 10 s (under Twilio's 15 s).
    monkeypatch.setattr(enrich.ingest, "INSERT_DEADLINE_S", 1.0)
    app = await apps.start(role="web")
    await app.link()
    forms = [message_form(f"Met Ana Lee, note {i}") for i in range(STALLED)]

    # Another session holds the table: every INSERT waits for its lock.
    locker = await trio.to_thread.run_sync(psycopg.connect, app.database_url)
    try:
        await trio.to_thread.run_sync(
            locker.execute, "LOCK TABLE inbound_messages IN ACCESS EXCLUSIVE MODE")
        answers: list[httpx.Response] = []

        async def deliver(form: list[tuple[str, str]]) -> None:
            answers.append(await app.post(http, form))

        with trio.fail_after(8):  # the 1 s deadline plus the cancelled statement's wind-down
            async with trio.open_nursery() as nursery:
                for form in forms:
                    nursery.start_soon(deliver, form)
        assert [r.status_code for r in answers] == [503] * STALLED
        assert all(r.json()["success"] is False for r in answers)
    finally:
        await trio.to_thread.run_sync(locker.rollback)
        await trio.to_thread.run_sync(locker.close)

    # Twilio delivers each again: the lane works, each message is stored exactly once.
    for form in forms:
        r = await app.post(http, form)
        assert (r.status_code, r.headers[OUTCOME]) == (200, "accepted"), r.text
    sids = [sid_of(form) for form in forms]
    rows = await query(app.database_url, "SELECT count(*) FROM inbound_messages"
                                         " WHERE message_sid = ANY(%s)", sids)
    assert rows == [(STALLED,)]
