"""Tolerant vCard 2.1 / 3.0 / 4.0 parsing into plain contacts.

Contact cards arrive from every phone ever made, so the parser is liberal in what it
accepts and never raises on any ``str``: lines it cannot read are skipped, a card with
no ``END:VCARD`` still counts, and a card with nothing useful in it is dropped. What it
understands:

- line endings CRLF, LF or CR; folding (a line starting with a space or tab continues
  the previous one: vCard 3.0/4.0 drop that one character, 2.1 keeps it);
- vCard 2.1 quoted-printable values with ``=`` soft line breaks and a ``CHARSET``;
- parameters in every dialect (``TYPE=CELL``, ``TYPE="work,voice"``, bare 2.1 ``CELL``,
  ``ENCODING=QUOTED-PRINTABLE`` or bare ``QUOTED-PRINTABLE``); base64 properties
  (photos, keys) are skipped;
- grouped properties (``item1.TEL``) and escapes (``\\,``, ``\\;``, ``\\n``, ``\\\\``);
- several cards in one file; vCards nested inside a card (2.1 ``AGENT``) are skipped.

Resource caps keep a hostile file cheap: at most :data:`MAX_CARDS` cards from the
first :data:`MAX_INPUT_CHARS` characters (:data:`MAX_INPUT_BYTES` bytes in
:func:`decode_vcard_bytes`), :data:`MAX_VALUES_PER_FIELD` phones/emails/addresses per
card and :data:`MAX_VALUE_CHARS` characters per value. Output strings contain no
control characters (bar newlines in notes) and no lone surrogates, so they can be
stored as PostgreSQL text as they are.
"""

from __future__ import annotations

import codecs
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_CARDS",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_CHARS",
    "MAX_VALUES_PER_FIELD",
    "MAX_VALUE_CHARS",
    "VCardContact",
    "decode_vcard_bytes",
    "parse_vcards",
]

MAX_CARDS: Final = 50
MAX_INPUT_CHARS: Final = 1_000_000
MAX_INPUT_BYTES: Final = 1_000_000
MAX_VALUES_PER_FIELD: Final = 20
MAX_VALUE_CHARS: Final = 2_000

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_PROPERTY_NAME: Final = re.compile(r"[A-Za-z0-9\-]+")
# C0/C1 controls and DEL; newlines and tabs are handled separately.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE: Final = re.compile(r"\s+")
_BINARY_ENCODINGS: Final = frozenset({"B", "BASE64"})
_QP_ENCODINGS: Final = frozenset({"QUOTED-PRINTABLE", "QP"})


@dataclass(frozen=True, slots=True)
class VCardContact:
    """One contact card. Strings are cleaned one-liners (``note`` may span lines)."""

    full_name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    organization: str | None = None
    title: str | None = None
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    note: str | None = None
    url: str | None = None


def decode_vcard_bytes(data: bytes) -> str:
    """Bytes of a ``.vcf`` to text: BOM-aware UTF-16/UTF-8, else Windows-1252.

    Only the first :data:`MAX_INPUT_BYTES` bytes are decoded; a multi-byte character
    cut by that cap is dropped rather than turning the whole file into mojibake.
    """
    data = bytes(data[:MAX_INPUT_BYTES])
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith(codecs.BOM_UTF16_LE) or data.startswith(b"B\x00E\x00"):
        start = 2 if data.startswith(codecs.BOM_UTF16_LE) else 0
        return _incremental("utf-16-le", data[start:], errors="replace")
    elif data.startswith(codecs.BOM_UTF16_BE) or data.startswith(b"\x00B\x00E"):
        start = 2 if data.startswith(codecs.BOM_UTF16_BE) else 0
        return _incremental("utf-16-be", data[start:], errors="replace")
    try:
        return _incremental("utf-8", data, errors="strict")
    except UnicodeDecodeError:
        # Older phones write their local code page; cp1252 is the usual suspect.
        return data.decode("cp1252", errors="replace")


def _incremental(encoding: str, data: bytes, *, errors: str) -> str:
    # final=False: an incomplete trailing sequence (cut by the cap) is held back, dropped.
    return codecs.getincrementaldecoder(encoding)(errors=errors).decode(data, final=False)


def parse_vcards(text: str) -> list[VCardContact]:
    """Every usable contact in ``text`` (at most :data:`MAX_CARDS`). Never raises."""
    contacts: list[VCardContact] = []
    card: _CardBuilder | None = None
    nested = 0
    for line in _logical_lines(text[:MAX_INPUT_CHARS].lstrip("\ufeff")):
        prop = _parse_content_line(line)
        if prop is None:
            continue
        if prop.name == "BEGIN" and prop.value.strip().upper() == "VCARD":
            if card is None:
                card = _CardBuilder()
            else:
                nested += 1  # an embedded card (2.1 AGENT): not ours to read
        elif prop.name == "END" and prop.value.strip().upper() == "VCARD":
            if nested:
                nested -= 1
            elif card is not None:
                _append(contacts, card)
                card = None
        elif card is not None and not nested:
            card.add(prop)
        if len(contacts) >= MAX_CARDS:
            return contacts
    if card is not None:
        _append(contacts, card)  # a truncated last card still counts
    return contacts


def _append(contacts: list[VCardContact], card: _CardBuilder) -> None:
    contact = card.build()
    if contact != VCardContact():
        contacts.append(contact)


# -- lines and properties --------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[str]:
    """Unfold physical lines into content lines, honouring the card's VERSION."""
    keep_fold_whitespace = False  # vCard 2.1 folds before whitespace and keeps it
    parts: list[str] = []
    quoted_printable = False
    for raw in _LINE_BREAK.split(text):
        if parts and quoted_printable and parts[-1].endswith("="):
            parts[-1] = parts[-1][:-1]  # a QP soft line break joins the lines as they are
            parts.append(raw)
            continue
        if parts and raw[:1] in (" ", "\t"):
            parts.append(raw if keep_fold_whitespace else raw[1:])
            continue
        if parts:
            line = "".join(parts)
            keep_fold_whitespace = _version_after(line, keep_fold_whitespace)
            yield line
        parts = [raw]
        quoted_printable = "QUOTED-PRINTABLE" in raw.split(":", 1)[0].upper()
    if parts:
        yield "".join(parts)


def _version_after(line: str, keep_fold_whitespace: bool) -> bool:
    head, _, value = line.partition(":")
    head = head.strip().upper()
    if head == "BEGIN":
        return False
    if head == "VERSION" or head.endswith(".VERSION"):
        return value.strip() == "2.1"
    return keep_fold_whitespace


@dataclass(frozen=True, slots=True)
class _Property:
    name: str
    params: dict[str, list[str]]
    value: str


def _parse_content_line(line: str) -> _Property | None:
    """``[group.]NAME *(;param) : value`` -> property; None for garbage."""
    colon = line.find(":")
    if colon < 0:
        return None
    if '"' in line[:colon]:
        pieces, colon = _split_quoted_head(line)
        if colon < 0:
            return None
    else:
        pieces = line[:colon].split(";")  # the common case: no quoted parameter values
    name = pieces[0].strip().rpartition(".")[2]  # drop the group: item1.TEL -> TEL
    if _PROPERTY_NAME.fullmatch(name) is None:
        return None
    params: dict[str, list[str]] = {}
    for raw_param in pieces[1:]:
        key, eq, raw_values = raw_param.partition("=")
        key = key.strip().upper()
        if not eq:
            # 2.1 bare parameters: "QUOTED-PRINTABLE", "BASE64", otherwise a TYPE.
            key, raw_values = _bare_parameter(key), key
        values = [v.strip().strip('"').upper() for v in raw_values.split(",")]
        params.setdefault(key, []).extend(v for v in values if v)
    return _Property(name=name.upper(), params=params, value=line[colon + 1 :])


def _split_quoted_head(line: str) -> tuple[list[str], int]:
    """Split name and parameters where values may be quoted (4.0 ``LABEL="a:b"``)."""
    pieces: list[str] = []
    start = 0
    in_quotes = False
    colon = -1
    for i, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif not in_quotes and char == ";":
            pieces.append(line[start:i])
            start = i + 1
        elif not in_quotes and char == ":":
            colon = i
            break
    pieces.append(line[start:colon] if colon >= 0 else "")
    return pieces, colon


def _bare_parameter(token: str) -> str:
    if token in _QP_ENCODINGS or token in _BINARY_ENCODINGS or token in ("7BIT", "8BIT"):
        return "ENCODING"
    return "TYPE"


# -- values --------------------------------------------------------------------------


def _decoded_value(prop: _Property) -> str | None:
    """The property's text after transfer decoding; None for binary properties."""
    encodings = set(prop.params.get("ENCODING", ()))
    if encodings & _BINARY_ENCODINGS:
        return None
    if not encodings & _QP_ENCODINGS:
        return prop.value
    raw = quopri.decodestring(prop.value.encode("utf-8", "surrogatepass"))
    charset = (prop.params.get("CHARSET") or ["UTF-8"])[0]
    try:
        return raw.decode(charset, errors="replace")
    except (LookupError, ValueError):
        # A charset Python does not know, or a codec that is no text codec ("base64")
        # or refuses the "replace" handler ("idna"): fall back to UTF-8.
        return raw.decode("utf-8", errors="replace")


def _components(value: str) -> list[str]:
    """Split a structured value on unescaped ``;`` and unescape each component."""
    components: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            if following in ("n", "N"):
                current.append("\n")
            elif following in ("\\", ";", ","):
                current.append(following)
            else:
                current.append("\\" + following)  # unknown escape: keep it literally
        elif char == ";":
            components.append("".join(current))
            current = []
        else:
            current.append(char)
    components.append("".join(current))
    return components


def _text(value: str) -> str:
    """An unstructured value: unescape, but a ``;`` is just a character."""
    return ";".join(_components(value))


def _clean(value: str, *, multiline: bool = False) -> str:
    # Lone surrogates (possible in any Python str) cannot be stored as UTF-8.
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = _CONTROL.sub("", value)
    if multiline:
        lines = (_WHITESPACE.sub(" ", line).strip() for line in value.split("\n"))
        value = "\n".join(line for line in lines if line)
    else:
        value = _WHITESPACE.sub(" ", value).strip()
    return value[:MAX_VALUE_CHARS].strip()


def _strip_scheme(value: str, scheme: str) -> str:
    return value[len(scheme) :] if value[: len(scheme)].lower() == scheme else value


@dataclass(slots=True)
class _CardBuilder:
    full_name: str = ""
    name_parts: list[str] = field(default_factory=list)
    organization: str = ""
    title: str = ""
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    url: str = ""

    def add(self, prop: _Property) -> None:
        value = _decoded_value(prop)
        if value is None:
            return
        name = prop.name
        if name == "FN" and not self.full_name:
            self.full_name = _clean(_text(value))
        elif name == "N" and not self.name_parts:
            self.name_parts = [_clean(c.replace(",", " ")) for c in _components(value)]
        elif name == "ORG" and not self.organization:
            self.organization = _clean(", ".join(c for c in _components(value) if c.strip()))
        elif name == "TITLE" and not self.title:
            self.title = _clean(_text(value))
        elif name == "TEL":
            _add_unique(self.phones, _clean(_strip_scheme(_text(value).strip(), "tel:")))
        elif name == "EMAIL":
            _add_unique(self.emails, _clean(_strip_scheme(_text(value).strip(), "mailto:")))
        elif name == "ADR":
            parts = (_clean(c.replace("\n", ", ")) for c in _components(value))
            _add_unique(self.addresses, ", ".join(p for p in parts if p))
        elif name == "NOTE" and len(self.notes) < MAX_VALUES_PER_FIELD:
            note = _clean(_text(value), multiline=True)
            if note:
                self.notes.append(note)
        elif name == "URL" and not self.url:
            self.url = _clean(_text(value))

    def build(self) -> VCardContact:
        # N is family;given;additional;prefix;suffix.
        family, given, additional, prefix, suffix = [*self.name_parts, "", "", "", "", ""][:5]
        full_name = self.full_name or " ".join(
            p for p in (prefix, given, additional, family, suffix) if p
        )
        note = "\n".join(self.notes)[:MAX_VALUE_CHARS].strip()
        return VCardContact(
            full_name=full_name or None,
            given_name=given or None,
            family_name=family or None,
            organization=self.organization or None,
            title=self.title or None,
            phones=tuple(self.phones),
            emails=tuple(self.emails),
            addresses=tuple(self.addresses),
            note=note or None,
            url=self.url or None,
        )


def _add_unique(values: list[str], value: str) -> None:
    if value and value not in values and len(values) < MAX_VALUES_PER_FIELD:
        values.append(value)
