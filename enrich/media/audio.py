"""Audio decoding with PyAV (bundled FFmpeg), plus pure PCM helpers.

:func:`probe` and :func:`decode_to_pcm16` are synchronous and CPU-bound: callers run
them in a worker thread (``trio.to_thread.run_sync`` behind the speech limiter). They
accept a path or the item's bytes, and any failure to read the input as audio raises
:class:`AudioDecodeError`, whatever FFmpeg or PyAV raised underneath (the cause is
chained for debugging). Wrong arguments are programming errors and raise ``ValueError``.

AMR-NB: FFmpeg's native ``amrnb`` decoder rejects the DTX/SID frames phones insert in
silences (DESIGN.md §6), dropping audio and logging errors, so AMR-NB streams, in a
``.amr`` or in a 3GP container, are decoded with ``libopencore_amrnb`` instead (a
separate codec context fed with the demuxed packets) whenever this FFmpeg build has it.

:func:`split_pcm` and :func:`pcm_to_wav_bytes` are pure.
"""

from __future__ import annotations

import io
import math
import os
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import av

__all__ = [
    "AudioDecodeError",
    "AudioInfo",
    "AudioSource",
    "decode_to_pcm16",
    "pcm_to_wav_bytes",
    "probe",
    "split_pcm",
]

#: A file path, or the media item's bytes.
AudioSource = str | os.PathLike[str] | bytes

_BYTES_PER_SAMPLE: Final = 2  # signed 16-bit, mono
# Decoders to use instead of FFmpeg's default one for a codec (see module docstring).
_PREFERRED_DECODERS: Final = {"amrnb": "libopencore_amrnb"}


class AudioDecodeError(Exception):
    """The input is not decodable audio: corrupt, truncated, empty, or no audio stream."""


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What :func:`probe` found. ``duration_s`` is the container's estimate (None when
    it has none): AMR files, for one, only have a bitrate-based guess."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None
    has_video: bool


def probe(source: AudioSource) -> AudioInfo:
    """Describe the first audio stream of ``source`` without decoding it.

    ``has_video`` is true when the file also has a real video stream (cover art
    attached to an MP3/M4A does not count).
    """
    try:
        with _open(source) as container:
            stream = _first_audio_stream(container)
            return AudioInfo(
                container=str(container.format.name),
                codec=str(stream.codec_context.name),
                sample_rate=int(stream.codec_context.sample_rate or 0),
                channels=int(stream.codec_context.channels or 0),
                duration_s=_duration(container, stream),
                has_video=any(_is_real_video(s) for s in container.streams.video),
            )
    except AudioDecodeError:
        raise
    except Exception as exc:
        # PyAV reports broken input through FFmpegError subclasses but also plain
        # ValueError/UnicodeDecodeError/IndexError from metadata and headers; the
        # contract for callers is "audio or AudioDecodeError".
        raise AudioDecodeError(f"cannot probe audio: {type(exc).__name__}") from exc


def decode_to_pcm16(
    source: AudioSource, *, sample_rate: int = 16000, max_seconds: float | None = None
) -> bytes:
    """Decode the first audio stream to mono signed 16-bit little-endian PCM.

    The first audio stream is used even in video files (its video is never decoded).
    ``max_seconds`` caps the output (decoding stops once it is reached), which also
    bounds the work a small file that claims hours of audio can cause.

    A packet that fails to decode is skipped (a glitch should not lose a whole voice
    note), but the input is refused with :class:`AudioDecodeError` when it yields no
    audio at all or when more than half of its packets fail.
    """
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError("max_seconds must be positive or None")
    limit = None if max_seconds is None else int(max_seconds * sample_rate) * _BYTES_PER_SAMPLE
    try:
        pcm = _decode(source, sample_rate, limit)
    except AudioDecodeError:
        raise
    except Exception as exc:  # see probe(): one exception type for broken input
        raise AudioDecodeError(f"cannot decode audio: {type(exc).__name__}") from exc
    if not pcm:
        raise AudioDecodeError("no audio could be decoded")
    return pcm


def split_pcm(pcm: bytes, sample_rate: int, chunk_seconds: float = 55.0) -> list[bytes]:
    """Split mono 16-bit PCM into chunks of at most ``chunk_seconds`` each.

    For Google's 60 s ``recognize`` limit (55 s leaves headroom). Chunks are balanced
    (a 61 s note gives two ~30.5 s chunks, not 55 s + 6 s): a very short last chunk
    has too little context to be transcribed well. Chunks never split a sample.
    Empty input gives no chunks.
    """
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")
    if not chunk_seconds > 0:
        raise ValueError("chunk_seconds must be positive")
    if len(pcm) % _BYTES_PER_SAMPLE:
        raise ValueError("16-bit PCM must have an even number of bytes")
    total = len(pcm) // _BYTES_PER_SAMPLE
    if total == 0:
        return []
    max_samples = max(1, int(chunk_seconds * sample_rate))
    count = math.ceil(total / max_samples)
    size = math.ceil(total / count) * _BYTES_PER_SAMPLE
    return [bytes(pcm[i : i + size]) for i in range(0, len(pcm), size)]


def pcm_to_wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap mono 16-bit little-endian PCM in a WAV (RIFF) container."""
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")
    if len(pcm) % _BYTES_PER_SAMPLE:
        raise ValueError("16-bit PCM must have an even number of bytes")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(_BYTES_PER_SAMPLE)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


# -- PyAV plumbing (PyAV ships no type information, hence Any) -------------------------


def _open(source: AudioSource) -> Any:
    if isinstance(source, bytes | bytearray | memoryview):
        return av.open(io.BytesIO(bytes(source)), mode="r")
    return av.open(os.fspath(source), mode="r")


def _first_audio_stream(container: Any) -> Any:
    streams = container.streams.audio
    if not streams:
        raise AudioDecodeError("no audio stream")
    return streams[0]


def _is_real_video(stream: Any) -> bool:
    return not stream.disposition & av.stream.Disposition.attached_pic


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _decoder_for(stream: Any) -> Any:
    """The codec context to decode ``stream`` with (see _PREFERRED_DECODERS)."""
    preferred = _PREFERRED_DECODERS.get(stream.codec_context.name)
    if preferred is None or preferred not in av.codecs_available:
        return stream.codec_context
    decoder: Any = av.CodecContext.create(preferred, "r")
    decoder.sample_rate = stream.codec_context.sample_rate or 8000
    decoder.layout = "mono"  # AMR-NB is mono by definition
    return decoder


def _decode(source: AudioSource, sample_rate: int, limit: int | None) -> bytes:
    out = bytearray()
    with _open(source) as container:
        stream = _first_audio_stream(container)
        decoder = _decoder_for(stream)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        decoded = failed = 0
        for frames in _decoded_packets(container, stream, decoder):
            if frames is None:
                failed += 1
                continue
            decoded += 1
            for frame in frames:
                for resampled in resampler.resample(frame):
                    out += _plane_bytes(resampled)
            if limit is not None and len(out) >= limit:
                return bytes(out[:limit])
        for resampled in resampler.resample(None):  # flush the resampler's delay
            out += _plane_bytes(resampled)
        if failed > decoded:
            raise AudioDecodeError(f"{failed} of {failed + decoded} packets failed to decode")
    return bytes(out if limit is None else out[:limit])


def _decoded_packets(container: Any, stream: Any, decoder: Any) -> Iterator[list[Any] | None]:
    """Per demuxed packet of ``stream``, its decoded frames, or None if it failed.

    demux() ends with an empty packet per stream, which flushes the decoder.
    """
    for packet in container.demux(stream):
        try:
            frames = decoder.decode(packet)
        except av.error.EOFError:
            return  # the decoder was already flushed: nothing more will come
        except av.error.FFmpegError:
            yield None
            continue
        yield list(frames)


def _plane_bytes(frame: Any) -> bytes:
    # A plane's buffer may be padded past the samples it holds.
    return bytes(frame.planes[0])[: frame.samples * _BYTES_PER_SAMPLE]
