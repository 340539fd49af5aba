"""Audio decoding: every voice-note format to 16-bit mono PCM, and only one error type."""

from __future__ import annotations

import array
import io
import math
import wave
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.media.audio import (
    AudioDecodeError,
    AudioInfo,
    decode_to_pcm16,
    pcm_to_wav_bytes,
    probe,
    split_pcm,
)

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"

# Every audio-bearing fixture and the WAV with the same speech.
AUDIO = [
    ("note1.wav", "note1.wav"),
    ("note1.amr", "note1.wav"),
    ("note1.ogg", "note1.wav"),
    ("note2.wav", "note2.wav"),
    ("note2.mp3", "note2.wav"),
    ("note2.m4a", "note2.wav"),
    ("note3.wav", "note3.wav"),
    ("note3.amr", "note3.wav"),
    ("note3.ogg", "note3.wav"),
    ("clip.mp4", "note1.wav"),
]
# Codec delay/padding differs per format (AAC priming, Opus pre-skip, AMR's 20 ms
# frames); dropping even the DTX frames of a note would lose several times this.
DURATION_TOLERANCE_S = 0.15


def wav_duration(name: str) -> float:
    with wave.open(str(MEDIA / name), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def rms(pcm: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def amr_nb_3gp(*, dtx: bool) -> bytes:
    """note1 re-encoded as AMR-NB in a 3GP container (Android's audio/3gpp notes)."""
    pcm = decode_to_pcm16(MEDIA / "note1.wav", sample_rate=8000)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="3gp") as out:
        options = {"dtx": "1" if dtx else "0"}
        stream = out.add_stream("libopencore_amrnb", rate=8000, options=options)
        stream.layout = "mono"
        step = 160 * 2  # one 20 ms AMR frame of 16-bit samples
        for offset in range(0, len(pcm), step):
            chunk = pcm[offset : offset + step].ljust(step, b"\x00")
            frame = av.AudioFrame(format="s16", layout="mono", samples=160)
            frame.planes[0].update(chunk)
            frame.sample_rate = 8000
            frame.pts = offset // 2
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def native_amrnb_failures(source: Path | bytes) -> int:
    """Packets FFmpeg's own amrnb decoder rejects (what libopencore is there for)."""
    data = source.read_bytes() if isinstance(source, Path) else source
    failures = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "amrnb"
        for packet in container.demux(stream):
            try:
                packet.decode()
            except av.error.FFmpegError:
                failures += 1
    return failures


@pytest.mark.parametrize(("name", "reference"), AUDIO)
def test_every_audio_fixture_decodes_to_speech_of_the_right_length(
    name: str, reference: str
) -> None:
    pcm = decode_to_pcm16(MEDIA / name)
    assert len(pcm) % 2 == 0
    duration = len(pcm) / 2 / 16000
    assert abs(duration - wav_duration(reference)) < DURATION_TOLERANCE_S
    assert rms(pcm) > 500  # speech, not silence (the notes are ~3000 RMS)


@pytest.mark.parametrize("name", ["note1.amr", "note3.amr"])
def test_amr_fixtures_have_dtx_frames_the_native_decoder_rejects(name: str) -> None:
    # Guards the test material: the duration test above only proves the libopencore
    # path while these files really contain frames FFmpeg's native decoder drops.
    assert native_amrnb_failures(MEDIA / name) > 0


def test_amr_in_3gp_uses_libopencore_too() -> None:
    data = amr_nb_3gp(dtx=True)
    assert native_amrnb_failures(data) > 0
    info = probe(data)
    assert (info.codec, info.sample_rate, info.has_video) == ("amrnb", 8000, False)
    pcm = decode_to_pcm16(data)
    assert abs(len(pcm) / 32000 - wav_duration("note1.wav")) < DURATION_TOLERANCE_S
    assert rms(pcm) > 500


def test_sources_may_be_str_path_or_bytes() -> None:
    path = MEDIA / "note1.amr"
    expected = decode_to_pcm16(path)
    assert decode_to_pcm16(str(path)) == expected
    assert decode_to_pcm16(path.read_bytes()) == expected
    assert probe(path.read_bytes()) == probe(str(path))


def test_sample_rate_and_max_seconds() -> None:
    pcm8k = decode_to_pcm16(MEDIA / "note2.mp3", sample_rate=8000)
    assert abs(len(pcm8k) / 2 / 8000 - wav_duration("note2.wav")) < DURATION_TOLERANCE_S
    capped = decode_to_pcm16(MEDIA / "note2.mp3", max_seconds=2.5)
    assert len(capped) == 2 * 16000 * 2.5
    assert capped == decode_to_pcm16(MEDIA / "note2.mp3")[: len(capped)]
    # A cap beyond the end changes nothing.
    assert decode_to_pcm16(MEDIA / "note3.ogg", max_seconds=600) == decode_to_pcm16(
        MEDIA / "note3.ogg"
    )


@pytest.mark.parametrize(
    "kwargs", [{"sample_rate": 0}, {"sample_rate": -8000}, {"max_seconds": 0}, {"max_seconds": -1}]
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        decode_to_pcm16(MEDIA / "note1.wav", **kwargs)  # type: ignore[arg-type]


def test_probe_fixtures() -> None:
    assert probe(MEDIA / "note1.wav") == AudioInfo(
        container="wav",
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        duration_s=pytest.approx(wav_duration("note1.wav")),  # type: ignore[arg-type]
        has_video=False,
    )
    amr = probe(MEDIA / "note1.amr")
    assert (amr.container, amr.codec, amr.sample_rate, amr.channels) == ("amr", "amrnb", 8000, 1)
    opus = probe(MEDIA / "note3.ogg")
    assert (opus.container, opus.codec, opus.sample_rate) == ("ogg", "opus", 48000)
    m4a = probe(MEDIA / "note2.m4a")
    assert (m4a.codec, m4a.has_video) == ("aac", False)
    clip = probe(MEDIA / "clip.mp4")
    assert (clip.codec, clip.has_video) == ("aac", True)
    assert clip.duration_s is not None and clip.duration_s > 6


def _truncated(name: str, keep: int) -> bytes:
    return (MEDIA / name).read_bytes()[:keep]


BROKEN = {
    "empty": b"",
    "random": bytes(range(256)) * 40,
    "text": b"hello world, this is not audio\n" * 100,
    "amr_header_only": _truncated("note1.amr", 6),
    "amr_header_and_half_a_frame": _truncated("note1.amr", 12),
    "wav_header_cut": _truncated("note1.wav", 30),
    "ogg_headers_only": _truncated("note1.ogg", 200),
    "mp3_id3_only": _truncated("note2.mp3", 40),
    "m4a_half": _truncated("note2.m4a", len((MEDIA / "note2.m4a").read_bytes()) // 2),
    "mp4_half": _truncated("clip.mp4", len((MEDIA / "clip.mp4").read_bytes()) // 2),
    "jpeg": (MEDIA / "photo.jpg").read_bytes(),
    "png": (MEDIA / "photo.png").read_bytes(),
    "vcard": (MEDIA / "contact.vcf").read_bytes(),
    "m4a_body_garbled": _truncated("note2.m4a", 40) + bytes(range(256)) * 100,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_input_raises_audio_decode_error(name: str) -> None:
    with pytest.raises(AudioDecodeError):
        decode_to_pcm16(BROKEN[name])


@pytest.mark.parametrize("name", ["empty", "random", "text", "wav_header_cut", "m4a_half", "png"])
def test_probe_of_broken_input_raises_audio_decode_error(name: str) -> None:
    with pytest.raises(AudioDecodeError):
        probe(BROKEN[name])


def test_missing_file_is_an_audio_decode_error() -> None:
    with pytest.raises(AudioDecodeError):
        decode_to_pcm16(MEDIA / "does-not-exist.amr")
    with pytest.raises(AudioDecodeError):
        probe(MEDIA / "does-not-exist.amr")


def test_streamable_formats_cut_short_keep_what_arrived() -> None:
    # Documented behaviour: a voice note truncated mid-stream gives its first part.
    data = (MEDIA / "note1.amr").read_bytes()
    pcm = decode_to_pcm16(data[: len(data) // 2])
    assert 2.0 < len(pcm) / 32000 < 4.0


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_audio_decode_error(data: bytes) -> None:
    try:
        pcm = decode_to_pcm16(data, max_seconds=5)
    except AudioDecodeError:
        return
    assert 0 < len(pcm) <= 5 * 16000 * 2 and len(pcm) % 2 == 0


@given(st.binary(max_size=512))
def test_arbitrary_bytes_after_a_real_header(tail: bytes) -> None:
    for name in ("note1.amr", "note1.ogg", "note2.m4a", "note1.wav"):
        try:
            pcm = decode_to_pcm16(_truncated(name, 64) + tail, max_seconds=5)
        except AudioDecodeError:
            continue
        assert 0 < len(pcm) <= 5 * 16000 * 2 and len(pcm) % 2 == 0


# -- pure helpers ----------------------------------------------------------------------


def test_split_pcm_short_input_is_one_chunk() -> None:
    pcm = b"\x01\x00" * 16000 * 10
    assert split_pcm(pcm, 16000) == [pcm]
    assert split_pcm(b"", 16000) == []


def test_split_pcm_balances_chunks_under_the_limit() -> None:
    pcm = bytes(range(256)) * (16000 * 2 * 61 // 256)  # just under 61 s
    chunks = split_pcm(pcm, 16000)
    assert len(chunks) == 2
    assert b"".join(chunks) == pcm
    assert all(len(c) <= 55 * 16000 * 2 and len(c) % 2 == 0 for c in chunks)
    assert abs(len(chunks[0]) - len(chunks[1])) <= 2


@given(
    st.integers(min_value=0, max_value=400_000),
    st.sampled_from([8000, 16000, 48000]),
    st.floats(min_value=0.01, max_value=60.0),
)
def test_split_pcm_properties(samples: int, rate: int, chunk_seconds: float) -> None:
    pcm = (b"\x01\x02" * samples)[: samples * 2]
    chunks = split_pcm(pcm, rate, chunk_seconds)
    assert b"".join(chunks) == pcm
    limit = max(1, int(chunk_seconds * rate)) * 2
    assert all(0 < len(c) <= limit and len(c) % 2 == 0 for c in chunks)
    assert len(chunks) == math.ceil(samples * 2 / limit)


@pytest.mark.parametrize(
    ("pcm", "rate", "seconds"), [(b"\x00", 16000, 55.0), (b"", 0, 55.0), (b"", 16000, 0.0)]
)
def test_split_pcm_rejects_bad_arguments(pcm: bytes, rate: int, seconds: float) -> None:
    with pytest.raises(ValueError):
        split_pcm(pcm, rate, seconds)


def test_pcm_to_wav_bytes_round_trips() -> None:
    pcm = decode_to_pcm16(MEDIA / "note1.ogg", sample_rate=16000)
    data = pcm_to_wav_bytes(pcm, 16000)
    with wave.open(io.BytesIO(data), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.readframes(wav.getnframes()) == pcm
    # ... and our own decoder reads it back unchanged.
    assert decode_to_pcm16(data) == pcm


def test_pcm_to_wav_bytes_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pcm_to_wav_bytes(b"\x00", 16000)
    with pytest.raises(ValueError):
        pcm_to_wav_bytes(b"", 0)
