"""The outbox sender: replies queued in PostgreSQL, sent through Twilio, never lost.

Replies are written in the same transaction as the state they report (items stored,
message failed), so a crash can't lose one or send one for work that was rolled back.
This task claims due rows with a lease (SKIP LOCKED, so several processes share the
work), sends each under TWILIO_POOL_MAX and a deadline, and marks it sent. A failure is
retried with exponential backoff; a permanent refusal (a 4xx other than 429) or running
out of attempts marks it failed with the reason.

Without Twilio credentials the rows stay pending (nothing is lost) and one log line says
sending is disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from enrich.core.phone import mask_phone
from enrich.db.pool import ConnectionPool
from enrich.metrics import Metrics
from enrich.pipeline.runner import backoff_delay
from enrich.store import Notification, claim_notifications, mark_all_sent, mark_unsent
from enrich.twilio_rest import SendError, TwilioSender

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 8
RETRY_BASE_S = 2.0
POLL_INTERVAL_S = 2.0
LEASE_S = 60.0


class Outbox:
    def __init__(
        self,
        db: ConnectionPool,
        sender: TwilioSender | None,
        metrics: Metrics,
        *,
        owner: str,
        batch: int = 20,
        poll_interval_s: float = POLL_INTERVAL_S,
        retry_base_s: float = RETRY_BASE_S,
        pace: Callable[[], int] | None = None,
    ) -> None:
        self.pace = pace
        self.db = db
        self.sender = sender
        self.metrics = metrics
        self.owner = owner
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.retry_base_s = retry_base_s
        self._wake = trio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.sender is None:
            log.warning(
                "SMS sending is disabled (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
                "TWILIO_PHONE_NUMBER are needed); replies stay queued in the outbox"
            )
            task_status.started()
            return
        task_status.started()
        while not self._stopping:
            try:
                sent_any = await self.send_due()
            except Exception as exc:
                log.warning("outbox poll failed", extra={"error": type(exc).__name__})
                sent_any = False
            if sent_any:
                continue  # there may be more right away
            with trio.move_on_after(self.poll_interval_s):
                await self._wake.wait()
            self._wake = trio.Event()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def send_due(self) -> bool:
        """Claim and send one batch; True when anything was claimed."""
        assert self.sender is not None
        # Acks first: while the runner is paced down (a congested loop), send fewer at once.
        batch = self.batch if self.pace is None else min(self.batch, self.pace())
        if batch <= 0:
            return False  # paused: look again after the poll interval
        notes = await claim_notifications(self.db, self.owner, LEASE_S, batch)
        if not notes:
            return False
        sent: list[tuple[Notification, str]] = []
        try:
            async with trio.open_nursery() as nursery:
                for note in notes:
                    nursery.start_soon(self._send_one, note, sent)
        finally:
            # One statement for the batch; shielded so a cancellation (shutdown) cannot
            # leave replies that went out marked unsent (they would go out twice).
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await mark_all_sent(self.db, sent)
        for note, _ in sent:
            self.metrics.notifications["sent"] += 1
            log.info("reply sent", extra={"kind": note.kind, "message_sid": note.message_sid,
                                          "to": mask_phone(note.to_number)})
        return True

    async def _send_one(self, note: Notification, sent: list[tuple[Notification, str]]) -> None:
        assert self.sender is not None
        try:
            result = await self.sender.send(note.to_number, note.body)
        except SendError as exc:
            give_up = not exc.recoverable or note.attempts >= MAX_SEND_ATTEMPTS
            retry = None if give_up else backoff_delay(note.attempts, self.retry_base_s)
            await mark_unsent(self.db, note, exc.reason, retry_in_s=retry)
            self.metrics.notifications["failed" if give_up else "retried"] += 1
            log.warning(
                "reply not sent",
                extra={"kind": note.kind, "message_sid": note.message_sid,
                       "to": mask_phone(note.to_number), "error": exc.reason,
                       "retry_in_s": retry},
            )
            return
        sent.append((note, result.sid))
