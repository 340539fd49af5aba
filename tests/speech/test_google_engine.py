"""GoogleEngine: the real google-cloud-speech client over real gRPC to the fake server.

The client is built exactly as the app builds it for a loopback SPEECH_ENDPOINT
(:func:`make_speech_client`), and every check is made on what the fake server received
(:attr:`FakeSpeechServer.calls`) or what the engine returned. Deadlines are real but
short; ``trio.fail_after`` guards only keep a broken run from hanging.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from google.cloud.speech_v1.types import RecognizeRequest

from enrich.media.audio import decode_to_pcm16, pcm_to_wav_bytes
from enrich.media.sniff import MediaKind, sniff
from enrich.pipeline.errors import ProcessingError
from enrich.speech.breaker import CircuitBreaker
from enrich.speech.engines import (
    CHUNK_SECONDS,
    MAX_AUDIO_SECONDS,
    GoogleEngine,
    SpeechRejected,
    SpeechUnavailable,
    Transcript,
    UndecodableAudio,
    is_loopback_endpoint,
    make_speech_client,
    opus_input_rate,
    prepare_google_audio,
)

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"
HANG_GUARD_S = 30.0
PCM_RATE = 16000

# What each fixture must be sent as: Google takes AMR-NB and Ogg/Opus as they are;
# everything else is decoded to 16 kHz LINEAR16 (no AAC/MP3 in Google's list).
NATIVE = {"note1.amr": "AMR", "note3.amr": "AMR", "note1.ogg": "OGG_OPUS", "note3.ogg": "OGG_OPUS"}
DECODED = [
    "note1.wav",
    "note2.wav",
    "note3.wav",
    "note2.mp3",
    "note2.m4a",
    "note2.3gp",
    "note3.webm",
    "clip.mp4",
    "clip.mov",
]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(engine: GoogleEngine) -> str:
    return engine.breaker.state


def text_of(transcript: Transcript | None) -> str:
    assert transcript is not None
    return transcript.text


def kind_of(path: Path) -> MediaKind:
    kind = sniff(path.read_bytes()[:64], None)
    assert kind.category in ("audio", "video"), kind
    return kind


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pcm_of(path: Path) -> bytes:
    return decode_to_pcm16(path, sample_rate=PCM_RATE, max_seconds=MAX_AUDIO_SECONDS)


@pytest.fixture
def server() -> Iterator[Any]:
    from enrich.testing.fake_speech import FakeSpeechServer

    with FakeSpeechServer(text="default transcript") as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_engine(
    server: Any,
    clock: Clock,
    *,
    timeout_s: float = 10.0,
    attempts: int = 3,
    threshold: int = 100,
    reset_s: float = 30.0,
    pool: int = 4,
) -> GoogleEngine:
    return GoogleEngine(
        make_speech_client(server.address),
        language="en-GB",
        limiter=trio.CapacityLimiter(pool),
        timeout_s=timeout_s,
        breaker=CircuitBreaker(failure_threshold=threshold, reset_timeout_s=reset_s, clock=clock),
        attempts=attempts,
        backoff_s=0.01,
    )


@pytest.fixture
async def engine(server: Any, clock: Clock) -> AsyncIterator[GoogleEngine]:
    eng = make_engine(server, clock)
    yield eng
    await eng.aclose()


async def transcribe(engine: GoogleEngine, name: str) -> Transcript:
    path = MEDIA / name
    with trio.fail_after(HANG_GUARD_S):
        transcript = await engine.transcribe(path, kind_of(path))
    assert transcript is not None
    return transcript


async def transcribe_error(engine: GoogleEngine, path: Path, kind: MediaKind) -> ProcessingError:
    with trio.fail_after(HANG_GUARD_S):
        with pytest.raises(ProcessingError) as info:
            await engine.transcribe(path, kind)
    return info.value


def outcomes(server: Any) -> list[str]:
    return [call.outcome for call in server.calls]


# -- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NATIVE))
async def test_native_formats_are_sent_as_they_are(
    server: Any, engine: GoogleEngine, name: str
) -> None:
    data = (MEDIA / name).read_bytes()
    server.set_transcripts({sha(data): f"heard {name}"})

    transcript = await transcribe(engine, name)

    assert transcript.text == f"heard {name}"
    assert transcript.engine == "google"
    assert 5.0 < transcript.audio_seconds < 8.0  # the notes are 6-7 s long
    [call] = server.calls
    assert call.encoding == NATIVE[name]
    assert call.audio_sha256 == sha(data)  # the file itself, not a re-encoding
    expected_rate = 8000 if NATIVE[name] == "AMR" else opus_input_rate(data[:512])
    assert call.sample_rate_hertz == expected_rate
    assert call.language_code == "en-GB"
    assert call.audio_channel_count == 1
    assert call.outcome == "OK"


@pytest.mark.parametrize("name", DECODED)
async def test_other_formats_are_sent_as_16k_linear16(
    server: Any, engine: GoogleEngine, name: str
) -> None:
    pcm = pcm_of(MEDIA / name)
    server.set_transcripts({sha(pcm): f"heard {name}"})

    transcript = await transcribe(engine, name)

    assert transcript.text == f"heard {name}"
    [call] = server.calls
    assert (call.encoding, call.sample_rate_hertz) == ("LINEAR16", 16000)
    assert call.audio_sha256 == sha(pcm)
    seconds = call.audio_length / (2 * PCM_RATE)
    assert 5.0 < seconds < 8.0
    assert transcript.audio_seconds == pytest.approx(seconds)


async def test_silence_gives_an_empty_transcript(server: Any, engine: GoogleEngine) -> None:
    server.set_text("")  # Google answers silence with no results
    transcript = await transcribe(engine, "note1.amr")
    assert transcript.text == ""
    assert transcript.audio_seconds > 0


async def test_long_note_is_split_under_the_sync_limit(
    server: Any, engine: GoogleEngine, tmp_path: Path
) -> None:
    """A 70 s note (over Google's 60 s sync limit) goes out as LINEAR16 chunks; the fake
    validates like Google and would answer INVALID_ARGUMENT to a chunk over 60 s."""
    note = pcm_of(MEDIA / "note1.wav")
    repeats = int(70 * 2 * PCM_RATE / len(note)) + 1
    pcm = note * repeats
    path = tmp_path / "long.wav"
    path.write_bytes(pcm_to_wav_bytes(pcm, PCM_RATE))
    counter = iter(range(1, 100))
    lock = threading.Lock()

    def numbered(request: RecognizeRequest) -> str:
        with lock:
            return f"part{next(counter)}"

    server.set_transcripts(numbered)

    with trio.fail_after(HANG_GUARD_S):
        transcript = await engine.transcribe(path, kind_of(path))
    assert transcript is not None

    calls = server.calls
    assert len(calls) == 2
    assert all(c.encoding == "LINEAR16" and c.outcome == "OK" for c in calls)
    assert all(c.audio_length <= CHUNK_SECONDS * 2 * PCM_RATE for c in calls)
    assert sum(c.audio_length for c in calls) == len(pcm)
    assert transcript.text == "part1 part2"
    assert transcript.audio_seconds == pytest.approx(len(pcm) / (2 * PCM_RATE))


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"])
async def test_transient_failures_are_retried(server: Any, engine: GoogleEngine, code: str) -> None:
    server.fail_next(2, getattr(grpc.StatusCode, code))
    transcript = await transcribe(engine, "note1.amr")
    assert transcript.text == "default transcript"
    assert outcomes(server) == [code, code, "OK"]
    assert state(engine) == "closed"
    assert engine.breaker.stats().consecutive_failures == 0


async def test_retries_are_bounded(server: Any, engine: GoogleEngine) -> None:
    server.fail_next(5, grpc.StatusCode.UNAVAILABLE)

    error = await transcribe_error(engine, MEDIA / "note1.amr", kind_of(MEDIA / "note1.amr"))

    assert isinstance(error, SpeechUnavailable)
    assert error.recoverable
    assert "UNAVAILABLE" in str(error)
    assert error.user_message
    assert outcomes(server) == ["UNAVAILABLE"] * 3  # attempts=3, not one more
    assert engine.breaker.stats().consecutive_failures == 3


async def test_invalid_argument_is_rejected_without_retry(
    server: Any, engine: GoogleEngine
) -> None:
    server.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, "bad audio")

    error = await transcribe_error(engine, MEDIA / "note1.wav", kind_of(MEDIA / "note1.wav"))

    assert isinstance(error, SpeechRejected)
    assert not error.recoverable
    assert outcomes(server) == ["INVALID_ARGUMENT"]
    # The service answered: it is healthy, the audio is not. No breaker failure.
    assert engine.breaker.stats().consecutive_failures == 0


async def test_native_audio_refused_is_sent_decoded_once(
    server: Any, engine: GoogleEngine
) -> None:
    server.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, "bad audio")
    note = MEDIA / "note1.amr"
    transcript = await engine.transcribe(note, kind_of(note))
    assert transcript is not None and transcript.text
    assert [(c.encoding, c.outcome) for c in server.calls] == [
        ("AMR", "INVALID_ARGUMENT"), ("LINEAR16", "OK")]

    server.fail_next(2, grpc.StatusCode.INVALID_ARGUMENT, "bad audio")
    error = await transcribe_error(engine, note, kind_of(note))
    assert isinstance(error, SpeechRejected)  # refused both ways: the audio is the problem


async def test_real_validation_error_is_a_rejection(
    server: Any, clock: Clock, tmp_path: Path
) -> None:
    """No language_code: the fake refuses it the way Google does (not injected)."""
    eng = make_engine(server, clock)
    eng.language = ""
    try:
        error = await transcribe_error(eng, MEDIA / "note1.amr", kind_of(MEDIA / "note1.amr"))
    finally:
        await eng.aclose()
    assert isinstance(error, SpeechRejected)
    # As sent (AMR), then decoded once (LINEAR16): both refused, no further retry.
    assert outcomes(server) == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]


@pytest.mark.parametrize(
    "code", ["UNAUTHENTICATED", "PERMISSION_DENIED", "CANCELLED", "UNIMPLEMENTED", "NOT_FOUND"]
)
async def test_service_side_refusals_are_not_blamed_on_the_audio(
    server: Any, engine: GoogleEngine, code: str
) -> None:
    """Bad credentials, a wrong endpoint or a call cancelled by shutdown say nothing
    about the voice note: it must stay retryable later (and count against the service),
    not be failed for good with "we couldn't play your audio"."""
    server.fail_next(1, getattr(grpc.StatusCode, code))

    error = await transcribe_error(engine, MEDIA / "note1.amr", kind_of(MEDIA / "note1.amr"))

    assert isinstance(error, SpeechUnavailable)
    assert error.recoverable
    assert outcomes(server) == [code]  # retrying at once would not help
    assert engine.breaker.stats().consecutive_failures == 1


async def test_speech_timeout_bounds_each_call(server: Any, clock: Clock) -> None:
    """SPEECH_TIMEOUT_MS travels with the call as gRPC's deadline: a server that would
    answer in 30 s is given up on at the timeout, every attempt."""
    server.set_latency(30.0)
    eng = make_engine(server, clock, timeout_s=0.3, attempts=2)
    try:
        error = await transcribe_error(eng, MEDIA / "note1.amr", kind_of(MEDIA / "note1.amr"))
        assert isinstance(error, SpeechUnavailable)
        assert "DEADLINE_EXCEEDED" in str(error)
        assert len(server.calls) == 2
        assert eng.stats()["inUse"] == 0
    finally:
        await eng.aclose()


async def test_trio_deadline_is_carried_into_the_call(server: Any, clock: Clock) -> None:
    """The caller's trio deadline (shorter than SPEECH_TIMEOUT_MS) becomes the gRPC
    timeout: the worker thread, which a trio cancel cannot interrupt, still comes back
    at that deadline instead of after the server's 30 s, freeing its limiter slot."""
    server.set_latency(30.0)
    eng = make_engine(server, clock, timeout_s=60.0, attempts=3)
    path = MEDIA / "note1.amr"
    kind = kind_of(path)
    error: BaseException | None = None
    try:
        with trio.fail_after(HANG_GUARD_S):
            with trio.move_on_after(0.5) as scope:
                try:
                    await eng.transcribe(path, kind)
                except SpeechUnavailable as exc:
                    error = exc
            # Either the trio deadline or the gRPC deadline (the same instant) ends it.
            assert scope.cancelled_caught or error is not None
            assert len(server.calls) == 1
            while eng.stats()["inUse"]:
                await trio.sleep(0.01)  # returns long before the 30 s latency
        # The call was abandoned or failed: either way the probe slot is free.
        assert eng.breaker.allow() is not None
    finally:
        await eng.aclose()


async def test_undecodable_bytes(server: Any, engine: GoogleEngine, tmp_path: Path) -> None:
    cases = {
        "photo.amr": (MEDIA / "photo.jpg").read_bytes(),  # a picture: no audio stream
        "random.amr": bytes(range(256)) * 3,
        "header-only.amr": b"#!AMR\n",
        "truncated.ogg": (MEDIA / "note1.ogg").read_bytes()[:200],
        "noise.wav": b"RIFF\x00\x00\x00\x00WAVEjunk" + b"\x01" * 100,
        "empty.ogg": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        kind = MediaKind("audio", "ogg-opus" if name.endswith(".ogg") else "amr", "audio/amr")
        error = await transcribe_error(engine, path, kind)
        assert isinstance(error, UndecodableAudio), name
        assert not error.recoverable
    assert server.calls == ()
    assert engine.breaker.stats().consecutive_failures == 0


# -- breaker -----------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_closes_after_cooldown(
    server: Any, clock: Clock
) -> None:
    eng = make_engine(server, clock, attempts=1, threshold=2, reset_s=30.0)
    amr = MEDIA / "note1.amr"
    kind = kind_of(amr)
    try:
        server.fail_next(2, grpc.StatusCode.UNAVAILABLE)
        for _ in range(2):
            assert isinstance(await transcribe_error(eng, amr, kind), SpeechUnavailable)
        assert state(eng) == "open"
        assert eng.stats()["breaker"]["state"] == "open"

        # Open: fails fast, the (now healthy) service is not called at all.
        for _ in range(3):
            error = await transcribe_error(eng, amr, kind)
            assert isinstance(error, SpeechUnavailable)
            assert error.recoverable
            assert "breaker open" in str(error)
        assert len(server.calls) == 2

        clock.now += 29.0
        assert isinstance(await transcribe_error(eng, amr, kind), SpeechUnavailable)
        assert len(server.calls) == 2

        # Cooldown over: one probe goes out, succeeds, and the breaker closes.
        clock.now += 1.0
        assert text_of(await eng.transcribe(amr, kind)) == "default transcript"
        assert state(eng) == "closed"
        assert len(server.calls) == 3
        await eng.transcribe(amr, kind)
        assert len(server.calls) == 4
    finally:
        await eng.aclose()


async def test_open_breaker_fails_before_decoding(
    server: Any, clock: Clock, tmp_path: Path
) -> None:
    """While open, a note is not even decoded (CPU spent for nothing): a file that is
    not audio at all gets the recoverable breaker error, and no call goes out."""
    eng = make_engine(server, clock, attempts=1, threshold=1, reset_s=10.0)
    junk = tmp_path / "junk.amr"
    junk.write_bytes(bytes(range(256)) * 3)
    amr_kind = MediaKind("audio", "amr", "audio/amr")
    try:
        server.fail_next(1, grpc.StatusCode.UNAVAILABLE)
        await transcribe_error(eng, MEDIA / "note1.amr", kind_of(MEDIA / "note1.amr"))
        error = await transcribe_error(eng, junk, amr_kind)
        assert isinstance(error, SpeechUnavailable)
        assert "breaker open" in str(error)
        clock.now += 10.0  # half-open: the probe decodes, and this one is not audio
        assert isinstance(await transcribe_error(eng, junk, amr_kind), UndecodableAudio)
        assert len(server.calls) == 1
    finally:
        await eng.aclose()


async def test_failed_probe_reopens_the_breaker(server: Any, clock: Clock) -> None:
    eng = make_engine(server, clock, attempts=3, threshold=2, reset_s=10.0)
    amr = MEDIA / "note1.amr"
    kind = kind_of(amr)
    try:
        server.fail_next(3, grpc.StatusCode.UNAVAILABLE)
        # Two failures open the breaker; the third attempt is refused by it.
        error = await transcribe_error(eng, amr, kind)
        assert isinstance(error, SpeechUnavailable)
        assert outcomes(server) == ["UNAVAILABLE", "UNAVAILABLE"]
        assert state(eng) == "open"

        clock.now += 10.0
        # The probe fails (the third queued failure); the retry loop must not
        # hammer the service: the breaker is open again at once.
        error = await transcribe_error(eng, amr, kind)
        assert isinstance(error, SpeechUnavailable)
        assert outcomes(server) == ["UNAVAILABLE"] * 3
        assert state(eng) == "open"
        assert eng.breaker.stats().opened_count == 2

        clock.now += 10.0
        assert text_of(await eng.transcribe(amr, kind)) == "default transcript"
        assert state(eng) == "closed"
    finally:
        await eng.aclose()


async def test_cancelled_probe_frees_the_breaker_slot(server: Any, clock: Clock) -> None:
    eng = make_engine(server, clock, attempts=1, threshold=1, reset_s=10.0)
    amr = MEDIA / "note1.amr"
    kind = kind_of(amr)
    try:
        server.fail_next(1, grpc.StatusCode.UNAVAILABLE)
        await transcribe_error(eng, amr, kind)
        assert state(eng) == "open"
        clock.now += 10.0

        server.set_latency(30.0)
        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:

                async def probe() -> None:
                    await eng.transcribe(amr, kind)

                nursery.start_soon(probe)
                while len(server.calls) < 2:
                    await trio.sleep(0.01)
                # While the probe is out, everyone else fails fast.
                error = await transcribe_error(eng, amr, kind)
                assert "breaker open" in str(error)
                nursery.cancel_scope.cancel()

        server.set_latency(0.0)
        assert text_of(await eng.transcribe(amr, kind)) == "default transcript"
        assert state(eng) == "closed"
    finally:
        await eng.aclose()


# -- concurrency and stats -----------------------------------------------------------------


async def test_concurrent_calls_are_bounded_by_the_limiter(server: Any, clock: Clock) -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow(request: RecognizeRequest) -> str:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.1)
        with lock:
            in_flight -= 1
        return "ok"

    server.set_transcripts(slow)
    eng = make_engine(server, clock, pool=2)
    amr = MEDIA / "note1.amr"
    results: list[str] = []
    try:
        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:

                async def one() -> None:
                    results.append(text_of(await eng.transcribe(amr, kind_of(amr))))

                for _ in range(6):
                    nursery.start_soon(one)
        assert results == ["ok"] * 6
        assert 1 <= peak <= 2
        assert eng.stats() == {
            "engine": "google",
            "total": 2,
            "available": 2,
            "inUse": 0,
            "waiting": 0,
            "breaker": {"state": "closed", "consecutiveFailures": 0, "openedCount": 0},
        }
    finally:
        await eng.aclose()


# -- pure helpers ---------------------------------------------------------------------------


def test_prepare_native_only_when_one_call_is_enough() -> None:
    amr = MediaKind("audio", "amr", "audio/amr")
    short = b"\x00\x00" * PCM_RATE * 10
    long = b"\x00\x00" * int(PCM_RATE * (CHUNK_SECONDS + 1))
    [one] = prepare_google_audio(b"#!AMR\n...", amr, short)
    assert (one.encoding, one.sample_rate_hertz, one.content) == ("AMR", 8000, b"#!AMR\n...")
    chunks = prepare_google_audio(b"#!AMR\n...", amr, long)
    assert [c.encoding for c in chunks] == ["LINEAR16", "LINEAR16"]
    assert b"".join(c.content for c in chunks) == long
    wb = MediaKind("audio", "amr-wb", "audio/amr-wb")
    [one] = prepare_google_audio(b"#!AMR-WB\n", wb, short)
    assert (one.encoding, one.sample_rate_hertz) == ("AMR_WB", 16000)


def test_opus_rate_from_the_header_or_48k() -> None:
    ogg = (MEDIA / "note1.ogg").read_bytes()
    kind = MediaKind("audio", "ogg-opus", "audio/ogg")
    pcm = b"\x00\x00" * PCM_RATE
    [one] = prepare_google_audio(ogg, kind, pcm)
    assert (one.encoding, one.sample_rate_hertz) == ("OGG_OPUS", opus_input_rate(ogg[:512]))
    # An odd input rate in the header (Google takes 8/12/16/24/48 kHz) falls back to 48k.
    start = 27 + ogg[26]
    odd = bytearray(ogg)
    odd[start + 12 : start + 16] = (44100).to_bytes(4, "little")
    assert opus_input_rate(bytes(odd[:512])) == 44100
    [one] = prepare_google_audio(bytes(odd), kind, pcm)
    assert one.sample_rate_hertz == 48000
    assert opus_input_rate(b"not ogg") is None


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.4.5:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("speech.googleapis.com:443", False),
        ("speech.googleapis.com", False),
        ("10.0.0.1:50051", False),
        ("[2001:db8::1]:443", False),
        ("localhost.evil.com:1", False),
    ],
)
def test_is_loopback_endpoint(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback
