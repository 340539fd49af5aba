"""Shared by the webhook and pipeline tests: serve real apps, sign like Twilio, read the DB.

Apps run exactly as in production (``create_app`` under hypercorn's trio worker on a
loopback port) against the test's PostgreSQL and Redis, with the Twilio REST API pointed
at a :class:`FakeTwilio` served over real HTTP. Signatures are computed with the twilio
library's own ``RequestValidator``, never with our code, so the server is checked against
the reference.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
import trio
from quart_trio import QuartTrio
from twilio.request_validator import RequestValidator

from enrich.app import create_app
from enrich.cli_tools import build_form
from enrich.config import Settings
from enrich.db.pool import ConnectionPool
from enrich.server import serve_app
from enrich.state import AppState, get_state
from enrich.store import link_phone
from enrich.testing.fake_twilio import FakeTwilio, open_fake_twilio
from tests.conftest import make_settings

WEBHOOK_PATH = "/api/sms/webhook"
FORM_TYPE = "application/x-www-form-urlencoded"
OUTCOME = "X-Enrich-Outcome"
SIGNATURE = "X-Twilio-Signature"
ACCOUNT_SID = "AC" + "c" * 32
AUTH_TOKEN = "webhook-tests-token-0123456789abcdef"
OUR_NUMBER = "+15550000000"
SENDER = "+15557654321"


# --- signing with the reference library -------------------------------------------------


class MultiDict(dict[str, list[str]]):
    """The smallest multi-dict RequestValidator understands (it calls ``getall``)."""

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> MultiDict:
        md = cls()
        for name, value in pairs:
            md.setdefault(name, []).append(value)
        return md

    def getall(self, name: str) -> list[str]:
        return self[name]


def twilio_signature(url: str, pairs: Sequence[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    """What Twilio would put in X-Twilio-Signature, per the twilio library."""
    result: str = RequestValidator(token).compute_signature(url, MultiDict.from_pairs(pairs))
    return result


def twilio_accepts(url: str, pairs: Sequence[tuple[str, str]], signature: str,
                   token: str = AUTH_TOKEN) -> bool:
    """Whether the twilio library's validator accepts ``signature`` for a request to ``url``."""
    return bool(RequestValidator(token).validate(url, MultiDict.from_pairs(pairs), signature))


def message_form(body: str = "Met Ana Lee in Boston #climbing", *, sender: str = SENDER,
                 media: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """A fresh Twilio-shaped inbound form (new MessageSid each call)."""
    return build_form(account_sid=ACCOUNT_SID, sender=sender, to=OUR_NUMBER, body=body,
                      media=list(media))


def sid_of(pairs: Sequence[tuple[str, str]]) -> str:
    return dict(pairs)["MessageSid"]


def encode(pairs: Sequence[tuple[str, str]]) -> bytes:
    return urlencode(list(pairs)).encode()


# --- running apps -----------------------------------------------------------------------


@dataclass
class Running:
    app: QuartTrio
    base_url: str  # where we really reach it: http://127.0.0.1:<port>
    settings: Settings
    stop: trio.Event
    finished: trio.Event

    @property
    def state(self) -> AppState:
        return get_state(self.app)

    @property
    def signed_url(self) -> str:
        """The URL Twilio calls (PUBLIC_URL + path): what signatures are computed over."""
        return self.settings.effective_public_url.rstrip("/") + WEBHOOK_PATH

    async def shutdown(self) -> None:
        self.stop.set()
        with trio.fail_after(30):
            await self.finished.wait()

    async def link(self, phone: str = SENDER, *, verified: bool = True) -> uuid.UUID:
        """Link ``phone`` to a new user, as ``enrich phone link`` does."""
        user = uuid.uuid4()
        await link_phone(self.state.services.db, user, phone, verified=verified)
        return user

    @property
    def database_url(self) -> str:
        assert self.settings.database_url
        return self.settings.database_url

    async def post_new(self, client: httpx.AsyncClient, body: str) -> str:
        """POST a new message from the linked sender; it must be accepted. Its SID."""
        form = message_form(body)
        r = await self.post(client, form)
        assert r.status_code == 200 and r.headers[OUTCOME] == "accepted", r.text
        return sid_of(form)

    async def post(
        self, client: httpx.AsyncClient, pairs: Sequence[tuple[str, str]], *,
        sign_url: str | None = None, signature: str | None = None, path: str = WEBHOOK_PATH,
    ) -> httpx.Response:
        """POST a form, signed over ``sign_url`` (default: the public URL) unless a
        ``signature`` is given."""
        sig = signature if signature is not None else twilio_signature(
            sign_url or self.signed_url, pairs)
        return await client.post(self.base_url + path, content=encode(pairs),
                                 headers={"Content-Type": FORM_TYPE, SIGNATURE: sig})


@dataclass
class Apps:
    """Starts apps in the test's nursery and stops them (gracefully) at teardown."""

    nursery: trio.Nursery
    tmp_path: Path
    base_env: dict[str, str]
    running: list[Running] = field(default_factory=list)

    def settings(self, **env: str) -> Settings:
        return make_settings(self.tmp_path, **{**self.base_env, **env})

    async def start(self, *, role: str = "all", settings: Settings | None = None,
                    **create_kwargs: Any) -> Running:
        settings = settings or self.settings()
        app = create_app(settings, role=role, **create_kwargs)
        stop, finished = trio.Event(), trio.Event()

        async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_app(app, settings, host="127.0.0.1", port=0,
                                shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                finished.set()

        binds = await self.nursery.start(run)
        running = Running(app, binds[0], settings, stop, finished)
        self.running.append(running)
        return running

    async def close(self) -> None:
        for running in reversed(self.running):
            await running.shutdown()


def base_env(database_url: str, redis_url: str, fake: FakeTwilio) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "TWILIO_API_BASE_URL": fake.api_url,
        "RATE_LIMIT_MESSAGES_PER_HOUR": "100000",
        "RECOVERY_INTERVAL_SECONDS": "0.2",
        "LOG_LEVEL": "warning",
    }


# Fixtures (re-exported by tests/webhook/conftest.py and tests/pipeline/conftest.py).


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async with open_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as fake:
        yield fake


@pytest.fixture
async def apps(nursery: trio.Nursery, tmp_path: Path, database_url: str, redis_url: str,
               fake_twilio: FakeTwilio) -> AsyncIterator[Apps]:
    started = Apps(nursery, tmp_path, base_env(database_url, redis_url, fake_twilio))
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as c:
        yield c


# --- reading the database ---------------------------------------------------------------


def _fetch(database_url: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a separate connection (off the trio thread)."""
    return await trio.to_thread.run_sync(_fetch, database_url, sql, params)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 20,
                     interval: float = 0.05) -> None:
    """Poll ``check`` until it holds; ``timeout`` is only a hang guard."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(interval)


async def wait_for_status(database_url: str, sids: Sequence[str], status: str,
                          timeout: float = 20) -> None:
    async def check() -> bool:
        rows = await query(database_url,
                           "SELECT count(*) FROM inbound_messages"
                           " WHERE message_sid = ANY(%s) AND status = %s", list(sids), status)
        return int(rows[0][0]) == len(sids)

    await wait_until(check, timeout=timeout)


async def wait_for_sent(fake: FakeTwilio, count: int, timeout: float = 20) -> None:
    async def check() -> bool:
        return len(fake.sent_messages) >= count

    await wait_until(check, timeout=timeout)


def reason_of(response: httpx.Response) -> str:
    """The JSON reason every 4xx answer carries (fails the test if it has none)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    payload = json.loads(response.text)
    assert payload["success"] is False
    assert isinstance(payload["reason"], str) and payload["reason"], payload
    return str(payload["reason"])


def runner_pool(settings: Settings) -> ConnectionPool:
    """A pool of its own for a JobRunner started by hand, next to the apps."""
    assert settings.database_url
    return ConnectionPool(settings.database_url, min_size=0, max_size=4)
