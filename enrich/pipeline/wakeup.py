"""Wake a worker's job runner as soon as any process stores messages: LISTEN/NOTIFY.

Migration 0002 puts a statement-level trigger on ``inbound_messages`` that sends
``NOTIFY enrich_inbound`` in the webhook's own INSERT transaction (delivered at commit, one
per batch, no extra round trip). A ``--role worker`` process runs :func:`listen`: its own
dedicated connection (not a pool connection: it sits in LISTEN for ever) hands every
notification to ``on_wake``, the runner's ``poke()``, so the poller reads the new rows now
instead of at the next RECOVERY_INTERVAL_SECONDS. (Role ``all`` has the in-process hint,
``runner.notify``; role ``web`` has no runner.)

The notification is only a hint, like ``notify``: PostgreSQL keeps none for a session that
is not connected, so on every (re)connect this pokes once, and the periodic poll stays
the backstop for anything missed.

Bounds: opening the connection, LISTEN and the liveness check run under the connect
deadline; the wait for notifications is unbounded (that is the point) but cancels at once
(the connection is idle, there is no query to cancel). A quiet connection is checked
with ``SELECT 1`` every CHECK_INTERVAL_S, so a silently dropped TCP connection is found
too. Any failure raises: the supervisor (``keep_running``) restarts the task with backoff
and readiness reports ``task:wakeup`` meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import trio

from enrich.db.connection import TrioConnection

log = logging.getLogger(__name__)

#: The channel migration 0002's trigger notifies.
CHANNEL = "enrich_inbound"

#: How long the connection may stay quiet before we check it still answers.
CHECK_INTERVAL_S = 30.0


async def listen(
    conninfo: str,
    on_wake: Callable[[], None],
    *,
    timeout: float,
    application_name: str = "enrich:wakeup",
    check_interval_s: float = CHECK_INTERVAL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_wake`` once connected and on every notification, until cancelled.

    Raises when the connection fails (the caller restarts it); ``timeout`` bounds every
    step that waits for the server to answer.
    """
    conn = await TrioConnection.connect_trio(
        conninfo, timeout=timeout, autocommit=True, prepare_threshold=None,
        application_name=application_name,
    )
    try:
        with trio.fail_after(timeout):
            await conn.execute(f"LISTEN {CHANNEL}")
        log.info("listening for new messages", extra={"channel": CHANNEL})
        # Anything stored while we were not listening sent its notification to no one.
        on_wake()
        task_status.started()
        while True:
            with trio.move_on_after(check_interval_s):
                # psycopg's generator runs its waits through TrioConnection.wait; a
                # notification that arrives during the check below is kept in psycopg's
                # backlog and yielded first next time.
                async with contextlib.aclosing(conn.notifies()) as notifies:
                    async for _ in notifies:
                        on_wake()
            with trio.fail_after(timeout):
                await conn.execute("SELECT 1")
    finally:
        await conn.close()
