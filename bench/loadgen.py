"""The load generator's worker process: a trio loop over raw HTTP/1.1 keep-alive sockets.

Each worker process pre-builds its signed requests (bench.common.RequestFactory), waits
for the common start instant, then runs one of two models:

* **open**: arrivals at a fixed rate (this worker's share, phase-shifted so workers
  interleave), each on a free keep-alive connection (at most ``connections``; more wait).
  Latency runs from the *scheduled* send time, so a stalled server cannot hide its
  stall by slowing the generator down (no coordinated omission);
* **closed**: ``connections`` loops, each sending its next request when the previous
  answer arrived (the seed's LOAD_TEST_CONCURRENT model); latency from the actual send.

The HTTP client is a few lines over a trio socket: requests are bytes built in advance,
responses are parsed just enough (status, a few headers, Content-Length or chunked
framing). Latencies go into an HdrHistogram (microseconds) and a per-request sample
array for the time plot; progress goes to the parent once a second.
"""

from __future__ import annotations

import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

from bench.common import RequestFactory, TrafficSpec

HIST_MAX_US = 120_000_000  # two minutes
OUTCOME_HEADER = b"x-enrich-outcome"
OK, RATE_LIMITED, FAILED = 0, 1, 2
_ACCEPTED = {b"accepted", b"duplicate"}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


class ProtocolError(Exception):
    pass


class ConnectionLost(Exception):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    outcome: bytes | None
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; ``exchange`` sends a request, reads the answer.

    A server may close an idle keep-alive connection at any time (hypercorn does after
    its read timeout). When a reused connection turns out closed before any byte of the
    answer came back, the request was never read: it is sent again once on a new
    connection, as HTTP clients do, and counted in ``stale_retries``.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.stream: trio.SocketStream | None = None
        self.reusable = True
        self.stale_retries = 0
        self._buf = bytearray()
        self._answered = False  # a byte of the current answer arrived

    async def connect(self) -> None:
        self.stream = await trio.open_tcp_stream(*self.address)

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None

    async def _fill(self) -> None:
        assert self.stream is not None
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionLost("server closed the connection")
        self._answered = True
        self._buf += chunk

    async def exchange(self, data: bytes) -> Response:
        fresh = self.stream is None
        if fresh:
            await self.connect()
        try:
            return await self._exchange(data)
        except (ConnectionLost, trio.BrokenResourceError):
            if fresh or self._answered or self._buf:
                raise
        self.stale_retries += 1
        await self.aclose()
        await self.connect()
        return await self._exchange(data)

    async def _exchange(self, data: bytes) -> Response:
        assert self.stream is not None
        self._answered = False
        await self.stream.send_all(data)
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self._buf[:end])
        del self._buf[: end + 4]
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError("bad status line") from None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            while len(self._buf) < size:
                await self._fill()
            body = bytes(self._buf[:size])
            del self._buf[:size]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._read_chunked()
        else:
            raise ProtocolError("response without framing")
        if headers.get(b"connection", b"").lower() == b"close":
            self.reusable = False
        return Response(status, headers.get(OUTCOME_HEADER), body)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            while (end := self._buf.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self._buf[:end]).split(b";")[0], 16)
            del self._buf[: end + 2]
            while len(self._buf) < size + 2:
                await self._fill()
            body += self._buf[:size]
            del self._buf[: size + 2]
            if size == 0:
                return bytes(body)


def classify(response: Response) -> tuple[int, str | None]:
    """(OK | RATE_LIMITED | FAILED, error kind). Rate limits are never successes."""
    if response.status != 200:
        return FAILED, f"http_{response.status}"
    outcome = response.outcome
    if outcome is None:  # not enrich (or an old one): fall back on the TwiML text
        if b"messages per hour" in response.body:
            return RATE_LIMITED, None
        return OK, None
    if outcome in _ACCEPTED:
        return OK, None
    if outcome == b"rate_limited":
        return RATE_LIMITED, None
    return FAILED, "outcome_" + outcome.decode("ascii", "replace")


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    traffic: TrafficSpec
    address: tuple[str, int]
    mode: str  # "open" | "closed"
    rate: float  # arrivals/s of this worker (open model)
    phase: float  # offset of this worker's first arrival, s
    connections: int
    duration: float
    max_requests: int | None
    timeout: float
    seed: int
    prebuild: int


class Recorder:
    def __init__(self, start: float) -> None:
        self.start = start
        self.hist = new_histogram()
        self.second = new_histogram()
        self.lag = new_histogram()
        self.t = array("d")
        self.lat_ms = array("d")
        self.code = array("b")
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.done = 0
        self.stale_retries = 0
        self.counts = [0, 0, 0]

    def record(self, sent_at: float, latency_s: float, code: int, kind: str | None,
               outcome: bytes | None) -> None:
        us = min(max(int(latency_s * 1e6), 1), HIST_MAX_US)
        self.hist.record_value(us)
        self.second.record_value(us)
        self.t.append(sent_at - self.start)
        self.lat_ms.append(latency_s * 1000)
        self.code.append(code)
        self.done += 1
        self.counts[code] += 1
        if kind:
            self.errors[kind] += 1
        if outcome is not None:
            self.outcomes[outcome.decode("ascii", "replace")] += 1

    def error(self, kind: str) -> None:
        """A request that got no HTTP answer (and so no latency)."""
        self.done += 1
        self.counts[FAILED] += 1
        self.errors[kind] += 1

    def progress(self) -> dict[str, Any]:
        p99 = self.second.get_value_at_percentile(99) / 1000 if self.second.total_count else 0
        self.second.reset()
        return {"sent": self.sent, "done": self.done, "ok": self.counts[OK],
                "rate_limited": self.counts[RATE_LIMITED], "failed": self.counts[FAILED],
                "p99_ms": p99}


async def _attempt(conn: HttpConnection, data: bytes, timeout: float
                   ) -> tuple[Response | None, str | None]:
    try:
        with trio.move_on_after(timeout):
            return await conn.exchange(data), None
        return None, "timeout"
    except OSError as exc:
        return None, "connect_error" if conn.stream is None else f"os_{type(exc).__name__}"
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionLost):
        return None, "connection_lost"
    except (ProtocolError, ValueError):
        return None, "protocol_error"


class Worker:
    def __init__(self, plan: WorkerPlan, start: float, requests: Callable[[], tuple[bytes, str]],
                 progress: Callable[[dict[str, Any]], None]) -> None:
        self.plan = plan
        self.start = start
        self.end = start + plan.duration
        self.next_request = requests
        self.send_progress = progress
        self.rec = Recorder(start)
        self.idle: list[HttpConnection] = []

    def _more(self, issued: int) -> bool:
        limit = self.plan.max_requests
        return time.monotonic() < self.end and (limit is None or issued < limit)

    async def _one(self, conn: HttpConnection, data: bytes, sent_at: float) -> bool:
        """Send one request; True when ``conn`` may be used again."""
        response, error = await _attempt(conn, data, self.plan.timeout)
        elapsed = time.monotonic() - sent_at
        self.rec.stale_retries += conn.stale_retries
        conn.stale_retries = 0
        if response is None:
            assert error is not None
            if error == "timeout":
                self.rec.record(sent_at, elapsed, FAILED, error, None)
            else:
                self.rec.error(error)
            await conn.aclose()
            return False
        code, kind = classify(response)
        self.rec.record(sent_at, elapsed, code, kind, response.outcome)
        if not conn.reusable:
            await conn.aclose()
            return False
        return True

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._progress_loop)
            await trio.sleep(max(0.0, self.start - time.monotonic()))
            if self.plan.mode == "open":
                await self._open_model()
            else:
                await self._closed_model()
            nursery.cancel_scope.cancel()
        for conn in self.idle:
            await conn.aclose()

    async def _progress_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.send_progress(self.rec.progress())

    async def _open_model(self) -> None:
        plan = self.plan
        slots = trio.Semaphore(plan.connections)
        interval = 1.0 / plan.rate

        async def one(data: bytes, scheduled: float) -> None:
            async with slots:
                conn = self.idle.pop() if self.idle else HttpConnection(plan.address)
                if await self._one(conn, data, scheduled):
                    self.idle.append(conn)

        async with trio.open_nursery() as nursery:
            k = 0
            while True:
                scheduled = self.start + plan.phase + k * interval
                if scheduled >= self.end or (plan.max_requests is not None
                                             and k >= plan.max_requests):
                    break
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await trio.sleep(delay)
                else:
                    await trio.lowlevel.checkpoint()
                self.rec.lag.record_value(
                    min(max(int((time.monotonic() - scheduled) * 1e6), 1), HIST_MAX_US))
                data, _ = self.next_request()
                self.rec.sent += 1
                nursery.start_soon(one, data, scheduled)
                k += 1

    async def _closed_model(self) -> None:
        issued = 0

        async def loop() -> None:
            nonlocal issued
            conn = HttpConnection(self.plan.address)
            while self._more(issued):
                issued += 1
                data, _ = self.next_request()
                self.rec.sent += 1
                if not await self._one(conn, data, time.monotonic()):
                    conn = HttpConnection(self.plan.address)
                    if self.rec.errors.get("connect_error"):
                        await trio.sleep(0.01)  # don't spin on a refusing server
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.connections):
                nursery.start_soon(loop)


def worker_main(plan: WorkerPlan, queue: Any, go: Any, start_at: Any) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    try:
        factory = RequestFactory(plan.traffic, plan.seed)
        prebuilt = [factory.build() for _ in range(plan.prebuild)]
        prebuilt.reverse()

        sent_kinds: Counter[str] = Counter()

        def next_request() -> tuple[bytes, str]:
            data, kind = prebuilt.pop() if prebuilt else factory.build()
            sent_kinds[kind] += 1
            return data, kind

        queue.put(("ready", plan.index, None))
        go.wait()

        def progress(data: dict[str, Any]) -> None:
            queue.put(("progress", plan.index, data))

        worker = Worker(plan, start_at.value, next_request, progress)
        cpu0 = time.process_time()
        trio.run(worker.run)
        cpu_s = time.process_time() - cpu0
        rec = worker.rec
        queue.put(("result", plan.index, {
            "hist": rec.hist.encode(), "lag": rec.lag.encode(), "t": rec.t.tobytes(),
            "lat_ms": rec.lat_ms.tobytes(), "code": rec.code.tobytes(),
            "outcomes": dict(rec.outcomes), "errors": dict(rec.errors), "sent": rec.sent,
            "kinds": dict(sent_kinds), "unused_prebuilt": len(prebuilt), "cpu_s": cpu_s,
            "stale_retries": rec.stale_retries,
        }))
    except BaseException:
        queue.put(("error", plan.index, traceback.format_exc()))
