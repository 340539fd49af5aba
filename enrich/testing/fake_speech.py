"""A fake Google Speech-to-Text v1 server over real gRPC, for tests and the bench.

Google ships no emulator, so this serves ``google.cloud.speech.v1.Speech/Recognize`` with
the library's own proto-plus types (``RecognizeRequest.deserialize`` /
``RecognizeResponse.serialize``) behind ``grpc.method_handlers_generic_handler``. The real
client talks to it unchanged::

    channel = grpc.insecure_channel(server.address)
    client = SpeechClient(transport=SpeechGrpcTransport(channel=channel))
    client.recognize(config=..., audio=..., timeout=2.0, retry=None)

Every other method (LongRunningRecognize, StreamingRecognize) answers UNIMPLEMENTED, which
is what grpc does for a method no handler serves.

What it answers, configurable at start and while running:

- the transcript: ``transcripts`` maps the hex sha256 of the audio bytes to a text, or is a
  callable ``(RecognizeRequest) -> str``; anything else gets ``text``. An empty text
  answers with no results, as Google does for silence;
- ``latency_s`` before every answer;
- :meth:`FakeSpeechServer.fail_next` makes the next N calls fail with a gRPC status.
  ``DEADLINE_EXCEEDED`` is produced the honest way: the server sleeps past the client's
  deadline, so the client's own deadline fires;
- ``validate=True`` (default) rejects with INVALID_ARGUMENT what Google rejects and we
  could get wrong: no language_code, inline audio over 10 MB, LINEAR16 audio longer than
  60 s ("Sync input too long"), AMR not at 8000 Hz, AMR_WB not at 16000 Hz, a ``uri``
  instead of inline content.

Each call is recorded (:attr:`FakeSpeechServer.calls`): encoding, sample rate, language,
audio length and sha256, and the outcome, so tests can check what the client sent.

Standalone: ``python -m enrich.testing.fake_speech --port 0 --latency 0.2 --text "hello"``
prints one JSON line ``{"address": "127.0.0.1:PORT"}`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any

import grpc
from google.cloud.speech_v1.types import (
    RecognizeRequest,
    RecognizeResponse,
    SpeechRecognitionAlternative,
    SpeechRecognitionResult,
)
from google.protobuf import duration_pb2

__all__ = [
    "DEFAULT_TEXT",
    "SERVICE_NAME",
    "FakeSpeechServer",
    "RecognizeCall",
    "Transcriber",
    "main",
]

SERVICE_NAME = "google.cloud.speech.v1.Speech"
DEFAULT_TEXT = "hello from the fake speech server"

# Google's documented limits for synchronous recognize.
MAX_INLINE_AUDIO_BYTES = 10 * 1024 * 1024
MAX_SYNC_SECONDS = 60.0

# How long a DEADLINE_EXCEEDED failure sleeps when the client set no deadline at all:
# long enough that a missing client deadline is obvious, short enough to end the test.
_NO_DEADLINE_SLEEP_S = 5.0
# Sleeps are sliced so that stop() and client cancellation end them promptly.
_SLEEP_SLICE_S = 0.02

Transcriber = Callable[[RecognizeRequest], str] | Mapping[str, str]


@dataclass(frozen=True)
class RecognizeCall:
    """One Recognize call as the server saw it on arrival. ``outcome`` is what the server
    decided: ``"OK"`` or the name of the injected or validation status code (a call that
    the client abandoned during the latency still reads ``"OK"``)."""

    encoding: str
    sample_rate_hertz: int
    language_code: str
    audio_channel_count: int
    audio_length: int
    audio_sha256: str
    has_uri: bool
    outcome: str


@dataclass(frozen=True)
class _Failure:
    code: grpc.StatusCode
    details: str


def validation_error(request: RecognizeRequest) -> str | None:
    """Why Google would reject ``request`` as INVALID_ARGUMENT, or None.

    Only the rules a client of ours could plausibly break; the messages follow Google's.
    """
    config, audio = request.config, request.audio
    if audio.uri:
        return "The fake serves inline audio only: 'uri' is not supported."
    if not config.language_code:
        return "Invalid recognition 'config': missing language_code."
    if len(audio.content) > MAX_INLINE_AUDIO_BYTES:
        return "Request payload size exceeds the limit: 10485760 bytes."
    encoding = config.encoding.name
    rate = config.sample_rate_hertz
    if encoding == "AMR" and rate != 8000:
        return f"sample_rate_hertz ({rate}) must be 8000 for AMR."
    if encoding == "AMR_WB" and rate != 16000:
        return f"sample_rate_hertz ({rate}) must be 16000 for AMR_WB."
    if encoding == "LINEAR16":
        if rate <= 0:
            return "Invalid recognition 'config': sample_rate_hertz is required for LINEAR16."
        channels = max(1, config.audio_channel_count)
        seconds = len(audio.content) / (2 * rate * channels)
        if seconds > MAX_SYNC_SECONDS:
            return (
                "Sync input too long. For audio longer than 1 min use LongRunningRecognize "
                "with a 'uri' parameter."
            )
    return None


def build_response(text: str, language_code: str, audio_seconds: float | None) -> RecognizeResponse:
    """Google's answer shape: one result with one alternative; none for empty text."""
    billed = duration_pb2.Duration(seconds=int(-(-(audio_seconds or 0) // 15) * 15))
    if not text:
        return RecognizeResponse(results=[], total_billed_time=billed)
    result = SpeechRecognitionResult(
        alternatives=[SpeechRecognitionAlternative(transcript=text, confidence=0.92)],
        language_code=language_code.lower(),
    )
    return RecognizeResponse(results=[result], total_billed_time=billed)


def _linear16_seconds(request: RecognizeRequest) -> float | None:
    config = request.config
    if config.encoding.name != "LINEAR16" or config.sample_rate_hertz <= 0:
        return None
    channels = max(1, config.audio_channel_count)
    return len(request.audio.content) / (2 * config.sample_rate_hertz * channels)


class FakeSpeechServer:
    """A gRPC Speech v1 server on ``host:port`` (port 0 picks a free one).

    Use as a context manager, or :meth:`start` / :meth:`stop`. Thread-safe: the settings
    may change while calls are in flight; each call reads them once on arrival.
    """

    def __init__(
        self,
        *,
        text: str = DEFAULT_TEXT,
        transcripts: Transcriber | None = None,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = 32,
        validate: bool = True,
    ) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._lock = threading.Lock()
        self._text = text
        self._transcripts = transcripts
        self._latency_s = latency_s
        self._validate = validate
        self._failures: list[_Failure] = []
        self._calls: list[RecognizeCall] = []
        self._host = host
        self._requested_port = port
        self._max_workers = max_workers
        self._stopping = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._server: Any = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeSpeechServer:
        if self._server is not None:
            raise RuntimeError("already started")
        # Our own executor, so stop() can join every handler thread: no leaks.
        executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="fake-speech")
        server = grpc.server(executor)
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Recognize": grpc.unary_unary_rpc_method_handler(
                    self._recognize,
                    request_deserializer=RecognizeRequest.deserialize,
                    response_serializer=RecognizeResponse.serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        try:
            port = _bind(server, f"{self._host}:{self._requested_port}")
            server.start()
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=True)
            raise
        self._stopping.clear()
        self._server, self._executor, self._port = server, executor, port
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving; in-flight calls are cancelled (after ``grace_s``, if given)."""
        server, executor = self._server, self._executor
        if server is None or executor is None:
            return
        self._stopping.set()
        server.stop(grace_s).wait()
        executor.shutdown(wait=True)
        self._server = self._executor = None

    def __enter__(self) -> FakeSpeechServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake speech server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` for ``grpc.insecure_channel`` (and SPEECH_ENDPOINT)."""
        return f"{self._host}:{self.port}"

    # -- run-time controls -------------------------------------------------------------

    def set_text(self, text: str) -> None:
        with self._lock:
            self._text = text

    def set_transcripts(self, transcripts: Transcriber | None) -> None:
        with self._lock:
            self._transcripts = transcripts

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency_s = seconds

    def fail_next(self, n: int, code: grpc.StatusCode, details: str = "") -> None:
        """The next ``n`` calls fail with ``code`` (after any failures already queued)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if code is grpc.StatusCode.OK:
            raise ValueError("OK is not a failure")
        with self._lock:
            self._failures.extend([_Failure(code, details or f"injected {code.name}")] * n)

    @property
    def calls(self) -> tuple[RecognizeCall, ...]:
        with self._lock:
            return tuple(self._calls)

    def reset(self) -> None:
        """Forget recorded calls and pending failures (text/latency are kept)."""
        with self._lock:
            self._calls.clear()
            self._failures.clear()

    # -- the RPC -----------------------------------------------------------------------

    def _recognize(self, request: RecognizeRequest, context: Any) -> RecognizeResponse:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            latency, text, transcripts = self._latency_s, self._text, self._transcripts
        invalid = validation_error(request) if self._validate and failure is None else None
        if failure is not None:
            outcome = failure.code.name
        elif invalid is not None:
            outcome = grpc.StatusCode.INVALID_ARGUMENT.name
        else:
            outcome = "OK"
        self._record(request, outcome)

        self._sleep(latency, context)
        if failure is not None and failure.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            remaining = context.time_remaining()
            # Past the deadline by a margin, so the client's deadline is what fires.
            self._sleep(_NO_DEADLINE_SLEEP_S if remaining is None else remaining + 0.2, context)
        if failure is not None:
            context.abort(failure.code, failure.details)
        if invalid is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, invalid)
        if self._stopping.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

        chosen = _transcript(request, transcripts, text)
        return build_response(chosen, request.config.language_code, _linear16_seconds(request))

    def _record(self, request: RecognizeRequest, outcome: str) -> None:
        config, content = request.config, request.audio.content
        call = RecognizeCall(
            encoding=config.encoding.name,
            sample_rate_hertz=config.sample_rate_hertz,
            language_code=config.language_code,
            audio_channel_count=config.audio_channel_count,
            audio_length=len(content),
            audio_sha256=hashlib.sha256(content).hexdigest(),
            has_uri=bool(request.audio.uri),
            outcome=outcome,
        )
        with self._lock:
            self._calls.append(call)

    def _sleep(self, seconds: float, context: Any) -> None:
        """Sleep, but end early when the server stops or the client has gone away."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stopping.wait(min(left, _SLEEP_SLICE_S)) or not context.is_active():
                return


def _bind(server: Any, address: str) -> int:
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind {address}")
    assert isinstance(port, int)
    return port


def _transcript(request: RecognizeRequest, transcripts: Transcriber | None, default: str) -> str:
    if transcripts is None:
        return default
    if isinstance(transcripts, Mapping):
        digest = hashlib.sha256(request.audio.content).hexdigest()
        return transcripts.get(digest, default)
    return transcripts(request)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print the address as one JSON line first."""
    parser = argparse.ArgumentParser(
        prog="python -m enrich.testing.fake_speech",
        description="Fake Google Speech-to-Text v1 Recognize server (plain-text gRPC).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="transcript for every call")
    parser.add_argument("--max-workers", type=int, default=32)
    parser.add_argument("--no-validate", action="store_true", help="accept any request")
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = FakeSpeechServer(
        text=args.text,
        latency_s=args.latency,
        host=args.host,
        port=args.port,
        max_workers=args.max_workers,
        validate=not args.no_validate,
    )
    try:
        server.start()
        print(json.dumps({"address": server.address}), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
