"""The real `enrich serve` process: systemd notify, watchdog, SIGTERM under load.

These run the console script in a subprocess against the test's PostgreSQL and Redis,
so they exercise the whole start-up and shutdown path exactly as systemd would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from enrich.cli_tools import build_form
from enrich.core.signature import compute_signature

pytestmark = pytest.mark.slow

TOKEN = "service-test-token-0123456789abcdef"
ACCOUNT = "AC" + "b" * 32
SENDER = "+15551110000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def _start(tmp_path: Path, database_url: str, redis_url: str, port: int,
           notify_path: str | None, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABASE", "REDIS", "TWILIO", "NOTIFY", "WATCHDOG"))
    }
    env.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ENRICH_DATA_DIR": str(tmp_path / "data"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        "SHUTDOWN_GRACE_SECONDS": "3",
        "DATABASE_POOL_MIN": "1",
        "REDIS_POOL_MIN": "1",
        **extra,
    })
    if notify_path:
        env["NOTIFY_SOCKET"] = notify_path
    return subprocess.Popen(
        [sys.executable, "-m", "enrich", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _read_notifications(sock: socket.socket, until: str, limit_s: float) -> list[str]:
    import time

    seen: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.extend(data.split("\n"))
        if any(line.startswith(until) for line in seen):
            break
    return seen


def _link(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO user_phone_numbers (user_id, phone_number, verified)"
            " VALUES (%s, %s, true)",
            (uuid.uuid4(), SENDER),
        )


def test_ready_watchdog_and_stopping(
    tmp_path: Path, database_url: str, redis_url: str,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    port = _free_port()
    proc = _start(tmp_path, database_url, redis_url, port, path, WATCHDOG_USEC="1000000")
    try:
        seen = _read_notifications(sock, "READY=1", 30)
        assert "READY=1" in seen, proc.stderr.read().decode() if proc.poll() is not None else seen
        pings = [m for m in _read_notifications(sock, "NEVER", 2.0) if m == "WATCHDOG=1"]
        assert len(pings) >= 2  # pinging at half of WatchdogSec=1s
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        seen = _read_notifications(sock, "STOPPING=1", 15)
        assert "STOPPING=1" in seen
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sigterm_under_load_loses_no_acknowledged_message(
    tmp_path: Path, database_url: str, redis_url: str,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    _link(database_url)
    port = _free_port()
    proc = _start(tmp_path, database_url, redis_url, port, path,
                  RATE_LIMIT_MESSAGES_PER_HOUR="100000")
    url = f"http://127.0.0.1:{port}/api/sms/webhook"
    acked: list[str] = []
    refused = 0
    try:
        seen = await trio.to_thread.run_sync(_read_notifications, sock, "READY=1", 30)
        assert "READY=1" in seen

        async def client(stop: trio.Event) -> None:
            nonlocal refused
            async with httpx.AsyncClient(timeout=10) as http:
                while not stop.is_set():
                    form = build_form(account_sid=ACCOUNT, sender=SENDER, to="+15550001111",
                                      body="Met Sarah Johnson in Portland #hiking", media=[])
                    sig = compute_signature(TOKEN, url, form)
                    try:
                        r = await http.post(url, data=dict(form),
                                            headers={"X-Twilio-Signature": sig})
                    except httpx.TransportError:
                        refused += 1  # the listener closed: never acknowledged
                        await trio.sleep(0.01)
                        continue
                    if r.status_code == 200 and r.headers["X-Enrich-Outcome"] == "accepted":
                        acked.append(dict(form)["MessageSid"])

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(client, stop)
            await trio.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(proc.wait, 30)
            stop.set()
        assert proc.returncode == 0
        assert len(acked) > 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Every acknowledged message is stored. Restart: the ones not finished get done.
    port2 = _free_port()
    proc2 = _start(tmp_path, database_url, redis_url, port2, None,
                   RECOVERY_INTERVAL_SECONDS="0.2")
    try:
        with trio.fail_after(60):
            while True:
                with psycopg.connect(database_url) as conn:
                    rows = dict(conn.execute(
                        "SELECT message_sid, status FROM inbound_messages"
                        " WHERE message_sid = ANY(%s)", (acked,)
                    ).fetchall())
                assert set(rows) == set(acked)  # nothing acknowledged is missing
                if all(s == "done" for s in rows.values()):
                    break
                await trio.sleep(0.2)
        with psycopg.connect(database_url) as conn:
            per_message = conn.execute(
                "SELECT message_sid, count(*) FROM enrichment_items"
                " WHERE message_sid = ANY(%s) GROUP BY message_sid", (acked,)
            ).fetchall()
        counts = {sid: n for sid, n in per_message}
        assert set(counts) == set(acked)
        assert len(set(counts.values())) == 1  # the same text: the same items, once each
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(timeout=30)


def test_port_option_is_the_port_signatures_and_instance_use(
    tmp_path: Path, database_url: str, redis_url: str,
    notify_socket: tuple[socket.socket, str],
) -> None:
    """`enrich serve --port P` without PUBLIC_URL checks signatures over
    http://localhost:P (the URL Twilio is given in local testing), not the PORT default."""
    sock, path = notify_socket
    port = _free_port()
    proc = _start(tmp_path, database_url, redis_url, port, path, PUBLIC_URL="")
    try:
        assert "READY=1" in _read_notifications(sock, "READY=1", 30)
        url = f"http://localhost:{port}/api/sms/webhook"
        form = build_form(account_sid=ACCOUNT, sender="+15550009999", to="+15550001111",
                          body="hello", media=[])
        right = compute_signature(TOKEN, url, form)
        wrong = compute_signature(TOKEN, "http://localhost:3000/api/sms/webhook", form)
        post = f"http://127.0.0.1:{port}/api/sms/webhook"
        answer = httpx.post(post, data=dict(form), headers={"X-Twilio-Signature": right},
                            timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Enrich-Outcome"] == "unknown_sender"
        refused = httpx.post(post, data=dict(form), headers={"X-Twilio-Signature": wrong},
                             timeout=10)
        assert refused.status_code == 403
        # The default INSTANCE_ID (host-port) names its PostgreSQL connections.
        with psycopg.connect(database_url) as conn:
            names = {r[0] for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity").fetchall()}
        assert f"enrich:{socket.gethostname()}-{port}" in names
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
