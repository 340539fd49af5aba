"""Structured logging: JSON lines for machines, one readable line for people.

Everything goes through the stdlib :mod:`logging` machinery so third-party
libraries (hypercorn, httpx, twilio, psycopg) land in the same stream. The one
handler we install carries a :class:`RedactionFilter`: because it sits on the
*handler* rather than on our loggers, every record is scrubbed on its way out,
whoever emitted it. Redaction is deliberately greedy: masking a number that was
not a phone number costs a little debugging comfort, leaking one costs trust.

Typical use::

    configure_logging("INFO")
    log = logging.getLogger("enrich.webhook")
    log_event(log, "INFO", "webhook.accepted", message_sid=sid, duration_ms=3.2)
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Final, TextIO

__all__ = [
    "SENSITIVE_FIELDS",
    "ConsoleFormatter",
    "JsonFormatter",
    "RedactionFilter",
    "configure_logging",
    "log_event",
    "redact",
    "redact_value",
    "register_secret",
]

REDACTED: Final = "[redacted]"

#: Extra fields whose *values* are content or credentials: dropped from records
#: at INFO and above, kept (still scrubbed) on DEBUG records.
SENSITIVE_FIELDS: Final = frozenset(
    {"body", "text", "transcript", "token", "auth_token", "password", "signature", "code"}
)

# Third-party loggers that are too chatty at INFO, or (twilio.http_client) log
# request bodies with phone numbers in them.
_QUIET_LOGGERS: Final = ("httpx", "httpcore", "twilio.http_client")
_ACCESS_LOGGER: Final = "hypercorn.access"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# Keys the JSON formatter owns; an extra field with one of these names is
# written as ``extra_<name>`` instead of silently overwriting ours.
_JSON_RESERVED: Final = frozenset({"ts", "level", "logger", "event", "exc", "stack"})

# Marker attribute on the handler we install, so configure_logging can find
# and replace it (idempotence) without touching handlers others installed
# (pytest's capture handlers, for one).
_HANDLER_MARK: Final = "_enrich_handler"


# --------------------------------------------------------------------------
# Redaction: pure functions over strings
# --------------------------------------------------------------------------

# URLs: scheme, optional userinfo, host+path, optional query. Written by hand
# rather than with urllib.parse so malformed input can never raise.
_URL_RE: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#@\"'<>]+@)?"
    r"(?P<rest>[^\s?#\"'<>]*)"
    r"(?P<query>\?[^\s#\"'<>]*)?"
)
# Query parameters that mark a pre-signed URL (S3 / CloudFront / Twilio CDN):
# whoever holds the URL holds the object, so the whole query goes.
_SIGNED_QUERY_RE: Final = re.compile(
    r"(?i)[?&](?:signature|expires|x-amz-[a-z0-9-]+|key-pair-id|policy|sig)="
)

# "Authorization: <scheme> <credentials>" in headers, reprs and dict dumps.
_AUTH_HEADER_RE: Final = re.compile(
    r"(?i)(?P<key>authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?P<scheme>bearer|basic|digest|token)\s+)?"
    r"[^\s,;\"']+"
)
_BEARER_RE: Final = re.compile(r"(?i)\b(?P<scheme>bearer)\s+[A-Za-z0-9._~+/=-]+")
# "Basic" is an English word; only redact what actually decodes to user:pass.
_BASIC_RE: Final = re.compile(r"\b(?P<scheme>[Bb]asic)\s+(?P<cred>[A-Za-z0-9+/]{6,}={0,2})")

# key=value / key: value / "key": "value" for secret-looking keys, including
# prefixed ones (ADMIN_TOKEN=, csrf_token=, db_password:): the match starts at
# the keyword, so any prefix is simply left in place. (Matching the prefix too
# made this pattern quadratic in the length of a line.)
_SECRET_KV_RE: Final = re.compile(
    r"(?i)(?P<key>(?:token|password|passwd|secret|api_?key)[\"']?\s*[=:]\s*[\"']?)"
    r"(?P<value>[^\s&,;\"']+)"
)
_SECRET_WORDS: Final = ("token", "passw", "secret", "api")

# Twilio Account SID: "AC" + 32 hex. Shortened, not removed, so operators can
# still tell accounts apart.
_ACCOUNT_SID_RE: Final = re.compile(r"\bAC[0-9a-fA-F]{28}(?P<last4>[0-9a-fA-F]{4})\b")

# Phone numbers. Three shapes, all masked to the last four digits:
#  1. "+" (or its URL encoding %2B, as in logged form bodies) then 7+
#     digits, with optional separators or parentheses (+14155550123,
#     +1 (415) 555-0123, +44 20 7946 0958, From=%2B14155550123). No left
#     context check: a "+digits" run is a phone number wherever it appears.
#  2. North-American style with separators: (415) 555-0123, 415.555.0123.
#  3. A bare run of 10-15 digits that is not part of a word, a decimal, a
#     UUID or a longer identifier (4155550123).
_PLUS_PHONE_RE: Final = re.compile(r"(?:\+|%2[Bb])[0-9](?:[ .()-]{0,2}[0-9]){6,}")
_LOCAL_PHONE_RE: Final = re.compile(
    r"(?<![\w.+-])"
    r"(?:(?:\([0-9]{3}\)\s?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}"  # shape 2
    r"|[0-9]{10,15})"  # shape 3
    r"(?![\w-])"
)
_DIGITS_RE: Final = re.compile(r"[0-9]")

_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Redact this exact value wherever it appears from now on.

    For secrets with no recognisable shape (the Twilio auth token is 32 hex
    characters, the admin token is random): call it once they are loaded.
    Values shorter than 6 characters are ignored, as masking them would
    shred ordinary text.
    """
    global _secrets
    if len(value) < 6:
        return
    with _secrets_lock:
        if value not in _secrets:
            # Longest first so a secret that contains another is masked whole.
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def _mask_phone(match: re.Match[str]) -> str:
    digits = _DIGITS_RE.findall(match.group(0))
    return "***" + "".join(digits[-4:])


def _redact_url(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    query = match.group("query") or ""
    if query and _SIGNED_QUERY_RE.search(query):
        query = "?" + REDACTED
    return (
        match.group("scheme") + (REDACTED + "@" if userinfo else "") + match.group("rest") + query
    )


def _redact_auth_header(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return match.group("key") + (scheme + " " if scheme else "") + REDACTED


def _redact_basic(match: re.Match[str]) -> str:
    cred = match.group("cred")
    try:
        decoded = base64.b64decode(cred + "=" * (-len(cred) % 4), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    if b":" not in decoded:
        return match.group(0)
    return match.group("scheme") + " " + REDACTED


def redact(text: str) -> str:
    """Scrub credentials, signed URLs, account SIDs and phone numbers from text.

    Idempotent: redacting already-redacted text changes nothing, so a record
    that passes two of our handlers is not mangled.
    """
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    # Every record and every string field passes through here, so each
    # pattern is gated by a cheap substring test: most lines skip most scans.
    lower = text.lower()
    # Order matters: URLs and credentials first (a Basic header or a token can
    # contain digit runs), phone numbers last.
    if "://" in text:
        text = _URL_RE.sub(_redact_url, text)
    if "authorization" in lower:
        text = _AUTH_HEADER_RE.sub(_redact_auth_header, text)
    if "bearer" in lower:
        text = _BEARER_RE.sub(lambda m: m.group("scheme") + " " + REDACTED, text)
    if "basic" in lower:
        text = _BASIC_RE.sub(_redact_basic, text)
    if any(word in lower for word in _SECRET_WORDS):
        text = _SECRET_KV_RE.sub(lambda m: m.group("key") + REDACTED, text)
    if "AC" in text:
        text = _ACCOUNT_SID_RE.sub(lambda m: "AC\u2026" + m.group("last4"), text)
    if "+" in text or "%2" in text:
        text = _PLUS_PHONE_RE.sub(_mask_phone, text)
    return _LOCAL_PHONE_RE.sub(_mask_phone, text)


def redact_value(value: object, *, drop_sensitive: bool = True) -> object:
    """Redact a structured value (an ``extra`` field) recursively.

    Numbers, booleans and None pass through (a duration is not a secret);
    strings are scrubbed; containers are walked, and with ``drop_sensitive``
    their sensitive keys are removed; anything else is rendered with ``str``
    and scrubbed, so the formatter never sees an object whose repr leaks.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            str(k): redact_value(v, drop_sensitive=drop_sensitive)
            for k, v in value.items()
            if not (drop_sensitive and str(k).lower() in SENSITIVE_FIELDS)
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, drop_sensitive=drop_sensitive) for v in value]
    return redact(str(value))


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a record carries beyond the standard LogRecord attributes."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class RedactionFilter(logging.Filter):
    """Scrub a record in place; never rejects it.

    Renders the message (so phone numbers hidden in ``args`` are caught),
    pre-renders the traceback (exception messages quote URLs and numbers too),
    and redacts or drops extra fields.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} (args could not be formatted)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        drop = record.levelno >= logging.INFO
        for key, value in extra_fields(record).items():
            if drop and key.lower() in SENSITIVE_FIELDS:
                delattr(record, key)
            else:
                setattr(record, key, redact_value(value, drop_sensitive=drop))
        return True


# --------------------------------------------------------------------------
# Formatters
# --------------------------------------------------------------------------


def _rfc3339(created: float) -> str:
    stamp = _dt.datetime.fromtimestamp(created, tz=_dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception_text(record: logging.LogRecord, formatter: logging.Formatter) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return None


_LINE_BREAK_ESCAPES: Final = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            payload["extra_" + key if key in _JSON_RESERVED else key] = value
        exc = _exception_text(record, self)
        if exc:
            payload["exc"] = exc
        if record.stack_info:
            payload["stack"] = record.stack_info
        # ensure_ascii=False keeps names readable; default=str means an odd
        # extra value degrades to its string form instead of losing the line.
        line = json.dumps(payload, ensure_ascii=False, default=str, separators=(",", ":"))
        # json leaves these unescaped, but many readers (str.splitlines, JS)
        # treat them as line breaks: one record must stay one line.
        return line.translate(_LINE_BREAK_ESCAPES)


_BARE_VALUE_RE: Final = re.compile(r"[^\s=\"']+")


def _console_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if _BARE_VALUE_RE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger event key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = _dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [clock, f"{record.levelname:<7}", record.name, record.getMessage()]
        parts.extend(f"{k}={_console_value(v)}" for k, v in extra_fields(record).items())
        line = " ".join(parts)
        exc = _exception_text(record, self)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(level.strip().upper())
    if value is None:
        raise ValueError(
            f"unknown log level {level!r}: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return value


def _is_tty(stream: object) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def configure_logging(
    level: str = "INFO",
    *,
    json_lines: bool | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the enrich handler on the root logger and return it.

    ``json_lines=None`` picks JSON lines unless ``stream`` (default stderr) is
    a terminal; pass True/False to force. Calling it again replaces the
    handler installed by the previous call instead of adding a second one.

    Raises ValueError for an unknown level name.
    """
    numeric = _parse_level(level)
    out: TextIO = stream if stream is not None else sys.stderr
    use_json = (not _is_tty(out)) if json_lines is None else json_lines

    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    handler.addFilter(RedactionFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # The access log is one line per request: useful while debugging, noise
    # (and hundreds of lines a second under load) otherwise.
    logging.getLogger(_ACCESS_LOGGER).setLevel(
        logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
    )
    return handler


def log_event(logger: logging.Logger, level: str | int, event: str, /, **fields: object) -> None:
    """Log ``event`` with ``fields`` as structured extra fields.

    A field whose name collides with a LogRecord attribute (``name``,
    ``module``, ``process``...) gets a trailing underscore rather than making
    :mod:`logging` raise KeyError from inside application code.
    """
    numeric = _parse_level(level)
    if not logger.isEnabledFor(numeric):
        return
    extra = {(k + "_" if k in _RECORD_ATTRS else k): v for k, v in fields.items()}
    logger.log(numeric, "%s", event, extra=extra, stacklevel=2)
