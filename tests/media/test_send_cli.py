"""`enrich send --media …` against a running server: the local MMS loop, for real.

The CLI serves the files itself from a fake Twilio on --media-port (the server's
TWILIO_API_BASE_URL), signs the webhook, and prints the reply SMS the server sends back
through that same fake.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import psycopg
import trio

from enrich.app import create_app, get_state
from enrich.server import serve_app
from enrich.store import link_phone
from tests.conftest import make_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "media"
ACCOUNT = "AC" + "d" * 32
TOKEN = "send-cli-token-0123456789abcdef"
SENDER = "+15554440000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_send_attaches_every_media_file_and_prints_the_reply(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    port, media_port = _free_port(), _free_port()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{media_port}",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORT": str(port),
        "STT_ENGINE": "none",
    }
    settings = make_settings(tmp_path, **env)
    app = create_app(settings)
    stop = trio.Event()
    await nursery.start(
        lambda task_status: serve_app(app, settings, host="127.0.0.1", port=port,
                                      shutdown_trigger=stop.wait, task_status=task_status)
    )
    await link_phone(get_state(app).services.db, uuid.uuid4(), SENDER, verified=True)

    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("DATABASE", "REDIS", "TWILIO", "PUBLIC_URL", "PORT"))}
    child_env.update(env, ENRICH_DATA_DIR=str(tmp_path / "cli"), TWILIO_PHONE_NUMBER=
                     settings.twilio_phone_number or "")
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "enrich", "send", "--from", SENDER,
             "--body", "Met Sarah Johnson in Portland",
             "--media", str(FIXTURES / "contact.vcf"),
             "--media", str(FIXTURES / "photo.jpg"), str(FIXTURES / "note1.amr"),
             "--media-port", str(media_port)],
            env=child_env, capture_stdout=True, capture_stderr=True, check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "HTTP 200 (accepted)" in out
    assert f"Reply SMS to {SENDER}: Saved " in out
    stop.set()

    with psycopg.connect(database_url) as conn:
        media = conn.execute("SELECT media FROM inbound_messages").fetchone()
        cats = conn.execute(
            "SELECT source_metadata->'media'->>'category' FROM enrichment_items "
            "WHERE source_metadata ? 'media'"
        ).fetchall()
    assert media is not None and len(media[0]) == 3  # every --media file was attached
    assert {c[0] for c in cats} == {"vcard", "image", "audio"}
