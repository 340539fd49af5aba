"""A fake of Twilio's REST API and media CDN, over real HTTP/1.1 on loopback.

One fake, two listeners on 127.0.0.1, on different ports so that a client's media policy
can tell the hosts apart exactly as it must tell ``api.twilio.com`` from the CDN:

- the **API origin** (``fake.api_url``) speaks the parts of ``/2010-04-01`` we use:

  - ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{MediaSid}``
    needs HTTP Basic ``AccountSid:AuthToken`` (401 otherwise), then redirects (307 by
    default) to the CDN origin at ``/media/{MediaSid}?hop=1&Expires=…&Signature=…``.
    The CDN checks the signature (403 otherwise), so a client must follow the redirect
    exactly as given, and may redirect once more (``hops=2``) before serving the bytes.
    Media is looked up by MediaSid only; the MessageSid in the path is not checked.
  - ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (Basic auth; form fields To,
    From, Body, MediaUrl (repeatable), StatusCallback, MessagingServiceSid) answers 201
    with a body shaped like Twilio's message resource (the ``twilio`` library parses it)
    and records the send. Errors use Twilio's JSON error shape
    ``{"code", "message", "more_info", "status"}``.

- the **CDN origin** (``fake.cdn_url``) serves the signed ``/media/…`` URLs and records
  whether each request carried an ``Authorization`` header, so tests can prove that
  credentials never leave the API origin. It may also be addressed as ``localhost``
  (``cdn_hostname="localhost"``); it is bound to 127.0.0.1 either way.

Media is registered with :meth:`FakeTwilio.add_media` (bytes plus misbehaviour: a lying or
missing Content-Length, a delay before the headers, a trickle rate, a redirect to a
foreign host, one or two hops, an error status). A MediaSid of the form ``MEgen{size}``
(``MEgen5242880``) serves ``size`` bytes of a JPEG-looking payload generated on the fly,
never stored, so a bench can download many large items without the fake holding them.

Control endpoints on the API origin (no auth; JSON in and out), for the bench and other
processes; they are not written to the request log:

- ``POST /_fake/media`` with ``{"data_base64": str, "content_type": str, "media_sid"?,
  "message_sid"?, "declared_length"?, "omit_length"?, "delay_s"?, "trickle_bytes_per_s"?,
  "redirect_to"?, "hops"?, "status"?, "redirect_status"?}`` → 201 ``{"media_sid", "url"}``
- ``POST /_fake/fail_sends`` with ``{"count": n, "status": 500, "code"?, "message"?}``
- ``POST /_fake/config`` with ``{"send_latency_s": float}``
- ``GET /_fake/messages``, ``GET /_fake/requests[?origin=api|cdn]``, ``POST /_fake/reset``,
  ``GET /_fake/health``

Pointing the real ``twilio`` library (9.x) at the fake: every product domain of the REST
client is a :class:`twilio.base.domain.Domain` whose ``base_url`` attribute is read on each
request (``Domain.absolute_url``), and ``client.api`` is created once and cached. So::

    client = twilio.rest.Client(account_sid, auth_token)
    client.api.base_url = fake.api_url          # i.e. TWILIO_API_BASE_URL
    client.messages.create(to=..., from_=..., body=...)

works for the sync client (``requests``) and for ``create_async`` with an async http
client. ``edge``/``region`` only rewrite ``*.twilio.com`` host names and cannot do this.
Leave ``edge``/``region`` (and TWILIO_EDGE/TWILIO_REGION) unset: ``get_hostname`` would
otherwise rewrite the fake's host name too.

In-process use, in a trio test::

    async with open_fake_twilio(sid, token) as fake:
        url = fake.add_media("ME" + "0" * 32, data, "audio/amr")

and from sync code or another trio run (the fake runs its own trio loop in a thread)::

    with FakeTwilioThread(sid, token) as fake:
        ...

Standalone: ``python -m enrich.testing.fake_twilio --api-port 0 --cdn-port 0`` prints one
JSON line ``{"api_url": …, "cdn_url": …, "account_sid": …}`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import trio

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "FakeTwilio",
    "FakeTwilioThread",
    "MediaSpec",
    "RequestRecord",
    "SentMessage",
    "count_segments",
    "generated_media_size",
    "main",
    "new_sid",
    "open_fake_twilio",
]

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "fake-auth-token-" + "0" * 16
API_VERSION = "2010-04-01"

Origin = Literal["api", "cdn"]

# Reads and writes go in 64 KiB pieces: large enough to keep a 100-download bench cheap,
# small enough that a size cap on the client side trips close to the cap.
_CHUNK = 64 * 1024
# Control uploads carry base64 media (5 MB MMS ≈ 7 MB encoded); anything beyond is a bug.
_MAX_REQUEST_BODY = 64 * 1024 * 1024
# The request log is for assertions, not an archive: a bench run must not grow it forever.
_MAX_REQUEST_LOG = 20_000
# Signed CDN URLs expire like Twilio's (a few minutes); the fake's are generous.
_CDN_URL_TTL_S = 600

_MEDIA_PATH = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<message>[^/]+)"
    r"/Media/(?P<media>[^/.]+)$"
)
_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_CDN_PATH = re.compile(r"^/media/(?P<media>[^/]+)$")
_GENERATED_SID = re.compile(r"^MEgen(?P<size>[0-9]{1,12})$")

# A JFIF header and an end-of-image marker around filler: enough for a sniffer to call it
# a JPEG, which is all a generated payload has to look like.
_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_JPEG_TAIL = b"\xff\xd9"
_FILLER = bytes(range(0x20, 0x7F)) * (_CHUNK // 95 + 1)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def generated_media_size(media_sid: str) -> int | None:
    """The size asked for by a ``MEgen{size}`` MediaSid, or None for any other SID."""
    match = _GENERATED_SID.match(media_sid)
    return int(match["size"]) if match else None


def _generated_chunks(size: int) -> Iterator[bytes]:
    """``size`` bytes of JPEG-looking payload, in chunks, without building it whole."""
    if size <= len(_JPEG_HEAD) + len(_JPEG_TAIL):
        yield (_JPEG_HEAD + _JPEG_TAIL)[:size]
        return
    yield _JPEG_HEAD
    remaining = size - len(_JPEG_HEAD) - len(_JPEG_TAIL)
    while remaining > 0:
        piece = min(remaining, _CHUNK)
        yield _FILLER[:piece]
        remaining -= piece
    yield _JPEG_TAIL


def _bytes_chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), _CHUNK):
        yield bytes(view[start : start + _CHUNK])


# GSM 03.38: the basic set costs one septet, the extension set two; anything else forces
# UCS-2. Used only to fill num_segments the way Twilio would.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")


def count_segments(body: str) -> int:
    """Number of SMS segments Twilio would bill for ``body`` (GSM-7 or UCS-2)."""
    if not body:
        return 1
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in body):
        septets = sum(2 if ch in _GSM_EXTENDED else 1 for ch in body)
        return 1 if septets <= 160 else -(-septets // 153)
    # UCS-2 counts UTF-16 code units: characters outside the BMP take two.
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


def _rfc2822(moment: datetime) -> str:
    """Twilio's date format: ``Thu, 30 Jul 2015 20:12:31 +0000``."""
    return format_datetime(moment.astimezone(UTC)).replace("-0000", "+0000")


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's (legacy) REST error body; the ``twilio`` library reads code and message."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


_DEFAULT_ERROR_CODES = {400: 21211, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}
_REASONS = {
    200: "OK",
    201: "Created",
    302: "Found",
    301: "Moved Permanently",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic …`` value, else None."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class MediaSpec:
    """One media item and how the fake misbehaves when serving it.

    ``declared_length``: a Content-Length to send instead of the true one (a lie); the
    true bytes follow and the connection is closed. ``omit_length``: send no
    Content-Length at all (chunked to HTTP/1.1 clients). ``delay_s``: wait before the
    response headers. ``trickle_bytes_per_s``: pace the body. ``redirect_to``: the API
    redirects there (an absolute URL, e.g. a foreign host) instead of to the CDN.
    ``hops``: 0 serves from the API origin itself, 1 redirects to the CDN, 2 adds a
    CDN-to-CDN redirect. ``status``: served where the bytes would be (with a small
    text body) instead of the media.
    """

    media_sid: str
    content_type: str
    data: bytes = b""
    generated_size: int | None = None
    declared_length: int | None = None
    omit_length: bool = False
    delay_s: float = 0.0
    trickle_bytes_per_s: float | None = None
    redirect_to: str | None = None
    hops: int = 1
    status: int = 200
    redirect_status: int = 307

    def __post_init__(self) -> None:
        if not self.media_sid or "/" in self.media_sid or "?" in self.media_sid:
            raise ValueError(f"media_sid must be a plain path segment: {self.media_sid!r}")
        if self.hops not in (0, 1, 2):
            raise ValueError(f"hops must be 0, 1 or 2, got {self.hops}")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        if self.trickle_bytes_per_s is not None and self.trickle_bytes_per_s <= 0:
            raise ValueError("trickle_bytes_per_s must be > 0")
        if self.declared_length is not None and self.declared_length < 0:
            raise ValueError("declared_length must be >= 0")
        if self.declared_length is not None and self.omit_length:
            raise ValueError("declared_length and omit_length exclude each other")
        if not 200 <= self.status <= 599 or 300 <= self.status < 400:
            raise ValueError(f"status must be 2xx, 4xx or 5xx, got {self.status}")
        if self.redirect_status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect_status must be a redirect, got {self.redirect_status}")
        if self.redirect_to is not None and urlsplit(self.redirect_to).scheme not in (
            "http",
            "https",
        ):
            raise ValueError("redirect_to must be an absolute http(s) URL")

    @property
    def size(self) -> int:
        return self.generated_size if self.generated_size is not None else len(self.data)

    def chunks(self) -> Iterator[bytes]:
        if self.generated_size is not None:
            return _generated_chunks(self.generated_size)
        return _bytes_chunks(self.data)


@dataclass(frozen=True)
class SentMessage:
    """One accepted ``Messages.json`` create, as recorded by the fake."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    media_urls: tuple[str, ...]
    status_callback: str | None
    messaging_service_sid: str | None
    date_created: datetime

    def resource(self) -> dict[str, Any]:
        """The JSON body Twilio answers a create with (status ``queued``/``accepted``)."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        created = _rfc2822(self.date_created)
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": created,
            "date_sent": None,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": str(count_segments(self.body)),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            # With only a MessagingServiceSid Twilio picks the sender later: "accepted".
            "status": "queued" if self.from_ else "accepted",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "media_urls": list(self.media_urls),
            "status_callback": self.status_callback,
            "messaging_service_sid": self.messaging_service_sid,
            "date_created": self.date_created.isoformat(),
        }


@dataclass(frozen=True)
class RequestRecord:
    """One request seen by an origin. Never holds credentials: only whether they came."""

    origin: Origin
    method: str
    path: str
    query: str
    host: str
    has_authorization: bool
    status: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _SendFailure:
    status: int
    code: int
    message: str


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    media: MediaSpec | None = None


def _json_reply(status: int, payload: object, *extra: tuple[str, str]) -> _Reply:
    body = json.dumps(payload).encode()
    return _Reply(status, (("Content-Type", "application/json"), *extra), body)


def _error_reply(status: int, message: str, code: int | None = None) -> _Reply:
    code = code if code is not None else _DEFAULT_ERROR_CODES.get(status, status * 100)
    return _json_reply(status, twilio_error(status, code, message))


def _text_reply(status: int, text: str) -> _Reply:
    return _Reply(status, (("Content-Type", "text/plain; charset=utf-8"),), text.encode())


@dataclass
class _State:
    """Everything mutable, guarded by one lock: the fake is read from other threads."""

    media: dict[str, MediaSpec] = field(default_factory=dict)
    messages: list[SentMessage] = field(default_factory=list)
    requests: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=_MAX_REQUEST_LOG))
    failures: deque[_SendFailure] = field(default_factory=deque)
    send_latency_s: float = 0.0


class FakeTwilio:
    """The fake's state and HTTP handling; start it with :func:`open_fake_twilio`,
    :class:`FakeTwilioThread` or :meth:`serve`.

    All public methods are thread-safe and synchronous, so a test running in another
    thread (or another trio run) can drive a fake served by :class:`FakeTwilioThread`.
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        cdn_hostname: str = "127.0.0.1",
    ) -> None:
        if not account_sid.startswith("AC"):
            raise ValueError("account_sid must start with 'AC'")
        if not auth_token:
            raise ValueError("auth_token must not be empty")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._cdn_hostname = cdn_hostname
        # Signs CDN URLs: a fresh secret per fake, so URLs cannot be forged or reused.
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._state = _State()
        self._api_port: int | None = None
        self._cdn_port: int | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the API origin, e.g. ``http://127.0.0.1:41234`` (no trailing /)."""
        if self._api_port is None:
            raise RuntimeError("the fake is not serving yet")
        return f"http://127.0.0.1:{self._api_port}"

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN origin, under ``cdn_hostname`` (no trailing /)."""
        if self._cdn_port is None:
            raise RuntimeError("the fake is not serving yet")
        return f"http://{self._cdn_hostname}:{self._cdn_port}"

    def media_url(self, media_sid: str, message_sid: str | None = None) -> str:
        """The API URL Twilio would put in ``MediaUrlN`` for ``media_sid``."""
        message_sid = message_sid or new_sid("MM")
        return (
            f"{self.api_url}/{API_VERSION}/Accounts/{self.account_sid}"
            f"/Messages/{message_sid}/Media/{media_sid}"
        )

    def messages_url(self) -> str:
        return f"{self.api_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    # -- test controls -----------------------------------------------------------------

    def add_media(
        self,
        media_sid: str | None,
        data: bytes,
        content_type: str,
        *,
        message_sid: str | None = None,
        declared_length: int | None = None,
        omit_length: bool = False,
        delay_s: float = 0.0,
        trickle_bytes_per_s: float | None = None,
        redirect_to: str | None = None,
        hops: int = 1,
        status: int = 200,
        redirect_status: int = 307,
    ) -> str:
        """Register media and return its API URL (as in ``MediaUrlN``).

        ``media_sid=None`` draws a fresh ``ME…`` SID. See :class:`MediaSpec` for the
        misbehaviour options. Registering a SID again replaces it.
        """
        spec = MediaSpec(
            media_sid=media_sid or new_sid("ME"),
            content_type=content_type,
            data=bytes(data),
            declared_length=declared_length,
            omit_length=omit_length,
            delay_s=delay_s,
            trickle_bytes_per_s=trickle_bytes_per_s,
            redirect_to=redirect_to,
            hops=hops,
            status=status,
            redirect_status=redirect_status,
        )
        self._register(spec)
        return self.media_url(spec.media_sid, message_sid)

    def _register(self, spec: MediaSpec) -> None:
        with self._lock:
            self._state.media[spec.media_sid] = spec

    def fail_next_sends(
        self, n: int, status: int = 500, *, code: int | None = None, message: str | None = None
    ) -> None:
        """Make the next ``n`` message creates fail with ``status`` (queued after any
        failures already pending). Failed attempts are not recorded as sent."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        failure = _SendFailure(
            status=status,
            code=code if code is not None else _DEFAULT_ERROR_CODES.get(status, status * 100),
            message=message or _REASONS.get(status, "Error"),
        )
        with self._lock:
            self._state.failures.extend([failure] * n)

    @property
    def send_latency_s(self) -> float:
        with self._lock:
            return self._state.send_latency_s

    @send_latency_s.setter
    def send_latency_s(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._state.send_latency_s = seconds

    @property
    def sent_messages(self) -> tuple[SentMessage, ...]:
        with self._lock:
            return tuple(self._state.messages)

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Requests seen by both origins, oldest first (the last 20,000)."""
        with self._lock:
            return tuple(self._state.requests)

    def requests_to(self, origin: Origin) -> tuple[RequestRecord, ...]:
        return tuple(r for r in self.requests if r.origin == origin)

    def reset(self) -> None:
        """Forget media, messages, the request log, pending failures and latency."""
        with self._lock:
            self._state = _State()

    # -- serving -----------------------------------------------------------------------

    async def serve(
        self,
        *,
        api_port: int = 0,
        cdn_port: int = 0,
        task_status: trio.TaskStatus[FakeTwilio] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind both origins on 127.0.0.1 and serve until cancelled."""
        api_listeners = await trio.open_tcp_listeners(api_port, host="127.0.0.1")
        cdn_listeners = await trio.open_tcp_listeners(cdn_port, host="127.0.0.1")
        try:
            self._api_port = _listener_port(api_listeners)
            self._cdn_port = _listener_port(cdn_listeners)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    trio.serve_listeners, partial(self._serve_connection, "api"), api_listeners
                )
                nursery.start_soon(
                    trio.serve_listeners, partial(self._serve_connection, "cdn"), cdn_listeners
                )
                task_status.started(self)
        finally:
            for listener in (*api_listeners, *cdn_listeners):
                await trio.aclose_forcefully(listener)

    async def _serve_connection(self, origin: Origin, stream: trio.SocketStream) -> None:
        # A misbehaving client must never take the listener (and the test) down with it.
        try:
            async with stream:
                await self._connection_loop(origin, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    async def _connection_loop(self, origin: Origin, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError(f"unexpected event {type(event).__name__}")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            body = bytearray()
            too_large = False
            while True:
                part = await _next_event(conn, stream)
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > _MAX_REQUEST_BODY:
                        too_large = True
                    else:
                        body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            method = event.method.decode("ascii")
            target = urlsplit(event.target.decode("latin-1"))
            if too_large:
                reply = _text_reply(413, "request body too large")
            else:
                reply = await self._dispatch(
                    origin, method, target.path, target.query, headers, bytes(body)
                )
            if not target.path.startswith("/_fake/"):
                self._record(
                    RequestRecord(
                        origin=origin,
                        method=method,
                        path=target.path,
                        query=target.query,
                        host=headers.get("host", ""),
                        has_authorization="authorization" in headers,
                        status=reply.status,
                    )
                )
            keep_open = await self._write_reply(conn, stream, reply, head_only=method == "HEAD")
            if not keep_open or conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._state.requests.append(record)

    async def _dispatch(
        self,
        origin: Origin,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        try:
            if origin == "cdn":
                return self._cdn(method, path, query)
            if path.startswith("/_fake/"):
                return self._control(method, path, query, body)
            return await self._api(method, path, headers, body)
        except Exception as exc:
            # A bug in the fake should show up as a 500 the test can see, with the cause
            # in the log, rather than as a mysteriously dropped connection.
            log.exception("fake twilio failed on %s %s", method, path)
            return _text_reply(500, f"fake twilio error: {type(exc).__name__}")

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        return _fake_control(self, method, path, query, body)

    # -- API origin --------------------------------------------------------------------

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        creds = parse_basic_auth(headers.get("authorization"))
        if creds is None:
            return False
        user, password = creds
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self._auth_token
        )

    async def _api(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        media_match = _MEDIA_PATH.match(path)
        messages_match = _MESSAGES_PATH.match(path)
        if media_match is None and messages_match is None:
            return _error_reply(404, f"The requested resource {path} was not found")
        if not self._authorized(headers):
            return _json_reply(
                401,
                twilio_error(401, 20003, "Authenticate"),
                ("WWW-Authenticate", 'Basic realm="Twilio API"'),
            )
        match = media_match or messages_match
        assert match is not None
        if match["account"] != self.account_sid:
            return _error_reply(404, f"The requested resource {path} was not found")
        if media_match is not None:
            if method not in ("GET", "HEAD"):
                return _error_reply(405, "Method not allowed", 20004)
            return self._api_media(media_match["media"])
        if method != "POST":
            return _error_reply(405, "Method not allowed", 20004)
        return await self._create_message(body)

    def _lookup_media(self, media_sid: str) -> MediaSpec | None:
        size = generated_media_size(media_sid)
        if size is not None:
            return MediaSpec(media_sid=media_sid, content_type="image/jpeg", generated_size=size)
        with self._lock:
            return self._state.media.get(media_sid)

    def _api_media(self, media_sid: str) -> _Reply:
        spec = self._lookup_media(media_sid)
        if spec is None:
            return _error_reply(404, f"The requested resource {media_sid} was not found")
        if spec.redirect_to is not None:
            return _redirect(spec.redirect_status, spec.redirect_to)
        if spec.hops == 0:
            return _serve_media(spec)
        return _redirect(spec.redirect_status, self._signed_cdn_url(media_sid, hop=1))

    async def _create_message(self, body: bytes) -> _Reply:
        form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        with self._lock:
            latency = self._state.send_latency_s
            failure = self._state.failures.popleft() if self._state.failures else None
        if latency:
            await trio.sleep(latency)
        if failure is not None:
            return _error_reply(failure.status, failure.message, failure.code)

        def first(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        to, from_, text = first("To"), first("From"), first("Body")
        service = first("MessagingServiceSid")
        media_urls = tuple(form.get("MediaUrl", []))
        # Twilio's own validation order and codes for the fields we send.
        if not to:
            return _error_reply(400, "A 'To' phone number is required.", 21604)
        if not from_ and not service:
            return _error_reply(400, "A 'From' phone number is required.", 21603)
        if not text and not media_urls:
            return _error_reply(400, "Message body is required.", 21602)
        if text is not None and len(text) > 1600:
            return _error_reply(
                400, "The concatenated message body exceeds the 1600 character limit.", 21617
            )
        message = SentMessage(
            sid=new_sid("SM"),
            account_sid=self.account_sid,
            to=to,
            from_=from_ or None,
            body=text or "",
            media_urls=media_urls,
            status_callback=first("StatusCallback"),
            messaging_service_sid=service,
            date_created=datetime.now(UTC),
        )
        with self._lock:
            self._state.messages.append(message)
        return _json_reply(201, message.resource())

    # -- CDN origin --------------------------------------------------------------------

    def _sign(self, media_sid: str, hop: int, expires: int) -> str:
        mac = hmac.new(self._signing_key, f"{media_sid}\n{hop}\n{expires}".encode(), "sha256")
        return mac.hexdigest()

    def _signed_cdn_url(self, media_sid: str, *, hop: int) -> str:
        expires = int(time.time()) + _CDN_URL_TTL_S
        query = urlencode(
            {"hop": hop, "Expires": expires, "Signature": self._sign(media_sid, hop, expires)}
        )
        return f"{self.cdn_url}/media/{media_sid}?{query}"

    def _cdn(self, method: str, path: str, query: str) -> _Reply:
        match = _CDN_PATH.match(path)
        if match is None:
            return _text_reply(404, "no such object")
        if method not in ("GET", "HEAD"):
            return _text_reply(405, "method not allowed")
        media_sid = match["media"]
        params = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            hop = int(params["hop"])
            expires = int(params["Expires"])
            signature = params["Signature"]
        except (KeyError, ValueError):
            return _text_reply(403, "missing or malformed signature")
        if not hmac.compare_digest(signature, self._sign(media_sid, hop, expires)):
            return _text_reply(403, "signature does not match")
        if expires < time.time():
            return _text_reply(403, "request has expired")
        spec = self._lookup_media(media_sid)
        if spec is None:
            return _text_reply(404, "no such object")
        if hop < spec.hops:
            return _redirect(302, self._signed_cdn_url(media_sid, hop=hop + 1))
        return _serve_media(spec)

    # -- writing -----------------------------------------------------------------------

    async def _write_reply(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        reply: _Reply,
        *,
        head_only: bool = False,
    ) -> bool:
        """Send ``reply``; False when the connection must be closed afterwards."""
        base_headers = [("Server", "fake-twilio"), *reply.headers]
        spec = reply.media
        if spec is None:
            response = h11.Response(
                status_code=reply.status,
                headers=[*base_headers, ("Content-Length", str(len(reply.body)))],
                reason=_REASONS.get(reply.status, "").encode(),
            )
            await stream.send_all(conn.send(response) or b"")
            if reply.body and not head_only:
                await stream.send_all(conn.send(h11.Data(data=reply.body)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return True

        if spec.delay_s:
            await trio.sleep(spec.delay_s)
        media_headers = [*base_headers, ("Content-Type", spec.content_type)]
        if spec.declared_length is not None:
            # h11 refuses to send a body that disagrees with its Content-Length, which is
            # the point here: the lying headers go through h11, the true bytes straight
            # to the socket, then the connection closes since its framing is now broken.
            head = h11.Response(
                status_code=200,
                headers=[*media_headers, ("Content-Length", str(spec.declared_length))],
                reason=b"OK",
            )
            await stream.send_all(conn.send(head) or b"")
            await _send_paced(stream, spec.chunks(), spec.trickle_bytes_per_s, None)
            return False
        if not spec.omit_length:
            media_headers.append(("Content-Length", str(spec.size)))
        head = h11.Response(status_code=200, headers=media_headers, reason=b"OK")
        await stream.send_all(conn.send(head) or b"")
        if not head_only:  # h11 knows a HEAD answer has no body and would refuse one
            await _send_paced(stream, spec.chunks(), spec.trickle_bytes_per_s, conn)
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return True


def _listener_port(listeners: Sequence[trio.SocketListener]) -> int:
    port = listeners[0].socket.getsockname()[1]
    assert isinstance(port, int)
    return port


def _redirect(status: int, location: str) -> _Reply:
    return _Reply(status, (("Location", location), ("Content-Type", "text/plain")), b"")


def _serve_media(spec: MediaSpec) -> _Reply:
    if spec.status != 200:
        return _text_reply(spec.status, _REASONS.get(spec.status, "error"))
    return _Reply(200, media=spec)


async def _send_paced(
    stream: trio.SocketStream,
    chunks: Iterator[bytes],
    rate: float | None,
    conn: h11.Connection | None,
) -> None:
    """Send ``chunks`` (through h11 framing when ``conn`` is given), at ``rate`` bytes/s."""
    for chunk in chunks:
        pieces = [chunk] if rate is None else _split(chunk, max(1, min(_CHUNK, int(rate / 10))))
        for piece in pieces:
            await stream.send_all(conn.send(h11.Data(data=piece)) or b"" if conn else piece)
            if rate is not None:
                await trio.sleep(len(piece) / rate)


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_CHUNK))
            continue
        if event is h11.PAUSED:
            return h11.ConnectionClosed()
        return event


# -- control endpoints -------------------------------------------------------------------


def _control_media_spec(payload: Mapping[str, Any]) -> MediaSpec:
    """Validate a ``POST /_fake/media`` payload into a spec (ValueError/TypeError)."""
    allowed = {
        "media_sid",
        "message_sid",
        "data_base64",
        "content_type",
        "declared_length",
        "omit_length",
        "delay_s",
        "trickle_bytes_per_s",
        "redirect_to",
        "hops",
        "status",
        "redirect_status",
    }
    unknown = set(payload) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    if not isinstance(payload.get("data_base64"), str):
        raise TypeError("data_base64 (string) is required")
    if not isinstance(payload.get("content_type"), str):
        raise TypeError("content_type (string) is required")
    try:
        data = base64.b64decode(payload["data_base64"], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"data_base64 is not base64: {exc}") from None

    def typed(name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return _typed(payload, name, kind, default)

    return MediaSpec(
        media_sid=typed("media_sid", str, None) or new_sid("ME"),
        content_type=payload["content_type"],
        data=data,
        declared_length=typed("declared_length", int, None),
        omit_length=bool(typed("omit_length", bool, False)),
        delay_s=float(typed("delay_s", (int, float), 0.0)),
        trickle_bytes_per_s=typed("trickle_bytes_per_s", (int, float), None),
        redirect_to=typed("redirect_to", str, None),
        hops=typed("hops", int, 1),
        status=typed("status", int, 200),
        redirect_status=typed("redirect_status", int, 307),
    )


def _typed(
    payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any
) -> Any:
    """``payload[name]`` (or ``default``) checked against ``kind``; JSON true is no int."""
    value = payload.get(name, default)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TypeError(f"{name} has the wrong type")
    return value


def _control_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise TypeError("expected a JSON object")
    return payload


def _fake_control(fake: FakeTwilio, method: str, path: str, query: str, body: bytes) -> _Reply:
    try:
        payload = _control_body(body) if method == "POST" else {}
        if (method, path) == ("GET", "/_fake/health"):
            return _json_reply(200, {"ok": True})
        if (method, path) == ("GET", "/_fake/messages"):
            return _json_reply(200, [m.to_json() for m in fake.sent_messages])
        if (method, path) == ("GET", "/_fake/requests"):
            wanted = parse_qs(query).get("origin", [None])[0]
            records = [r.to_json() for r in fake.requests if wanted in (None, r.origin)]
            return _json_reply(200, records)
        if (method, path) == ("POST", "/_fake/reset"):
            fake.reset()
            return _json_reply(200, {"ok": True})
        if (method, path) == ("POST", "/_fake/media"):
            spec = _control_media_spec(payload)
            fake._register(spec)
            url = fake.media_url(spec.media_sid, _typed(payload, "message_sid", str, None))
            return _json_reply(201, {"media_sid": spec.media_sid, "url": url})
        if (method, path) == ("POST", "/_fake/fail_sends"):
            fake.fail_next_sends(
                _typed(payload, "count", int, 1),
                _typed(payload, "status", int, 500),
                code=_typed(payload, "code", int, None),
                message=_typed(payload, "message", str, None),
            )
            return _json_reply(200, {"ok": True})
        if (method, path) == ("POST", "/_fake/config"):
            latency = _typed(payload, "send_latency_s", (int, float), fake.send_latency_s)
            fake.send_latency_s = float(latency)
            return _json_reply(200, {"ok": True})
    except (ValueError, TypeError) as exc:
        return _json_reply(400, {"error": str(exc)})
    return _json_reply(404, {"error": f"no control endpoint {method} {path}"})


# -- ways to run it ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_fake_twilio(
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    *,
    api_port: int = 0,
    cdn_port: int = 0,
    cdn_hostname: str = "127.0.0.1",
) -> AsyncIterator[FakeTwilio]:
    """Serve a fake in the current trio run for the duration of the block."""
    fake = FakeTwilio(account_sid, auth_token, cdn_hostname=cdn_hostname)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(fake.serve, api_port=api_port, cdn_port=cdn_port))
            try:
                yield fake
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps an error raised in the caller's block; hand the caller back
        # its own exception (a failed assert stays a plain AssertionError).
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class FakeTwilioThread:
    """Serve a fake from its own trio loop in a background thread.

    For sync callers (the ``requests``-based twilio client, bench scripts) and for tests
    whose server under test runs in a different trio run. ``with FakeTwilioThread(...) as
    fake`` yields the :class:`FakeTwilio`; leaving the block stops the loop and joins the
    thread.
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        api_port: int = 0,
        cdn_port: int = 0,
        cdn_hostname: str = "127.0.0.1",
        start_timeout_s: float = 10.0,
    ) -> None:
        self.fake = FakeTwilio(account_sid, auth_token, cdn_hostname=cdn_hostname)
        self._ports = (api_port, cdn_port)
        self._start_timeout_s = start_timeout_s
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._error: BaseException | None = None

    def start(self) -> FakeTwilio:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="fake-twilio", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise RuntimeError("fake twilio did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("fake twilio failed to start") from self._error
        return self.fake

    def stop(self) -> None:
        thread, token, cancel = self._thread, self._token, self._cancel
        if thread is None:
            return
        if token is not None and cancel is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(cancel.cancel, trio_token=token)
        thread.join()
        self._thread = None
        if self._error is not None:
            raise RuntimeError("fake twilio crashed") from self._error

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as cancel:
            self._cancel = cancel
            async with trio.open_nursery() as nursery:
                api_port, cdn_port = self._ports
                await nursery.start(partial(self.fake.serve, api_port=api_port, cdn_port=cdn_port))
                self._ready.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until SIGINT/SIGTERM; print its URLs as one JSON line first."""
    parser = argparse.ArgumentParser(
        prog="python -m enrich.testing.fake_twilio",
        description="Fake Twilio REST API (media + Messages) and media CDN on 127.0.0.1.",
    )
    parser.add_argument(
        "--account-sid", default=os.environ.get("TWILIO_ACCOUNT_SID", DEFAULT_ACCOUNT_SID)
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN", DEFAULT_AUTH_TOKEN),
        help="defaults to $TWILIO_AUTH_TOKEN, else a fixed fake token",
    )
    parser.add_argument("--api-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cdn-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cdn-hostname", default="127.0.0.1", choices=["127.0.0.1", "localhost"])
    parser.add_argument("--send-latency", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        fake = FakeTwilio(args.account_sid, args.auth_token, cdn_hostname=args.cdn_hostname)
        fake.send_latency_s = args.send_latency
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(fake.serve, api_port=args.api_port, cdn_port=args.cdn_port)
                )
                # The token is a secret: print where to reach the fake, never how to log in.
                line = {
                    "api_url": fake.api_url,
                    "cdn_url": fake.cdn_url,
                    "account_sid": fake.account_sid,
                }
                print(json.dumps(line), flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
