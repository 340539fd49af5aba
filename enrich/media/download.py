"""The media fetcher: the trio/httpx shell around :mod:`enrich.media.policy`.

One :class:`MediaFetcher` per process owns one ``httpx.AsyncClient`` (connection reuse to
Twilio and its CDN) and one ``trio.CapacityLimiter`` (MEDIA_DOWNLOAD_CONCURRENCY). A
download:

1. checks the webhook's MediaUrl with :func:`~enrich.media.policy.check_first_hop`;
2. sends ``GET`` with HTTP Basic credentials only where
   :func:`~enrich.media.policy.credentials_allowed` says so (the API origin), and
   follows redirects by hand (``follow_redirects=False`` on the client), each Location
   checked by :func:`~enrich.media.policy.check_redirect` (at most 3 hops);
3. connects only to addresses checked by
   :func:`~enrich.media.policy.check_resolved_address`: name resolution happens inside
   the connection pool's network backend (:class:`_PinnedBackend`), which resolves,
   checks *every* address, and then connects to one of the addresses it checked. There
   is no second lookup a rebinding DNS server could answer differently. TLS still
   verifies the certificate against the host *name* (httpcore passes the URL's host as
   the SNI/verification name, not the address);
4. streams the body to a file with a generated name in
   ``ENRICH_TEMP_DIR/<instance id>/``, never holding it whole in memory, counting bytes
   per chunk of ``aiter_raw()``: a declared Content-Length over the cap is refused before
   the body is read; otherwise the stream is aborted on the first chunk that crosses the
   cap (at most one chunk past it is ever received, and that chunk is not written);
5. runs everything (redirects included) under ``trio.fail_after`` with the total
   MEDIA_DOWNLOAD_TIMEOUT_MS: httpx's own timeouts are per read, so a server that
   trickles a byte a second would otherwise never time out.

:meth:`MediaFetcher.download` is an async context manager: the file exists inside the
block and is deleted when it ends, whatever happened (success, error, cancellation).

Errors are :mod:`enrich.pipeline.errors` classes, with a sentence for the sender:
recoverable (timeouts, transport errors, 429, 5xx) or permanent (too large, refused by
the policy, other 4xx). ``abort_reason`` names each for the ``media_aborts`` metric.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpcore
import httpx
import trio

from enrich.media.policy import (
    MediaPolicy,
    MediaPolicyError,
    check_first_hop,
    check_redirect,
    check_resolved_address,
    credentials_allowed,
)
from enrich.media.sniff import SNIFF_BYTES
from enrich.metrics import Metrics
from enrich.pipeline.errors import PermanentError, RecoverableError
from enrich.pipeline.gate import waiting_elsewhere
from enrich.twilio_rest import limiter_stats

__all__ = [
    "DownloadedMedia",
    "MediaFetcher",
    "MediaRefused",
    "MediaTimeout",
    "MediaTooLarge",
    "MediaUnavailable",
    "MediaUnreachable",
    "Resolver",
    "format_megabytes",
]

log = logging.getLogger(__name__)

#: Bytes gathered before one write to the temp file (bounds memory per download).
WRITE_BATCH: Final = 64 * 1024
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_UNAVAILABLE_TEXT: Final = "Sorry, we couldn't download your file."
_TRY_LATER_TEXT: Final = (
    "Sorry, we couldn't download your file right now. Please send it again later."
)

#: ``(host, port) -> addresses``: how names are resolved (injectable for tests).
Resolver = Callable[[str, int], Awaitable[list[str]]]


def format_megabytes(max_bytes: int) -> str:
    """``5242880`` -> ``"5 MB"``; ``1572864`` -> ``"1.5 MB"`` (MiB, as MAX_MEDIA_SIZE_MB)."""
    return f"{max_bytes / (1024 * 1024):.4g} MB"


# -- errors ------------------------------------------------------------------------------


class MediaTooLarge(PermanentError):
    abort_reason = "too_large"

    def __init__(self, max_bytes: int, *, declared: bool) -> None:
        how = "declared length" if declared else "stream"
        super().__init__(
            f"media over {max_bytes} bytes ({how})",
            user_message=f"Your file is too large (max {format_megabytes(max_bytes)}).",
        )


class MediaRefused(PermanentError):
    """The media policy refused a URL, a redirect or an address (reason is safe to log)."""

    abort_reason = "refused"

    def __init__(self, reason: str) -> None:
        super().__init__(f"media fetch refused: {reason}", user_message=_UNAVAILABLE_TEXT)


class MediaUnavailable(PermanentError):
    """A 4xx other than 429: asking again will not help."""

    abort_reason = "http_error"

    def __init__(self, status: int) -> None:
        super().__init__(f"media answered HTTP {status}", user_message=_UNAVAILABLE_TEXT)
        self.status = status


class MediaUnreachable(RecoverableError):
    """5xx, 429 or a transport failure: the same download may work later."""

    abort_reason = "unreachable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, user_message=_TRY_LATER_TEXT)


class MediaTimeout(RecoverableError):
    abort_reason = "timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"media download exceeded {timeout_s:g} s", user_message=_TRY_LATER_TEXT
        )


# -- result ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadedMedia:
    """A downloaded item on disk, valid inside :meth:`MediaFetcher.download` only.

    ``content_type`` is what the final response declared (a hint: sniff the ``head``);
    ``redirects`` counts the hops followed.
    """

    path: Path
    size: int
    head: bytes
    content_type: str | None
    redirects: int


# -- DNS pinning -------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IP literals resolve to themselves)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, check every address, then connect to a checked address: one lookup.

    Refusing the name when *any* of its addresses is not public (rather than picking a
    public one) keeps a half-poisoned record from working some of the time.
    """

    def __init__(self, policy: MediaPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve host: {type(exc).__name__}") from exc
        if not addresses:
            raise httpcore.ConnectError("host resolved to no address")
        for address in addresses:
            check_resolved_address(self._policy, address)  # MediaPolicyError propagates
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for media")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool rebuilt on :class:`_PinnedBackend`.

    httpx does not expose httpcore's ``network_backend``; the pool is the transport's one
    private attribute we replace (tests/media cover it against real sockets).
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False, http1=True, http2=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise TypeError("httpx transport layout changed: cannot pin DNS")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


# -- the fetcher -------------------------------------------------------------------------


class MediaFetcher:
    """Downloads MMS media under the policy, a global limiter and a total deadline."""

    def __init__(
        self,
        policy: MediaPolicy,
        *,
        account_sid: str,
        auth_token: str | None,
        temp_dir: Path,
        max_bytes: int,
        timeout_s: float,
        concurrency: int,
        metrics: Metrics | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self.policy = policy
        self.temp_dir = temp_dir
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.limiter = trio.CapacityLimiter(concurrency)
        self._dir_ready = False
        self._auth = httpx.BasicAuth(account_sid, auth_token) if auth_token else None
        limits = httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency
        )
        backend = _PinnedBackend(policy, resolver or system_resolver)
        self._client = httpx.AsyncClient(
            transport=_PinnedTransport(backend, limits),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between us and the pin
            # Per-read backstop only; the total deadline is the trio scope in _fetch.
            timeout=httpx.Timeout(timeout_s),
            headers={"Accept-Encoding": "identity", "User-Agent": "enrich-media/1"},
        )

    def stats(self) -> dict[str, int]:
        """The download limiter in the pool vocabulary (total, available, inUse, waiting)."""
        return limiter_stats(self.limiter)

    async def aclose(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[DownloadedMedia]:
        """Download ``url`` to a temp file that lives for the ``async with`` block."""
        directory = self.temp_dir
        path = directory / f"media-{secrets.token_hex(12)}.part"
        try:
            try:
                # Queued for a slot, then mostly waiting on the remote server: the job is
                # not paced meanwhile (enrich.pipeline.gate); the limiter bounds it.
                async with waiting_elsewhere(), self.limiter:
                    if not self._dir_ready:
                        await trio.to_thread.run_sync(_make_dir, directory)
                        self._dir_ready = True
                    media = await self._fetch(url, path)
            except (MediaTooLarge, MediaTimeout, MediaUnreachable, MediaRefused,
                    MediaUnavailable) as exc:
                if self.metrics is not None:
                    self.metrics.media_aborts[exc.abort_reason] += 1
                raise
            if self.metrics is not None:
                self.metrics.media_bytes += media.size
            yield media
        finally:
            # A synchronous unlink: it has no checkpoint, so no cancellation (a shutdown,
            # a sibling's failure) can skip it; the file handle was closed by _fetch's
            # own shielded close.
            _discard(path)

    async def _fetch(self, raw_url: str, path: Path) -> DownloadedMedia:
        redirects = 0
        try:
            url = check_first_hop(self.policy, raw_url)
            with trio.fail_after(self.timeout_s):
                while True:
                    auth = self._auth if credentials_allowed(self.policy, url) else None
                    request = self._client.build_request("GET", url)
                    response = await self._client.send(request, auth=auth, stream=True)
                    try:
                        if response.status_code in _REDIRECT_STATUSES:
                            location = response.headers.get("location", "")
                            url = check_redirect(self.policy, url, location, redirects)
                            redirects += 1
                            continue
                        _check_status(response.status_code)
                        return await self._save(response, path, redirects)
                    finally:
                        await response.aclose()
        except MediaPolicyError as exc:
            raise MediaRefused(exc.reason) from None
        except trio.TooSlowError:
            raise MediaTimeout(self.timeout_s) from None
        except httpx.TransportError as exc:
            # Connection refused/reset, protocol errors, a per-read timeout: transient.
            raise MediaUnreachable(f"media transport error: {type(exc).__name__}") from None

    async def _save(self, response: httpx.Response, path: Path, redirects: int) -> DownloadedMedia:
        declared = _content_length(response)
        if declared is not None and declared > self.max_bytes:
            raise MediaTooLarge(self.max_bytes, declared=True)
        size = 0
        head = bytearray()
        # Chunks are gathered up to WRITE_BATCH bytes per write: every write is a hop to a
        # worker thread, and an MMS item is mostly a few small network reads.
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            out = await trio.open_file(path, "wb")
        except FileNotFoundError:  # the directory was swept away: make it again
            await trio.to_thread.run_sync(_make_dir, path.parent)
            out = await trio.open_file(path, "wb")
        async with out:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_bytes:
                    raise MediaTooLarge(self.max_bytes, declared=False)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BATCH:
                    await out.write(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
            if pending:
                await out.write(b"".join(pending))
        content_type = response.headers.get("content-type")
        return DownloadedMedia(path, size, bytes(head), content_type, redirects)


def _check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise MediaUnreachable(f"media answered HTTP {status}")
    raise MediaUnavailable(status)


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return None  # absent or nonsense: the byte count on the stream decides
    return int(raw)


def _make_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _discard(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the supervisor's temp sweep removes it later
        log.warning("could not remove media temp file", extra={"error": type(exc).__name__})
