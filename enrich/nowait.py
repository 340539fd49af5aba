"""Taking a trio lock or capacity limiter without a yield when it is free.

trio's ``acquire`` passes through the scheduler even when nothing contends. On the
webhook's hot path the pool token, the Redis token and psycopg's connection lock are
nearly always free, and the call that follows waits for its server anyway, so those
yields only cost task switches on a CPU-bound process (docs/ARCHITECTURE.md, "One trip
through the scheduler per round trip").
"""

from __future__ import annotations

import trio


async def acquired_now(primitive: trio.Lock | trio.CapacityLimiter) -> bool:
    """Take ``primitive`` at once if it is free; False if the caller must wait for it.

    A caller already cancelled is stopped here, as trio's ``acquire`` would stop it,
    before anything it sends next goes out (``checkpoint_if_cancelled`` raises then and
    costs no yield otherwise). Fairness is trio's: ``acquire_nowait`` refuses while
    others are waiting.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        primitive.acquire_nowait()
    except trio.WouldBlock:
        return False
    return True
