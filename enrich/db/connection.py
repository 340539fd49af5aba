"""A psycopg ``AsyncConnection`` that waits on the socket with trio, not asyncio.

Why this shape (DESIGN.md §4, measured on this machine):

* psycopg's sync driver in threads reaches 4-7k ops/s but a trio deadline cannot interrupt
  the thread: a 1 s query under a 0.2 s deadline returned after 1 s;
* ``AsyncConnection`` through trio-asyncio cancels correctly but costs ~4x per crossing;
* psycopg drives libpq through *generators* that yield "wait for read/write on this fd"
  and are resumed when the fd is ready. ``AsyncConnection.wait`` is the only place that
  touches asyncio. Overriding it with ``trio.lowlevel.wait_readable/writable`` gives a
  connection that never blocks the trio loop, cancels at the deadline, and measured
  12-17k ops/s.

The generator protocol (``_connect_gen``, ``wait``, ``_cancel_gen``) is private psycopg
API, so the dependency is pinned to one minor version and
``tests/db/test_conformance.py`` checks every behaviour relied on here.

Cancellation: when trio cancels a wait mid-query, the backend is still running it. We
send a protocol-level cancel request and drain the generator (shielded, bounded), which
leaves the connection idle and reusable; if that fails the connection is closed and the
pool replaces it.
"""

from __future__ import annotations

import ipaddress
import logging
import select
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors as e
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import AsyncRowFactory, Row, TupleRow
from psycopg.waiting import Ready, Wait

from enrich.nowait import acquired_now

log = logging.getLogger(__name__)

RV = TypeVar("RV")

#: How long a cancelled query may take to wind down before the connection is dropped.
CANCEL_GRACE_S = 2.0


def _poll_now(fileno: int, events: int) -> int:
    """Zero-timeout readiness check: a writable socket is nearly always ready."""
    poller = select.poll()
    mask = (select.POLLIN if events & Wait.R else 0) | (select.POLLOUT if events & Wait.W else 0)
    poller.register(fileno, mask)
    ready = 0
    for _, ev in poller.poll(0):
        if ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            ready |= Ready.R
        if ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            ready |= Ready.W
    return ready & events


async def _wait_fd(fileno: int, events: int) -> int:
    """Wait until ``fileno`` is ready for ``events`` (Wait.R / W / RW); return what is ready."""
    if events == Wait.R:
        await trio.lowlevel.wait_readable(fileno)
        return Ready.R
    if events == Wait.W:
        await trio.lowlevel.wait_writable(fileno)
        return Ready.W
    ready = _poll_now(fileno, events)
    if ready:
        await trio.lowlevel.checkpoint()
        return ready
    # Both directions: trio allows one reader and one writer per fd, so wait on both
    # in a tiny nursery. Rare: only while libpq flushes a large send.
    async with trio.open_nursery() as nursery:

        async def wait(fn: Any) -> None:
            await fn(fileno)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, trio.lowlevel.wait_readable)
        nursery.start_soon(wait, trio.lowlevel.wait_writable)
    return _poll_now(fileno, events) or int(events)


async def drive(gen: Any, fileno: int) -> Any:
    """Run a psycopg ``PQGen`` to completion on trio."""
    try:
        state = next(gen)
        while True:
            ready = await _wait_fd(fileno, state)
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value
    except OSError as exc:
        raise e.OperationalError("connection socket closed") from exc


async def drive_conn(gen: Any) -> Any:
    """Run a psycopg ``PQGenConn`` (which names its fd at each step) to completion."""
    try:
        fileno, state = next(gen)
        while True:
            ready = await _wait_fd(fileno, state)
            fileno, state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


class _ConnectionLock:
    """psycopg's per-connection lock on trio, taken without a yield when it is free.

    ``trio.Lock`` yields to the scheduler on every acquire, free or not. A pooled
    connection has one borrower, so its lock is nearly always free, and the statement
    that follows waits for the server anyway (see enrich.nowait): the yield
    would only cost a task switch per statement on the CPU-bound webhook process.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        if not await acquired_now(self._lock):
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class TrioConnection(psycopg.AsyncConnection[Row]):
    """``AsyncConnection`` whose waits run on trio. Use ``TrioConnection.connect_trio``."""

    def __init__(self, pgconn: Any, row_factory: Any = None) -> None:
        super().__init__(pgconn, row_factory or psycopg.rows.tuple_row)  # type: ignore[arg-type]
        # asyncio.Lock would need an asyncio loop as soon as two tasks contend.
        self.lock = _ConnectionLock()  # type: ignore[assignment]
        # Statements enrich.db.prepared has prepared on this connection, by name.
        self.prepared_here: set[str] = set()

    @classmethod
    async def connect_trio(
        cls,
        conninfo: str,
        *,
        timeout: float,
        autocommit: bool = True,
        prepare_threshold: int | None = 5,
        row_factory: AsyncRowFactory[Any] | None = None,
        **kwargs: Any,
    ) -> TrioConnection[Any]:
        """Open a connection under a trio deadline (libpq's own resolver is avoided)."""
        params = conninfo_to_dict(conninfo, **kwargs)
        host = str(params.get("host") or "")
        if host and not host.startswith("/") and "," not in host and "hostaddr" not in params:
            # libpq would resolve the name with a blocking getaddrinfo: do it on trio.
            try:
                ipaddress.ip_address(host)
            except ValueError:
                port = int(params.get("port") or 5432)
                infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
                if infos:
                    params["hostaddr"] = infos[0][4][0]
        with trio.fail_after(timeout):
            conn: TrioConnection[Any] = await drive_conn(
                cls._connect_gen(make_conninfo("", **params))
            )
        conn._autocommit = autocommit
        conn.prepare_threshold = prepare_threshold
        if row_factory is not None:
            conn.row_factory = row_factory
        return conn

    async def wait(
        self, gen: Any, interval: float = 0.0, timeout: float | None = None
    ) -> Any:
        fileno = self.pgconn.socket
        try:
            return await drive(gen, fileno)
        except trio.Cancelled:
            await self._wind_down(gen, fileno)
            raise

    async def _wind_down(self, gen: Any, fileno: int) -> None:
        """After a cancelled wait: cancel the query server-side and drain the protocol.

        Shielded (it must run while our scope is cancelled) and bounded. On success the
        connection is idle and reusable; otherwise it is closed for the pool to replace.
        """
        if self.closed:
            return
        with trio.move_on_after(CANCEL_GRACE_S) as scope:
            scope.shield = True
            try:
                if self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                    await drive_conn(self._cancel_gen())
                    await drive(gen, fileno)
            except e.QueryCanceled:
                pass  # the expected outcome of our cancel request
            except Exception as exc:  # anything else: the state is unknown
                log.debug("closing connection after cancelled query: %s", type(exc).__name__)
                self.pgconn.finish()
                return
        if scope.cancelled_caught:
            log.warning("query did not stop after cancellation: closing connection")
            self.pgconn.finish()

    async def close(self) -> None:
        # The base class may await asyncio-only work on close; finishing the pgconn
        # releases everything we hold.
        if not self.closed:
            self.pgconn.finish()


__all__ = ["Row", "TrioConnection", "TupleRow", "drive", "drive_conn"]
