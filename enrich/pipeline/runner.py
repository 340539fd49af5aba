"""The job runner: durable messages in PostgreSQL, bounded concurrency in trio.

Shape:

* ``notify(id)`` (called by the webhook right after the INSERT) drops a hint into a
  bounded memory channel. It never blocks: if the channel is full the hint is dropped,
  and the poller finds the row anyway, because the row is the truth, not the hint;
* the **poller** feeds the channel with every due row: new messages from other processes
  (``--role web``), retries whose backoff has passed, and messages whose lease expired
  because a worker crashed. It runs every RECOVERY_INTERVAL_SECONDS (the recovery loop)
  and at once when poked (``poke()``): by the LISTEN/NOTIFY listener of a worker
  (``enrich.pipeline.wakeup``) when any process stores messages, and by the dispatcher when
  a poll filled the queue and it has drained to half. Pokes that arrive while a poll runs
  coalesce into one more poll, and polls are at least POLL_MIN_GAP_S apart, so a flood of
  notifications costs at most one query per gap;
* the **dispatcher** takes one hint at a time, waits for a slot of the
  PROCESSING_CONCURRENCY limiter (backpressure) and a token of the paced gate, and claims
  the row with a lease (UPDATE ... FOR UPDATE SKIP LOCKED). Only a successful claim
  starts a job;
* a **job** processes the message while a heartbeat extends its lease, then writes
  items + done + confirmation in one transaction guarded by the lease. Recoverable
  failures go back with exponential backoff; after JOB_MAX_ATTEMPTS, or at once for
  permanent failures, the message is failed with its reason and the sender told.

Acks first (``enrich.core.pacing``): how many jobs may work on this machine at once
follows a pacing signal, so jobs never make Twilio wait. In role ``all`` the signal is this
event loop's lag (PROCESSING_TARGET_LAG_MS); a ``--role worker`` process follows the ack
pressure the web processes publish through Redis (``enrich.pipeline.pressure``,
PROCESSING_TARGET_ACK_MS). The paced limiter is a gate on work done here: a job gives its
token back while it waits on a download or a Speech call (``enrich.pipeline.gate``), so
pacing never leaves the remote stages idle.

Shutdown (``drain``): stop taking hints, give running jobs the grace period, then cancel
the rest; a cancelled job hands its message back at once, so the next start (or another
process) picks it up.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import trio

from enrich.config import Settings
from enrich.core.pacing import AdaptiveLimit
from enrich.core.phone import mask_phone
from enrich.db.pool import ConnectionPool
from enrich.metrics import Metrics
from enrich.pipeline.errors import ProcessingError
from enrich.pipeline.gate import JobGate, bind
from enrich.pipeline.process import Processor
from enrich.store import (
    Job,
    LeaseLost,
    claim_messages,
    complete_message,
    due_message_ids,
    extend_lease,
    fail_message,
    release_message,
    retry_message,
)

log = logging.getLogger(__name__)

#: Most messages claimed in one statement.
CLAIM_BATCH = 64

#: Least time between two polls, however often the poller is poked.
POLL_MIN_GAP_S = 0.015

#: While pacing has paused processing, one job may still start this often.
PAUSE_TRICKLE_S = 1.0

FAILURE_TEXT = (
    "Sorry, we couldn't process your message. Please try sending it again later."
)

#: How long the lag probe asks to sleep; the overshoot is the loop's lag.
LAG_PROBE_S = 0.01


async def measure_lag() -> float:
    """How much later than asked a short sleep wakes: the event loop's congestion."""
    asked = trio.current_time() + LAG_PROBE_S
    await trio.sleep_until(asked)
    return max(0.0, trio.current_time() - asked)


def backoff_delay(attempt: int, base_s: float, cap_s: float = 600.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... capped (attempt counts from 1)."""
    return float(min(cap_s, base_s * math.pow(2, max(attempt - 1, 0))))


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        db: ConnectionPool,
        processor: Processor,
        metrics: Metrics,
        *,
        on_done: Callable[[], None] | None = None,
        lag_probe: Callable[[], Awaitable[float]] | None = None,
        pacing_target_s: float | None = None,
    ) -> None:
        """``lag_probe`` waits a moment and returns the pacing signal in seconds (default:
        this loop's lag), paced against ``pacing_target_s`` (default
        PROCESSING_TARGET_LAG_MS; 0 turns pacing off)."""
        self.settings = settings
        self.db = db
        self.processor = processor
        self.metrics = metrics
        self.on_done = on_done
        # Unique per runner instance: a restarted process reuses its instance id but must
        # not be mistaken for the one that died holding leases.
        self.owner = f"{settings.effective_instance_id}/{secrets.token_hex(4)}"
        self.lease_s = float(settings.job_lease_seconds)
        # Jobs alive at once (memory, leases): fixed. Jobs working here at once: paced.
        self.limiter = trio.CapacityLimiter(settings.processing_concurrency)
        self.gate = trio.CapacityLimiter(settings.processing_concurrency)
        if pacing_target_s is None:
            pacing_target_s = settings.processing_target_lag_ms / 1000
        self.pacing = AdaptiveLimit(0, settings.processing_concurrency, pacing_target_s)
        self._unpaused = trio.Event()
        self._unpaused.set()
        self._lag_probe = lag_probe or measure_lag
        self._send, self._recv = trio.open_memory_channel[int](settings.job_queue_size)
        self._queued: set[int] = set()  # ids hinted and not yet finished here
        self._jobs_scope: trio.CancelScope | None = None
        self._accepting = True
        self._poke = trio.Event()
        # Set when a poll may have left due rows behind (the queue had no room for them):
        # the dispatcher pokes the poller once the queue has drained to half.
        self._refill = False
        self.in_flight = 0
        self.claim_rounds = 0  # claim statements sent (each claims a batch)
        self.polls = 0  # due-row queries sent by the poller
        self._idle = trio.Event()

    # --- feeding --------------------------------------------------------------------

    def notify(self, message_id: int) -> None:
        """A new message was stored: try to start it now (never blocks the webhook)."""
        if not self._accepting or message_id in self._queued:
            return
        try:
            self._send.send_nowait(message_id)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the poller will find the row
        self._queued.add(message_id)

    @property
    def queue_depth(self) -> int:
        return self._send.statistics().current_buffer_used

    def poke(self) -> None:
        """Run the poller now (new messages stored by another process; cheap, coalesced)."""
        self._poke.set()

    # --- running --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as jobs_scope:
                self._jobs_scope = jobs_scope
                nursery.start_soon(self._poll_loop)
                if self.pacing.enabled:
                    nursery.start_soon(self._pace)
                task_status.started()
                async with trio.open_nursery() as jobs:
                    await self._dispatch(jobs)
            nursery.cancel_scope.cancel()

    async def _pace(self) -> None:
        """Acks first (enrich.core.pacing): size the gate from the pacing signal."""
        paused_since: float | None = None
        while True:
            try:
                lag = await self._lag_probe()
            except Exception as exc:  # a probe must never take the runner down
                log.warning("pacing probe failed", extra={"error": type(exc).__name__})
                await trio.sleep(LAG_PROBE_S * 10)
                continue
            limit = self.pacing.update(lag)
            now = trio.current_time()
            if limit == 0:
                if paused_since is None:
                    paused_since = now
                if now - paused_since >= PAUSE_TRICKLE_S:
                    # Paused this long: let the dispatcher start a job until the next
                    # probe (the gate holds one token), so the backlog always moves,
                    # however long the acks need the machine or however high the
                    # signal's floor is.
                    paused_since = now
                    self._unpaused.set()
                elif self._unpaused.is_set():
                    self._unpaused = trio.Event()  # no new job until the loop is on time
            else:
                paused_since = None
                self._unpaused.set()
            tokens = max(1, limit)  # a CapacityLimiter needs at least one token
            if tokens != self.gate.total_tokens:
                # Lowering it below what is borrowed is fine: working jobs go on, and no
                # job starts or resumes work here until the count is under the limit.
                self.gate.total_tokens = tokens

    async def _poll_loop(self) -> None:
        while self._accepting:
            started = trio.current_time()
            try:
                self._refill = await self._poll_once()
                self._maybe_refill()  # the dispatcher may have drained it meanwhile
            except Exception as exc:  # the database may be briefly away: try again later
                log.warning("job poll failed", extra={"error": type(exc).__name__})
            with trio.move_on_after(self.settings.recovery_interval_seconds):
                await self._poke.wait()
            # A flood of pokes (one per stored batch) must not become a hot loop: they
            # coalesce into at most one poll per gap (rows stored meanwhile are found then).
            await trio.sleep_until(started + POLL_MIN_GAP_S)
            self._poke = trio.Event()

    async def _poll_once(self) -> bool:
        """Queue due rows up to the queue's room; True if due rows may be left behind."""
        room = self.settings.job_queue_size - self.queue_depth
        if room <= 0:
            return True
        # Rows hinted but not claimed yet are still due and come back first (oldest
        # first): ask for that many more, or a half-full queue would hide the rest.
        pending = max(0, len(self._queued) - self.in_flight)
        limit = room + pending
        self.polls += 1
        ids = await due_message_ids(self.db, limit)
        added = 0
        for message_id in ids:
            if message_id in self._queued or not self._accepting:
                continue
            if added == room:
                return True
            self._queued.add(message_id)
            added += 1
            await self._send.send(message_id)
        return len(ids) == limit

    async def _dispatch(self, jobs: trio.Nursery) -> None:
        """Claim hinted messages in batches and start one job per claimed message.

        Each round waits for one hint and one free slot, then takes every further hint
        that has a free slot too, and claims them all in one statement. The batch is
        whatever arrived while the previous claim was in flight, so the dispatcher keeps
        up however slow a round trip gets (a claim per message would cap throughput at
        one message per round trip).
        """
        # The receive side stays open when this returns or fails: the supervisor may
        # run() this runner again, and drain() ends the loop by closing the send side.
        while True:
            try:
                first = await self._recv.receive()
            except trio.EndOfChannel:
                break
            gate = JobGate(self.gate)
            batch = [(first, gate)]
            await self._unpaused.wait()
            await self.limiter.acquire_on_behalf_of(gate)
            try:
                await gate.take()
            except BaseException:
                self._give_back(batch)
                raise
            while len(batch) < CLAIM_BATCH:
                gate = JobGate(self.gate)
                try:
                    self.limiter.acquire_on_behalf_of_nowait(gate)
                except trio.WouldBlock:
                    break
                try:
                    gate.take_nowait()
                    batch.append((self._recv.receive_nowait(), gate))
                except (trio.WouldBlock, trio.EndOfChannel):
                    self._release(gate)
                    break
            self._maybe_refill()
            if not self._accepting:
                self._give_back(batch)
                break
            self.claim_rounds += 1
            try:
                claimed = await claim_messages(
                    self.db, [message_id for message_id, _ in batch], self.owner,
                    self.lease_s,
                )
            except Exception as exc:
                log.warning("claim failed", extra={"error": type(exc).__name__})
                claimed = []
            except BaseException:
                # Cancelled mid-claim (a restart of this runner, shutdown): the slots and
                # gate tokens go back, or a runner run() again would start short of them
                # (paced to one, for good). Rows leased meanwhile come back by lease.
                self._give_back(batch)
                raise
            by_id = {job.id: job for job in claimed}
            for message_id, gate in batch:
                job = by_id.get(message_id)
                if job is None:  # done, leased elsewhere, or not due: the row decides
                    self._give_back([(message_id, gate)])
                else:
                    jobs.start_soon(self._run_job, job, gate)

    def _maybe_refill(self) -> None:
        """A poll found more due rows than the queue had room for: poll again once the
        queue has drained to half, not only after RECOVERY_INTERVAL_SECONDS."""
        if self._refill and self.queue_depth <= self.settings.job_queue_size // 2:
            self._refill = False
            self.poke()

    def _release(self, gate: JobGate) -> None:
        """A job's processing slot and, if it holds one, its gate token."""
        gate.give_back()
        self.limiter.release_on_behalf_of(gate)

    def _give_back(self, batch: list[tuple[int, JobGate]]) -> None:
        for message_id, gate in batch:
            self._release(gate)
            self._queued.discard(message_id)

    async def drain(self, grace_s: float) -> None:
        """Stop claiming; let running jobs finish within ``grace_s``; cancel the rest."""
        self._accepting = False
        self._send.close()
        self._poke.set()
        with trio.move_on_after(grace_s):
            await self._wait_idle()
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()
        # Cancelled jobs hand their messages back (shielded, at most 2 s each, all at
        # once): wait for that, or the caller closes the pool under them and the messages
        # sit until their leases expire.
        with trio.move_on_after(5):
            await self._wait_idle()

    async def _wait_idle(self) -> None:
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    # --- one job ----------------------------------------------------------------------

    async def _run_job(self, job: Job, gate: JobGate) -> None:
        bind(gate)  # this task and its children: waits elsewhere give the token back
        self.in_flight += 1
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = await self._attempt(job)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
            self._release(gate)
            self._queued.discard(job.id)
            latency = None
            if outcome == "done":
                latency = (datetime.now(UTC) - job.received_at).total_seconds()
            self.metrics.job_finished(outcome, latency)
            log.info(
                "job finished",
                extra={
                    "message_sid": job.message_sid,
                    "job": job.id,
                    "attempt": job.attempts,
                    "outcome": outcome,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            if self.on_done is not None:
                self.on_done()

    async def _attempt(self, job: Job) -> str:
        max_attempts = self.settings.job_max_attempts
        if job.attempts > max_attempts:
            # Claimed more often than allowed: earlier attempts died mid-way (crashes).
            await fail_message(
                self.db, job, self.owner, f"gave up after {job.attempts - 1} attempts",
                ("failure", FAILURE_TEXT),
            )
            return "failed"
        settled = False  # set once the message's state in the database is decided
        try:
            lost: list[bool] = []
            error: Exception | None = None
            result = None
            with trio.CancelScope() as work_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, job, work_scope, lost)
                    try:
                        result = await self.processor.process(job)
                    except Exception as exc:
                        # Captured here, not raised through the nursery, so it is not
                        # wrapped in an exception group.
                        error = exc
                    nursery.cancel_scope.cancel()
            if lost:
                settled = True
                log.warning("lease lost; another worker owns the message",
                            extra={"message_sid": job.message_sid})
                return "lease_lost"
            if error is not None or result is None:
                outcome = await self._failed(job, error or RuntimeError("no result"))
                settled = True
                return outcome
            try:
                await complete_message(
                    self.db, job, self.owner, result.items, source=result.source,
                    notification=("confirmation", result.reply),
                )
            except LeaseLost:
                settled = True
                log.warning("lease lost before storing; nothing written",
                            extra={"message_sid": job.message_sid})
                return "lease_lost"
            settled = True
            return "done"
        finally:
            if not settled:
                # Cancelled (shutdown) or crashed mid-way: hand the message back now so the
                # next start, or another process, picks it up without waiting for the lease.
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await release_message(self.db, job, self.owner)
                    except Exception:
                        log.warning("could not release message; its lease will expire",
                                    extra={"message_sid": job.message_sid})

    async def _failed(self, job: Job, exc: Exception) -> str:
        recoverable = not isinstance(exc, ProcessingError) or exc.recoverable
        reason = exc.reason if isinstance(exc, ProcessingError) else type(exc).__name__
        user_text = (exc.user_message if isinstance(exc, ProcessingError) else None) or FAILURE_TEXT
        if recoverable and job.attempts < self.settings.job_max_attempts:
            delay = backoff_delay(job.attempts, self.settings.job_retry_base_ms / 1000)
            await retry_message(self.db, job, self.owner, reason, delay)
            log.warning(
                "job will be retried",
                extra={"message_sid": job.message_sid, "attempt": job.attempts,
                       "retry_in_s": delay, "error": reason, "from": mask_phone(job.from_number)},
            )
            return "retried"
        await fail_message(self.db, job, self.owner, reason, ("failure", user_text))
        log.error("job failed", extra={"message_sid": job.message_sid, "error": reason})
        return "failed"

    async def _heartbeat(self, job: Job, work: trio.CancelScope, lost: list[bool]) -> None:
        """Keep the lease alive while we work; if it was taken over, stop working."""
        while True:
            await trio.sleep(self.lease_s / 3)
            try:
                still_ours = await extend_lease(self.db, job, self.owner, self.lease_s)
            except Exception as exc:  # transient: the next beat comes before the lease ends
                log.debug("lease heartbeat failed", extra={"error": type(exc).__name__})
                continue
            if not still_ours:
                lost.append(True)
                work.cancel()
                return
