"""Structured logging: formats, redaction, field dropping, configuration."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich import logs
from enrich.logs import configure_logging, log_event, redact, register_secret

PHONE = "+14155550123"
HIDDEN = "1415555"  # the digits a masked PHONE must never show
MASKED = "***0123"

_TOUCHED_LOGGERS = ("httpx", "httpcore", "twilio.http_client", "hypercorn.access")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextmanager
def captured(
    level: str = "DEBUG", *, json_lines: bool | None = True, stream: io.StringIO | None = None
) -> Iterator[io.StringIO]:
    """Configure enrich logging into a buffer; restore the logging state after."""
    root = logging.getLogger()
    saved_root = root.level
    saved = {name: logging.getLogger(name).level for name in _TOUCHED_LOGGERS}
    buffer = stream if stream is not None else io.StringIO()
    handler = configure_logging(level, json_lines=json_lines, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, value in saved.items():
            logging.getLogger(name).setLevel(value)


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def only_record(buffer: io.StringIO) -> dict[str, Any]:
    lines = records(buffer)
    assert len(lines) == 1, lines
    return lines[0]


# --- JSON lines ---------------------------------------------------------


def test_json_line_has_the_documented_fields() -> None:
    with captured("INFO") as out:
        log_event(
            logging.getLogger("enrich.webhook"),
            "INFO",
            "webhook.accepted",
            message_sid="SM" + "a" * 32,
            duration_ms=3.25,
            outcome="accepted",
        )
    rec = only_record(out)
    assert rec["level"] == "INFO"
    assert rec["logger"] == "enrich.webhook"
    assert rec["event"] == "webhook.accepted"
    assert rec["message_sid"] == "SM" + "a" * 32
    assert rec["duration_ms"] == 3.25
    assert rec["outcome"] == "accepted"
    ts = rec["ts"]
    assert ts.endswith("Z")
    parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 3600


def test_each_record_is_exactly_one_line_even_with_newlines_and_exceptions() -> None:
    log = logging.getLogger("enrich.test")
    with captured("INFO") as out:
        log.info("two\nlines\u2028and\x85more")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    first, second = records(out)
    assert first["event"] == "two\nlines\u2028and\x85more"
    assert second["event"] == "failed"
    assert "RuntimeError: boom" in second["exc"]


def test_extra_field_named_like_a_json_key_does_not_overwrite_it() -> None:
    with captured("INFO") as out:
        log_event(logging.getLogger("enrich.test"), "INFO", "evt", level="custom", event="x")
    rec = only_record(out)
    assert rec["level"] == "INFO"
    assert rec["event"] == "evt"
    assert rec["extra_level"] == "custom"
    assert rec["extra_event"] == "x"


def test_log_event_renames_fields_that_clash_with_record_attributes() -> None:
    with captured("INFO") as out:
        log_event(logging.getLogger("enrich.test"), logging.INFO, "evt", name="n", process=7)
    rec = only_record(out)
    assert rec["name_"] == "n"
    assert rec["process_"] == 7
    assert rec["logger"] == "enrich.test"


def test_log_event_respects_the_level() -> None:
    with captured("WARNING") as out:
        log_event(logging.getLogger("enrich.test"), "INFO", "hidden")
        log_event(logging.getLogger("enrich.test"), "warning", "shown")
    assert [r["event"] for r in records(out)] == ["shown"]


def test_percent_signs_in_events_are_literal() -> None:
    with captured("INFO") as out:
        log_event(logging.getLogger("enrich.test"), "INFO", "100% done %s")
    assert only_record(out)["event"] == "100% done %s"


def test_unserialisable_extra_values_degrade_to_strings() -> None:
    class Thing:
        def __str__(self) -> str:
            return f"thing for {PHONE}"

    with captured("INFO") as out:
        log_event(logging.getLogger("enrich.test"), "INFO", "evt", thing=Thing())
    assert only_record(out)["thing"] == f"thing for {MASKED}"


# --- phone numbers --------------------------------------------------------


def test_phone_in_message_is_masked() -> None:
    with captured("INFO") as out:
        logging.getLogger("enrich.test").info(f"message from {PHONE}")
    text = out.getvalue()
    assert HIDDEN not in text
    assert only_record(out)["event"] == f"message from {MASKED}"


def test_phone_in_args_is_masked() -> None:
    with captured("INFO") as out:
        logging.getLogger("enrich.test").info("message from %s to %s", PHONE, "+442079460958")
    assert HIDDEN not in out.getvalue()
    assert only_record(out)["event"] == f"message from {MASKED} to ***0958"


def test_phone_in_extra_fields_is_masked_including_nested_values() -> None:
    with captured("INFO") as out:
        log_event(
            logging.getLogger("enrich.test"),
            "INFO",
            "evt",
            sender=PHONE,
            recipients=[PHONE, {"to": PHONE}],
        )
    assert HIDDEN not in out.getvalue()
    rec = only_record(out)
    assert rec["sender"] == MASKED
    assert rec["recipients"] == [MASKED, {"to": MASKED}]


def test_third_party_records_are_redacted_too() -> None:
    with captured("INFO") as out:
        logging.getLogger("twilio.rest.api").warning("POST data={'To': '%s'}", PHONE)
    assert HIDDEN not in out.getvalue()


def test_exception_text_is_redacted() -> None:
    log = logging.getLogger("enrich.test")
    with captured("INFO") as out:
        try:
            raise ValueError(f"unknown sender {PHONE}")
        except ValueError:
            log.exception("lookup failed")
    assert HIDDEN not in out.getvalue()
    assert f"unknown sender {MASKED}" in only_record(out)["exc"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550123", "***0123"),
        ("+1 (415) 555-0123", "***0123"),
        ("+44 20 7946 0958", "***0958"),
        ("(415) 555-0123", "***0123"),
        ("415-555-0123", "***0123"),
        ("415.555.0123", "***0123"),
        ("4155550123", "***0123"),
        ("From=%2B14155550123&To=%2b442079460958", "From=***0123&To=***0958"),
    ],
)
def test_common_phone_formats_are_masked(text: str, expected: str) -> None:
    assert redact(f"from {text}.") == f"from {expected}."


@pytest.mark.parametrize(
    "text",
    [
        "SM0123456789abcdef0123456789abcdef",  # message SID: keep, it is the join key
        "550e8400-e29b-41d4-a716-446655440000",  # UUID
        "2024-11-28T17:38:00.123Z",
        "took 12.5 ms, 1234567 bytes, ratio 0.12345678901234",
        "https://api.twilio.com/2010-04-01/Accounts/x/Messages.json?PageSize=50",
    ],
)
def test_ordinary_identifiers_and_numbers_are_left_alone(text: str) -> None:
    assert redact(text) == text


# --- credentials, URLs, SIDs --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Basic QUMxMjM6c2VjcmV0", "Authorization: Basic [redacted]"),
        ("{'authorization': 'Bearer eyJ.abc.def'}", "{'authorization': 'Bearer [redacted]'}"),
        ("Authorization: sk_live_123", "Authorization: [redacted]"),
        ("sent Bearer abc123 upstream", "sent Bearer [redacted] upstream"),
        ("header Basic QUMxMjM6c2VjcmV0 sent", "header Basic [redacted] sent"),
        ("auth_token=0123abcd0123abcd", "auth_token=[redacted]"),
        ("url?token=abc&page=2", "url?token=[redacted]&page=2"),
        ("ADMIN_TOKEN=s3cr3t password: hunter22", "ADMIN_TOKEN=[redacted] password: [redacted]"),
        ('{"password": "hunter22"}', '{"password": "[redacted]"}'),
        (
            "GET https://user:pw@db.example.com:5432/enrich",
            "GET https://[redacted]@db.example.com:5432/enrich",
        ),
        (
            "redirect https://media.twiliocdn.com/a/b?Expires=1700&Signature=xyz&Key-Pair-Id=K1",
            "redirect https://media.twiliocdn.com/a/b?[redacted]",
        ),
        (
            "https://bucket.s3.amazonaws.com/k?X-Amz-Credential=abc&X-Amz-Signature=d",
            "https://bucket.s3.amazonaws.com/k?[redacted]",
        ),
        ("account AC0123456789abcdef0123456789abcdef ok", "account AC\u2026cdef ok"),
    ],
)
def test_credentials_signed_urls_and_account_sids_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_basic_is_only_redacted_when_it_is_a_credential() -> None:
    assert redact("Basic functionality works") == "Basic functionality works"


def test_redaction_is_idempotent() -> None:
    text = f"Authorization: Bearer x https://u:p@h/p?Signature=s {PHONE} AC{'0' * 32} token=t"
    once = redact(text)
    assert redact(once) == once


def test_registered_secrets_are_redacted_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_secrets", ())  # keep the registry local to this test
    secret = "f00dfeedf00dfeedf00dfeedf00dfeed"
    assert redact(f"signing with {secret}") == f"signing with {secret}"
    register_secret(secret)
    assert redact(f"signing with {secret}") == "signing with [redacted]"
    register_secret("abc")  # too short to register: would shred ordinary text
    assert redact("abc") == "abc"


# --- sensitive fields -----------------------------------------------------


def test_sensitive_fields_are_dropped_at_info() -> None:
    with captured("DEBUG") as out:
        log_event(
            logging.getLogger("enrich.test"),
            "INFO",
            "evt",
            body="Met Sarah at the conference",
            transcript="call me",
            token="t0k3n",
            code="123456",
            extra={"body": "nested", "ok": 1},
            message_sid="SM1",
        )
    rec = only_record(out)
    for key in ("body", "transcript", "token", "code"):
        assert key not in rec
    assert rec["extra"] == {"ok": 1}
    assert rec["message_sid"] == "SM1"
    assert "Sarah" not in out.getvalue()


def test_sensitive_fields_are_kept_but_still_masked_at_debug() -> None:
    with captured("DEBUG") as out:
        log_event(logging.getLogger("enrich.test"), "DEBUG", "evt", body=f"call {PHONE}")
    assert only_record(out)["body"] == f"call {MASKED}"


# --- format selection and configuration -----------------------------------


def test_terminal_gets_the_readable_format() -> None:
    with captured("INFO", json_lines=None, stream=_Terminal()) as out:
        log_event(logging.getLogger("enrich.web"), "INFO", "started", port=3000, note="a b")
    line = out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO +enrich\.web started port=3000 note=\"a b\"", line), (
        line
    )


def test_non_terminal_gets_json_lines() -> None:
    with captured("INFO", json_lines=None, stream=io.StringIO()) as out:
        logging.getLogger("enrich.web").info("started")
    assert only_record(out)["event"] == "started"


def test_json_can_be_forced_on_a_terminal_and_text_off_one() -> None:
    with captured("INFO", json_lines=True, stream=_Terminal()) as out:
        logging.getLogger("enrich.web").info("started")
    assert only_record(out)["event"] == "started"
    with captured("INFO", json_lines=False, stream=io.StringIO()) as out:
        logging.getLogger("enrich.web").info("started")
    assert not out.getvalue().startswith("{")
    assert " started" in out.getvalue()


def test_readable_format_is_redacted_too() -> None:
    with captured("INFO", json_lines=False) as out:
        log_event(logging.getLogger("enrich.test"), "INFO", f"from {PHONE}", to=PHONE)
    assert HIDDEN not in out.getvalue()
    assert f"from {MASKED} to={MASKED}" in out.getvalue()


def test_configuring_twice_does_not_duplicate_output() -> None:
    first = io.StringIO()
    with captured("INFO", stream=first):
        with captured("INFO") as second:
            logging.getLogger("enrich.test").info("once")
            handlers = logging.getLogger().handlers
            ours = [h for h in handlers if isinstance(h.formatter, logs.JsonFormatter)]
        assert len(ours) == 1
    assert first.getvalue() == ""
    assert len(records(second)) == 1


def test_noisy_third_party_loggers_are_quieted() -> None:
    with captured("INFO") as out:
        logging.getLogger("httpx").info("HTTP Request: GET ...")
        logging.getLogger("httpcore.connection").debug("connect_tcp.started")
        logging.getLogger("twilio.http_client").info("-- BEGIN Twilio API Request --")
        logging.getLogger("hypercorn.access").info("127.0.0.1 POST /api/sms/webhook 200")
        logging.getLogger("httpx").warning("still shown")
    assert [r["event"] for r in records(out)] == ["still shown"]


def test_access_log_is_shown_at_debug_but_http_clients_stay_quiet() -> None:
    with captured("DEBUG") as out:
        logging.getLogger("hypercorn.access").info("GET /health/live 200")
        logging.getLogger("twilio.http_client").info("-- BEGIN Twilio API Request --")
    assert [r["logger"] for r in records(out)] == ["hypercorn.access"]


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD", stream=io.StringIO())


def test_level_names_are_case_insensitive() -> None:
    with captured("warning") as out:
        logging.getLogger("enrich.test").info("hidden")
        logging.getLogger("enrich.test").warning("shown")
    assert [r["event"] for r in records(out)] == ["shown"]


# --- property -------------------------------------------------------------

_NO_ASCII_DIGITS = st.text(st.characters(blacklist_characters="0123456789"), max_size=40)


@given(
    prefix=_NO_ASCII_DIGITS,
    digits=st.text("0123456789", min_size=10, max_size=15),
    suffix=_NO_ASCII_DIGITS,
)
def test_any_plus_number_in_random_text_is_masked(prefix: str, digits: str, suffix: str) -> None:
    # The surrounding text has no ASCII digits, so any run of the number's
    # hidden digits in the output can only be a leak.
    with captured("INFO") as out:
        logging.getLogger("enrich.prop").info(prefix + "+" + digits + suffix)
        log_event(logging.getLogger("enrich.prop"), "INFO", "evt", field=prefix + "+" + digits)
    message, fielded = records(out)
    for value in (message["event"], fielded["field"]):
        assert digits[:-4] not in value
        assert "+" + digits not in value
