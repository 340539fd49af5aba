"""Sending SMS through the twilio library, on trio, over httpx.

The library's stock async client is aiohttp (asyncio only). Its ``AsyncHttpClient``
base class is a small, documented seam: we implement ``request`` with one shared
``httpx.AsyncClient`` (which runs on trio), so ``messages.create_async`` works under
plain trio with no threads. TWILIO_API_BASE_URL points the library's ``api`` domain at
another origin (a local fake in tests and benches).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

log = logging.getLogger(__name__)


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]
    """twilio ``AsyncHttpClient`` over a shared ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        super().__init__(logger=log, is_async=True, timeout=timeout)
        self._client = client

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        response = await self._client.request(
            method.upper(),
            url,
            params=params,  # type: ignore[arg-type]
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout or self.timeout,
            follow_redirects=allow_redirects,
        )
        return TwilioResponse(response.status_code, response.text, response.headers)


class SendError(Exception):
    """A send failed. ``recoverable`` tells the outbox whether to try again."""

    def __init__(self, reason: str, *, recoverable: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.recoverable = recoverable
        self.status = status


@dataclass(frozen=True, slots=True)
class SentMessage:
    sid: str
    status: str


class TwilioSender:
    """Sends one SMS under a deadline, through a limiter of TWILIO_POOL_MAX."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        api_base_url: str,
        http: httpx.AsyncClient,
        max_concurrency: int,
        timeout: float,
    ) -> None:
        self.from_number = from_number
        self.timeout = timeout
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self._client = Client(
            account_sid, auth_token, http_client=HttpxTwilioClient(http, timeout=timeout)
        )
        # Every Messages API call goes through the `api` domain: point it at our origin.
        self._client.api.base_url = api_base_url

    async def send(self, to: str, body: str) -> SentMessage:
        async with self.limiter:
            try:
                with trio.fail_after(self.timeout):
                    message: Any = await self._client.messages.create_async(
                        to=to, from_=self.from_number, body=body
                    )
            except trio.TooSlowError as exc:
                raise SendError(
                    f"no answer from Twilio within {self.timeout:.1f}s", recoverable=True
                ) from exc
            except TwilioRestException as exc:
                status = int(exc.status)
                # 429 and 5xx are Twilio's "try later"; other 4xx will fail the same again.
                recoverable = status == 429 or status >= 500
                raise SendError(
                    f"Twilio answered {status} (code {exc.code})",
                    recoverable=recoverable,
                    status=status,
                ) from exc
            except httpx.HTTPError as exc:
                raise SendError(f"transport error: {type(exc).__name__}", recoverable=True) from exc
        return SentMessage(sid=str(message.sid), status=str(message.status))

    def stats(self) -> dict[str, int]:
        return limiter_stats(self.limiter)


def limiter_stats(limiter: trio.CapacityLimiter) -> dict[str, int]:
    """A limiter's statistics in the project's pool vocabulary."""
    in_use = int(limiter.borrowed_tokens)
    return {
        "total": int(limiter.total_tokens),
        "available": int(limiter.available_tokens),
        "inUse": in_use,
        "waiting": limiter.statistics().tasks_waiting,
    }
