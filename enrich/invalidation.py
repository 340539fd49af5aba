"""Cache invalidation that reaches every process: Redis pub/sub.

When a number is verified, unlinked, re-linked or its account data deleted, the process
that made the change drops its own cached lookups and publishes the number on
``enrich:cache-invalidate``; every other process drops its cached entries for it. A
listener that lost its subscription may have missed messages, so after reconnecting it
clears its caches entirely (safe: they refill from the database).

redis-py's pub/sub is blocking, so the listener runs in a worker thread polling with a
short timeout and hands each message to the trio loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
import trio

from enrich.redis_client import RedisClient

log = logging.getLogger(__name__)

CHANNEL = "enrich:cache-invalidate"
CLEAR_ALL = "*"


async def publish(client: RedisClient, phone: str) -> None:
    await client.execute("PUBLISH", CHANNEL, phone)


def publish_invalidation_sync(redis_url: str, phone: str) -> None:
    """For the CLI: best effort, a running server may not exist."""
    try:
        c = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            c.publish(CHANNEL, phone)
        finally:
            c.close()
    except redis.RedisError as exc:
        log.warning("could not publish cache invalidation", extra={"error": str(exc)})


async def listen(
    redis_url: str,
    on_phone: Callable[[str], None],
    on_clear: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver invalidations to ``on_phone`` (or ``on_clear`` after a gap) until cancelled."""
    token = trio.lowlevel.current_trio_token()
    stop = threading.Event()
    subscribed = trio.Event()

    def loop() -> None:
        backoff = 0.2
        first = True
        while not stop.is_set():
            client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
            try:
                pubsub.subscribe(CHANNEL)
                if not first:
                    trio.from_thread.run_sync(on_clear, trio_token=token)
                first = False
                trio.from_thread.run_sync(subscribed.set, trio_token=token)
                backoff = 0.2
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        phone = message["data"].decode("utf-8", "replace")
                        if phone == CLEAR_ALL:
                            trio.from_thread.run_sync(on_clear, trio_token=token)
                        else:
                            trio.from_thread.run_sync(on_phone, phone, trio_token=token)
            except (redis.RedisError, OSError) as exc:
                if stop.is_set():
                    return  # shutting down: Redis may already be gone
                log.warning("cache invalidation listener lost Redis; retrying",
                            extra={"error": type(exc).__name__})
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except trio.RunFinishedError:
                return
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:
                    log.debug("pubsub close failed")

    async with trio.open_nursery() as nursery:

        async def run_thread() -> None:
            try:
                await trio.to_thread.run_sync(loop, abandon_on_cancel=True)
            finally:
                stop.set()

        nursery.start_soon(run_thread)
        with trio.move_on_after(5):
            await subscribed.wait()
        task_status.started()
