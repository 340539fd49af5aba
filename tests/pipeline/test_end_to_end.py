"""Text in, items stored, confirmation out: a signed webhook through to the fake Twilio's
Messages API, over real HTTP both ways, with real PostgreSQL and Redis."""

from __future__ import annotations

import json

import httpx
import trio

from enrich.core.phone import mask_phone
from enrich.testing.fake_twilio import FakeTwilio
from tests.webhook.helpers import (
    OUR_NUMBER,
    OUTCOME,
    SENDER,
    Apps,
    message_form,
    query,
    sid_of,
    wait_for_sent,
    wait_for_status,
    wait_until,
)

BODY = "Met Sarah Johnson at the coffee shop in Portland, she loves hiking"
REPLY = "Saved 3 items: Sarah Johnson, hiking, Portland"


QUICK_OUTBOX = {"OUTBOX_RETRY_BASE_MS": "50", "OUTBOX_POLL_INTERVAL_MS": "50"}


def _messages_posts(fake: FakeTwilio) -> list[int]:
    return [r.status for r in fake.requests_to("api")
            if r.method == "POST" and r.path.endswith("/Messages.json")]


async def test_sms_becomes_pending_items_and_one_confirmation(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start()
    user = await app.link(SENDER, verified=True)
    form = message_form(BODY)
    sid = sid_of(form)
    r = await app.post(http, form)
    assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"
    assert "Got it!" in r.text  # the immediate TwiML acknowledgement
    db = app.settings.database_url
    assert db
    await wait_for_status(db, [sid], "done")

    rows = await query(db, "SELECT user_id, item_index, item_type, field_name, value, status,"
                           " source, source_metadata FROM enrichment_items"
                           " WHERE message_sid = %s ORDER BY item_index", sid)
    assert [(u, i, t, f, v, s, src) for u, i, t, f, v, s, src, _ in rows] == [
        (user, 0, "contact", "name", "Sarah Johnson", "pending", "sms"),
        (user, 1, "tag", None, "hiking", "pending", "sms"),
        (user, 2, "location", None, "Portland", "pending", "sms"),
    ]
    for *_, metadata in rows:
        assert metadata["messageSid"] == sid
        assert metadata["from"] == mask_phone(SENDER) == "***4321"
        assert SENDER not in json.dumps(metadata) and SENDER[2:] not in json.dumps(metadata)
    assert rows[0][-1]["context"] == BODY  # the contact keeps where they were met

    await wait_for_sent(fake_twilio, 1)
    await trio.sleep(0.3)  # nothing else follows
    sent = fake_twilio.sent_messages
    assert [(m.to, m.from_, m.body) for m in sent] == [(SENDER, OUR_NUMBER, REPLY)]
    notes = await query(db, "SELECT kind, status, attempts, provider_sid, to_number"
                            " FROM notifications WHERE message_sid = %s", sid)
    assert notes == [("confirmation", "sent", 1, sent[0].sid, SENDER)]


async def test_confirmation_is_retried_through_twilio_errors_and_sent_once(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start(settings=apps.settings(**QUICK_OUTBOX))
    assert app.state.outbox is not None and app.state.outbox.retry_base_s == 0.05
    await app.link()
    fake_twilio.fail_next_sends(2)  # Twilio answers 500 twice
    form = message_form(BODY)
    assert (await app.post(http, form)).headers[OUTCOME] == "accepted"
    await wait_for_sent(fake_twilio, 1)
    db = app.settings.database_url
    assert db

    async def settled() -> bool:
        rows = await query(db, "SELECT status FROM notifications")
        return rows == [("sent",)]

    await wait_until(settled)
    await trio.sleep(0.3)  # several outbox polls: no second send
    assert [(m.to, m.body) for m in fake_twilio.sent_messages] == [(SENDER, REPLY)]
    assert _messages_posts(fake_twilio) == [500, 500, 201]
    notes = await query(db, "SELECT status, attempts, last_error FROM notifications"
                            " WHERE message_sid = %s", sid_of(form))
    assert notes == [("sent", 3, None)]
    assert app.state.metrics.notifications["retried"] == 2
    assert app.state.metrics.notifications["sent"] == 1


async def test_a_permanent_twilio_refusal_is_not_retried(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    app = await apps.start(settings=apps.settings(**QUICK_OUTBOX))
    assert app.state.outbox is not None and app.state.outbox.retry_base_s == 0.05
    await app.link()
    fake_twilio.fail_next_sends(1, 400, code=21211, message="Invalid 'To' Phone Number")
    form = message_form(BODY)
    assert (await app.post(http, form)).headers[OUTCOME] == "accepted"
    db = app.settings.database_url
    assert db

    async def failed() -> bool:
        return await query(db, "SELECT status FROM notifications") == [("failed",)]

    await wait_until(failed)
    await trio.sleep(0.3)
    assert _messages_posts(fake_twilio) == [400]
    assert fake_twilio.sent_messages == ()
    rows = await query(db, "SELECT attempts, last_error FROM notifications")
    assert rows == [(1, "Twilio answered 400 (code 21211)")]
    # The items are kept: only the reply failed.
    assert await query(db, "SELECT count(*) FROM enrichment_items") == [(3,)]


async def test_split_roles_web_and_worker_deliver_the_same_result(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    web = await apps.start(role="web")
    await apps.start(role="worker", settings=apps.settings(RECOVERY_INTERVAL_SECONDS="0.1"))
    await web.link()
    form = message_form(BODY)
    r = await web.post(http, form)
    assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"
    assert web.state.runner is None  # the web process only stores
    db = web.settings.database_url
    assert db
    await wait_for_status(db, [sid_of(form)], "done")
    assert await query(db, "SELECT value FROM enrichment_items ORDER BY item_index") == [
        ("Sarah Johnson",), ("hiking",), ("Portland",)]
    await wait_for_sent(fake_twilio, 1)
    assert [m.body for m in fake_twilio.sent_messages] == [REPLY]
