"""Parse Twilio's inbound-message webhook form into typed, validated data.

The webhook hands us the decoded ``application/x-www-form-urlencoded`` body as
``(name, value)`` pairs (a sequence, so repeated names stay visible). This module
turns it into an :class:`InboundMessage` or raises :class:`InboundParseError`;
nothing else may escape, whatever the input (a property test holds us to it).

Strict but not brittle:

* The fields we use are checked hard, because everything downstream (dedupe on
  MessageSid, phone lookup, media download, PostgreSQL ``text`` columns) trusts
  them: SIDs must match Twilio's documented shape, numbers cannot contain
  control characters, media URLs must be absolute http(s), NumMedia must agree
  with the MediaUrlN fields, and nothing we keep may hold a NUL or a lone
  surrogate (PostgreSQL cannot store either, so failing later would lose the
  message *after* we acknowledged it).
* A known field sent twice is an error: which value Twilio meant is unknowable,
  and the signature covers both, so it is not a proxy artefact.
* Fields we do not know (Twilio adds them without notice: ``SmsSid``,
  ``ApiVersion``, ``ToCity``, ``MessagingServiceSid``, ...) never cause an error;
  they are kept, unvalidated, in :attr:`InboundMessage.extra` (first value wins).

Error reasons name the field and the rule, never the value: they end up in logs
and HTTP responses, and values are phone numbers and message bodies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

__all__ = [
    "MAX_BODY_CHARS",
    "MAX_MEDIA",
    "InboundMessage",
    "InboundParseError",
    "MediaItem",
    "parse_inbound",
]

MAX_BODY_CHARS = 1600
"""Twilio's limit for a (concatenated) message body."""

MAX_MEDIA = 10
"""Twilio delivers at most 10 media items per MMS."""

_MAX_SHORT_FIELD = 256  # numbers, geo fields: real values are far shorter
_MAX_URL = 2048
_MAX_CONTENT_TYPE = 255

# Twilio's API definitions give message SIDs as ^(SM|MM)[0-9a-fA-F]{32}$ (34
# characters). "SM" is used for SMS and, on current accounts, for MMS too; "MM"
# is the older MMS prefix. Other 2-letter prefixes (ME media, AC account, ...)
# are not message SIDs.
_MESSAGE_SID = re.compile(r"(?:SM|MM)[0-9a-fA-F]{32}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
# Small ASCII counts only: int() would also accept " 1", "1_0", "+1" and other
# scripts' digits, and an unbounded digit string costs quadratic time to parse.
_SMALL_INT = re.compile(r"[0-9]{1,3}")
# MediaUrl<N> / MediaContentType<N>. Any decimal suffix is a media field (so a
# non-canonical index is an error, not an unknown field); other suffixes such as
# a hypothetical "MediaUrlExpiry" fall through to `extra`.
_MEDIA_FIELD = re.compile(r"(MediaUrl|MediaContentType)([0-9]+)")
_CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]?")
# type "/" subtype as RFC 9110 tokens, then optional ";" parameters.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+[ \t]*(?:;.*)?")
# Control characters (C0, DEL, C1) and lone surrogates: never legitimate in a
# number, SID, URL, content type or place name.
_SINGLE_LINE_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# A body may hold newlines, tabs and other oddities people paste, but not what
# PostgreSQL text (or UTF-8 encoding) refuses.
_BODY_FORBIDDEN = re.compile(r"[\x00\ud800-\udfff]")
# Media URLs: printable ASCII without spaces; Twilio's are plain ASCII.
_URL_CHARS = re.compile(r"[\x21-\x7e]+")

_SINGLE_FIELDS = frozenset(
    {
        "MessageSid",
        "AccountSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        "NumSegments",
        "FromCity",
        "FromState",
        "FromZip",
        "FromCountry",
    }
)


class InboundParseError(ValueError):
    """The form is not a well-formed Twilio inbound message.

    :attr:`reason` is human readable and safe to log or return: it names fields
    and rules, never field values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One MMS attachment: its position (the N of MediaUrlN), URL and declared type."""

    index: int
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A validated inbound message. Numbers are raw (normalise with ``core.phone``)."""

    message_sid: str
    account_sid: str
    from_number: str
    to_number: str
    body: str
    num_media: int
    media: tuple[MediaItem, ...]
    num_segments: int | None
    from_city: str | None
    from_state: str | None
    from_zip: str | None
    from_country: str | None
    # Unknown fields, kept for diagnostics but never interpreted. Read-only, and
    # left out of the hash because a mapping is not hashable.
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


def _check_single_line(name: str, value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise InboundParseError(f"{name} is longer than {max_len} characters")
    if _SINGLE_LINE_FORBIDDEN.search(value):
        raise InboundParseError(f"{name} contains control or invalid characters")
    return value


def _required(fields: Mapping[str, str], name: str, max_len: int = _MAX_SHORT_FIELD) -> str:
    value = fields.get(name, "")
    if not value:
        raise InboundParseError(f"missing {name}")
    return _check_single_line(name, value, max_len)


def _optional(fields: Mapping[str, str], name: str) -> str | None:
    # Twilio sends FromCity= etc. empty when it does not know: that means None.
    value = fields.get(name, "")
    return _check_single_line(name, value, _MAX_SHORT_FIELD) if value else None


def _small_int(name: str, value: str, maximum: int) -> int:
    if not _SMALL_INT.fullmatch(value) or int(value) > maximum:
        raise InboundParseError(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def _check_media_url(name: str, url: str) -> str:
    if len(url) > _MAX_URL:
        raise InboundParseError(f"{name} is longer than {_MAX_URL} characters")
    if not _URL_CHARS.fullmatch(url):
        raise InboundParseError(f"{name} must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InboundParseError(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InboundParseError(f"{name} must be an absolute http(s) URL")
    # Twilio never puts credentials in a media URL; the fetcher adds its own
    # Basic auth for api.twilio.com, and embedded ones could leak or mislead.
    if "@" in parts.netloc:
        raise InboundParseError(f"{name} must not contain credentials")
    return url


def _check_content_type(name: str, value: str) -> str:
    _check_single_line(name, value, _MAX_CONTENT_TYPE)
    if not _CONTENT_TYPE.fullmatch(value):
        raise InboundParseError(f"{name} is not a type/subtype media type")
    return value


def _split_fields(
    form: Sequence[tuple[str, str]],
) -> tuple[dict[str, str], dict[int, str], dict[int, str], dict[str, str]]:
    """Sort the pairs into known fields, media URLs, media types and extras."""
    known: dict[str, str] = {}
    urls: dict[int, str] = {}
    types: dict[int, str] = {}
    extra: dict[str, str] = {}
    for name, value in form:
        if name in _SINGLE_FIELDS:
            if name in known:
                raise InboundParseError(f"duplicated {name}")
            known[name] = value
            continue
        media = _MEDIA_FIELD.fullmatch(name)
        if media is None:
            extra.setdefault(name, value)
            continue
        kind, digits = media.groups()
        if not _CANONICAL_INDEX.fullmatch(digits):
            # Leading zeros would let MediaUrl1 and MediaUrl01 collide; long
            # digit strings are out of range anyway. Do not echo the name.
            raise InboundParseError(f"{kind} field has a malformed or out-of-range index")
        target = urls if kind == "MediaUrl" else types
        index = int(digits)
        if index in target:
            raise InboundParseError(f"duplicated {name}")
        target[index] = value
    return known, urls, types, extra


def _collect_media(
    num_media: int, urls: Mapping[int, str], types: Mapping[int, str]
) -> tuple[MediaItem, ...]:
    if len(urls) != num_media:
        raise InboundParseError(
            f"NumMedia is {num_media} but {len(urls)} MediaUrl fields are present"
        )
    if set(urls) != set(range(num_media)):
        raise InboundParseError(f"MediaUrl indices must be exactly 0 to {num_media - 1}")
    orphans = sorted(set(types) - set(urls))
    if orphans:
        index = orphans[0]
        raise InboundParseError(f"MediaContentType{index} has no matching MediaUrl{index}")
    items = []
    for index in range(num_media):
        if index not in types:
            raise InboundParseError(f"MediaUrl{index} has no MediaContentType{index}")
        url = _check_media_url(f"MediaUrl{index}", urls[index])
        content_type = _check_content_type(f"MediaContentType{index}", types[index])
        items.append(MediaItem(index=index, url=url, content_type=content_type))
    return tuple(items)


def parse_inbound(form: Sequence[tuple[str, str]]) -> InboundMessage:
    """Validate a Twilio inbound-message form and return it as an :class:`InboundMessage`.

    Raises :class:`InboundParseError` (and nothing else) when the form cannot be
    a message Twilio sent. A missing ``NumMedia`` counts as 0; a missing
    ``Body`` as empty, which is only acceptable when media is attached.
    """
    known, urls, types, extra = _split_fields(form)

    message_sid = known.get("MessageSid", "")
    if not message_sid:
        raise InboundParseError("missing MessageSid")
    if not _MESSAGE_SID.fullmatch(message_sid):
        raise InboundParseError("MessageSid must be SM or MM followed by 32 hex digits")
    account_sid = _required(known, "AccountSid")
    if not _ACCOUNT_SID.fullmatch(account_sid):
        raise InboundParseError("AccountSid must be AC followed by 32 hex digits")
    from_number = _required(known, "From")
    to_number = _required(known, "To")

    body = known.get("Body", "")
    if len(body) > MAX_BODY_CHARS:
        raise InboundParseError(f"Body is longer than {MAX_BODY_CHARS} characters")
    if _BODY_FORBIDDEN.search(body):
        raise InboundParseError("Body contains NUL or invalid characters")

    num_media = _small_int("NumMedia", known.get("NumMedia", "0"), MAX_MEDIA)
    media = _collect_media(num_media, urls, types)
    if not body and not media:
        raise InboundParseError("message has neither Body nor media")

    segments = known.get("NumSegments")
    num_segments = _small_int("NumSegments", segments, 999) if segments is not None else None

    return InboundMessage(
        message_sid=message_sid,
        account_sid=account_sid,
        from_number=from_number,
        to_number=to_number,
        body=body,
        num_media=num_media,
        media=media,
        num_segments=num_segments,
        from_city=_optional(known, "FromCity"),
        from_state=_optional(known, "FromState"),
        from_zip=_optional(known, "FromZip"),
        from_country=_optional(known, "FromCountry"),
        extra=MappingProxyType(extra),
    )
