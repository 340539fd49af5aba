"""A small trio connection pool for PostgreSQL.

The front door is a ``trio.CapacityLimiter`` of DATABASE_POOL_MAX tokens: holding a token
is holding a connection, so the limiter's statistics *are* the pool's statistics
(in use, waiting). Behind it sits a LIFO list of idle connections (the most recently used
one is warmest and its prepared statements are ready).

Every connection goes back on success, error and cancellation: ``connection()`` is an
async context manager whose exit rolls back an unfinished transaction or drops a broken
connection, inside a shielded, bounded scope so a cancelled caller still returns it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from psycopg import pq

from enrich.db.connection import TrioConnection
from enrich.nowait import acquired_now

log = logging.getLogger(__name__)

RETURN_GRACE_S = 2.0


class PoolTimeout(TimeoutError):
    """No connection became free within the acquire deadline."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Pool statistics in the project's one vocabulary (DESIGN.md §8.12)."""

    total: int
    available: int
    inUse: int
    waiting: int
    idle: int
    min: int
    max: int

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "available": self.available,
            "inUse": self.inUse,
            "waiting": self.waiting,
            "idle": self.idle,
            "min": self.min,
            "max": self.max,
        }


class ConnectionPool:
    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout: float = 2.0,
        acquire_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        application_name: str = "enrich",
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"pool sizes need 0 <= min ({min_size}) <= max ({max_size}), max >= 1")
        self.conninfo = conninfo
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.idle_timeout = idle_timeout
        self.application_name = application_name
        self.limiter = trio.CapacityLimiter(max_size)
        self._idle: list[tuple[TrioConnection[Any], float]] = []  # (conn, last used)
        self._open = 0  # connections that exist (idle + lent)
        self._closed = False
        self.connections_opened = 0
        self.borrows = 0  # each borrow is one statement or one transaction in this codebase
        self.busy_seconds = 0.0

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open ``min_size`` connections now so the first requests don't pay for them."""
        for _ in range(self.min_size - len(self._idle)):
            conn = await self._connect()
            self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await self._discard(conn)

    async def _connect(self) -> TrioConnection[Any]:
        conn = await TrioConnection.connect_trio(
            self.conninfo,
            timeout=self.connect_timeout,
            application_name=self.application_name,
        )
        self._open += 1
        self.connections_opened += 1
        return conn

    async def _discard(self, conn: TrioConnection[Any]) -> None:
        self._open -= 1
        await conn.close()

    # --- borrowing ------------------------------------------------------------------

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[TrioConnection[Any]]:
        """Borrow a connection (autocommit); use ``conn.transaction()`` for transactions."""
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        wait = self.acquire_timeout if timeout is None else timeout
        if not await acquired_now(self.limiter):
            await self._acquire_within(wait)
        conn: TrioConnection[Any] | None = None
        started = time.perf_counter()
        try:
            conn = await self._take()
            yield conn
        finally:
            self.borrows += 1
            self.busy_seconds += time.perf_counter() - started
            with trio.CancelScope(shield=True):
                try:
                    if conn is not None:
                        await self._give_back(conn)
                finally:
                    self.limiter.release()

    async def _acquire_within(self, wait: float) -> None:
        with trio.move_on_after(wait) as scope:
            await self.limiter.acquire()
        if scope.cancelled_caught:
            raise PoolTimeout(
                f"no database connection free within {wait:.1f}s "
                f"(DATABASE_POOL_MAX={self.max_size}, waiting={self.waiting})"
            )

    async def _take(self) -> TrioConnection[Any]:
        while self._idle:
            conn, _ = self._idle.pop()
            if not conn.closed and conn.pgconn.status == pq.ConnStatus.OK:
                return conn
            await self._discard(conn)
        return await self._connect()

    async def _give_back(self, conn: TrioConnection[Any]) -> None:
        if self._closed or conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            await self._discard(conn)
            return
        status = conn.pgconn.transaction_status
        if status != pq.TransactionStatus.IDLE:
            # An error or a cancellation left a transaction open: roll it back, bounded.
            with trio.move_on_after(RETURN_GRACE_S):
                try:
                    if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
                        await conn.rollback()
                except Exception:
                    log.debug("rollback on return failed; dropping the connection")
            if conn.closed or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                await self._discard(conn)
                return
        self._idle.append((conn, time.monotonic()))

    async def trim_idle(self) -> int:
        """Close idle connections above ``min_size`` unused for ``idle_timeout``."""
        now = time.monotonic()
        closed = 0
        keep: list[tuple[TrioConnection[Any], float]] = []
        # Oldest first: _idle is LIFO so the head holds the longest-idle connections.
        for conn, last in self._idle:
            surplus = self._open > self.min_size
            if surplus and now - last > self.idle_timeout:
                await self._discard(conn)
                closed += 1
            else:
                keep.append((conn, last))
        self._idle = keep
        return closed

    # --- statistics -----------------------------------------------------------------

    def reset_counters(self) -> None:
        self.borrows = 0
        self.busy_seconds = 0.0

    @property
    def avg_query_ms(self) -> float:
        return round(1000 * self.busy_seconds / self.borrows, 3) if self.borrows else 0.0

    @property
    def waiting(self) -> int:
        return self.limiter.statistics().tasks_waiting

    def stats(self) -> PoolStats:
        in_use = int(self.limiter.borrowed_tokens)
        return PoolStats(
            total=self._open,
            available=int(self.limiter.available_tokens),
            inUse=in_use,
            waiting=self.waiting,
            idle=len(self._idle),
            min=self.min_size,
            max=self.max_size,
        )

    async def ping(self, timeout: float = 1.0) -> float:
        """Round-trip ``SELECT 1`` under a deadline; returns seconds taken."""
        start = time.perf_counter()
        with trio.fail_after(timeout):
            async with self.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")
        return time.perf_counter() - start
