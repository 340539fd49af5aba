"""The load generator's parts: signed traffic, response parsing, counting, open-model
latency, the assessment and the exit code, against small real sockets where it matters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trio
from twilio.request_validator import RequestValidator

from bench import load_test
from bench.common import RequestFactory, TrafficSpec, Zipf, sender_phone
from bench.loadgen import (
    FAILED,
    OK,
    RATE_LIMITED,
    HttpConnection,
    Recorder,
    Response,
    Worker,
    WorkerPlan,
    classify,
)
from bench.report import Targets, analyse, assess, format_report
from enrich.core.phone import normalize_e164

URL = "http://127.0.0.1:3000/api/sms/webhook"
SIGN_URL = "https://sms.example.com/api/sms/webhook"
TOKEN = "bench-test-token-0123456789abcdef"


class _MultiDict(dict[str, list[str]]):
    def getall(self, name: str) -> list[str]:
        return self[name]


def _split(data: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body)
    return headers, parse_qsl(body.decode(), keep_blank_values=True)


def test_requests_are_signed_for_the_sign_url_as_twilio_would() -> None:
    spec = TrafficSpec(url=URL, sign_url=SIGN_URL, auth_token=TOKEN, senders=50,
                       media_base="http://127.0.0.1:4000")
    factory = RequestFactory(spec, seed=1)
    validator = RequestValidator(TOKEN)
    checked = 0
    for _ in range(200):
        data, _ = factory.build()
        headers, form = _split(data)
        params = _MultiDict()
        for name, value in form:
            params.setdefault(name, []).append(value)
        signature = headers["x-twilio-signature"]
        # The reference validator accepts it for the URL the server believes it serves,
        # and not for the URL the bytes were sent to.
        assert validator.validate(SIGN_URL, params, signature)
        assert not validator.validate(URL, params, signature)
        fields = dict(form)
        assert normalize_e164(fields["From"]) == fields["From"]
        assert int(fields["NumMedia"]) == (1 if fields["MessageSid"].startswith("MM") else 0) \
            or fields["NumMedia"] == "2"
        if fields["NumMedia"] != "0":
            assert fields["MediaUrl0"].startswith("http://127.0.0.1:4000/2010-04-01/Accounts/")
            assert fields["MediaUrl0"].endswith(f"/Media/MEgen{spec.media_bytes}")
        checked += 1
    assert checked == 200


def test_traffic_mix_sids_duplicates_and_zipf_senders() -> None:
    spec = TrafficSpec(url=URL, sign_url=URL, auth_token=TOKEN, senders=100,
                       mms_share=0.3, duplicate_share=0.05)
    factory = RequestFactory(spec, seed=7)
    built = [factory.build() for _ in range(4000)]
    kinds = Counter(kind for _, kind in built)
    assert 0.25 < kinds["mms"] / (kinds["sms"] + kinds["mms"]) < 0.35
    assert 0.03 < kinds["duplicate"] / len(built) < 0.07
    sids: Counter[str] = Counter()
    senders: Counter[str] = Counter()
    for data, kind in built:
        fields = dict(_split(data)[1])
        sids[fields["MessageSid"]] += 1
        if kind != "duplicate":
            senders[fields["From"]] += 1
    # Fresh messages never share a SID; every repeated SID is a duplicate delivery.
    assert sum(n - 1 for n in sids.values()) == kinds["duplicate"]
    assert all(len(sid) == 34 for sid in sids)
    # Zipf: sender 0 is the most active and the top 10 carry far more than 10 %.
    assert senders.most_common(1)[0][0] == sender_phone(0)
    top10 = sum(senders[sender_phone(i)] for i in range(10))
    assert top10 / sum(senders.values()) > 0.4
    assert Zipf(100, 1.1, factory.rng).share_of_top(100) == pytest.approx(1.0)


def test_sender_numbers_are_possible_e164_and_distinct() -> None:
    phones = [sender_phone(i) for i in (0, 1, 42, 9_999_999)]
    assert [normalize_e164(p) for p in phones] == phones
    assert len(set(phones)) == 4
    with pytest.raises(ValueError):
        sender_phone(10**7)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (Response(200, b"accepted", b"<Response/>"), (OK, None)),
        (Response(200, b"duplicate", b"<Response/>"), (OK, None)),
        (Response(200, b"rate_limited", b"<Response>limit</Response>"), (RATE_LIMITED, None)),
        # No header (an older server): the TwiML text decides.
        (Response(200, None, b"<Message>limit of 20 messages per hour</Message>"),
         (RATE_LIMITED, None)),
        (Response(200, None, b"<Response/>"), (OK, None)),
        (Response(200, b"unknown_sender", b""), (FAILED, "outcome_unknown_sender")),
        (Response(200, b"unverified", b""), (FAILED, "outcome_unverified")),
        (Response(403, b"forbidden", b"{}"), (FAILED, "http_403")),
        (Response(503, None, b""), (FAILED, "http_503")),
    ],
)
def test_classify(response: Response, expected: tuple[int, str | None]) -> None:
    assert classify(response) == expected


Handler = Callable[[trio.SocketStream, int], Awaitable[bool]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> tuple[str, int]:
    """A tiny HTTP server: ``handler(stream, n)`` answers the n-th request of a
    connection (after its head and body were read); False closes the connection."""

    async def connection(stream: trio.SocketStream) -> None:
        buf = b""
        n = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                buf = buf[length:]
                n += 1
                if not await handler(stream, n):
                    return
        except trio.BrokenResourceError:
            return
        finally:
            await stream.aclose()

    from functools import partial

    listeners = await nursery.start(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
    return "127.0.0.1", listeners[0].socket.getsockname()[1]


def _ok(body: bytes = b"<Response/>", outcome: bytes = b"accepted") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nX-Enrich-Outcome: " + outcome
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def test_client_reads_content_length_chunked_and_detects_a_close(
        nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream, n: int) -> bool:
        if n == 1:
            await stream.send_all(_ok(b"first"))
        elif n == 2:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                  b"x-enrich-outcome: rate_limited\r\n\r\n"
                                  b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n")
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
            return False  # closes mid-body
        return True

    address = await _serve(nursery, handler)
    conn = HttpConnection(address)
    first = await conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (first.status, first.outcome, first.body) == (200, b"accepted", b"first")
    second = await conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (second.outcome, second.body) == (b"rate_limited", b"abcdefg")
    from bench.loadgen import ConnectionLost

    with pytest.raises(ConnectionLost):
        await conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.aclose()


async def test_a_reused_connection_the_server_closed_is_retried_once(
        nursery: trio.Nursery) -> None:
    """hypercorn closes idle keep-alive connections after its read timeout: a request
    that finds its connection closed before any answer was never read, and goes again
    on a new connection; a request on a new connection is not retried."""
    connections = 0

    async def handler(stream: trio.SocketStream, n: int) -> bool:
        nonlocal connections
        connections += n == 1
        await stream.send_all(_ok(b"hello"))
        return False  # close after every answer, without saying so

    address = await _serve(nursery, handler)
    conn = HttpConnection(address)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert (await conn.exchange(request)).body == b"hello"
    await trio.sleep(0.05)  # the server's close arrives
    assert (await conn.exchange(request)).body == b"hello"
    assert conn.stale_retries == 1
    assert connections == 2
    await conn.aclose()

    async def refuse(stream: trio.SocketStream, n: int) -> bool:
        return False  # reads the request, closes without an answer

    fresh = HttpConnection(await _serve(nursery, refuse))
    from bench.loadgen import ConnectionLost

    with pytest.raises(ConnectionLost):
        await fresh.exchange(request)
    assert fresh.stale_retries == 0


def _plan(address: tuple[str, int], mode: str, **kw: Any) -> WorkerPlan:
    base: dict[str, Any] = {
        "index": 0, "traffic": TrafficSpec(url=URL, sign_url=URL, auth_token=TOKEN),
        "address": address, "mode": mode, "rate": 20.0, "phase": 0.0, "connections": 1,
        "duration": 0.5, "max_requests": None, "timeout": 5.0, "seed": 1, "prebuild": 0,
    }
    base.update(kw)
    return WorkerPlan(**base)


async def _run_worker(plan: WorkerPlan) -> Recorder:
    factory = RequestFactory(plan.traffic, plan.seed)
    worker = Worker(plan, time.monotonic() + 0.05, factory.build, lambda _: None)
    with trio.fail_after(30):  # hang guard only
        await worker.run()
    return worker.rec


async def test_open_model_counts_waiting_from_the_scheduled_time(nursery: trio.Nursery) -> None:
    """One connection, the first answer held back 0.5 s: the arrivals scheduled meanwhile
    queue behind it, and their latency includes that wait (no coordinated omission)."""

    async def handler(stream: trio.SocketStream, n: int) -> bool:
        if n == 1:
            await trio.sleep(0.5)
        await stream.send_all(_ok())
        return True

    rec = await _run_worker(_plan(await _serve(nursery, handler), "open", rate=20.0,
                                  duration=0.5))
    assert rec.sent == rec.done == 10
    assert rec.counts == [10, 0, 0]
    # Request k was scheduled at k * 50 ms and could not be sent before ~500 ms.
    for t, latency_ms in zip(rec.t, rec.lat_ms, strict=True):
        if t < 0.4:
            assert latency_ms >= (0.5 - t) * 1000 - 20
    assert rec.hist.total_count == 10


async def test_closed_model_counts_outcomes_and_errors(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream, n: int) -> bool:
        if n % 3 == 0:
            await stream.send_all(_ok(outcome=b"rate_limited"))
        elif n % 5 == 0:
            await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
            return False
        else:
            await stream.send_all(_ok())
        return True

    rec = await _run_worker(_plan(await _serve(nursery, handler), "closed", connections=2,
                                  max_requests=40, duration=30))
    assert rec.sent == rec.done == 40
    ok, limited, failed = rec.counts
    assert limited > 0 and failed > 0 and ok > 0
    assert rec.errors == {"http_503": failed}
    assert rec.outcomes["rate_limited"] == limited


async def test_refused_connections_are_failures_without_latency() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = await _run_worker(_plan(("127.0.0.1", port), "closed", max_requests=5,
                                  duration=30))
    assert rec.done == 5 and rec.counts[FAILED] == 5
    assert rec.errors == {"connect_error": 5}
    assert rec.hist.total_count == 0


# --- assessment and exit code on synthetic results ------------------------------------


def _result(latencies_ms: list[float], codes: list[int], errors: dict[str, int] | None = None
            ) -> dict[str, Any]:
    rec = Recorder(0.0)
    for i, (ms, code) in enumerate(zip(latencies_ms, codes, strict=True)):
        outcome = {OK: b"accepted", RATE_LIMITED: b"rate_limited", FAILED: None}[code]
        rec.record(i * 30.0 / len(codes), ms / 1000, code,
                   "http_500" if code == FAILED else None, outcome)
    rec.sent = len(codes)
    return {"hist": rec.hist.encode(), "lag": rec.lag.encode(), "t": rec.t.tobytes(),
            "lat_ms": rec.lat_ms.tobytes(), "code": rec.code.tobytes(),
            "outcomes": dict(rec.outcomes), "errors": dict(rec.errors), "sent": rec.sent,
            "kinds": {"sms": rec.sent}, "unused_prebuilt": 0, "cpu_s": 0.1}


def _summary(mode: str, latencies_ms: list[float], codes: list[int],
             server: dict[str, Any] | None = None, **targets: Any) -> dict[str, Any]:
    config = {"name": "synthetic", "mode": mode, "rate": 100.0, "connections": 10,
              "concurrent": 10, "max_requests": None}
    return analyse(config, [_result(latencies_ms, codes)], server or {}, duration=30.0,
                   started_at=0.0, targets=Targets(**targets))


def test_rate_limited_answers_are_neither_successes_nor_failures() -> None:
    s = _summary("open", [5.0] * 100, [OK] * 80 + [RATE_LIMITED] * 20)
    assert s["totals"] == {"total": 100, "successful": 80, "failed": 0, "rate_limited": 20,
                           "answered": 100, "no_answer": 0}
    assert s["success_pct"] == 100.0
    assert s["passed"]
    report = format_report(s)
    assert "Rate Limited: 20" in report and "Successful: 80" in report
    assert "All targets met" in report


def test_assessment_fails_on_tail_failures_and_cache() -> None:
    slow_tail = [5.0] * 97 + [80.0] * 3
    open_run = _summary("open", slow_tail, [OK] * 100, p99_ms=50.0)
    assert not open_run["passed"]
    missed = [t["name"] for t in open_run["targets"] if not t["ok"]]
    assert missed == ["P99 at or under 50 ms (open model)"]

    failing = _summary("closed", [5.0] * 100, [OK] * 99 + [FAILED])
    assert [t["name"] for t in failing["targets"] if not t["ok"]] == [
        "At most 0 failed requests"]
    assert failing["errors"] == {"http_500": 1}

    server = {"cache": {"phoneNumberCache": {"hits": 96, "misses": 4},
                        "verificationCache": {"hits": 90, "misses": 10},
                        "metrics": {"hitRate": 60.0}},
              "peak_pool_connections": 11, "db_pool_max": 10}
    watched = _summary("closed", [5.0] * 100, [OK] * 100, server=server, ceiling_rps=6.0)
    verdicts = {t["name"]: t["ok"] for t in watched["targets"]}
    assert verdicts["Phone-number cache hit rate at least 95%"] is True
    assert verdicts["Verification cache hit rate at least 95%"] is False
    assert verdicts["At most DATABASE_POOL_MAX connections (pool)"] is False
    assert verdicts["Throughput at least 50% of the framework ceiling"] is True  # 3.3 of 6
    low = _summary("closed", [5.0] * 100, [OK] * 100, ceiling_rps=10.0)
    assert {t["name"] for t in low["targets"] if not t["ok"]} == {
        "Throughput at least 50% of the framework ceiling"}
    assert verdicts["Last 10 s throughput within 10% of the first 10 s"] is True


def test_closed_model_long_tail_and_degradation_are_caught() -> None:
    codes = [OK] * 300
    tail = _summary("closed", [5.0] * 295 + [100.0] * 5, codes)
    assert {t["name"] for t in tail["targets"] if not t["ok"]} == {
        "P99 at or under 2 x the mean (no long tail)"}
    rec_first = _result([5.0] * 200, [OK] * 200)
    rec_last = _result([5.0] * 100, [OK] * 100)
    # Shift the second half's samples into the last 10 s: 200 early, 100 late.
    import numpy as np

    t = np.frombuffer(rec_last["t"], dtype="d") / 3 + 20.0
    rec_last["t"] = t.tobytes()
    rec_first["t"] = (np.frombuffer(rec_first["t"], dtype="d") / 3).tobytes()
    s = analyse({"name": "x", "mode": "closed", "concurrent": 10, "max_requests": None},
                [rec_first, rec_last], {}, duration=30.0, started_at=0.0, targets=Targets())
    assert s["throughput"]["change_pct"] == pytest.approx(-50.0)
    assert not s["passed"]


@pytest.mark.parametrize("passed", [True, False])
def test_exit_code_follows_the_assessment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                          passed: bool) -> None:
    summary = _summary("open", [5.0] * 50 + ([500.0] * 50 if not passed else [5.0] * 50),
                       [OK] * 100)
    assert summary["passed"] is passed
    monkeypatch.setattr(load_test, "run_load", lambda cfg: summary)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    code = load_test.main(["--duration", "1", "--out", str(tmp_path), "--name", "x",
                           "--no-plot", "--quiet"])
    assert code == (0 if passed else 1)
    assert (tmp_path / "x.json").exists()


def test_missing_token_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.setattr(load_test, "run_load", lambda cfg: pytest.fail("must not run"))
    assert load_test.main(["--quiet"]) == 2


def test_assess_is_consistent_with_passed() -> None:
    s = _summary("open", [5.0] * 100, [OK] * 100)
    assert all(v.ok for v in assess(s, Targets())) == s["passed"]
