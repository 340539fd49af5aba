"""What a media item really is, decided from its first bytes.

Twilio forwards whatever Content-Type the sending handset claimed, and handsets lie
(``application/octet-stream`` voice notes, ``audio/mp4`` video clips, ``text/plain``
contact cards). So the magic bytes decide, and the declared type is only a tie-breaker
where the bytes cannot tell:

- ISO-BMFF (``ftyp``) files say which *family* they belong to (3GPP, MP4, QuickTime, HEIF)
  but not whether they carry video. Audio-only brands (``M4A``, ``M4B``...) give
  ``audio``; a generic brand (``isom``, ``mp42``, ``3gp4``...) gives ``audio`` when the
  declared type is ``audio/*`` and ``video`` otherwise. The category is therefore a hint:
  the decoder (:func:`enrich.media.audio.probe`) later looks for a real video stream and
  decodes the first audio stream of video files anyway.
- WebM/Matroska: same rule (``audio/webm`` voice notes exist).
- vCards: text that starts with ``BEGIN:VCARD`` is a vCard whatever was declared; with a
  declared ``text/vcard``, ``text/x-vcard`` or ``text/directory`` a ``BEGIN:VCARD``
  anywhere in the head is enough.

A declared type never turns unrecognised bytes into a supported kind: a file declared
``audio/amr`` that does not look like any known format is ``unsupported``.

Pure: no I/O. The fetcher reads :data:`SNIFF_BYTES` bytes (or fewer, for a short item)
and calls :func:`sniff`.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["SNIFF_BYTES", "Category", "MediaKind", "sniff"]

#: How many leading bytes :func:`sniff` looks at. Longer heads are accepted and cut.
SNIFF_BYTES: Final = 64

Category = Literal["audio", "video", "image", "vcard", "unsupported"]


@dataclass(frozen=True, slots=True)
class MediaKind:
    """The sniffed kind of a media item.

    ``format`` is a short stable token (``"amr"``, ``"mp4"``, ``"jpeg"``...) and ``mime``
    the canonical MIME type we would declare for it (never the sender's claim).
    """

    category: Category
    format: str
    mime: str


UNKNOWN: Final = MediaKind("unsupported", "unknown", "application/octet-stream")

_VCARD_DECLARED: Final = frozenset({"text/vcard", "text/x-vcard", "text/directory"})

# ISO-BMFF brands, four bytes each.
_BRANDS_AUDIO_MP4: Final = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
_BRANDS_HEIC: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
)
_BRANDS_HEIF_GENERIC: Final = frozenset({b"mif1", b"msf1"})
_BRANDS_AVIF: Final = frozenset({b"avif", b"avis"})
# Brands that only say "some ISO/MP4 file": look at the compatible brands for a hint.
_BRANDS_GENERIC: Final = frozenset(
    {
        b"isom",
        b"iso2",
        b"iso3",
        b"iso4",
        b"iso5",
        b"iso6",
        b"iso7",
        b"iso8",
        b"iso9",
        b"mp41",
        b"mp42",
        b"avc1",
        b"dash",
        b"mif1",
        b"msf1",
    }
)


def sniff(head: bytes, declared_type: str | None) -> MediaKind:
    """Classify a media item from its first bytes; ``declared_type`` only breaks ties."""
    head = bytes(head[:SNIFF_BYTES])
    declared = _normalise_declared(declared_type)
    # Documents first: a UTF-16 BOM (FF FE) is also a valid MPEG Layer I frame sync.
    for detector in (_sniff_document, _sniff_audio_magic, _sniff_container, _sniff_image):
        kind = detector(head, declared)
        if kind is not None:
            return kind
    if declared in _VCARD_DECLARED and _contains_vcard(head):
        return MediaKind("vcard", "vcard", "text/vcard")
    return UNKNOWN


def _normalise_declared(declared_type: str | None) -> str:
    """``"Audio/AMR; codecs=x "`` -> ``"audio/amr"``; ``None`` -> ``""``."""
    if not declared_type:
        return ""
    return declared_type.split(";", 1)[0].strip().lower()


def _declared_audio(declared: str) -> bool:
    return declared.startswith("audio/")


def _sniff_audio_magic(head: bytes, declared: str) -> MediaKind | None:
    """Formats that are audio whatever they were declared as."""
    # The AMR file signatures end with a newline; the multichannel variants with _MC1.0.
    if head.startswith((b"#!AMR-WB\n", b"#!AMR-WB_MC1.0\n")):
        return MediaKind("audio", "amr-wb", "audio/amr-wb")
    if head.startswith((b"#!AMR\n", b"#!AMR_MC1.0\n")):
        return MediaKind("audio", "amr", "audio/amr")
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return MediaKind("audio", "wav", "audio/wav")
    if head.startswith(b"fLaC"):
        return MediaKind("audio", "flac", "audio/flac")
    if head.startswith(b"OggS"):
        return _sniff_ogg(head)
    if _is_id3v2(head):
        # An ID3v2 tag is almost always in front of MP3 (it can front ADTS AAC too, which
        # the decoder handles just the same); the tag is usually longer than our head.
        return MediaKind("audio", "mp3", "audio/mpeg")
    return _sniff_mpeg_frame(head)


def _sniff_ogg(head: bytes) -> MediaKind:
    # The first page carries exactly the codec's identification packet, which starts
    # right after the 27-byte page header and its segment table.
    if len(head) < 27:
        return MediaKind("audio", "ogg", "audio/ogg")
    packet = head[27 + head[26] :]
    if packet.startswith(b"OpusHead"):
        return MediaKind("audio", "ogg-opus", "audio/ogg")
    if packet.startswith(b"\x01vorbis"):
        return MediaKind("audio", "ogg-vorbis", "audio/ogg")
    if packet.startswith(b"Speex   "):
        return MediaKind("audio", "ogg-speex", "audio/ogg")
    if packet.startswith(b"\x7fFLAC"):
        return MediaKind("audio", "ogg-flac", "audio/ogg")
    if packet.startswith(b"\x80theora"):
        return MediaKind("video", "ogg-theora", "video/ogg")
    # Unknown Ogg codec (or a head too short to see it): let the decoder try.
    return MediaKind("audio", "ogg", "audio/ogg")


def _is_id3v2(head: bytes) -> bool:
    # "ID3", major version 2..4, revision, flags, then a 4-byte "syncsafe" size whose
    # bytes all have the top bit clear: a cheap check that this is not just text "ID3".
    return (
        len(head) >= 10
        and head.startswith(b"ID3")
        and head[3] in (2, 3, 4)
        and all(b < 0x80 for b in head[6:10])
    )


def _sniff_mpeg_frame(head: bytes) -> MediaKind | None:
    """A bare MPEG audio frame or ADTS AAC header (11/12-bit sync, validated fields)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    b1, b2 = head[1], head[2]
    if b1 & 0xF6 == 0xF0:
        # ADTS: 12-bit sync, layer 00; sampling-frequency index 13..15 is invalid.
        if (b2 >> 2) & 0x0F < 13:
            return MediaKind("audio", "aac", "audio/aac")
        return None
    version = (b1 >> 3) & 0x03
    layer = (b1 >> 1) & 0x03
    bitrate_index = b2 >> 4
    rate_index = (b2 >> 2) & 0x03
    if version == 0b01 or layer == 0 or bitrate_index == 0x0F or rate_index == 0x03:
        return None  # reserved values: not an MPEG audio frame
    return MediaKind("audio", "mp3" if layer == 0b01 else "mp2", "audio/mpeg")


def _sniff_container(head: bytes, declared: str) -> MediaKind | None:
    """Containers that may hold audio or video: ISO-BMFF, WebM/Matroska, AVI."""
    if head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head, declared)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        audio = _declared_audio(declared)
        # The EBML header's DocType says webm or matroska; it sits well inside 64 bytes.
        if b"webm" in head:
            return MediaKind(
                "audio" if audio else "video", "webm", "audio/webm" if audio else "video/webm"
            )
        return MediaKind(
            "audio" if audio else "video",
            "matroska",
            "audio/x-matroska" if audio else "video/x-matroska",
        )
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return MediaKind("video", "avi", "video/x-msvideo")
    return None


def _sniff_iso_bmff(head: bytes, declared: str) -> MediaKind:
    box_size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    end = min(box_size, len(head)) if box_size >= 16 else 16
    # Compatible brands follow the major brand and the 4-byte minor version.
    compatible = [head[i : i + 4] for i in range(16, end - 3, 4)]
    brands = [major] if major not in _BRANDS_GENERIC else [major, *compatible]

    def has(predicate: frozenset[bytes]) -> bool:
        return any(b in predicate for b in brands)

    audio = _declared_audio(declared)
    if has(_BRANDS_AUDIO_MP4):
        return MediaKind("audio", "m4a", "audio/mp4")
    if any(b.startswith(b"3g2") for b in brands):
        return MediaKind(
            "audio" if audio else "video", "3gpp", "audio/3gpp2" if audio else "video/3gpp2"
        )
    if any(b.startswith(b"3g") for b in brands):
        return MediaKind(
            "audio" if audio else "video", "3gpp", "audio/3gpp" if audio else "video/3gpp"
        )
    if has(_BRANDS_AVIF):
        return MediaKind("image", "avif", "image/avif")
    if has(_BRANDS_HEIC) or major in _BRANDS_HEIF_GENERIC:
        return MediaKind("image", "heic", "image/heic")
    if major == b"qt  ":
        return MediaKind("audio" if audio else "video", "quicktime", "video/quicktime")
    if audio:
        return MediaKind("audio", "m4a", "audio/mp4")
    return MediaKind("video", "mp4", "video/mp4")


def _sniff_image(head: bytes, declared: str) -> MediaKind | None:
    if head.startswith(b"\xff\xd8\xff"):
        return MediaKind("image", "jpeg", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaKind("image", "png", "image/png")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return MediaKind("image", "gif", "image/gif")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return MediaKind("image", "webp", "image/webp")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return MediaKind("image", "tiff", "image/tiff")
    # "BM" alone is too weak (it starts ordinary text); the four reserved bytes after the
    # file size are zero in every real BMP.
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return MediaKind("image", "bmp", "image/bmp")
    return None


def _sniff_document(head: bytes, declared: str) -> MediaKind | None:
    if head.startswith(b"%PDF-"):
        return MediaKind("unsupported", "pdf", "application/pdf")
    if _decode_text(head).lstrip().upper().startswith("BEGIN:VCARD"):
        return MediaKind("vcard", "vcard", "text/vcard")
    return None


def _contains_vcard(head: bytes) -> bool:
    # Binary data that happens to contain the words is not a vCard: text has no NULs
    # (UTF-16 is decoded first, so its NULs are gone by then).
    text = _decode_text(head)
    return "\x00" not in text and "BEGIN:VCARD" in text.upper()


def _decode_text(head: bytes) -> str:
    """Best-effort text view of the head: honours UTF-8/UTF-16 byte order marks."""
    if head.startswith(codecs.BOM_UTF8):
        return head[3:].decode("utf-8", "ignore")
    if head.startswith(codecs.BOM_UTF16_LE):
        return head[2:].decode("utf-16-le", "ignore")
    if head.startswith(codecs.BOM_UTF16_BE):
        return head[2:].decode("utf-16-be", "ignore")
    return head.decode("latin-1")
