"""The job runner: retries with backoff, failures with reasons, cancellation, crashed owners'
leases, and several runners sharing one database, all on real apps and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import trio

from enrich.app import create_app, get_state
from enrich.extraction import Extraction, default_extractor
from enrich.metrics import Metrics
from enrich.pipeline.errors import PermanentError, RecoverableError
from enrich.pipeline.process import Processor
from enrich.pipeline.runner import FAILURE_TEXT, JobRunner
from enrich.store import Job
from enrich.testing.fake_twilio import FakeTwilio
from tests.conftest import make_settings
from tests.webhook.helpers import (
    SENDER,
    Apps,
    query,
    runner_pool,
    wait_for_sent,
    wait_for_status,
    wait_until,
)

BODY = "Met Ana Lee in Boston #climbing"
REPLY = "Saved 3 items: Ana Lee, climbing, Boston"


class ScriptedExtractor:
    """The rule extractor, after raising each of ``failures`` in turn (one per call)."""

    name = "scripted"

    def __init__(self, *failures: Exception, forever: Exception | None = None) -> None:
        self.failures = list(failures)
        self.forever = forever
        self.calls = 0

    def extract(self, text: str) -> Extraction:
        self.calls += 1
        if self.forever is not None:
            raise self.forever
        if self.failures:
            raise self.failures.pop(0)
        return default_extractor().extract(text)


async def _row(db: str, sid: str) -> tuple[str, int, str | None, str | None]:
    rows = await query(db, "SELECT status, attempts, last_error, lease_owner"
                           " FROM inbound_messages WHERE message_sid = %s", sid)
    assert len(rows) == 1
    status, attempts, error, owner = rows[0]
    return str(status), int(attempts), error, owner


async def _items(db: str, sid: str) -> list[tuple[int, str]]:
    return [(int(i), str(v)) for i, v in await query(
        db, "SELECT item_index, value FROM enrichment_items WHERE message_sid = %s"
            " ORDER BY item_index", sid)]


async def _notes(db: str, sid: str) -> list[tuple[str, str]]:
    return [(str(k), str(b)) for k, b in await query(
        db, "SELECT kind, body FROM notifications WHERE message_sid = %s ORDER BY id", sid)]


async def _fast_forward(db: str, sid: str) -> None:
    """Make a waiting retry due now, as if its backoff had passed."""
    await query(db, "UPDATE inbound_messages SET next_attempt_at = now()"
                    " WHERE message_sid = %s AND status = 'received'", sid)


async def test_recoverable_failures_back_off_exponentially_then_succeed(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    extractor = ScriptedExtractor(RecoverableError("speech timed out"),
                                  RecoverableError("speech timed out again"))
    app = await apps.start(settings=apps.settings(JOB_RETRY_BASE_MS="60000",
                                                  RECOVERY_INTERVAL_SECONDS="0.1"),
                           extractor=extractor)
    await app.link()
    db = app.database_url
    sid = await app.post_new(http, BODY)

    for attempt, reason, delay_s in ((1, "speech timed out", 60.0),
                                     (2, "speech timed out again", 120.0)):
        async def waiting(attempt: int = attempt) -> bool:
            status, attempts, _, _ = await _row(db, sid)
            return status == "received" and attempts == attempt

        await wait_until(waiting)
        _, _, error, owner = await _row(db, sid)
        assert (error, owner) == (reason, None)  # lease given up, reason kept
        # The delay is written in the same statement as updated_at: exact, not timed.
        rows = await query(db, "SELECT extract(epoch FROM next_attempt_at - updated_at),"
                               " next_attempt_at > now() FROM inbound_messages"
                               " WHERE message_sid = %s", sid)
        assert rows == [(delay_s, True)]
        await trio.sleep(0.4)  # several recovery polls: none may start the retry early
        assert extractor.calls == attempt
        assert await _items(db, sid) == []
        await _fast_forward(db, sid)

    await wait_for_status(db, [sid], "done")
    assert (await _row(db, sid))[:3] == ("done", 3, None)
    assert extractor.calls == 3
    assert await _items(db, sid) == [(0, "Ana Lee"), (1, "climbing"), (2, "Boston")]
    await wait_for_sent(fake_twilio, 1)
    assert [(m.to, m.body) for m in fake_twilio.sent_messages] == [(SENDER, REPLY)]


async def test_unexpected_errors_are_retried_with_a_small_base(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    extractor = ScriptedExtractor(RuntimeError("bug"), ValueError("another"))
    app = await apps.start(settings=apps.settings(JOB_RETRY_BASE_MS="20",
                                                  RECOVERY_INTERVAL_SECONDS="0.1"),
                           extractor=extractor)
    await app.link()
    sid = await app.post_new(http, BODY)
    await wait_for_status(app.database_url, [sid], "done")
    assert (await _row(app.database_url, sid))[:3] == ("done", 3, None)
    assert extractor.calls == 3
    assert len(await _items(app.database_url, sid)) == 3
    assert app.state.metrics.jobs["retried"] == 2 and app.state.metrics.jobs["done"] == 1
    await wait_for_sent(fake_twilio, 1)
    assert [m.body for m in fake_twilio.sent_messages] == [REPLY]


async def test_permanent_failure_fails_at_once_and_tells_the_sender(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    text = "We can't read that kind of file. Try a photo or a voice note."
    extractor = ScriptedExtractor(forever=PermanentError("unsupported media type",
                                                         user_message=text))
    app = await apps.start(extractor=extractor)
    await app.link()
    sid = await app.post_new(http, BODY)
    await wait_for_status(app.database_url, [sid], "failed")
    assert await _row(app.database_url, sid) == ("failed", 1, "unsupported media type", None)
    assert extractor.calls == 1
    assert await _items(app.database_url, sid) == []
    assert await _notes(app.database_url, sid) == [("failure", text)]
    await wait_for_sent(fake_twilio, 1)
    assert [(m.to, m.body) for m in fake_twilio.sent_messages] == [(SENDER, text)]


async def test_attempts_exhausted_fail_the_message(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    extractor = ScriptedExtractor(forever=RecoverableError("upstream answered 503"))
    app = await apps.start(settings=apps.settings(JOB_MAX_ATTEMPTS="2", JOB_RETRY_BASE_MS="10",
                                                  RECOVERY_INTERVAL_SECONDS="0.1"),
                           extractor=extractor)
    await app.link()
    sid = await app.post_new(http, BODY)
    await wait_for_status(app.database_url, [sid], "failed")
    assert await _row(app.database_url, sid) == ("failed", 2, "upstream answered 503", None)
    assert extractor.calls == 2
    assert await _notes(app.database_url, sid) == [("failure", FAILURE_TEXT)]
    await wait_for_sent(fake_twilio, 1)
    assert [m.body for m in fake_twilio.sent_messages] == [FAILURE_TEXT]


class Blocker:
    """A ``before_store`` hook that parks the job until it is cancelled."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.cancelled = False

    async def __call__(self, job: Job) -> None:
        self.entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled = True
            raise


async def test_app_stopped_mid_job_hands_the_message_back_and_a_new_one_finishes_it(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    blocker = Blocker()
    first = await apps.start(settings=apps.settings(SHUTDOWN_GRACE_SECONDS="0.3"),
                             processor=Processor(before_store=blocker))
    await first.link()
    db = first.database_url
    sid = await first.post_new(http, BODY)
    with trio.fail_after(20):
        await blocker.entered.wait()
    assert first.state.runner is not None
    assert await _row(db, sid) == ("processing", 1, None, first.state.runner.owner)
    await first.shutdown()  # drain: the grace passes, the job is cancelled
    assert blocker.cancelled
    # Handed back at once, the attempt not counted, nothing half-written.
    assert await _row(db, sid) == ("received", 0, None, None)
    assert await _items(db, sid) == [] and await _notes(db, sid) == []

    second = await apps.start()
    await wait_for_status(db, [sid], "done")
    assert await _row(db, sid) == ("done", 1, None, None)
    assert await _items(db, sid) == [(0, "Ana Lee"), (1, "climbing"), (2, "Boston")]
    assert await _notes(db, sid) == [("confirmation", REPLY)]
    await wait_for_sent(fake_twilio, 1)
    await trio.sleep(0.2)
    assert [m.body for m in fake_twilio.sent_messages] == [REPLY]
    assert second.state.metrics.jobs["done"] == 1


async def test_cancelled_runner_releases_its_job_to_a_fresh_runner(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    sid = await web.post_new(http, BODY)
    settings = apps.settings(RECOVERY_INTERVAL_SECONDS="0.1")
    pool = runner_pool(settings)
    try:
        blocker = Blocker()
        doomed = JobRunner(settings, pool, Processor(before_store=blocker), Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(doomed.run)
            with trio.fail_after(20):
                await blocker.entered.wait()  # found by the poller: no hint in this process
            assert (await _row(db, sid))[3] == doomed.owner
            nursery.cancel_scope.cancel()  # the runner is cancelled mid-job, no drain
        assert blocker.cancelled
        assert await _row(db, sid) == ("received", 0, None, None)

        fresh = JobRunner(settings, pool, Processor(), Metrics())
        assert fresh.owner != doomed.owner
        async with trio.open_nursery() as nursery:
            await nursery.start(fresh.run)
            await wait_for_status(db, [sid], "done")
            nursery.cancel_scope.cancel()
        assert len(await _items(db, sid)) == 3
        assert await _notes(db, sid) == [("confirmation", REPLY)]  # queued once, for the outbox
    finally:
        await pool.close()


async def test_recovery_takes_over_expired_leases_only(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    expired, alive, looping = [await web.post_new(http, BODY) for _ in range(3)]
    # A worker crashed holding `expired` (1 attempt) and `looping` (its 3rd attempt);
    # another worker is alive and well, holding `alive`.
    lease = ("UPDATE inbound_messages SET status = 'processing', attempts = %s,"
             " lease_owner = %s, lease_expires_at = now() + make_interval(secs => %s),"
             " next_attempt_at = now() + make_interval(secs => %s) WHERE message_sid = %s")
    await query(db, lease, 1, "crashed-host/dead", -5, -5, expired)
    await query(db, lease, 3, "crashed-host/dead", -5, -5, looping)
    await query(db, lease, 1, "busy-host/alive", 600, 600, alive)

    worker = await apps.start(role="worker",
                              settings=apps.settings(RECOVERY_INTERVAL_SECONDS="0.1"))
    await wait_for_status(db, [expired], "done")
    await wait_for_status(db, [looping], "failed")
    assert await _row(db, expired) == ("done", 2, None, None)
    assert await _items(db, expired) == [(0, "Ana Lee"), (1, "climbing"), (2, "Boston")]
    assert await _row(db, looping) == ("failed", 4, "gave up after 3 attempts", None)
    assert await _items(db, looping) == []
    assert await _notes(db, looping) == [("failure", FAILURE_TEXT)]
    await trio.sleep(0.4)  # several more recovery polls
    assert await _row(db, alive) == ("processing", 1, None, "busy-host/alive")
    assert await _items(db, alive) == [] and await _notes(db, alive) == []
    await wait_for_sent(fake_twilio, 2)
    assert sorted(m.body for m in fake_twilio.sent_messages) == sorted([REPLY, FAILURE_TEXT])
    assert worker.state.metrics.jobs["done"] == 1


async def test_two_workers_share_50_messages_exactly_once(
    apps: Apps, http: httpx.AsyncClient, fake_twilio: FakeTwilio
) -> None:
    seen: list[tuple[str, str]] = []

    def recorder(name: str) -> Processor:
        async def record(job: Job) -> None:
            seen.append((name, job.message_sid))
            await trio.sleep(0.02)  # long enough that one worker cannot take everything

        return Processor(before_store=record)

    worker_env = apps.settings(PROCESSING_CONCURRENCY="2", RECOVERY_INTERVAL_SECONDS="0.1")
    for name in ("a", "b"):
        await apps.start(role="worker", settings=worker_env, processor=recorder(name))
    web = await apps.start(role="web")
    await web.link()
    sids: list[str] = []

    async def post() -> None:
        sids.append(await web.post_new(http, BODY))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(post)
    db = web.database_url
    await wait_for_status(db, sids, "done", timeout=60)

    assert len(seen) == 50 and Counter(sid for _, sid in seen) == Counter(sids)
    by_worker = Counter(name for name, _ in seen)
    assert by_worker["a"] > 0 and by_worker["b"] > 0, by_worker
    attempts = await query(db, "SELECT attempts, count(*) FROM inbound_messages GROUP BY 1")
    assert attempts == [(1, 50)]
    per_message = await query(db, "SELECT message_sid, count(*), count(DISTINCT item_index)"
                                  " FROM enrichment_items GROUP BY 1")
    assert sorted(sid for sid, _, _ in per_message) == sorted(sids)
    assert {(n, d) for _, n, d in per_message} == {(3, 3)}
    notes = await query(db, "SELECT kind, count(*) FROM notifications GROUP BY 1")
    assert notes == [("confirmation", 50)]
    await wait_for_sent(fake_twilio, 50, timeout=60)
    await trio.sleep(0.3)
    assert len(fake_twilio.sent_messages) == 50


async def test_backlog_is_claimed_in_batches_not_one_round_trip_each(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    sids = [await web.post_new(http, f"Met Person{i} in Boston") for i in range(40)]
    settings = apps.settings(PROCESSING_CONCURRENCY="16", RECOVERY_INTERVAL_SECONDS="0.1")
    pool = runner_pool(settings)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for_status(db, sids, "done")
            nursery.cancel_scope.cancel()
        # The poller hands the backlog over at once: 40 messages, 16 slots. One claim per
        # message would be 40 statements; batches take what has a free slot.
        assert runner.claim_rounds < 40 / 2
        [(attempts, messages)] = await query(
            db, "SELECT max(attempts), count(*) FROM inbound_messages"
                " WHERE message_sid = ANY(%s) AND status = 'done'", sids)
        assert (attempts, messages) == (1, 40)  # each claimed once, by one batch
        [(with_items,)] = await query(
            db, "SELECT count(DISTINCT message_sid) FROM enrichment_items"
                " WHERE message_sid = ANY(%s)", sids)
        assert with_items == 40
    finally:
        await pool.close()


async def test_a_congested_loop_throttles_processing_and_it_recovers(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    settings = apps.settings(PROCESSING_CONCURRENCY="8", PROCESSING_TARGET_LAG_MS="5",
                             RECOVERY_INTERVAL_SECONDS="0.1")
    send, receive = trio.open_memory_channel[float](0)

    async def probe() -> float:
        return await receive.receive()  # the test decides what the loop's lag is

    pool = runner_pool(settings)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics(), lag_probe=probe)
        assert runner.gate.total_tokens == runner.limiter.total_tokens == 8
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            for _ in range(6):
                await send.send(0.050)  # webhooks alone keep the loop late
            await send.send(0.050)
            assert runner.pacing.limit == 0 and runner.gate.total_tokens == 1
            assert runner.limiter.total_tokens == 8  # pacing gates work, not memory
            sids = [await web.post_new(http, f"Met Person{i} in Boston") for i in range(5)]
            await trio.sleep(0.5)  # the poller hands them over; the paused runner waits
            assert {(await _row(db, sid))[0] for sid in sids} == {"received"}
            # The loop is on time again: processing resumes and catches up.
            for _ in range(10):
                await send.send(0.0)
            await send.send(0.0)
            await wait_for_status(db, sids, "done")
            assert runner.gate.total_tokens == 8  # back to full concurrency
            nursery.cancel_scope.cancel()
    finally:
        await pool.close()


def test_each_role_paces_on_its_own_signal(tmp_path: Path) -> None:
    # Role all answers webhooks on the runner's loop: it paces on that loop's lag. A
    # worker has no acks of its own: it paces on the web processes' ack pressure.
    settings = make_settings(
        tmp_path, DATABASE_URL="postgresql://127.0.0.1:1/unused",
        REDIS_URL="redis://127.0.0.1:1/0", STT_ENGINE="none", PROCESSING_TARGET_LAG_MS="5",
        PROCESSING_TARGET_ACK_MS="30")
    targets = {}
    for role in ("all", "worker"):
        runner = get_state(create_app(settings, role=role)).runner
        assert runner is not None
        targets[role] = runner.pacing.target_lag_s
        assert runner.pacing.limit == runner.gate.total_tokens == 100  # full concurrency
    assert targets == {"all": 0.005, "worker": 0.030}
    assert get_state(create_app(settings, role="web")).runner is None
    off = make_settings(tmp_path, DATABASE_URL="postgresql://127.0.0.1:1/unused",
                        REDIS_URL="redis://127.0.0.1:1/0", PROCESSING_TARGET_ACK_MS="0")
    runner = get_state(create_app(off, role="worker")).runner
    assert runner is not None and not runner.pacing.enabled


async def test_a_failing_probe_and_a_restart_do_not_stop_the_runner(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    """A pacing probe that raises (a Redis error reply, say) is logged and skipped; and a
    runner that the supervisor runs again after a crash still takes hints and polls."""
    from enrich.resp import RespError

    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    settings = apps.settings(PROCESSING_TARGET_LAG_MS="5", RECOVERY_INTERVAL_SECONDS="0.1")
    calls = 0

    async def probe() -> float:
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        if calls == 1:
            raise RespError("LOADING Redis is loading the dataset in memory")
        return 0.0

    pool = runner_pool(settings)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics(), lag_probe=probe)
        with trio.CancelScope() as first_run:  # as if the task died and was cancelled
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                sid = await web.post_new(http, "Met Ana Lee in Boston")
                await wait_for_status(db, [sid], "done")
                # The probe goes on after its error (the job may finish before the
                # retry, so wait for it rather than assume the order).
                with trio.fail_after(5):
                    while calls < 2:
                        await trio.sleep(0.01)
                first_run.cancel()
        async with trio.open_nursery() as nursery:  # keep_running starts it again
            await nursery.start(runner.run)
            sid = await web.post_new(http, "Met Bo Chen in Austin")
            await wait_for_status(db, [sid], "done")
            runner.notify(10**9)  # a hint for a row that does not exist: ignored
            nursery.cancel_scope.cancel()
    finally:
        await pool.close()


async def test_a_runner_cancelled_mid_claim_gives_its_slots_back_and_runs_again(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    """The supervisor cancels and restarts a runner whose claim is stuck (here: another
    session holds the table). The batch's processing slots and gate tokens go back, so
    the runner run() again still has all of them, and it processes the message."""
    import psycopg

    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    sid = await web.post_new(http, "Met Ana Lee in Boston")
    settings = apps.settings(PROCESSING_CONCURRENCY="2", RECOVERY_INTERVAL_SECONDS="0.1")
    pool = runner_pool(settings)
    locker = await trio.to_thread.run_sync(psycopg.connect, db)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics())

        async def claiming() -> bool:
            return runner.claim_rounds >= 1

        # EXCLUSIVE lets the poller's SELECT through and holds the claim's UPDATE.
        await trio.to_thread.run_sync(
            locker.execute, "LOCK TABLE inbound_messages IN EXCLUSIVE MODE")
        with trio.fail_after(10):
            with trio.CancelScope() as first_run:
                async with trio.open_nursery() as nursery:
                    await nursery.start(runner.run)
                    await wait_until(claiming)
                    await trio.sleep(0.2)  # the claim is waiting on the lock
                    assert runner.limiter.borrowed_tokens == runner.gate.borrowed_tokens == 1
                    first_run.cancel()
        await trio.to_thread.run_sync(locker.rollback)
        assert runner.limiter.borrowed_tokens == runner.gate.borrowed_tokens == 0
        async with trio.open_nursery() as nursery:  # keep_running starts it again
            await nursery.start(runner.run)
            await wait_for_status(db, [sid], "done")
            nursery.cancel_scope.cancel()
        assert runner.limiter.borrowed_tokens == runner.gate.borrowed_tokens == 0
    finally:
        await trio.to_thread.run_sync(locker.rollback)
        await trio.to_thread.run_sync(locker.close)
        await pool.close()
