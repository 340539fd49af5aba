"""Workers are woken by LISTEN/NOTIFY when any process stores messages, not by the clock.

Every worker here polls every 300 s (RECOVERY_INTERVAL_SECONDS): a message that is done
within the 10 s hang guards was found because the INSERT's trigger notified the worker's
listener (or the runner refilled its queue), never because a poll came round.
"""

from __future__ import annotations

from functools import partial

import httpx
import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from enrich.metrics import Metrics
from enrich.pipeline.process import Processor
from enrich.pipeline.runner import POLL_MIN_GAP_S, JobRunner
from enrich.pipeline.wakeup import listen
from tests.webhook.helpers import (
    Apps,
    Running,
    query,
    runner_pool,
    wait_for_status,
    wait_until,
)

SLOW_POLL = {"RECOVERY_INTERVAL_SECONDS": "300"}
PROMPTLY_S = 10.0  # a hang guard, far below the 300 s poll: not a speed assertion

_LISTENERS = ("SELECT pid FROM pg_stat_activity"
              " WHERE datname = current_database() AND application_name LIKE %s")


async def _listener_pids(db: str, name: str = "%:wakeup") -> list[int]:
    return [int(pid) for (pid,) in await query(db, _LISTENERS, name)]


async def _worker_and_web(apps: Apps) -> tuple[Running, Running, str, JobRunner]:
    """A slow-polling worker and a web app (sender linked): the split deployment."""
    worker = await apps.start(role="worker", settings=apps.settings(**SLOW_POLL))
    web = await apps.start(role="web")
    await web.link()
    runner = worker.state.runner
    assert runner is not None and web.state.runner is None
    return worker, web, web.database_url, runner


async def _polled(runner: JobRunner, times: int) -> None:
    """Wait until the runner has polled ``times`` times, then for that poll to finish."""

    async def done() -> bool:
        return runner.polls >= times

    await wait_until(done, timeout=PROMPTLY_S)
    await trio.sleep(0.2)


async def test_worker_processes_messages_stored_by_another_process_at_once(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    worker, web, db, runner = await _worker_and_web(apps)
    await _polled(runner, 2)  # its first poll, and the one the listener's connect asked for

    sids: list[str] = []

    async def post(i: int) -> None:
        sids.append(await web.post_new(http, f"Met Person{i} in Boston"))

    async with trio.open_nursery() as nursery:  # batched INSERTs: one NOTIFY a statement
        for i in range(10):
            nursery.start_soon(post, i)
    await wait_for_status(db, sids, "done", timeout=PROMPTLY_S)

    # Another client entirely (no enrich code on the INSERT path) wakes it too.
    other = "SM" + "f" * 32
    await query(db, "INSERT INTO inbound_messages (message_sid, user_id, from_number, body)"
                    " SELECT %s, user_id, from_number, body FROM inbound_messages"
                    " WHERE message_sid = %s", other, sids[0])
    await wait_for_status(db, [other], "done", timeout=PROMPTLY_S)

    health = worker.state.tasks["wakeup"]
    assert health.running and health.restarts == 0
    # Shutdown cancels the listener cleanly: its connection goes, nothing died.
    assert len(await _listener_pids(db)) == 1
    await worker.shutdown()
    assert health.restarts == 0 and health.last_error is None

    async def listener_gone() -> bool:
        return await _listener_pids(db) == []

    await wait_until(listener_gone, timeout=PROMPTLY_S)


async def test_listener_reconnects_after_its_backend_is_terminated(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    worker, web, db, runner = await _worker_and_web(apps)
    [old_pid] = await _listener_pids(db)
    health = worker.state.tasks["wakeup"]
    await _polled(runner, 2)
    polls = runner.polls

    await query(db, "SELECT pg_terminate_backend(%s)", old_pid)

    async def reconnected() -> bool:
        pids = await _listener_pids(db)
        return health.restarts == 1 and health.running and len(pids) == 1 \
            and pids[0] != old_pid

    await wait_until(reconnected, timeout=PROMPTLY_S)
    assert health.last_error is None  # running again: readiness is green again
    async with httpx.AsyncClient(base_url=worker.base_url) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["task:wakeup"]["ok"]

    # Whatever was stored while it was away notified no one: the reconnect polls once.
    await _polled(runner, polls + 1)
    sid = await web.post_new(http, "Met Ana Lee")
    await wait_for_status(db, [sid], "done", timeout=PROMPTLY_S)


async def test_listener_wakes_on_connect_once_per_statement_and_fails_loudly(
    database_url: str,
) -> None:
    wakes = 0

    def on_wake() -> None:
        nonlocal wakes
        wakes += 1

    ended = trio.Event()
    errors: list[BaseException] = []

    async def run_listener(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await listen(database_url, on_wake, timeout=5,
                         application_name="enrich:test:wakeup", task_status=task_status)
        except psycopg.OperationalError as exc:
            errors.append(exc)
        finally:
            ended.set()

    async def woken(count: int) -> bool:
        return wakes >= count

    insert = ("INSERT INTO inbound_messages (message_sid, from_number)"
              " SELECT %s || g, '+15550001111' FROM generate_series(1, %s) AS g")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_listener)
        assert wakes == 1  # on connect: what was stored while away notified no one

        await query(database_url, insert, "SMa", 5)  # five rows, one statement
        await wait_until(partial(woken, 2), timeout=PROMPTLY_S)
        with psycopg.connect(database_url) as conn:  # rolled back: no notification
            conn.execute(insert, ("SMb", 3))
            conn.rollback()
        # Statements that store no new work notify no one (migration 0003): redeliveries
        # only (ON CONFLICT DO NOTHING), and rate-limited rows (never processed).
        await query(database_url, insert + " ON CONFLICT (message_sid) DO NOTHING", "SMa", 2)
        await query(database_url, "INSERT INTO inbound_messages (message_sid, from_number,"
                                  " status) VALUES ('SMr1', '+15550001111', 'rejected')")
        await query(database_url, insert, "SMc", 1)
        await wait_until(partial(woken, 3), timeout=PROMPTLY_S)
        # Delivered in commit order: had the first statement, the rolled-back one or the
        # ones without new work notified, those would have arrived before the last one's.
        assert wakes == 3

        [pid] = await _listener_pids(database_url, "enrich:test:wakeup")
        await query(database_url, "SELECT pg_terminate_backend(%s)", pid)
        with trio.fail_after(PROMPTLY_S):
            await ended.wait()  # raised for the supervisor to restart it
    assert len(errors) == 1

    # Cancellation (shutdown) ends the unbounded wait for notifications at once.
    ended = trio.Event()
    with trio.fail_after(PROMPTLY_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_listener)
            assert len(await _listener_pids(database_url, "enrich:test:wakeup")) == 1
            nursery.cancel_scope.cancel()
    assert len(errors) == 1 and wakes == 4

    async def closed() -> bool:
        return await _listener_pids(database_url, "enrich:test:wakeup") == []

    await wait_until(closed, timeout=PROMPTLY_S)


class FreezableProxy:
    """A TCP proxy in front of PostgreSQL that can stop forwarding: a silent network."""

    def __init__(self, database_url: str) -> None:
        self.params = conninfo_to_dict(database_url)
        self.frozen = False
        self.port = 0

    def url(self) -> str:
        return make_conninfo("", **{**self.params, "host": "127.0.0.1", "port": self.port})

    async def _upstream(self) -> trio.abc.Stream:
        host = str(self.params.get("host") or "localhost")
        port = int(self.params.get("port") or 5432)
        if host.startswith("/"):
            return await trio.open_unix_socket(f"{host}/.s.PGSQL.{port}")
        return await trio.open_tcp_stream(host, port)

    async def _pump(self, source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        while data := await source.receive_some(65536):
            if self.frozen:
                await trio.sleep_forever()  # swallowed: no answer, no error, no FIN
            await sink.send_all(data)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await self._upstream() as upstream, trio.open_nursery() as n:
            n.start_soon(self._pump, client, upstream)
            n.start_soon(self._pump, upstream, client)

    async def serve(self, *, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)


async def test_listener_notices_a_connection_that_went_silent(database_url: str) -> None:
    # A quiet connection is checked with a bounded query, so a connection that silently
    # stopped answering (a dropped network path: no FIN, no RST) raises instead of leaving
    # the worker deaf until a TCP keepalive gives up, hours later.
    proxy = FreezableProxy(database_url)
    wakes = 0

    def on_wake() -> None:
        nonlocal wakes
        wakes += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        with trio.fail_after(PROMPTLY_S), pytest.RaisesGroup(trio.TooSlowError):
            async with trio.open_nursery() as inner:
                await inner.start(partial(listen, proxy.url(), on_wake, timeout=0.5,
                                          check_interval_s=0.2,
                                          application_name="enrich:test:silent"))
                await trio.sleep(0.5)  # a few checks pass while the path is alive
                assert await _listener_pids(database_url, "enrich:test:silent")
                proxy.frozen = True
                await trio.sleep_forever()  # until the listener's check fails
        nursery.cancel_scope.cancel()
    assert wakes == 1


async def test_a_full_queue_is_refilled_when_it_drains_not_at_the_next_poll(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    web = await apps.start(role="web")
    await web.link()
    db = web.database_url
    sids = [await web.post_new(http, f"Met Person{i} in Boston") for i in range(20)]
    settings = apps.settings(JOB_QUEUE_SIZE="4", PROCESSING_CONCURRENCY="2", **SLOW_POLL)
    pool = runner_pool(settings)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics())  # no listener at all
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            # The first poll takes 4 of the 20; each further poll is the runner's own,
            # when its queue has drained to half.
            await wait_for_status(db, sids, "done", timeout=PROMPTLY_S)
            nursery.cancel_scope.cancel()
        assert runner.polls >= 5
    finally:
        await pool.close()


async def test_a_flood_of_pokes_is_not_a_hot_loop(apps: Apps) -> None:
    settings = apps.settings(**SLOW_POLL)
    pool = runner_pool(settings)
    try:
        runner = JobRunner(settings, pool, Processor(), Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            start, polls = trio.current_time(), runner.polls
            while trio.current_time() - start < 0.3:
                runner.poke()  # e.g. one notification per stored batch, non-stop
                await trio.sleep(0)
            elapsed = trio.current_time() - start
            made = runner.polls - polls
            nursery.cancel_scope.cancel()
        # Polls start at least POLL_MIN_GAP_S apart: an upper bound, whatever the speed.
        assert 2 <= made <= elapsed / POLL_MIN_GAP_S + 2, (made, elapsed)
    finally:
        await pool.close()
