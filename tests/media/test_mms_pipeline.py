"""MMS through the whole server: signed webhook → media fetched from a fake Twilio over
HTTP → transcribed by the real Google client against a fake gRPC Speech server → items
in PostgreSQL → one reply SMS recorded by the fake Twilio.

Nothing of ours is replaced: the app is built by ``create_app`` from settings, exactly as
``enrich serve`` builds it (TWILIO_API_BASE_URL and SPEECH_ENDPOINT point at the fakes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
import trio

from enrich.app import create_app, get_state
from enrich.cli_tools import build_form
from enrich.core.signature import compute_signature
from enrich.server import serve_app
from enrich.store import link_phone
from enrich.testing.fake_speech import FakeSpeechServer
from enrich.testing.fake_twilio import FakeTwilio, open_fake_twilio
from tests.conftest import make_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "media"
ACCOUNT = "AC" + "c" * 32
TOKEN = "mms-test-token-0123456789abcdef"
SENDER = "+15553330000"
OUR_NUMBER = "+15550000000"
SPOKEN = "Met Sarah Johnson at the coffee shop in Portland. She loves hiking."


@dataclass
class Mms:
    fake: FakeTwilio
    speech: FakeSpeechServer
    url: str
    database_url: str
    temp_dir: Path
    settings: Any
    app: Any

    async def send(self, body: str, media: list[tuple[str, str]]) -> tuple[str, httpx.Response]:
        form = build_form(account_sid=ACCOUNT, sender=SENDER, to=OUR_NUMBER, body=body,
                          media=media)
        sid = dict(form)["MessageSid"]
        public = self.settings.public_url.rstrip("/") + "/api/sms/webhook"
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, public, form)}
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.url}/api/sms/webhook", data=dict(form),
                                         headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["X-Enrich-Outcome"] == "accepted"
        return sid, response

    def media(self, name: str, content_type: str, **options: Any) -> tuple[str, str]:
        data = (FIXTURES / name).read_bytes()
        return self.fake.add_media(None, data, content_type, **options), content_type

    async def wait_settled(self, sid: str, *, timeout: float = 30) -> dict[str, Any]:
        """Wait until the message is done or failed and its reply was sent."""
        with trio.fail_after(timeout):
            while True:
                row = await trio.to_thread.run_sync(self._message_row, sid)
                if row and row["status"] in ("done", "failed") and self.replies_to(sid):
                    return row
                await trio.sleep(0.05)

    def _message_row(self, sid: str) -> dict[str, Any] | None:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT status, attempts, last_error FROM inbound_messages WHERE message_sid = %s",
                (sid,),
            )
            row = cur.fetchone()
        return None if row is None else {"status": row[0], "attempts": row[1], "error": row[2]}

    def items(self, sid: str) -> list[tuple[str, str | None, str, str, dict[str, Any]]]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT item_type, field_name, value, source, source_metadata "
                "FROM enrichment_items WHERE message_sid = %s ORDER BY item_index",
                (sid,),
            )
            return [(r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall()]

    def replies_to(self, sid: str) -> list[str]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute(
                "SELECT body FROM notifications WHERE message_sid = %s AND sent_at IS NOT NULL",
                (sid,),
            )
            bodies = [r[0] for r in cur.fetchall()]
        sent = [m.body for m in self.fake.sent_messages if m.to == SENDER]
        # What the outbox marked sent, the fake really received.
        return [b for b in bodies if b in sent or b == ""]

    def temp_files(self) -> list[Path]:
        return [p for p in self.temp_dir.rglob("*") if p.is_file()]


@pytest.fixture
def speech() -> Iterator[FakeSpeechServer]:
    with FakeSpeechServer(text=SPOKEN) as server:
        yield server


@pytest.fixture
def mms_env() -> dict[str, str]:
    """Extra settings; a test overrides it with ``@pytest.mark.parametrize("mms_env", …)``."""
    return {}


@pytest.fixture
async def mms(
    tmp_path: Path, database_url: str, redis_url: str, speech: FakeSpeechServer,
    nursery: trio.Nursery, mms_env: dict[str, str],
) -> AsyncIterator[Mms]:
    async with open_fake_twilio(ACCOUNT, TOKEN) as fake:
        temp_dir = tmp_path / "temp"
        settings = make_settings(
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            TWILIO_ACCOUNT_SID=ACCOUNT,
            TWILIO_AUTH_TOKEN=TOKEN,
            TWILIO_PHONE_NUMBER=OUR_NUMBER,
            TWILIO_API_BASE_URL=fake.api_url,
            # The fake's CDN is another origin: allowed by configuration, as in production.
            MEDIA_REDIRECT_HOSTS=fake.cdn_url.removeprefix("http://"),
            SPEECH_ENDPOINT=speech.address,
            ENRICH_TEMP_DIR=str(temp_dir),
            MAX_MEDIA_SIZE_MB="0.5",
            MEDIA_DOWNLOAD_TIMEOUT_MS="1500",
            SPEECH_TIMEOUT_MS="3000",
            JOB_RETRY_BASE_MS="100",
            **mms_env,
        )
        app = create_app(settings)
        stop = trio.Event()
        binds = await nursery.start(
            lambda task_status: serve_app(app, settings, host="127.0.0.1", port=0,
                                          shutdown_trigger=stop.wait, task_status=task_status)
        )
        await link_phone(get_state(app).services.db, uuid.uuid4(), SENDER, verified=True)
        yield Mms(fake, speech, binds[0], database_url, temp_dir, settings, app)
        stop.set()


AUDIO_FIXTURES = [
    ("note1.amr", "audio/amr", "AMR", 8000),
    ("note1.ogg", "audio/ogg", "OGG_OPUS", 48000),
    ("note2.mp3", "audio/mpeg", "LINEAR16", 16000),
    ("note2.m4a", "audio/mp4", "LINEAR16", 16000),
    ("note1.wav", "audio/wav", "LINEAR16", 16000),
    ("note2.3gp", "audio/3gpp", "LINEAR16", 16000),
    ("note3.webm", "audio/webm", "LINEAR16", 16000),
    ("clip.mp4", "video/mp4", "LINEAR16", 16000),
    ("clip.mov", "video/quicktime", "LINEAR16", 16000),
]


@pytest.mark.parametrize(("name", "ctype", "encoding", "rate"), AUDIO_FIXTURES)
async def test_voice_notes_and_video_become_items(
    mms: Mms, name: str, ctype: str, encoding: str, rate: int
) -> None:
    assert get_state(mms.app).extras["speech_engine"] == "google"
    sid, response = await mms.send("", [mms.media(name, ctype)])
    assert "<Response" in response.text  # answered before any media work
    row = await mms.wait_settled(sid)
    assert row["status"] == "done", row
    items = mms.items(sid)
    values = {(t, v) for t, _, v, _, _ in items}
    assert ("contact", "Sarah Johnson") in values
    assert ("location", "Portland") in values
    assert ("note", SPOKEN) in {(t, v) for t, f, v, _, _ in items if f == "transcript"}
    assert {source for *_, source, _ in items} == {"mms"}
    meta = items[0][4]
    assert meta["messageSid"] == sid and SENDER not in json.dumps(meta)
    assert meta["media"]["category"] in ("audio", "video")
    calls = mms.speech.calls
    assert [(c.encoding, c.sample_rate_hertz) for c in calls] == [(encoding, rate)]
    assert mms.replies_to(sid)[0].startswith("Saved ")
    assert mms.temp_files() == []


async def test_caption_card_and_photo_in_one_message(mms: Mms) -> None:
    sid, _ = await mms.send(
        "lunch w/ Mike from Google in Seattle #climbing",
        [mms.media("contact.vcf", "text/vcard"), mms.media("photo.jpg", "image/jpeg"),
         mms.media("photo.png", "image/png")],
    )
    row = await mms.wait_settled(sid)
    assert row["status"] == "done", row
    items = mms.items(sid)
    types = [t for t, *_ in items]
    assert types.count("media") == 2  # both photos, referenced by URL
    photos = [i for i in items if i[0] == "media"]
    assert {p[4]["media"]["format"] for p in photos} == {"jpeg", "png"}
    assert all(p[4]["media"]["url"].startswith(mms.fake.api_url) for p in photos)
    assert all(p[4].get("context", "").startswith("lunch w/ Mike") for p in photos)
    card = [i for i in items if i[4].get("origin") == "media" and i[0] != "media"]
    assert any(t == "contact" for t, *_ in card)
    assert any(t in ("phone", "email") for t, *_ in card)
    caption = [v for t, _, v, _, m in items if m.get("origin") == "body"]
    assert "Mike" in caption and "climbing" in caption and "Seattle" in caption
    assert mms.speech.calls == ()  # nothing was audio


async def test_unsupported_type_is_told_and_the_caption_kept(mms: Mms) -> None:
    url = mms.fake.add_media(None, b"%PDF-1.7\n" + b"x" * 200, "application/pdf")
    sid, _ = await mms.send("notes from the meeting with Dana Scully", [(url, "application/pdf")])
    row = await mms.wait_settled(sid)
    assert row["status"] == "done"
    reply = mms.replies_to(sid)[0]
    assert "can't read application/pdf" in reply
    assert any(v == "Dana Scully" for _, _, v, _, _ in mms.items(sid))


async def test_oversize_media_refused_and_the_sender_told_once(mms: Mms) -> None:
    big = mms.fake.add_media(None, b"\0" * 600_000, "audio/amr")
    lying = mms.fake.add_media(None, b"\0" * 700_000, "audio/amr", omit_length=True)
    sid, _ = await mms.send("", [(big, "audio/amr"), (lying, "audio/amr")])
    row = await mms.wait_settled(sid)
    assert row["status"] == "done" and row["attempts"] == 1  # permanent: no retry
    replies = mms.replies_to(sid)
    assert len(replies) == 1
    assert replies[0].count("Your file is too large (max 0.5 MB).") == 1
    assert mms.items(sid) == []
    assert mms.temp_files() == []


async def test_transient_media_failure_retries_then_succeeds(mms: Mms) -> None:
    url = mms.fake.add_media("MEflaky", b"", "audio/amr", status=503)
    sid, _ = await mms.send("", [(url, "audio/amr")])
    # Let the first attempt fail (two tries inside the lease), then heal the media.
    with trio.fail_after(20):
        while (r := await trio.to_thread.run_sync(mms._message_row, sid)) is None or \
                r["attempts"] < 1 or r["status"] != "received":
            await trio.sleep(0.05)
            if r is not None and r["status"] in ("done", "failed"):
                pytest.fail(f"settled before the media was healed: {r}")
    mms.fake.add_media("MEflaky", (FIXTURES / "note1.amr").read_bytes(), "audio/amr")
    row = await mms.wait_settled(sid)
    assert row["status"] == "done" and row["attempts"] >= 2, row
    assert any(v == "Sarah Johnson" for _, _, v, _, _ in mms.items(sid))
    assert len(mms.replies_to(sid)) == 1
    assert mms.temp_files() == []


async def test_speech_outage_exhausts_attempts_and_says_so(mms: Mms) -> None:
    mms.speech.fail_next(1000, grpc.StatusCode.UNAVAILABLE)
    sid, _ = await mms.send("call Priya Patel", [mms.media("note3.amr", "audio/amr")])
    row = await mms.wait_settled(sid, timeout=60)
    # Out of attempts: the caption is still saved, the sender hears about the note once.
    assert row["status"] == "done" and row["attempts"] == 3, row
    reply = mms.replies_to(sid)
    assert len(reply) == 1 and "couldn't transcribe your voice note" in reply[0]
    assert any(v == "Priya Patel" for _, _, v, _, _ in mms.items(sid))
    breakers = get_state(mms.app).extras["breakers"]()
    assert breakers["speech"] in (1, 2)  # opened by the outage
    assert mms.temp_files() == []


async def test_slow_media_cut_at_the_deadline(mms: Mms) -> None:
    slow = mms.fake.add_media(None, b"#!AMR\n" + b"\0" * 20_000, "audio/amr",
                              trickle_bytes_per_s=2000)
    sid, _ = await mms.send("", [(slow, "audio/amr")])
    row = await mms.wait_settled(sid, timeout=60)
    assert row["status"] == "done" and row["attempts"] == 3
    assert "couldn't download your file right now" in mms.replies_to(sid)[0]
    metrics = get_state(mms.app).metrics
    assert metrics.media_aborts["timeout"] >= 3
    assert mms.temp_files() == []


async def test_media_from_a_foreign_host_is_refused(mms: Mms) -> None:
    url = mms.fake.add_media(None, b"x", "image/jpeg", redirect_to="http://example.com/x.jpg")
    sid, _ = await mms.send("", [(url, "image/jpeg")])
    row = await mms.wait_settled(sid)
    assert row["status"] == "done" and row["attempts"] == 1
    assert "couldn't download your file" in mms.replies_to(sid)[0]
    cdn = [r for r in mms.fake.requests if r.origin == "cdn"]
    assert cdn == []


async def test_pool_stats_report_the_media_and_speech_limiters(mms: Mms) -> None:
    pools = get_state(mms.app).pool_stats()
    assert pools["mediaDownloads"]["total"] == mms.settings.media_download_concurrency
    assert pools["speech"]["total"] == mms.settings.speech_pool_max


# Pacing off, so that the test sets the gate where a congested loop would put it.
@pytest.mark.parametrize("mms_env", [{"PROCESSING_TARGET_LAG_MS": "0"}])
async def test_paced_to_one_job_the_remote_stages_still_overlap(mms: Mms) -> None:
    """Pacing bounds work done here, not waits on other machines: with the gate at one
    token, voice notes still wait on Speech side by side and photos download side by
    side, while at most one job at a time works here (enrich.pipeline.gate)."""
    state = get_state(mms.app)
    assert state.runner is not None
    state.runner.gate.total_tokens = 1
    mms.speech.set_latency(0.3)
    media = [mms.media("note1.amr", "audio/amr") for _ in range(3)]
    media += [mms.media("photo.jpg", "image/jpeg", delay_s=0.3) for _ in range(3)]
    peaks = {"speech": 0, "mediaDownloads": 0}
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            pools = state.pool_stats()
            for name in peaks:
                peaks[name] = max(peaks[name], pools[name]["inUse"])
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        sids = [(await mms.send("", [item]))[0] for item in media]
        for sid in sids:
            assert (await mms.wait_settled(sid))["status"] == "done"
        done.set()
    assert peaks["speech"] >= 2 and peaks["mediaDownloads"] >= 2, peaks
    assert len(mms.speech.calls) == 3


@pytest.mark.parametrize("mms_env", [{"STT_ENGINE": "none"}])
async def test_without_speech_engine_notes_are_kept_untranscribed(mms: Mms) -> None:
    assert get_state(mms.app).extras["speech_engine"] == "none"
    sid, _ = await mms.send("", [mms.media("note1.amr", "audio/amr")])
    row = await mms.wait_settled(sid)
    assert row["status"] == "done"
    [item] = mms.items(sid)
    assert item[0] == "media" and "transcription unavailable" in item[2]
    assert item[4]["transcription"] == "unavailable"
    assert mms.speech.calls == ()


@pytest.mark.parametrize("mms_env", [{"STT_ENGINE": "local"}])
async def test_local_engine_transcribes_offline(mms: Mms) -> None:
    sid, _ = await mms.send("", [mms.media("note1.wav", "audio/wav")])
    row = await mms.wait_settled(sid, timeout=60)
    assert row["status"] == "done", row
    [transcript] = [i for i in mms.items(sid) if i[1] == "transcript"]
    assert "coffee" in transcript[2].lower() or "portland" in transcript[2].lower()
    assert transcript[4]["transcription"]["engine"] == "local"
    assert mms.speech.calls == ()
