"""The user phone-number API over real HTTP: hypercorn, PostgreSQL, Redis, fake Twilio.

Choices these tests pin down:

* Verifying a number that belongs to another user answers 404 PHONE_NUMBER_NOT_FOUND,
  exactly like an unknown number, and does not touch the owner's attempts: the endpoint
  does not reveal who claimed what, and a stranger cannot burn the owner's guesses.
* A user with a number (pending or verified) must unlink it before linking another.
* Asking again within the resend cooldown answers 429 RESEND_TOO_SOON with retryAfter.
* The 5th wrong code answers 429 TOO_MANY_ATTEMPTS; from then on so does the right one.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from quart_trio import QuartTrio

from enrich.cli_tools import build_form
from enrich.config import Settings
from enrich.core.signature import SIGNATURE_HEADER, compute_signature
from enrich.core.verification import MAX_ATTEMPTS, RESEND_COOLDOWN_S
from enrich.state import get_state
from enrich.testing.fake_twilio import FakeTwilio, open_fake_twilio
from tests.conftest import make_settings

SECRET = "phone-api-test-secret-" + "k" * 32
PATH = "/api/user/phone-number"
VERIFY = PATH + "/verify"
PHONE = "+14155550100"
PHONE_2 = "+14155550123"
ACCOUNT_SID = "AC" + "a" * 32
AUTH_TOKEN = "test-auth-token-" + "0" * 16


@dataclass
class Api:
    app: QuartTrio
    settings: Settings
    url: str
    client: httpx.AsyncClient
    fake: FakeTwilio | None

    # --- HTTP helpers ---

    async def call(self, method: str, path: str, user: uuid.UUID | None, body: Any = None,
                   **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {user_token(user)}"} if user else {}
        headers.update(kw.pop("headers", {}))
        return await self.client.request(method, path, json=body, headers=headers, **kw)

    async def link(self, user: uuid.UUID, phone: str = PHONE) -> httpx.Response:
        return await self.call("POST", PATH, user, {"phoneNumber": phone})

    async def verify(self, user: uuid.UUID, code: Any, phone: str = PHONE) -> httpx.Response:
        return await self.call("POST", VERIFY, user, {"phoneNumber": phone, "code": code})

    async def webhook(self, sender: str) -> str:
        """Deliver a signed inbound SMS; return the X-Enrich-Outcome."""
        form = build_form(account_sid=ACCOUNT_SID, sender=sender,
                          to=self.settings.twilio_phone_number or "", body="hello", media=[])
        signed_url = self.settings.effective_public_url + "/api/sms/webhook"
        signature = compute_signature(AUTH_TOKEN, signed_url, form)
        response = await self.client.post("/api/sms/webhook", data=dict(form),
                                          headers={SIGNATURE_HEADER: signature})
        assert response.status_code == 200, response.text
        return response.headers["X-Enrich-Outcome"]

    # --- database helpers ---

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with get_state(self.app).services.db.connection() as conn:
            cur = await conn.execute(query, params)
            return list(await cur.fetchall()) if cur.description else []

    async def codes_sent(self, phone: str = PHONE) -> list[str]:
        """Codes as the person receives them: the SMS bodies that reached (fake) Twilio.

        Once sent, the outbox blanks a verification row's body, so the database is not
        where a code can be read back (without a sender, rows stay pending, unblanked).
        """
        rows = await self.sql(
            "SELECT body, status FROM notifications WHERE kind = 'verification' "
            "AND to_number = %s ORDER BY id", phone)
        if self.fake is None:
            bodies = [body for body, _ in rows]
        else:
            with trio.fail_after(15):
                while len(bodies := [m.body for m in self.fake.sent_messages
                                     if m.to == phone]) < len(rows):
                    await trio.sleep(0.02)
        codes = []
        for body in bodies:
            match = re.search(r"\b(\d{6})\b", body)
            assert match, "a verification SMS carries a 6-digit code"
            codes.append(match.group(1))
        return codes

    async def last_code(self, phone: str = PHONE) -> str:
        return (await self.codes_sent(phone))[-1]

    async def expire_code(self, phone: str = PHONE) -> None:
        await self.sql("UPDATE user_phone_numbers SET verification_expires_at = "
                       "now() - interval '1 minute' WHERE phone_number = %s", phone)

    async def end_cooldown(self, phone: str = PHONE) -> None:
        await self.sql("UPDATE user_phone_numbers SET verification_sent_at = now() - "
                       "make_interval(secs => %s) WHERE phone_number = %s",
                       RESEND_COOLDOWN_S + 1, phone)


def user_token(user: uuid.UUID, **claims: Any) -> str:
    return jwt.encode({"sub": str(user), "exp": int(time.time()) + 600, **claims}, SECRET,
                      algorithm="HS256")


def register_phone_api(app: QuartTrio) -> None:
    """Until create_app registers the blueprint itself; harmless once it does."""
    from enrich.web import phone_api

    if "phone_api" not in app.blueprints:
        app.register_blueprint(phone_api.bp)


async def start(settings: Settings, nursery: trio.Nursery) -> tuple[QuartTrio, str, trio.Event]:
    from enrich.app import create_app
    from enrich.server import serve_app

    app = create_app(settings)
    register_phone_api(app)
    stop = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve_app(app, settings, host="127.0.0.1", port=0,
                                      shutdown_trigger=stop.wait, task_status=task_status)
    )
    return app, binds[0], stop


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with open_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as server:
        yield server


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str, redis_url: str, fake: FakeTwilio, nursery: trio.Nursery
) -> AsyncIterator[Api]:
    settings = make_settings(
        tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url, JWT_SECRET=SECRET,
        TWILIO_API_BASE_URL=fake.api_url, TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
    )
    app, url, stop = await start(settings, nursery)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Api(app, settings, url, client, fake)
    stop.set()


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    return body


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    data: dict[str, Any] = body["data"]
    return data


ALICE = uuid.UUID("11111111-1111-4111-8111-111111111111")
BOB = uuid.UUID("22222222-2222-4222-8222-222222222222")


# --- the happy path ---------------------------------------------------------------------


async def test_link_sms_code_verify_then_get_shows_verified(api: Api) -> None:
    data = ok(await api.link(ALICE, "(415) 555-0100"))  # national format is normalised
    assert data["phoneNumber"] == PHONE and data["verified"] is False
    assert data["codeSent"] is True
    assert data["expiresInSeconds"] == api.settings.verification_code_expiry_minutes * 60
    assert data["attemptsRemaining"] == MAX_ATTEMPTS

    code = await api.last_code()
    # Only a hash is stored with the number.
    [(stored,)] = await api.sql(
        "SELECT verification_code_hash FROM user_phone_numbers WHERE user_id = %s", ALICE)
    assert stored and code not in stored

    pending = ok(await api.call("GET", PATH, ALICE))
    assert pending["phoneNumber"] == PHONE and pending["verified"] is False
    assert pending["verificationExpiresAt"] is not None and pending["verifiedAt"] is None

    verified = ok(await api.verify(ALICE, code))
    assert verified["verified"] is True and verified["verifiedAt"] is not None

    shown = ok(await api.call("GET", PATH, ALICE))
    assert shown["phoneNumber"] == PHONE and shown["verified"] is True
    assert shown["verifiedAt"] == verified["verifiedAt"]
    assert shown["verificationExpiresAt"] is None

    # The code is spent; verifying again is a harmless success, linking again sends nothing.
    assert ok(await api.verify(ALICE, code))["verified"] is True
    again = ok(await api.link(ALICE))
    assert again["verified"] is True and again["codeSent"] is False
    assert len(await api.codes_sent()) == 1

    # The outbox was woken and really texted the code through (fake) Twilio.
    assert api.fake is not None
    with trio.fail_after(15):
        while not any(m.to == PHONE for m in api.fake.sent_messages):
            await trio.sleep(0.05)
    [sms] = [m for m in api.fake.sent_messages if m.to == PHONE]
    assert code in sms.body
    # Once sent, the code is no longer readable in the outbox.
    with trio.fail_after(15):
        while (await api.sql("SELECT status FROM notifications WHERE kind = 'verification'"
                             " AND to_number = %s", PHONE))[0][0] != "sent":
            await trio.sleep(0.05)
    [(body,)] = await api.sql(
        "SELECT body FROM notifications WHERE kind = 'verification' AND to_number = %s", PHONE)
    assert code not in body


async def test_unlink(api: Api) -> None:
    error(await api.call("DELETE", PATH, ALICE), 404, "PHONE_NUMBER_NOT_FOUND")
    error(await api.call("GET", PATH, ALICE), 404, "PHONE_NUMBER_NOT_FOUND")
    ok(await api.link(ALICE))
    data = ok(await api.call("DELETE", PATH, ALICE))
    assert data == {"phoneNumber": PHONE, "unlinked": True}
    error(await api.call("GET", PATH, ALICE), 404, "PHONE_NUMBER_NOT_FOUND")
    assert await api.sql("SELECT 1 FROM user_phone_numbers") == []


# --- attempts, expiry, cooldown ---------------------------------------------------------


async def test_five_wrong_codes_lock_the_code_until_a_new_one(api: Api) -> None:
    ok(await api.link(ALICE))
    code = await api.last_code()
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for left in range(MAX_ATTEMPTS - 1, 0, -1):
        body = error(await api.verify(ALICE, wrong), 400, "VERIFICATION_FAILED")
        assert body["reason"] == "incorrect code" and body["attemptsRemaining"] == left
    error(await api.verify(ALICE, wrong), 429, "TOO_MANY_ATTEMPTS")
    error(await api.verify(ALICE, code), 429, "TOO_MANY_ATTEMPTS")  # right, but too late
    assert ok(await api.call("GET", PATH, ALICE))["verified"] is False

    # A new code (after the cooldown) comes with fresh attempts.
    await api.end_cooldown()
    assert ok(await api.link(ALICE))["attemptsRemaining"] == MAX_ATTEMPTS
    assert ok(await api.verify(ALICE, await api.last_code()))["verified"] is True


async def test_expired_code_fails_with_a_reason(api: Api) -> None:
    ok(await api.link(ALICE))
    code = await api.last_code()
    await api.expire_code()
    body = error(await api.verify(ALICE, code), 400, "VERIFICATION_FAILED")
    assert "expired" in body["reason"]
    [(attempts, verified)] = await api.sql(
        "SELECT verification_attempts, verified FROM user_phone_numbers")
    assert attempts == 0 and verified is False  # expiry is not a guess


async def test_resend_cooldown(api: Api) -> None:
    ok(await api.link(ALICE))
    first = await api.last_code()
    response = await api.link(ALICE)
    body = error(response, 429, "RESEND_TOO_SOON")
    assert 0 < body["retryAfter"] <= RESEND_COOLDOWN_S
    assert response.headers["Retry-After"] == str(body["retryAfter"])
    assert len(await api.codes_sent()) == 1

    await api.end_cooldown()
    ok(await api.link(ALICE))
    codes = await api.codes_sent()
    assert len(codes) == 2
    second = codes[-1]
    if first != second:  # one chance in a million they coincide
        body = error(await api.verify(ALICE, first), 400, "VERIFICATION_FAILED")
        assert body["reason"] == "incorrect code"
    assert ok(await api.verify(ALICE, second))["verified"] is True


# --- ownership --------------------------------------------------------------------------


async def test_another_user_cannot_verify_my_number(api: Api) -> None:
    ok(await api.link(ALICE))
    code = await api.last_code()
    for _ in range(MAX_ATTEMPTS + 1):
        error(await api.verify(BOB, code), 404, "PHONE_NUMBER_NOT_FOUND")
    error(await api.verify(BOB, code, PHONE_2), 404, "PHONE_NUMBER_NOT_FOUND")
    # Bob's tries neither verified the number nor used up Alice's attempts.
    assert ok(await api.call("GET", PATH, ALICE))["attemptsRemaining"] == MAX_ATTEMPTS
    error(await api.call("GET", PATH, BOB), 404, "PHONE_NUMBER_NOT_FOUND")
    assert ok(await api.verify(ALICE, code))["verified"] is True


async def test_a_lapsed_unverified_claim_can_be_taken_over(api: Api) -> None:
    ok(await api.link(ALICE))
    alice_code = await api.last_code()
    # While Alice's code is valid the number is hers.
    error(await api.link(BOB), 409, "PHONE_NUMBER_ALREADY_LINKED")

    await api.expire_code()
    data = ok(await api.link(BOB))
    assert data["phoneNumber"] == PHONE and data["codeSent"] is True
    bob_code = await api.last_code()
    assert len(await api.codes_sent()) == 2

    error(await api.call("GET", PATH, ALICE), 404, "PHONE_NUMBER_NOT_FOUND")
    error(await api.verify(ALICE, alice_code), 404, "PHONE_NUMBER_NOT_FOUND")
    assert ok(await api.verify(BOB, bob_code))["verified"] is True
    [(owner,)] = await api.sql("SELECT user_id FROM user_phone_numbers")
    assert owner == BOB


async def test_a_verified_number_is_never_taken_over(api: Api) -> None:
    ok(await api.link(ALICE))
    ok(await api.verify(ALICE, await api.last_code()))
    await api.expire_code()  # no code is pending; make sure expiry plays no part anyway
    error(await api.link(BOB), 409, "PHONE_NUMBER_ALREADY_LINKED")
    assert ok(await api.call("GET", PATH, ALICE))["verified"] is True
    assert len(await api.codes_sent()) == 1


async def test_one_number_per_user(api: Api) -> None:
    ok(await api.link(ALICE))
    error(await api.link(ALICE, PHONE_2), 409, "USER_HAS_DIFFERENT_PHONE")
    ok(await api.verify(ALICE, await api.last_code()))
    error(await api.link(ALICE, PHONE_2), 409, "USER_HAS_DIFFERENT_PHONE")
    assert await api.codes_sent(PHONE_2) == []
    ok(await api.call("DELETE", PATH, ALICE))
    assert ok(await api.link(ALICE, PHONE_2))["phoneNumber"] == PHONE_2


# --- the webhook sees every change at once ----------------------------------------------


async def test_webhook_routing_follows_link_verify_and_unlink(api: Api) -> None:
    # Each delivery fills the ingest caches; each change must empty them for that number
    # (otherwise the old answer would stand for CACHE_PHONE_LOOKUP_TTL, 15 minutes).
    assert await api.webhook(PHONE) == "unknown_sender"
    ok(await api.link(ALICE))
    assert await api.webhook(PHONE) == "unverified"
    ok(await api.verify(ALICE, await api.last_code()))
    assert await api.webhook(PHONE) == "accepted"
    [(user_id,)] = await api.sql(
        "SELECT user_id FROM inbound_messages WHERE status <> 'rejected' AND user_id IS NOT NULL")
    assert user_id == ALICE
    ok(await api.call("DELETE", PATH, ALICE))
    assert await api.webhook(PHONE) == "unknown_sender"


async def test_redis_down_still_verifies_and_drops_this_process_cache(api: Api) -> None:
    from enrich.redis_client import RedisClient

    ok(await api.link(ALICE))
    assert await api.webhook(PHONE) == "unverified"
    # Redis goes away: the change is committed and answered; this process's caches are
    # still emptied (other processes fall back on their TTL).
    state = get_state(api.app)
    live, state.services.redis = state.services.redis, RedisClient(
        "redis://127.0.0.1:1/0", min_size=0, timeout=0.2)
    try:
        assert ok(await api.verify(ALICE, await api.last_code()))["verified"] is True
    finally:
        state.services.redis = live
    assert await api.webhook(PHONE) == "accepted"


# --- request validation -----------------------------------------------------------------


async def test_phone_number_validation(api: Api) -> None:
    for body in ({}, {"phoneNumber": ""}, {"phoneNumber": "  "}, {"phoneNumber": None}):
        error(await api.call("POST", PATH, ALICE, body), 400, "MISSING_PHONE_NUMBER")
        error(await api.call("POST", VERIFY, ALICE, {**body, "code": "123456"}), 400,
              "MISSING_PHONE_NUMBER")
    error(await api.client.post(PATH, headers={"Authorization": f"Bearer {user_token(ALICE)}"}),
          400, "MISSING_PHONE_NUMBER")  # no body at all
    for bad in ("1-800-FLOWERS", "12", "+1415555010099999", 14155550100, ["+14155550100"]):
        error(await api.call("POST", PATH, ALICE, {"phoneNumber": bad}), 400,
              "INVALID_PHONE_NUMBER")
    assert await api.sql("SELECT 1 FROM user_phone_numbers") == []


async def test_code_format_validation(api: Api) -> None:
    ok(await api.link(ALICE))
    for bad in ("12345", "1234567", "12345a", "", None, 123456, "١٢٣٤٥٦"):
        error(await api.verify(ALICE, bad), 400, "INVALID_CODE_FORMAT")
    # Malformed codes are not guesses.
    assert ok(await api.call("GET", PATH, ALICE))["attemptsRemaining"] == MAX_ATTEMPTS


async def test_malformed_json_is_a_400_with_a_reason(api: Api) -> None:
    auth = {"Authorization": f"Bearer {user_token(ALICE)}",
            "Content-Type": "application/json"}
    for path in (PATH, VERIFY):
        for raw in (b'{"phoneNumber": ', b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 20_000):
            response = await api.client.post(path, content=raw, headers=auth)
            body = error(response, 400, "INVALID_JSON")
            assert body["reason"]


# --- authentication ---------------------------------------------------------------------


async def test_every_auth_failure_is_a_401_with_a_reason(api: Api) -> None:
    now = int(time.time())
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "missing Authorization header"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "not a Bearer token"),
        ({"Authorization": "Bearer"}, "empty"),  # h11 refuses a trailing space
        ({"Authorization": "Bearer not.a.jwt"}, "malformed"),
        ({"Authorization": "Bearer " + jwt.encode({"sub": str(ALICE)}, "other-" + SECRET,
                                                 algorithm="HS256")}, "signature"),
        ({"Authorization": "Bearer " + user_token(ALICE, exp=now - 3600)}, "expired"),
        ({"Authorization": "Bearer " + user_token(ALICE, nbf=now + 3600)}, "not valid yet"),
        ({"Authorization": "Bearer " + jwt.encode({"exp": now + 60}, SECRET,
                                                 algorithm="HS256")}, "no sub"),
        ({"Authorization": "Bearer " + jwt.encode({"sub": "alice"}, SECRET,
                                                 algorithm="HS256")}, "not a user id"),
        ({"Authorization": "Bearer " + jwt.encode({"sub": str(ALICE)}, "",
                                                 algorithm="none")}, "algorithm"),
    ]
    routes = [("GET", PATH, None), ("DELETE", PATH, None),
              ("POST", PATH, {"phoneNumber": PHONE}),
              ("POST", VERIFY, {"phoneNumber": PHONE, "code": "123456"})]
    for headers, reason in cases:
        for method, path, body in routes:
            response = await api.client.request(method, path, json=body, headers=headers)
            got = error(response, 401, "UNAUTHORIZED")
            assert reason in got["reason"], (headers, got)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await api.sql("SELECT 1 FROM user_phone_numbers") == []
    assert await api.codes_sent() == []


async def test_routes_are_absent_without_jwt_secret(
    settings: Settings, nursery: trio.Nursery
) -> None:
    assert settings.jwt_secret is None
    app, url, stop = await start(settings, nursery)
    headers = {"Authorization": f"Bearer {user_token(ALICE)}"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for method, path in (("GET", PATH), ("POST", PATH), ("DELETE", PATH),
                             ("POST", VERIFY)):
            response = await client.request(method, path, json={"phoneNumber": PHONE},
                                            headers=headers)
            assert response.status_code == 404
            assert response.json()["success"] is False
    async with get_state(app).services.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM user_phone_numbers")
        assert await cur.fetchone() == (0,)
    stop.set()
