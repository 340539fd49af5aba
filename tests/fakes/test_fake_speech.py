"""The fake Speech server, driven by the real google-cloud-speech client over gRPC."""

from __future__ import annotations

import gc
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.cloud.speech_v1 import RecognitionAudio, RecognitionConfig, SpeechClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcTransport
from google.cloud.speech_v1.types import RecognizeRequest, RecognizeResponse

from enrich.testing.fake_speech import DEFAULT_TEXT, FakeSpeechServer, validation_error

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"
AMR = RecognitionConfig(encoding="AMR", sample_rate_hertz=8000, language_code="en-US")


@pytest.fixture
def server() -> Iterator[FakeSpeechServer]:
    with FakeSpeechServer(text="met sarah at the coffee shop") as fake:
        yield fake


@contextmanager
def speech_client(address: str) -> Iterator[SpeechClient]:
    """The real client on a plain-text channel, as the app builds it for a loopback
    SPEECH_ENDPOINT; the channel is closed on the way out."""
    channel = grpc.insecure_channel(address)
    try:
        yield SpeechClient(transport=SpeechGrpcTransport(channel=channel))
    finally:
        channel.close()


@pytest.fixture
def client(server: FakeSpeechServer) -> Iterator[SpeechClient]:
    with speech_client(server.address) as speech:
        yield speech


def recognize(
    client: SpeechClient,
    content: bytes,
    config: RecognitionConfig = AMR,
    timeout: float = 5.0,
) -> str:
    response = client.recognize(
        config=config, audio=RecognitionAudio(content=content), timeout=timeout, retry=None
    )
    return " ".join(r.alternatives[0].transcript for r in response.results)


def test_recognize_returns_text_and_records_config(
    server: FakeSpeechServer, client: SpeechClient
) -> None:
    audio = (MEDIA / "note1.amr").read_bytes()

    text = recognize(client, audio)

    assert text == "met sarah at the coffee shop"
    [call] = server.calls
    assert call.encoding == "AMR"
    assert call.sample_rate_hertz == 8000
    assert call.language_code == "en-US"
    assert call.audio_length == len(audio)
    assert call.audio_sha256 == hashlib.sha256(audio).hexdigest()
    assert call.outcome == "OK"


def test_transcripts_by_audio_hash(server: FakeSpeechServer, client: SpeechClient) -> None:
    note1 = (MEDIA / "note1.amr").read_bytes()
    note3 = (MEDIA / "note3.amr").read_bytes()
    server.set_transcripts({hashlib.sha256(note1).hexdigest(): "first note"})
    server.set_text("unknown audio")

    assert recognize(client, note1) == "first note"
    assert recognize(client, note3) == "unknown audio"


def test_transcripts_by_callable(server: FakeSpeechServer, client: SpeechClient) -> None:
    server.set_transcripts(lambda request: f"{len(request.audio.content)} bytes")

    assert recognize(client, b"12345") == "5 bytes"


def test_empty_text_answers_no_results(server: FakeSpeechServer, client: SpeechClient) -> None:
    server.set_text("")

    response = client.recognize(
        config=AMR, audio=RecognitionAudio(content=b"..."), timeout=5.0, retry=None
    )

    assert list(response.results) == []


def test_linear16_wav_fixture(server: FakeSpeechServer, client: SpeechClient) -> None:
    wav = (MEDIA / "note1.wav").read_bytes()
    config = RecognitionConfig(encoding="LINEAR16", sample_rate_hertz=16000, language_code="en-US")

    assert recognize(client, wav[44:], config) == "met sarah at the coffee shop"
    assert server.calls[0].encoding == "LINEAR16"
    assert server.calls[0].sample_rate_hertz == 16000


def test_injected_unavailable(server: FakeSpeechServer, client: SpeechClient) -> None:
    server.fail_next(1, grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(exceptions.ServiceUnavailable):
        recognize(client, b"audio")
    # Only the next call was failed.
    assert recognize(client, b"audio") == "met sarah at the coffee shop"
    assert [c.outcome for c in server.calls] == ["UNAVAILABLE", "OK"]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, exceptions.ResourceExhausted),
        (grpc.StatusCode.INVALID_ARGUMENT, exceptions.InvalidArgument),
        (grpc.StatusCode.INTERNAL, exceptions.InternalServerError),
    ],
)
def test_injected_status_codes(
    server: FakeSpeechServer,
    client: SpeechClient,
    code: grpc.StatusCode,
    error: type[Exception],
) -> None:
    server.fail_next(2, code, "nope")

    for _ in range(2):
        with pytest.raises(error, match="nope"):
            recognize(client, b"audio")


def test_latency_past_client_timeout_is_deadline_exceeded(
    server: FakeSpeechServer, client: SpeechClient
) -> None:
    server.set_latency(0.5)

    with pytest.raises(exceptions.DeadlineExceeded):
        recognize(client, b"audio", timeout=0.2)


def test_injected_deadline_exceeded_sleeps_past_deadline(
    server: FakeSpeechServer, client: SpeechClient
) -> None:
    server.fail_next(1, grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(exceptions.DeadlineExceeded):
        recognize(client, b"audio", timeout=0.3)
    assert recognize(client, b"audio") == "met sarah at the coffee shop"


def test_long_running_is_unimplemented(client: SpeechClient) -> None:
    with pytest.raises(exceptions.MethodNotImplemented):
        client.long_running_recognize(
            config=AMR, audio=RecognitionAudio(content=b"x"), timeout=5.0, retry=None
        )


@pytest.mark.parametrize(
    ("config", "audio", "message"),
    [
        (
            RecognitionConfig(encoding="AMR", sample_rate_hertz=16000, language_code="en-US"),
            b"x",
            "must be 8000",
        ),
        (
            RecognitionConfig(encoding="AMR_WB", sample_rate_hertz=8000, language_code="en-US"),
            b"x",
            "must be 16000",
        ),
        (RecognitionConfig(encoding="AMR", sample_rate_hertz=8000), b"x", "language_code"),
        (
            RecognitionConfig(encoding="LINEAR16", sample_rate_hertz=8000, language_code="en"),
            b"\0" * (2 * 8000 * 61),
            "Sync input too long",
        ),
    ],
)
def test_invalid_requests_rejected_like_google(
    server: FakeSpeechServer,
    client: SpeechClient,
    config: RecognitionConfig,
    audio: bytes,
    message: str,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=message):
        recognize(client, audio, config)
    assert server.calls[0].outcome == "INVALID_ARGUMENT"


def test_validation_accepts_a_minute_of_linear16() -> None:
    ok = RecognizeRequest(
        config=RecognitionConfig(encoding="LINEAR16", sample_rate_hertz=8000, language_code="en"),
        audio=RecognitionAudio(content=b"\0" * (2 * 8000 * 60)),
    )
    by_uri = RecognizeRequest(config=AMR, audio=RecognitionAudio(uri="gs://bucket/a.amr"))

    assert validation_error(ok) is None
    assert validation_error(by_uri) is not None


def test_validation_can_be_switched_off() -> None:
    with (
        FakeSpeechServer(text="anything goes", validate=False) as fake,
        speech_client(fake.address) as speech,
    ):
        config = RecognitionConfig(encoding="AMR", sample_rate_hertz=44100)
        assert recognize(speech, b"x", config) == "anything goes"


def test_reset_and_bad_settings(server: FakeSpeechServer, client: SpeechClient) -> None:
    server.fail_next(3, grpc.StatusCode.UNAVAILABLE)
    server.reset()

    assert recognize(client, b"a") == "met sarah at the coffee shop"
    assert len(server.calls) == 1
    with pytest.raises(ValueError):
        server.fail_next(1, grpc.StatusCode.OK)
    with pytest.raises(ValueError):
        server.set_latency(-1)


def test_stop_joins_threads_and_closes_port() -> None:
    before = set(threading.enumerate())
    fake = FakeSpeechServer(latency_s=30.0)
    fake.start()
    address = fake.address
    channel = grpc.insecure_channel(address)
    try:
        # A call parked in the server's latency is cancelled by stop(), not waited for.
        recognize_rpc = channel.unary_unary(
            "/google.cloud.speech.v1.Speech/Recognize",
            request_serializer=RecognizeRequest.serialize,
            response_deserializer=RecognizeResponse.deserialize,
        )
        future = recognize_rpc.future(
            RecognizeRequest(config=AMR, audio=RecognitionAudio(content=b"x")), timeout=60
        )
        fake.stop()
        with pytest.raises(grpc.RpcError):
            future.result()
    finally:
        channel.close()
        fake.stop()

    # Its handler threads are joined. (Only ours: in a full run, other tests' thread pools
    # may start or end threads meanwhile.)
    leftover = {t for t in set(threading.enumerate()) - before if t.name.startswith("fake-speech")}
    assert leftover == set()
    # Nothing listens any more. gRPC closes its listening socket on its own schedule after
    # stop() (in a full test run it was seen still open, connections parked in its
    # backlog, so a client waited out its deadline): wait for a refused TCP connect,
    # bounded, then a fresh client cannot connect.
    assert _refused_within(address, seconds=5.0), f"{address} still accepts connections"
    with speech_client(address) as speech, pytest.raises(exceptions.ServiceUnavailable):
        recognize(speech, b"x", timeout=5.0)
    with pytest.raises(RuntimeError):
        _ = FakeSpeechServer().address


def _refused_within(address: str, *, seconds: float) -> bool:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        # The server object may be waiting in a reference cycle: collect it, so its
        # listener is released now rather than at some later collection.
        gc.collect()
        time.sleep(0.05)
    return False


def test_default_text() -> None:
    with FakeSpeechServer() as fake, speech_client(fake.address) as speech:
        assert recognize(speech, b"x") == DEFAULT_TEXT


@pytest.mark.slow
def test_standalone_process() -> None:
    help_run = subprocess.run(
        [sys.executable, "-m", "enrich.testing.fake_speech", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_run.returncode == 0
    assert "--latency" in help_run.stdout

    with subprocess.Popen(
        [sys.executable, "-m", "enrich.testing.fake_speech", "--text", "from a process"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            address = json.loads(proc.stdout.readline())["address"]
            with speech_client(address) as speech:
                assert recognize(speech, b"x") == "from a process"
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
