"""Media sniffing: the bytes decide, the declared Content-Type only breaks ties."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.media.sniff import SNIFF_BYTES, MediaKind, sniff

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"


def head_of(name: str) -> bytes:
    with (MEDIA / name).open("rb") as f:
        return f.read(SNIFF_BYTES)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08free"


def ogg_page(packet: bytes) -> bytes:
    # 27-byte page header ending with a one-entry segment table.
    header = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01" + bytes([len(packet)])
    return header + packet


# Every fixture, declared both honestly and as the usual lie (octet-stream).
FIXTURES = [
    ("note1.wav", "audio/wav", MediaKind("audio", "wav", "audio/wav")),
    ("note1.amr", "audio/amr", MediaKind("audio", "amr", "audio/amr")),
    ("note3.amr", "audio/amr", MediaKind("audio", "amr", "audio/amr")),
    ("note1.ogg", "audio/ogg", MediaKind("audio", "ogg-opus", "audio/ogg")),
    ("note3.ogg", "audio/ogg", MediaKind("audio", "ogg-opus", "audio/ogg")),
    ("note2.mp3", "audio/mpeg", MediaKind("audio", "mp3", "audio/mpeg")),
    ("note2.m4a", "audio/mp4", MediaKind("audio", "m4a", "audio/mp4")),
    ("note2.wav", "audio/x-wav", MediaKind("audio", "wav", "audio/wav")),
    ("note3.wav", "audio/wav", MediaKind("audio", "wav", "audio/wav")),
    ("clip.mp4", "video/mp4", MediaKind("video", "mp4", "video/mp4")),
    ("clip.mov", "video/quicktime", MediaKind("video", "quicktime", "video/quicktime")),
    ("note2.3gp", "audio/3gpp", MediaKind("audio", "3gpp", "audio/3gpp")),
    ("note3.webm", "audio/webm", MediaKind("audio", "webm", "audio/webm")),
    ("photo.jpg", "image/jpeg", MediaKind("image", "jpeg", "image/jpeg")),
    ("photo.png", "image/png", MediaKind("image", "png", "image/png")),
    ("contact.vcf", "text/vcard", MediaKind("vcard", "vcard", "text/vcard")),
]


def test_every_fixture_is_covered() -> None:
    on_disk = {p.name for p in MEDIA.iterdir() if p.suffix not in (".json", ".md")}
    assert on_disk == {name for name, _, _ in FIXTURES}


@pytest.mark.parametrize(("name", "declared", "expected"), FIXTURES)
def test_fixtures_with_honest_declared_type(name: str, declared: str, expected: MediaKind) -> None:
    assert sniff(head_of(name), declared) == expected


# 3GPP and WebM containers hold audio or video alike: only the declared type tells.
AMBIGUOUS = {"note2.3gp": MediaKind("video", "3gpp", "video/3gpp"),
             "note3.webm": MediaKind("video", "webm", "video/webm")}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_ambiguous_containers_without_a_declared_type_read_as_video(name: str) -> None:
    # Either way the item goes to transcription (a video's soundtrack is transcribed).
    assert sniff(head_of(name), None) == AMBIGUOUS[name]


@pytest.mark.parametrize(("name", "declared", "expected"),
                         [f for f in FIXTURES if f[0] not in AMBIGUOUS])
@pytest.mark.parametrize("lie", [None, "", "application/octet-stream", "text/plain"])
def test_fixtures_ignore_a_non_committal_declared_type(
    name: str, declared: str, expected: MediaKind, lie: str | None
) -> None:
    assert sniff(head_of(name), lie) == expected


@pytest.mark.parametrize(
    ("name", "lie"),
    [
        ("note1.amr", "image/jpeg"),
        ("photo.jpg", "audio/amr"),
        ("photo.png", "text/vcard"),
        ("contact.vcf", "audio/mpeg"),
        ("note2.mp3", "video/mp4"),
        ("note1.wav", "image/png"),
    ],
)
def test_lying_declared_type_does_not_change_the_verdict(name: str, lie: str) -> None:
    truth = next(kind for n, _, kind in FIXTURES if n == name)
    assert sniff(head_of(name), lie) == truth


def test_whole_file_is_accepted_as_head() -> None:
    data = (MEDIA / "clip.mp4").read_bytes()
    assert sniff(data, None) == MediaKind("video", "mp4", "video/mp4")


def test_iso_bmff_generic_brand_follows_declared_audio() -> None:
    # clip.mp4 carries video, but from the brand alone it could be an AAC voice note.
    assert sniff(head_of("clip.mp4"), "audio/mp4") == MediaKind("audio", "m4a", "audio/mp4")
    assert sniff(head_of("clip.mp4"), "Audio/MP4; codecs=mp4a") == MediaKind(
        "audio", "m4a", "audio/mp4"
    )


def test_m4a_brand_is_audio_even_when_declared_video() -> None:
    assert sniff(head_of("note2.m4a"), "video/mp4") == MediaKind("audio", "m4a", "audio/mp4")


@pytest.mark.parametrize(
    ("head", "declared", "expected"),
    [
        (ftyp(b"3gp4", b"3gp4", b"isom"), None, MediaKind("video", "3gpp", "video/3gpp")),
        (ftyp(b"3gp5"), "audio/3gpp", MediaKind("audio", "3gpp", "audio/3gpp")),
        (ftyp(b"3gp6"), "video/3gpp", MediaKind("video", "3gpp", "video/3gpp")),
        (ftyp(b"3g2a"), "audio/3gpp2", MediaKind("audio", "3gpp", "audio/3gpp2")),
        (ftyp(b"3g2a"), None, MediaKind("video", "3gpp", "video/3gpp2")),
        (ftyp(b"isom", b"isom", b"3gp4"), "audio/amr", MediaKind("audio", "3gpp", "audio/3gpp")),
        (ftyp(b"M4A ", b"M4A ", b"mp42"), None, MediaKind("audio", "m4a", "audio/mp4")),
        (ftyp(b"M4B "), None, MediaKind("audio", "m4a", "audio/mp4")),
        (ftyp(b"mp42", b"isom", b"M4A "), None, MediaKind("audio", "m4a", "audio/mp4")),
        (ftyp(b"mp42", b"mp42", b"isom"), None, MediaKind("video", "mp4", "video/mp4")),
        (ftyp(b"mp42", b"mp42", b"isom"), "audio/aac", MediaKind("audio", "m4a", "audio/mp4")),
        (ftyp(b"M4V "), "audio/mp4", MediaKind("audio", "m4a", "audio/mp4")),
        (ftyp(b"M4V "), None, MediaKind("video", "mp4", "video/mp4")),
        (ftyp(b"qt  "), None, MediaKind("video", "quicktime", "video/quicktime")),
        (ftyp(b"qt  "), "audio/mp4", MediaKind("audio", "quicktime", "video/quicktime")),
        (ftyp(b"heic", b"mif1", b"heic"), None, MediaKind("image", "heic", "image/heic")),
        (ftyp(b"mif1", b"mif1", b"heic"), "image/heif", MediaKind("image", "heic", "image/heic")),
        (ftyp(b"mif1", b"mif1", b"avif"), None, MediaKind("image", "avif", "image/avif")),
        (ftyp(b"avif"), "video/mp4", MediaKind("image", "avif", "image/avif")),
        # A non-generic major brand wins over its compatible brands.
        (ftyp(b"3gp4", b"M4A "), None, MediaKind("video", "3gpp", "video/3gpp")),
    ],
)
def test_iso_bmff_brands(head: bytes, declared: str | None, expected: MediaKind) -> None:
    assert sniff(head, declared) == expected


@pytest.mark.parametrize(
    ("head", "declared", "expected"),
    [
        (b"#!AMR\n\x3c", None, MediaKind("audio", "amr", "audio/amr")),
        (b"#!AMR-WB\n\x04", "audio/amr", MediaKind("audio", "amr-wb", "audio/amr-wb")),
        (b"#!AMR_MC1.0\n", None, MediaKind("audio", "amr", "audio/amr")),
        (b"#!AMR-WB_MC1.0\n", None, MediaKind("audio", "amr-wb", "audio/amr-wb")),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None, MediaKind("audio", "wav", "audio/wav")),
        (b"RF64\xff\xff\xff\xffWAVEds64", None, MediaKind("audio", "wav", "audio/wav")),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "audio/wav", MediaKind("image", "webp", "image/webp")),
        (b"RIFF\x24\x00\x00\x00AVI LIST", None, MediaKind("video", "avi", "video/x-msvideo")),
        (ogg_page(b"OpusHead\x01\x01"), None, MediaKind("audio", "ogg-opus", "audio/ogg")),
        (ogg_page(b"\x01vorbis\x00\x00"), None, MediaKind("audio", "ogg-vorbis", "audio/ogg")),
        (ogg_page(b"Speex   1.2"), None, MediaKind("audio", "ogg-speex", "audio/ogg")),
        (ogg_page(b"\x7fFLAC\x01\x00"), None, MediaKind("audio", "ogg-flac", "audio/ogg")),
        (ogg_page(b"\x80theora\x03"), "audio/ogg", MediaKind("video", "ogg-theora", "video/ogg")),
        (ogg_page(b"Mystery!"), None, MediaKind("audio", "ogg", "audio/ogg")),
        (b"OggS\x00\x02", None, MediaKind("audio", "ogg", "audio/ogg")),
        (b"fLaC\x00\x00\x00\x22", None, MediaKind("audio", "flac", "audio/flac")),
        (b"ID3\x03\x00\x00\x00\x00\x10\x7f", None, MediaKind("audio", "mp3", "audio/mpeg")),
        (b"\xff\xfb\x90\x64\x00", None, MediaKind("audio", "mp3", "audio/mpeg")),  # MPEG1 L3
        (b"\xff\xf3\x48\xc4\x00", None, MediaKind("audio", "mp3", "audio/mpeg")),  # MPEG2 L3
        (b"\xff\xfd\x90\x64\x00", None, MediaKind("audio", "mp2", "audio/mpeg")),  # MPEG1 L2
        (b"\xff\xf1\x50\x80\x02", None, MediaKind("audio", "aac", "audio/aac")),  # ADTS
        (
            b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm",
            None,
            MediaKind("video", "webm", "video/webm"),
        ),
        (
            b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm",
            "audio/webm",
            MediaKind("audio", "webm", "audio/webm"),
        ),
        (
            b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska",
            None,
            MediaKind("video", "matroska", "video/x-matroska"),
        ),
        (
            b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska",
            "audio/x-matroska",
            MediaKind("audio", "matroska", "audio/x-matroska"),
        ),
        (b"\xff\xd8\xff\xe1\x00\x10Exif", "image/png", MediaKind("image", "jpeg", "image/jpeg")),
        (b"GIF89a\x01\x00", None, MediaKind("image", "gif", "image/gif")),
        (b"GIF87a\x01\x00", None, MediaKind("image", "gif", "image/gif")),
        (b"II*\x00\x08\x00\x00\x00", None, MediaKind("image", "tiff", "image/tiff")),
        (b"MM\x00*\x00\x00\x00\x08", None, MediaKind("image", "tiff", "image/tiff")),
        (
            b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00",
            None,
            MediaKind("image", "bmp", "image/bmp"),
        ),
        (b"%PDF-1.7\n", "image/jpeg", MediaKind("unsupported", "pdf", "application/pdf")),
    ],
)
def test_crafted_headers(head: bytes, declared: str | None, expected: MediaKind) -> None:
    assert sniff(head, declared) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"BEGIN:VCARD\r\nVERSION:2.1\r\n",
        b"begin:vcard\nversion:3.0\n",
        b"  \r\n\tBEGIN:VCARD\n",
        codecs.BOM_UTF8 + b"BEGIN:VCARD\n",
        codecs.BOM_UTF16_LE + "BEGIN:VCARD\r\n".encode("utf-16-le"),
        codecs.BOM_UTF16_BE + "BEGIN:VCARD\r\n".encode("utf-16-be"),
    ],
)
@pytest.mark.parametrize("declared", [None, "text/x-vcard", "text/plain", "audio/amr"])
def test_vcard_by_content(head: bytes, declared: str | None) -> None:
    assert sniff(head, declared) == MediaKind("vcard", "vcard", "text/vcard")


@pytest.mark.parametrize(
    "declared", ["text/vcard", "text/x-vcard", "TEXT/DIRECTORY; profile=vCard"]
)
def test_vcard_declared_type_breaks_the_tie(declared: str) -> None:
    # Not at the start (a leading comment line), so only the declared type makes it one.
    head = b"X-Exported-By: phone\r\nBEGIN:VCARD\r\nVERSION:3.0\r\n"
    assert sniff(head, None).category == "unsupported"
    assert sniff(head, "text/plain").category == "unsupported"
    assert sniff(head, declared) == MediaKind("vcard", "vcard", "text/vcard")


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello, this is plain text",
        b"\x00\x01BEGIN:VCARD binary junk",  # binary with the words in it
        b"#!AMRX\n",  # near-miss signatures
        b"RIFF\x00\x00\x00\x00WAVX",
        b"GIF90a",
        b"\xff\xd8\x00",
        b"\xff\xef\x90\x64",  # MPEG sync with version "reserved"
        b"\xff\xe1\x90\x64",  # ... layer "reserved" (and not ADTS: sync too short)
        b"\xff\xfb\xf0\x64",  # ... bitrate index 15 (bad)
        b"\xff\xfb\x9c\x64",  # ... sample rate index 3 (reserved)
        b"\xff\xf1\xf4\x80",  # ADTS with sampling-frequency index 13 (reserved)
        b"ID3\x09\x00\x00\x00\x00\x00\x00",  # ID3 with an impossible version
        b"ID3\x03\x00\x00\x80\x00\x00\x00",  # ... and a non-syncsafe size
        b"BMW is a car maker",
    ],
)
@pytest.mark.parametrize(
    "declared", [None, "audio/amr", "audio/mpeg", "image/jpeg", "video/mp4", "text/vcard"]
)
def test_unknown_bytes_stay_unsupported_whatever_was_declared(
    head: bytes, declared: str | None
) -> None:
    assert sniff(head, declared) == MediaKind("unsupported", "unknown", "application/octet-stream")


def test_only_the_first_sniff_bytes_count() -> None:
    # A signature past SNIFF_BYTES is not looked at (bounded work on any input).
    head = b" " * SNIFF_BYTES + b"BEGIN:VCARD\n"
    assert sniff(head, "text/vcard").category == "unsupported"


@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=40)))
def test_never_raises_and_is_consistent(head: bytes, declared: str | None) -> None:
    kind = sniff(head, declared)
    assert kind.category in ("audio", "video", "image", "vcard", "unsupported")
    assert "/" in kind.mime and kind.format
    assert sniff(head, declared) == kind
