"""``enrich send`` and ``enrich phone``: try the service by hand, provision senders.

``send`` builds a Twilio-shaped webhook, signs it with the configured token (in local
mode the generated one from the data directory) and posts it to a running server. With
``--media`` it serves the files itself through the fake Twilio (enrich.testing), on the
port local mode points TWILIO_API_BASE_URL at, and waits for the reply SMS the server
sends back, so the whole MMS path can be tried on one machine.
"""

from __future__ import annotations

import argparse
import mimetypes
import secrets
import sys
import time
import uuid
from pathlib import Path

import httpx
import trio

from enrich.config import Settings
from enrich.core.phone import InvalidPhoneNumber, normalize_e164
from enrich.core.signature import SIGNATURE_HEADER, compute_signature
from enrich.local import (
    LOCAL_ACCOUNT_SID,
    LOCAL_MEDIA_PORT,
    apply_local_defaults,
    read_local_token,
    start_embedded,
)

WEBHOOK_PATH = "/api/sms/webhook"


def _settings() -> Settings:
    from enrich.cli import _settings as load

    return apply_local_defaults(load())


def _phone(raw: str) -> str:
    try:
        return normalize_e164(raw)
    except InvalidPhoneNumber:
        raise SystemExit(
            f"enrich: {raw!r} is not a phone number (use E.164, e.g. +15551230001)"
        ) from None


def build_form(
    *, account_sid: str, sender: str, to: str, body: str, media: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """A form shaped like Twilio's inbound message webhook."""
    form = [
        ("ToCountry", "US"),
        ("SmsMessageSid", sid := ("MM" if media else "SM") + secrets.token_hex(16)),
        ("NumMedia", str(len(media))),
        ("SmsSid", sid),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", to),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", account_sid),
        ("From", sender),
        ("ApiVersion", "2010-04-01"),
    ]
    for i, (url, ctype) in enumerate(media):
        form += [(f"MediaUrl{i}", url), (f"MediaContentType{i}", ctype)]
    return form


def cmd_send(args: argparse.Namespace) -> int:
    settings = _settings()
    token = settings.twilio_auth_token or read_local_token(settings.data_dir)
    if not token:
        print("enrich: no TWILIO_AUTH_TOKEN and no local token in "
              f"{settings.data_dir}: start `enrich serve` once first", file=sys.stderr)
        return 2
    account_sid = settings.twilio_account_sid or LOCAL_ACCOUNT_SID
    sign_url = settings.effective_public_url + WEBHOOK_PATH
    url = args.url or f"http://127.0.0.1:{settings.port}{WEBHOOK_PATH}"
    files = [Path(f) for f in args.media or []]
    for f in files:
        if not f.is_file():
            print(f"enrich: no such file: {f}", file=sys.stderr)
            return 2

    fake_thread = None
    media: list[tuple[str, str]] = []
    if files or args.wait > 0:
        from enrich.testing.fake_twilio import FakeTwilioThread

        fake_thread = FakeTwilioThread(account_sid, token, api_port=args.media_port)
        try:
            fake = fake_thread.start()
        except OSError as exc:
            if files:
                print(f"enrich: cannot serve media on port {args.media_port}: {exc}",
                      file=sys.stderr)
                return 2
            fake_thread = None
        else:
            for f in files:
                ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                # Served from the API origin itself (no CDN hop): local mode allows only
                # that origin unless MEDIA_REDIRECT_HOSTS says otherwise.
                media.append((fake.add_media(None, f.read_bytes(), ctype, hops=0), ctype))
    try:
        form = build_form(account_sid=account_sid, sender=_phone(args.sender),
                          to=settings.twilio_phone_number or "+15005550006", body=args.body,
                          media=media)
        signature = compute_signature(token, sign_url, form)
        response = httpx.post(url, data=dict(form), headers={SIGNATURE_HEADER: signature},
                              timeout=10)
        print(f"HTTP {response.status_code} "
              f"({response.headers.get('X-Enrich-Outcome', 'no outcome')})")
        print(response.text)
        if fake_thread is not None and args.wait > 0 and response.status_code == 200:
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                sent = fake_thread.fake.sent_messages
                if sent:
                    print(f"Reply SMS to {sent[-1].to}: {sent[-1].body}")
                    break
                time.sleep(0.2)
            else:
                print(f"(no reply SMS within {args.wait:.0f}s: is the server in local mode "
                      f"with TWILIO_API_BASE_URL=http://127.0.0.1:{args.media_port}?)")
        return 0 if response.status_code < 400 else 1
    finally:
        if fake_thread is not None:
            fake_thread.stop()


async def _with_pool(settings: Settings, fn):  # type: ignore[no-untyped-def]
    from enrich.db.migrate import migrate
    from enrich.db.pool import ConnectionPool

    assert settings.database_url is not None
    pool = ConnectionPool(settings.database_url, min_size=0, max_size=1)
    try:
        async with pool.connection(timeout=30) as conn:
            await migrate(conn)
        return await fn(pool)
    finally:
        await pool.close()


def _invalidate_everywhere(settings: Settings, phone: str) -> None:
    """Tell running servers to drop cached lookups for ``phone`` (best effort)."""
    from enrich.invalidation import publish_invalidation_sync

    if settings.redis_url:
        publish_invalidation_sync(settings.redis_url, phone)


def cmd_phone_link(args: argparse.Namespace) -> int:
    from enrich.store import link_phone

    settings, embedded = start_embedded(_settings())
    phone = _phone(args.phone)
    user_id = uuid.UUID(args.user_id) if args.user_id else uuid.uuid4()
    try:
        trio.run(_with_pool, settings,
                 lambda pool: link_phone(pool, user_id, phone, verified=args.verified))
        _invalidate_everywhere(settings, phone)
    finally:
        if embedded.postgres is not None or embedded.redis is not None:
            pass  # local mode: the servers keep running for `enrich serve`
    state = "verified" if args.verified else "unverified"
    print(f"linked {phone} to user {user_id} ({state})")
    return 0


def cmd_phone_list(args: argparse.Namespace) -> int:
    from enrich.core.phone import mask_phone
    from enrich.store import list_phones

    settings, _ = start_embedded(_settings())
    rows = trio.run(_with_pool, settings, list_phones)
    for user_id, phone, verified in rows:
        shown = phone if args.show_numbers else mask_phone(phone)
        print(f"{user_id}  {shown}  {'verified' if verified else 'unverified'}")
    if not rows:
        print("no linked phone numbers")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    send = sub.add_parser("send", help="post a signed, Twilio-shaped webhook to a server")
    send.add_argument("--from", dest="sender", required=True, help="sender phone number")
    send.add_argument("--body", default="", help="message text")
    send.add_argument("--media", nargs="+", action="extend", default=[], metavar="FILE",
                      help="files to attach (MMS); repeat or list several")
    send.add_argument("--url", help="webhook URL (default http://127.0.0.1:PORT/api/sms/webhook)")
    send.add_argument("--media-port", type=int, default=LOCAL_MEDIA_PORT,
                      help=f"port of the local media/Twilio fake (default {LOCAL_MEDIA_PORT})")
    send.add_argument("--wait", type=float, default=15.0,
                      help="seconds to wait for the reply SMS (0: don't wait)")
    send.set_defaults(func=cmd_send)

    phone = sub.add_parser("phone", help="link and list sender phone numbers")
    phone_sub = phone.add_subparsers(dest="phone_command", required=True)
    link = phone_sub.add_parser("link", help="link a phone number to a user")
    link.add_argument("--user-id", help="user UUID (default: a new one)")
    link.add_argument("--phone", required=True)
    link.add_argument("--verified", action="store_true", help="mark it verified now")
    link.set_defaults(func=cmd_phone_link)
    lst = phone_sub.add_parser("list", help="list linked numbers (masked)")
    lst.add_argument("--show-numbers", action="store_true", help="print numbers unmasked")
    lst.set_defaults(func=cmd_phone_list)
