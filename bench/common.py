"""Pieces shared by the benches: senders, realistic signed requests, machine facts.

Senders are numbered: sender ``i`` is ``+1555`` followed by ``i`` on 7 digits
(``+15550000042``), so the setup step that links them and the load generator that sends
from them agree without sharing a file. Popularity is Zipf-skewed (sender 0 is the most
active), as real traffic is: a few people text a lot, most text rarely.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import platform
import random
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from enrich.core.signature import compute_signature

WEBHOOK_PATH = "/api/sms/webhook"
DEFAULT_URL = "http://localhost:3000" + WEBHOOK_PATH
BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
DEFAULT_ACCOUNT_SID = "AC" + "be" * 16
OUR_NUMBER = "+15005550006"
#: Size of the generated JPEG-looking image an MMS carries (the fake's ``MEgen{size}``).
DEFAULT_MEDIA_BYTES = 100 * 1024

_FIRST = ["Sarah", "James", "Priya", "Chen", "Maria", "Tom", "Aisha", "Lukas", "Emma", "Diego"]
_LAST = ["Johnson", "Nakamura", "Okafor", "Schmidt", "Garcia", "Patel", "Rossi", "Kim"]
_PLACES = ["Portland", "Berlin", "Austin", "Lisbon", "Denver", "Toronto", "Chicago"]
_ORGS = ["Acme Corp", "Globex", "Initech", "Umbrella Labs", "Stark Industries"]
_TAGS = ["#hiking", "#climbing", "#investor", "#design", "#followup", "#coffee"]
_TEMPLATES = [
    "Met {first} {last} in {place}, works at {org}. {tag}",
    "{first} {last} from {org} wants a demo next Tuesday. {email}",
    "Coffee with {first} in {place} tomorrow 9am {tag}",
    "Note: {first} {last} is moving to {place}. Call {phone}",
    "Great chat with {first} about the {org} partnership {tag} {tag2}",
]


def sender_phone(index: int) -> str:
    """The E.164 number of bench sender ``index`` (0 <= index < 10**7)."""
    if not 0 <= index < 10**7:
        raise ValueError("sender index out of range")
    return f"+1555{index:07d}"


class Zipf:
    """Sample indexes 0..n-1 with probability proportional to 1 / (rank + 1) ** s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        if n < 1:
            raise ValueError("need at least one sender")
        weights = [1.0 / (k + 1) ** s for k in range(n)]
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1]
        self._rng = rng

    def sample(self) -> int:
        return bisect.bisect_left(self._cum, self._rng.random() * self._total)

    def share_of_top(self, k: int) -> float:
        """Expected share of traffic from the ``k`` most active senders."""
        return float(self._cum[min(k, len(self._cum)) - 1] / self._total)


def message_body(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return rng.choice(_TEMPLATES).format(
        first=first, last=last, place=rng.choice(_PLACES), org=rng.choice(_ORGS),
        tag=rng.choice(_TAGS), tag2=rng.choice(_TAGS),
        email=f"{first.lower()}.{last.lower()}@example.com",
        phone=f"+1 503 555 {rng.randrange(100, 200):04d}",
    )


def twilio_form(
    *, sid: str, account_sid: str, sender: str, to: str, body: str,
    media: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The fields Twilio posts for an inbound message, in Twilio's order."""
    form = [
        ("ToCountry", "US"), ("ToState", "CA"), ("SmsMessageSid", sid),
        ("NumMedia", str(len(media))), ("ToCity", ""), ("FromZip", "97201"),
        ("SmsSid", sid), ("FromState", "OR"), ("SmsStatus", "received"),
        ("FromCity", "PORTLAND"), ("Body", body), ("FromCountry", "US"), ("To", to),
        ("ToZip", ""), ("NumSegments", "1"), ("MessageSid", sid), ("AccountSid", account_sid),
        ("From", sender), ("ApiVersion", "2010-04-01"),
    ]
    for i, (url, ctype) in enumerate(media):
        form += [(f"MediaContentType{i}", ctype), (f"MediaUrl{i}", url)]
    return form


def http_request(host_header: str, path: str, form: Sequence[tuple[str, str]],
                 signature: str) -> bytes:
    body = urlencode(form).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n"
        "User-Agent: TwilioProxy/1.1\r\nAccept: */*\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class TrafficSpec:
    """What the generated traffic looks like (picklable: it goes to worker processes)."""

    url: str = DEFAULT_URL
    sign_url: str = DEFAULT_URL
    auth_token: str = ""
    account_sid: str = DEFAULT_ACCOUNT_SID
    to_number: str = OUR_NUMBER
    senders: int = 1000
    zipf_s: float = 1.1
    mms_share: float = 0.3
    duplicate_share: float = 0.02
    media_base: str | None = None  # fake Twilio API origin; None: MMS media URLs are inert
    media_bytes: int = DEFAULT_MEDIA_BYTES
    #: Extra registered media (MediaSid, content type) MMS may carry besides the image.
    extra_media: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: When set, each MMS carries exactly one of these (MediaSid, content type) instead.
    media_choices: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class RequestFactory:
    """Pre-signed HTTP/1.1 requests: new MessageSids, Zipf senders, SMS/MMS, duplicates.

    A duplicate is the exact bytes of a recent request sent again (same MessageSid and
    signature), as Twilio redelivers after a timeout.
    """

    def __init__(self, spec: TrafficSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.zipf = Zipf(spec.senders, spec.zipf_s, self.rng)
        parts = urlsplit(spec.url)
        self.host_header = parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._recent: list[bytes] = []
        self.kinds = {"sms": 0, "mms": 0, "duplicate": 0}

    def media_url(self, media_sid: str) -> str:
        base = self.spec.media_base or "http://127.0.0.1:9"
        return (f"{base}/2010-04-01/Accounts/{self.spec.account_sid}/Messages/"
                f"MM{secrets.token_hex(16)}/Media/{media_sid}")

    def build(self) -> tuple[bytes, str]:
        rng, spec = self.rng, self.spec
        if self._recent and rng.random() < spec.duplicate_share:
            self.kinds["duplicate"] += 1
            return rng.choice(self._recent), "duplicate"
        mms = rng.random() < spec.mms_share
        media: list[tuple[str, str]] = []
        if mms and spec.media_choices:
            sid, ctype = rng.choice(spec.media_choices)
            media.append((self.media_url(sid), ctype))
        elif mms:
            media.append((self.media_url(f"MEgen{spec.media_bytes}"), "image/jpeg"))
            if spec.extra_media and rng.random() < 0.5:
                sid, ctype = rng.choice(spec.extra_media)
                media.append((self.media_url(sid), ctype))
        sid = ("MM" if mms else "SM") + secrets.token_hex(16)
        sender = sender_phone(self.zipf.sample())
        form = twilio_form(sid=sid, account_sid=spec.account_sid, sender=sender,
                           to=spec.to_number, body=message_body(rng), media=media)
        data = http_request(self.host_header, self.path, form,
                            compute_signature(spec.auth_token, spec.sign_url, form))
        self._recent.append(data)
        if len(self._recent) > 200:
            del self._recent[:100]
        kind = "mms" if mms else "sms"
        self.kinds[kind] += 1
        return data, kind


# --- setup ------------------------------------------------------------------------------


async def link_senders(database_url: str, count: int, *, verified: bool = True) -> int:
    """Link senders 0..count-1 to fresh users (enrich.store.link_phone), migrating first.

    Already linked senders keep their user. Returns how many were newly linked.
    """
    import trio

    from enrich.db.migrate import migrate
    from enrich.db.pool import ConnectionPool
    from enrich.store import link_phone

    pool = ConnectionPool(database_url, min_size=0, max_size=4, acquire_timeout=30)
    try:
        async with pool.connection(timeout=30) as conn:
            await migrate(conn)
            cur = await conn.execute(
                "SELECT phone_number FROM user_phone_numbers WHERE verified = %s", (verified,))
            known = {str(r[0]) for r in await cur.fetchall()}
        todo = [p for p in (sender_phone(i) for i in range(count)) if p not in known]

        async def link_some(phones: list[str]) -> None:
            for phone in phones:
                await link_phone(pool, uuid.uuid4(), phone, verified=verified)

        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(link_some, todo[k::4])
        return len(todo)
    finally:
        await pool.close()


def open_messages(database_url: str) -> int:
    """Messages the pipeline still has to process (received or processing)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True, application_name="enrich-bench") as c:
        row = c.execute("SELECT count(*) FROM inbound_messages "
                        "WHERE status IN ('received', 'processing')").fetchone()
    return int(row[0]) if row else 0


def wait_pipeline_idle(database_url: str, timeout: float = 300.0) -> float:
    """Wait until every accepted message was processed; the seconds it took."""
    started = time.monotonic()
    while open_messages(database_url):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"pipeline still busy after {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


# --- machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0],
        "platform": platform.platform(), "loadavg": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


def env_int(name: str, default: int, env: dict[str, str] | None = None) -> int:
    raw = (env if env is not None else os.environ).get(name, "").strip()
    return int(raw) if raw else default


def env_float(name: str, default: float, env: dict[str, str] | None = None) -> float:
    raw = (env if env is not None else os.environ).get(name, "").strip()
    return float(raw) if raw else default


def out_path(name: str, out_dir: Path | None = None) -> Path:
    directory = out_dir or OUT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


@dataclass(frozen=True)
class CpuLayout:
    """Which CPUs the webhook process gets to itself, and which everything else shares.

    The deployment the suite measures with ``--pin``: the web process (or the trivial
    server, for the ceiling) on the last ``web`` CPUs, which nothing else at normal
    priority uses; PostgreSQL, Valkey, the fakes and the load generator on the others;
    the worker (niced, paced on the acks) anywhere, as the systemd units' ``CPUAffinity=``
    lines recommend (see bench/RESULTS.md for why).
    """

    web: frozenset[int]
    rest: frozenset[int]

    @classmethod
    def dedicated(cls, web_cpus: int = 1) -> CpuLayout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) <= web_cpus:
            raise ValueError(f"pinning needs more than {web_cpus} CPU(s); this process may "
                             f"use {len(cpus)}")
        return cls(web=frozenset(cpus[-web_cpus:]), rest=frozenset(cpus[:-web_cpus]))


@contextlib.contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block with this thread on ``cpus`` (processes it starts inherit them)."""
    if not cpus:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)
