"""A small trio-native Redis client for the hot path, behind a capacity limiter.

Driver choice, measured on this machine (see docs/ARCHITECTURE.md): redis-py's sync
client in worker threads managed ~2.4k rate-limit scripts/s (423 µs each under 50
concurrent callers: every call pays a thread hop and GIL hand-offs) and a trio deadline
could only abandon the thread, not stop the call. The webhook makes one Redis call per
message, so that cost was a third of the webhook's budget. This client speaks RESP2
(``enrich.resp``, sans-I/O) over trio sockets instead:

* no threads: a call is a write and a read on a pooled connection;
* cancellation is real: a deadline interrupts the read at once; the connection, whose
  state is then unknown, is closed rather than reused;
* the ``CapacityLimiter`` of REDIS_POOL_MAX tokens is the pool's front door, so its
  statistics are the pool's statistics, as for PostgreSQL.

redis-py stays for what is not on the hot path: the pub/sub listener
(``enrich.invalidation``) and the CLI.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from enrich.nowait import acquired_now
from enrich.resp import NEED_DATA, RespError, RespParser, encode_command

READ_SIZE = 65536


class RedisUnavailable(ConnectionError):
    """Redis did not answer in time, refused the connection, or closed it."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str | None
    port: int
    path: str | None  # unix socket
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        password = unquote(parts.password) if parts.password else None
        if password is None and query.get("password"):
            password = query["password"][0]
        username = unquote(parts.username) if parts.username else None
        if parts.scheme == "unix":
            db = int((query.get("db") or ["0"])[0])
            return cls(None, 0, parts.path, db, username, password, False)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        path_db = parts.path.lstrip("/")
        db = int(path_db) if path_db else int((query.get("db") or ["0"])[0])
        return cls(parts.hostname or "localhost", parts.port or 6379, None, db, username,
                   password, parts.scheme == "rediss")


class _Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = RespParser()
        self.last_used = time.monotonic()
        # A plain socket (unix or TCP; not TLS) is written and read through its file
        # descriptor: a round trip then passes through the scheduler once, for the
        # reply, where trio's stream adds a yield after each send and each receive.
        # On the webhook process, CPU-bound under load, each yield is a task switch.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None

    async def call(self, *args: Any) -> Any:
        return (await self.call_many([args]))[0]

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Pipeline: one write for all commands, then their replies in order."""
        await self._send(b"".join(encode_command(*c) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self.parser.next()
            if reply is not NEED_DATA:
                replies.append(reply)
                continue
            data = await self._receive()
            if not data:
                raise RedisUnavailable("Redis closed the connection")
            self.parser.feed(data)
        return replies

    async def _send(self, data: bytes) -> None:
        if self._fd is None:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                # Non-blocking (trio's sockets are); a peer gone away raises
                # BrokenPipeError (Python ignores SIGPIPE), which callers map.
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)

    async def _receive(self) -> bytes | bytearray:
        if self._fd is None:
            return await self.stream.receive_some(READ_SIZE)
        while True:
            # Always wait first: the reply cannot be there yet. (A cancellation that
            # lands here comes after the command was sent: the connection is dropped.)
            await trio.lowlevel.wait_readable(self._fd)
            try:
                return os.read(self._fd, READ_SIZE)
            except BlockingIOError:  # woken without data: wait again
                continue

    async def aclose(self) -> None:
        self._fd = None  # the number may be reused by another socket once closed
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class Script:
    """A Lua script run by EVALSHA, loaded with EVAL when the server lacks it."""

    def __init__(self, client: RedisClient, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run once; an error reply raises RespError."""
        reply = (await self.run_many([(keys, args)]))[0]
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def run_many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args), pipelined; error replies come back as
        RespError values in their places, connection trouble raises RedisUnavailable."""
        replies = await self.client.execute_many(
            [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args in calls]
        )
        missing = [i for i, r in enumerate(replies) if isinstance(r, RespError)
                   and r.prefix == "NOSCRIPT"]
        if missing:  # the server restarted or was flushed: EVAL loads it again
            again = await self.client.execute_many(
                [("EVAL", self.source, len(calls[i][0]), *calls[i][0], *calls[i][1])
                 for i in missing]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies


class RedisClient:
    def __init__(
        self, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 1.0
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"pool sizes need 0 <= min ({min_size}) <= max ({max_size}), max >= 1")
        self.url = url
        self.address = RedisAddress.parse(url)
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.limiter = trio.CapacityLimiter(max_size)
        self._idle: list[_Connection] = []
        self._open = 0
        self.calls = 0

    # --- connections ------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        a = self.address
        try:
            stream: trio.abc.Stream
            if a.path is not None:
                stream = await trio.open_unix_socket(a.path)
            elif a.tls:
                stream = await trio.open_ssl_over_tcp_stream(
                    a.host or "localhost", a.port, ssl_context=ssl.create_default_context()
                )
            else:
                assert a.host is not None
                stream = await trio.open_tcp_stream(a.host, a.port)
        except OSError as exc:
            raise RedisUnavailable(f"cannot connect to Redis: {exc.strerror or exc}") from exc
        conn = _Connection(stream)
        self._open += 1
        try:
            if a.password is not None:
                auth = ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
                _check(await conn.call(*auth))
            if a.db:
                _check(await conn.call("SELECT", a.db))
        except BaseException:
            self._open -= 1
            await conn.aclose()
            raise
        return conn

    async def execute(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one command under a deadline. Error replies raise RespError; connection
        trouble and timeouts raise RedisUnavailable."""
        reply = (await self.execute_many([args], timeout=timeout))[0]
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def execute_many(
        self, commands: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """Run commands pipelined on one connection (one write, one deadline for all).
        Error replies are returned as RespError values in their places; connection
        trouble and timeouts raise RedisUnavailable."""
        if not commands:
            return []
        limit = self.timeout if timeout is None else timeout
        try:
            replies = await self._call_within(commands, limit)
        except RedisUnavailable:
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RedisUnavailable(f"Redis connection failed: {type(exc).__name__}") from exc
        self.calls += len(commands)
        return replies

    async def _call_within(self, commands: Sequence[Sequence[Any]], limit: float) -> list[Any]:
        # The webhook's rate-limit check comes through here, already under a deadline at
        # least as tight (its batch's): then a scope of our own could never fire first,
        # and costs the loop microseconds per call. Otherwise, a bare CancelScope rather
        # than trio.fail_after (no generator-based context manager).
        if trio.current_effective_deadline() <= trio.current_time() + limit:
            return await self._call(commands)
        with trio.CancelScope(relative_deadline=limit):
            return await self._call(commands)
        raise RedisUnavailable(f"Redis did not answer within {limit:.2f}s")

    async def _call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """One pipelined round trip on a pooled connection. Spelled out rather than an
        ``asynccontextmanager``: it is the webhook's path, and a generator-based
        context manager costs it microseconds per call."""
        if not await acquired_now(self.limiter):
            await self.limiter.acquire()
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                replies = await conn.call_many(commands)
            except BaseException:
                # Cancelled or failed mid-call: the reply may still be in flight, so
                # this connection can't be trusted to be in step. Drop it.
                self._open -= 1
                await conn.aclose()
                raise
            conn.last_used = time.monotonic()
            self._idle.append(conn)
            return replies
        finally:
            self.limiter.release()

    def script(self, source: str) -> Script:
        return Script(self, source)

    # --- lifecycle and statistics -----------------------------------------------------

    async def open(self) -> None:
        """Open REDIS_POOL_MIN connections now so the first webhooks don't pay for them."""
        with trio.fail_after(self.timeout * 3):
            while len(self._idle) < self.min_size:
                self._idle.append(await self._connect())

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            await conn.aclose()

    async def ping(self, timeout: float = 1.0) -> float:
        start = time.perf_counter()
        await self.execute("PING", timeout=timeout)
        return time.perf_counter() - start

    def stats(self) -> dict[str, int]:
        return {
            "total": self._open,
            "available": int(self.limiter.available_tokens),
            "inUse": int(self.limiter.borrowed_tokens),
            "waiting": self.limiter.statistics().tasks_waiting,
            "idle": len(self._idle),
            "min": self.min_size,
            "max": self.max_size,
        }


def _check(reply: Any) -> Any:
    if isinstance(reply, RespError):
        raise RedisUnavailable(f"Redis refused the connection setup: {reply.prefix}")
    return reply
