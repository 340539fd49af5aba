"""What one message becomes: enrichment rows and the reply text.

Pure orchestration over pluggable parts: the text extractor (``enrich.extraction``) and,
for MMS, a media handler that turns each media item into rows (``enrich.media``). The
job runner stores the result in one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from enrich.core.phone import mask_phone
from enrich.extraction import Extractor, ItemRow, default_extractor, summarize, to_rows
from enrich.store import ItemInsert, Job

NOTHING_FOUND = "Got your message, but found nothing to save from it."
NO_MEDIA_HANDLER = "Sorry, this server can't fetch attachments right now; only your text was saved."


@dataclass(frozen=True, slots=True)
class MediaOutcome:
    """What one media item produced: rows, or a failure the sender should hear about."""

    index: int
    rows: tuple[ItemRow, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # a sentence for the sender when the item failed


class MediaHandler(Protocol):
    async def handle(self, job: Job) -> Sequence[MediaOutcome]: ...


@dataclass(frozen=True, slots=True)
class Result:
    items: tuple[ItemInsert, ...]
    source: str  # "sms" | "mms"
    reply: str


class Processor:
    def __init__(
        self,
        extractor: Extractor | None = None,
        media: MediaHandler | None = None,
        *,
        before_store: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self.extractor = extractor or default_extractor()
        self.media = media
        # A hook for tests and instrumentation: runs after the work, before the write.
        self.before_store = before_store

    async def process(self, job: Job) -> Result:
        # Media first. Downloads and Speech calls are the pipeline's slow stages, and their
        # waits give the job's pacing token back (enrich.pipeline.gate): started before the
        # text's extraction, they leave the job holding its token only for its claim, so a
        # paced-down gate still feeds them. With the text first, the Speech slots ran 3-8
        # of 10 busy while webhooks arrived (bench/RESULTS.md).
        outcomes: Sequence[MediaOutcome] = ()
        problems: list[str] = []
        if job.media and self.media is not None:
            outcomes = await self.media.handle(job)
        elif job.media:
            # Never drop attachments silently: the sender hears that only the text counted.
            problems.append(NO_MEDIA_HANDLER)
        base_meta = {"messageSid": job.message_sid, "from": mask_phone(job.from_number)}
        rows: list[tuple[ItemRow, dict[str, Any]]] = []
        if job.body.strip():
            for row in to_rows(self.extractor.extract(job.body)):
                rows.append((row, {"origin": "body"}))
        for outcome in outcomes:
            for row in outcome.rows:
                rows.append((row, {"origin": "media", "mediaIndex": outcome.index,
                                   **outcome.metadata}))
            if outcome.problem and outcome.problem not in problems:
                problems.append(outcome.problem)
        items = tuple(
            ItemInsert(
                item_index=i,
                item_type=row.item_type,
                field_name=row.field_name,
                value=row.value,
                metadata={**base_meta, **meta, **({"context": row.detail} if row.detail else {})},
            )
            for i, (row, meta) in enumerate(rows)
        )
        if self.before_store is not None:
            await self.before_store(job)
        summary = summarize([r for r, _ in rows]) or NOTHING_FOUND
        reply = " ".join([summary, *problems]) if problems else summary
        return Result(items=items, source="mms" if job.media else "sms", reply=reply)
