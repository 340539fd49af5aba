"""Twilio redelivers: the same MessageSid is answered alike and processed exactly once."""

from __future__ import annotations

import httpx
import trio

from enrich.phone_store import unlink_phone
from enrich.testing.fake_twilio import FakeTwilio
from tests.webhook.helpers import (
    OUTCOME,
    SENDER,
    Apps,
    Running,
    message_form,
    query,
    sid_of,
    wait_for_sent,
    wait_for_status,
)

BODY = "Met Sarah Johnson at the coffee shop in Portland, she loves hiking"
REPLY = "Saved 3 items: Sarah Johnson, hiking, Portland"


async def _assert_processed_once(app: Running, fake: FakeTwilio, sid: str) -> None:
    db = app.settings.database_url
    assert db
    await wait_for_status(db, [sid], "done")
    await wait_for_sent(fake, 1)
    rows = await query(db, "SELECT status, attempts FROM inbound_messages"
                           " WHERE message_sid = %s", sid)
    assert rows == [("done", 1)]
    items = await query(db, "SELECT item_index, value FROM enrichment_items"
                            " WHERE message_sid = %s ORDER BY item_index", sid)
    assert items == [(0, "Sarah Johnson"), (1, "hiking"), (2, "Portland")]
    notes = await query(db, "SELECT kind, status FROM notifications WHERE message_sid = %s", sid)
    assert notes == [("confirmation", "sent")]
    await trio.sleep(0.3)  # a second reply, if one were queued, would be sent by now
    assert [(m.to, m.body) for m in fake.sent_messages] == [(SENDER, REPLY)]


async def test_redelivery_gets_the_same_answer_and_is_not_processed_again(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start()
    await app.link()
    form = message_form(BODY)
    first = await app.post(http, form)
    second = await app.post(http, form)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers[OUTCOME], second.headers[OUTCOME]) == ("accepted", "duplicate")
    assert first.text == second.text and "<Message>" in first.text
    await _assert_processed_once(app, fake_twilio, sid_of(form))
    # Redelivered after processing: still the same answer, still nothing new.
    third = await app.post(http, form)
    assert (third.status_code, third.headers[OUTCOME], third.text) == (
        200, "duplicate", first.text)
    await trio.sleep(0.3)
    assert len(fake_twilio.sent_messages) == 1


async def test_20_concurrent_deliveries_of_one_sid(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start()
    await app.link()
    form = message_form(BODY)
    answers: list[httpx.Response] = []

    async def deliver() -> None:
        answers.append(await app.post(http, form))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(deliver)
    assert [r.status_code for r in answers] == [200] * 20
    outcomes = sorted(r.headers[OUTCOME] for r in answers)
    assert outcomes == ["accepted"] + ["duplicate"] * 19
    assert len({r.text for r in answers}) == 1
    db = app.settings.database_url
    assert db
    assert await query(db, "SELECT count(*) FROM inbound_messages") == [(1,)]
    await _assert_processed_once(app, fake_twilio, sid_of(form))


async def test_redelivery_of_a_rate_limited_message_replays_the_refusal(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start(settings=apps.settings(RATE_LIMIT_MESSAGES_PER_HOUR="1"))
    await app.link()
    assert (await app.post(http, message_form())).headers[OUTCOME] == "accepted"
    limited = message_form("Met Bo Chen in Austin")
    first = await app.post(http, limited)
    assert first.headers[OUTCOME] == "rate_limited"
    assert "limit of 1 messages per hour" in first.text
    again = await app.post(http, limited)
    assert (again.status_code, again.headers[OUTCOME]) == (200, "duplicate")
    assert "limit of 1 messages per hour" in again.text
    db = app.settings.database_url
    assert db
    rows = await query(db, "SELECT status FROM inbound_messages WHERE message_sid = %s",
                       sid_of(limited))
    assert rows == [("rejected",)]  # recorded once, never processed


async def test_redelivery_after_the_sender_was_unlinked_replays_the_first_answer(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start()
    user = await app.link()
    form = message_form(BODY)
    first = await app.post(http, form)
    assert first.headers[OUTCOME] == "accepted"
    await _assert_processed_once(app, fake_twilio, sid_of(form))
    assert await unlink_phone(app.state.services.db, user) == SENDER
    app.state.ingest.invalidate(SENDER)  # as the phone API does
    again = await app.post(http, form)  # Twilio retries the same delivery
    assert (again.status_code, again.headers[OUTCOME], again.text) == (
        200, "duplicate", first.text)
    # A new message from the now unknown number is answered as unknown.
    stranger = await app.post(http, message_form("Met Bo Chen"))
    assert stranger.headers[OUTCOME] == "unknown_sender"
    await trio.sleep(0.3)
    assert len(fake_twilio.sent_messages) == 1  # nothing processed or sent again
