"""The MMS media pipeline: every media item of a message becomes rows or a sentence.

:class:`MediaPipeline` implements :class:`enrich.pipeline.process.MediaHandler`. For one
claimed message it opens a per-message nursery and handles each media item (up to 10)
concurrently; the global limits live in the parts it drives (the fetcher's download
limiter, MEDIA_DOWNLOAD_CONCURRENCY; the speech engine's limiter, SPEECH_POOL_MAX).

One item: download (streamed, capped, deadline: :mod:`enrich.media.download`) → sniff the
first bytes (:func:`enrich.media.sniff.sniff`, the declared type only breaks ties) →
route:

- audio, and video's soundtrack → the speech engine → the extractor over the transcript,
  plus the transcript itself as a note; with no engine, a ``media`` row that says the
  note was kept untranscribed;
- a contact card → one contact per card with its organisation, title, phones, emails,
  addresses and note as items;
- an image → a ``media`` row that refers to the item (URL, type, size), with the caption
  as its context (no OCR);
- anything else → no rows, and a sentence telling the sender the type is not supported.

Failures are classified by :mod:`enrich.pipeline.errors`. A permanent one (too large,
refused, unsupported, undecodable) ends the item at once with its sentence; the other
items and the caption are still saved. A recoverable one (timeout, 5xx, 429, breaker
open) is retried inside the job's lease with backoff (``item_attempts``); if it still
fails and the job has attempts left, the whole job is handed back to the runner, which
retries it later with its own backoff (items are idempotent by schema). On the job's
last attempt the item ends with its sentence instead, so the sender always hears once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from enrich.config import Settings
from enrich.extraction import Extractor, ItemRow, default_extractor, to_rows
from enrich.media.download import DownloadedMedia, MediaFetcher, format_megabytes
from enrich.media.policy import MediaPolicy
from enrich.media.sniff import MediaKind, sniff
from enrich.media.vcard import VCardContact, decode_vcard_bytes, parse_vcards
from enrich.metrics import Metrics
from enrich.pipeline.errors import PermanentError, ProcessingError, RecoverableError
from enrich.pipeline.gate import waiting_elsewhere
from enrich.pipeline.process import MediaOutcome
from enrich.speech.engines import SpeechEngine, build_engine
from enrich.store import Job
from enrich.twilio_rest import limiter_stats

__all__ = ["MediaPipeline", "UnsupportedMedia", "build_media_pipeline", "vcard_rows"]

log = logging.getLogger(__name__)

_BREAKER_GAUGE: Final = {"closed": 0, "half_open": 1, "open": 2}
_INTERNAL_TEXT: Final = "Sorry, we couldn't process one of your files."
#: A caption longer than this is cut when it becomes an image's context.
_CAPTION_CONTEXT_CHARS: Final = 200


class UnsupportedMedia(PermanentError):
    def __init__(self, kind: MediaKind, declared: str | None) -> None:
        shown = (declared or kind.mime).split(";")[0].strip() or kind.mime
        super().__init__(
            f"unsupported media type {kind.mime} (declared {declared or 'none'})",
            user_message=(
                f"Sorry, we can't read {shown} files. Send a voice note, a photo "
                "or a contact card."
            ),
        )


class _InternalError(RecoverableError):
    """A bug or an unexpected library error while handling one item."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(f"internal error: {type(exc).__name__}", user_message=_INTERNAL_TEXT)


@dataclass(slots=True)
class _ItemResult:
    outcome: MediaOutcome | None = None
    retry: RecoverableError | None = None  # give the job back to the runner


class MediaPipeline:
    """Turns a message's media items into :class:`MediaOutcome` s (see the module doc)."""

    def __init__(
        self,
        fetcher: MediaFetcher,
        engine: SpeechEngine,
        *,
        extractor: Extractor | None = None,
        job_max_attempts: int = 3,
        item_attempts: int = 2,
        item_backoff_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        if item_attempts < 1:
            raise ValueError("item_attempts must be >= 1")
        self.fetcher = fetcher
        self.engine = engine
        self.extractor = extractor or default_extractor()
        self.job_max_attempts = job_max_attempts
        self.item_attempts = item_attempts
        self.item_backoff_s = item_backoff_s
        self.metrics = metrics

    # -- the MediaHandler protocol --------------------------------------------------------

    async def handle(self, job: Job) -> Sequence[MediaOutcome]:
        results: list[_ItemResult] = [_ItemResult() for _ in job.media]
        async with trio.open_nursery() as nursery:
            for slot, item in enumerate(job.media):
                nursery.start_soon(self._run_item, job, item, results[slot])
        for result in results:
            if result.retry is not None:
                raise result.retry
        return [r.outcome for r in results if r.outcome is not None]

    # -- lifecycle and stats ----------------------------------------------------------------

    def breaker_states(self) -> dict[str, int]:
        breaker = getattr(self.engine, "breaker", None)
        if breaker is None:
            return {}
        return {"speech": _BREAKER_GAUGE[breaker.state]}

    def speech_stats(self) -> dict[str, int]:
        limiter = getattr(self.engine, "limiter", None)
        if not isinstance(limiter, trio.CapacityLimiter):
            return {"total": 0, "available": 0, "inUse": 0, "waiting": 0}
        return limiter_stats(limiter)

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.fetcher.aclose()

    # -- one item ---------------------------------------------------------------------------

    async def _run_item(self, job: Job, item: dict[str, Any], result: _ItemResult) -> None:
        index = int(item.get("index", 0))
        url = str(item.get("url", ""))
        declared = item.get("contentType")
        declared = str(declared) if declared else None
        last: RecoverableError | None = None
        for attempt in range(1, self.item_attempts + 1):
            try:
                result.outcome = await self._process(job, index, url, declared)
                return
            except PermanentError as exc:
                self._log_failure(job, index, exc, final=True)
                result.outcome = MediaOutcome(index, metadata={"error": exc.reason},
                                              problem=exc.user_message)
                return
            except RecoverableError as exc:
                last = exc
            except Exception as exc:  # never let one item's bug take the others down
                log.exception("media item failed unexpectedly",
                              extra={"message_sid": job.message_sid, "media_index": index})
                last = _InternalError(exc)
            if attempt < self.item_attempts:
                async with waiting_elsewhere():  # backing off is not work: unpaced
                    await trio.sleep(self.item_backoff_s * 2 ** (attempt - 1))
        assert last is not None
        if job.attempts < self.job_max_attempts:
            self._log_failure(job, index, last, final=False)
            result.retry = last
            return
        self._log_failure(job, index, last, final=True)
        result.outcome = MediaOutcome(index, metadata={"error": last.reason},
                                      problem=last.user_message or _INTERNAL_TEXT)

    async def _process(
        self, job: Job, index: int, url: str, declared: str | None
    ) -> MediaOutcome:
        async with self.fetcher.download(url) as media:
            kind = sniff(media.head, media.content_type or declared)
            meta: dict[str, Any] = {
                "media": {
                    "url": url,
                    "mime": kind.mime,
                    "format": kind.format,
                    "category": kind.category,
                    "bytes": media.size,
                    **({"declaredType": declared} if declared else {}),
                }
            }
            if kind.category in ("audio", "video"):
                rows = await self._transcribe(media, kind, meta)
            elif kind.category == "vcard":
                data = await trio.to_thread.run_sync(media.path.read_bytes)
                rows = vcard_rows(parse_vcards(decode_vcard_bytes(data)))
                if not rows:
                    raise PermanentError(
                        "contact card without usable fields",
                        user_message="Sorry, we couldn't read the contact card you sent.",
                    )
            elif kind.category == "image":
                caption = " ".join(job.body.split())[:_CAPTION_CONTEXT_CHARS] or None
                rows = [ItemRow("media", "image", f"Photo ({kind.format.upper()})", caption)]
            else:
                raise UnsupportedMedia(kind, declared)
            return MediaOutcome(index, rows=tuple(rows), metadata=meta)

    async def _transcribe(
        self, media: DownloadedMedia, kind: MediaKind, meta: dict[str, Any]
    ) -> list[ItemRow]:
        what = "Video" if kind.category == "video" else "Voice note"
        started = time.perf_counter()
        transcript = await self.engine.transcribe(media.path, kind)
        if self.metrics is not None and transcript is not None:
            self.metrics.transcription.observe(time.perf_counter() - started)
        if transcript is None:
            meta["transcription"] = "unavailable"
            return [ItemRow("media", kind.category,
                            f"{what} ({kind.format}), transcription unavailable")]
        meta["transcription"] = {"engine": transcript.engine,
                                 "audioSeconds": round(transcript.audio_seconds, 2)}
        text = transcript.text.strip()
        if not text:
            return [ItemRow("media", kind.category, f"{what} ({kind.format}), no speech heard")]
        # The transcript is kept whole, once, as the note's own row.
        rows = [r for r in to_rows(self.extractor.extract(text))
                if not (r.item_type == "note" and r.value == text)]
        rows.append(ItemRow("note", "transcript", text))
        return rows

    def _log_failure(self, job: Job, index: int, exc: ProcessingError, *, final: bool) -> None:
        log.warning(
            "media item failed" if final else "media item will be retried with the job",
            extra={"message_sid": job.message_sid, "media_index": index,
                   "error": exc.reason, "recoverable": exc.recoverable,
                   "attempt": job.attempts},
        )


def vcard_rows(cards: Sequence[VCardContact]) -> list[ItemRow]:
    """Rows for contact cards: the contact (context: title and organisation) and its
    details, in the shared vocabulary of :data:`enrich.extraction.ITEM_TYPES`."""
    rows: list[ItemRow] = []
    for card in cards:
        name = card.full_name or " ".join(
            p for p in (card.given_name, card.family_name) if p
        )
        context = ", ".join(p for p in (card.title, card.organization) if p) or None
        if name:
            rows.append(ItemRow("contact", "name", name, context))
        if card.organization:
            rows.append(ItemRow("organization", None, card.organization, name or None))
        if card.title and not name:
            rows.append(ItemRow("note", "title", card.title))
        rows += [ItemRow("phone", None, phone, name or None) for phone in card.phones]
        rows += [ItemRow("email", None, email, name or None) for email in card.emails]
        rows += [ItemRow("location", "address", a, name or None) for a in card.addresses]
        if card.note:
            rows.append(ItemRow("note", "card", card.note, name or None))
        if card.url:
            rows.append(ItemRow("note", "url", card.url, name or None))
    return rows


def build_media_pipeline(
    settings: Settings, metrics: Metrics | None = None, *, extractor: Extractor | None = None
) -> MediaPipeline:
    """The pipeline configured by the environment (one per process)."""
    if not settings.twilio_account_sid:
        raise ValueError("the media pipeline needs TWILIO_ACCOUNT_SID")
    policy = MediaPolicy.from_settings(
        settings.twilio_api_base_url, settings.twilio_account_sid,
        settings.media_redirect_hosts,
    )
    fetcher = MediaFetcher(
        policy,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token,
        temp_dir=settings.effective_temp_dir / settings.effective_instance_id,
        max_bytes=settings.max_media_bytes,
        timeout_s=settings.media_download_timeout_ms / 1000,
        concurrency=settings.media_download_concurrency,
        metrics=metrics,
    )
    engine = build_engine(settings)
    log.info("media pipeline ready", extra={
        "engine": engine.name, "max_media": format_megabytes(settings.max_media_bytes)})
    return MediaPipeline(fetcher, engine, extractor=extractor,
                         job_max_attempts=settings.job_max_attempts, metrics=metrics)
