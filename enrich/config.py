"""Settings: one typed, frozen object read from the environment.

Every variable is declared once, in ``Settings`` below, with its parser, default and a
one-line description. That single table drives parsing, validation errors, the
``config/enrich.env.example`` check in the tests, and ``enrich config`` output, so the
documentation cannot drift from the code.

The seed product's variable names keep their names and units (cache TTLs in
milliseconds, media size in MiB, media timeout in milliseconds).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from enrich.tuning import parse_cpu_list


class ConfigError(ValueError):
    """A variable has a value we cannot use. The message names it and what is allowed."""


# --- parsers: str -> value, raising ValueError with "what is allowed" -------------------


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"an integer between {lo} and {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"an integer between {lo} and {hi}")
        return value

    return parse


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"a number between {lo:g} and {hi:g}") from None
        if not lo <= value <= hi:
            raise ValueError(f"a number between {lo:g} and {hi:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("one of true/false, yes/no, on/off, 1/0")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return parse


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _secret(min_length: int) -> Callable[[str], str | None]:
    """Unset is allowed (the feature is off); a short secret is refused, not warned about."""

    def parse(raw: str) -> str | None:
        value = raw.strip()
        if not value:
            return None
        if len(value) < min_length:
            raise ValueError(f"a secret of at least {min_length} characters (or unset)")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip()
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError("a URL starting with " + " or ".join(f"{s}://" for s in schemes))
        return value.rstrip("/") if parts.scheme.startswith("http") else value

    return parse


def _http_base(raw: str) -> str:
    value = _url("http", "https")(raw)
    if value is None:
        raise ValueError("an http:// or https:// URL")
    return value


def _host_list(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if "/" in host or "@" in host or " " in host:
            raise ValueError("a comma-separated list of host or host:port names")
    return hosts


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("a directory path")
    return Path(raw.strip()).expanduser()


def _optional_path(raw: str) -> Path | None:
    return Path(raw.strip()).expanduser() if raw.strip() else None


def _var(
    env: str,
    parse: Callable[[str], Any],
    default: str,
    doc: str,
    *,
    secret: bool = False,
) -> Any:
    """Declare one environment variable; the default is given as the raw env text."""
    return field(
        metadata={"env": env, "parse": parse, "default": default, "doc": doc, "secret": secret}
    )


DEFAULT_REDIRECT_HOSTS = (
    "api.twilio.com,media.twiliocdn.com,mms.twiliocdn.com,"
    "s3-external-1.amazonaws.com,s3.amazonaws.com"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything tunable, read from the environment (see ``config/enrich.env.example``)."""

    # --- HTTP server ---
    host: str = _var("HOST", _text, "0.0.0.0", "Address to listen on.")  # noqa: S104
    port: int = _var("PORT", _int_range(0, 65535), "3000", "TCP port to listen on.")
    web_reuse_port: bool = _var(
        "WEB_REUSE_PORT",
        _bool,
        "false",
        "Let several processes listen on the same HOST:PORT (SO_REUSEPORT, Linux): the "
        "kernel spreads new connections across them, so webhooks use more than one core. "
        "Each process needs its own INSTANCE_ID, and DATABASE_URL and REDIS_URL.",
    )
    cpu_affinity: frozenset[int] = _var(
        "CPU_AFFINITY",
        parse_cpu_list,
        "",
        "CPUs this process runs on, e.g. 0 or 1-3 (unset: all). Keep PostgreSQL and Redis "
        "off the web process's core: sharing it is what lengthens the acks' tail most on "
        "a small host.",
    )
    public_url: str | None = _var(
        "PUBLIC_URL",
        _url("http", "https"),
        "",
        "Public base URL Twilio calls (https://sms.example.com); signatures are checked "
        "against it. Default: http://localhost:PORT.",
    )
    read_timeout_seconds: float = _var(
        "READ_TIMEOUT_SECONDS", _float_range(1, 300), "10", "Close idle or slow client reads."
    )
    max_body_bytes: int = _var(
        "MAX_BODY_BYTES",
        _int_range(1024, 1024 * 1024),
        "65536",
        "Largest accepted request body (a Twilio form is a few KB).",
    )
    shutdown_grace_seconds: float = _var(
        "SHUTDOWN_GRACE_SECONDS",
        _float_range(0, 600),
        "20",
        "On SIGTERM: time for in-flight requests and running jobs before they are cancelled.",
    )
    log_level: str = _var(
        "LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "Log verbosity."
    )
    log_format: str = _var(
        "LOG_FORMAT",
        _choice("auto", "json", "text"),
        "auto",
        "auto: readable on a terminal, JSON lines otherwise.",
    )
    instance_id: str = _var(
        "INSTANCE_ID",
        _text,
        "",
        "Name of this process in leases, logs and its temp subdirectory. Default host-port.",
    )

    # --- storage ---
    data_dir: Path = _var(
        "ENRICH_DATA_DIR",
        _path,
        "./.enrich",
        "Embedded servers' data, the local-mode token, state.",
    )
    temp_dir: Path | None = _var(
        "ENRICH_TEMP_DIR",
        _optional_path,
        "",
        "Media downloads in flight. Default ENRICH_DATA_DIR/tmp.",
    )
    database_url: str | None = _var(
        "DATABASE_URL",
        _url("postgresql", "postgres"),
        "",
        "PostgreSQL URL. Unset: an embedded PostgreSQL starts in ENRICH_DATA_DIR.",
        secret=True,
    )
    database_pool_min: int = _var(
        "DATABASE_POOL_MIN", _int_range(0, 500), "2", "Connections opened at start."
    )
    database_pool_max: int = _var(
        "DATABASE_POOL_MAX", _int_range(1, 500), "10", "Most connections open at once."
    )
    database_connect_timeout_ms: int = _var(
        "DATABASE_CONNECT_TIMEOUT_MS",
        _int_range(100, 120_000),
        "2000",
        "Deadline to open one connection.",
    )
    database_acquire_timeout_ms: int = _var(
        "DATABASE_ACQUIRE_TIMEOUT_MS",
        _int_range(10, 120_000),
        "5000",
        "Deadline to wait for a free connection before failing the request.",
    )
    database_idle_timeout_ms: int = _var(
        "DATABASE_IDLE_TIMEOUT_MS",
        _int_range(1000, 3_600_000),
        "30000",
        "Idle connections above DATABASE_POOL_MIN are closed after this long.",
    )
    redis_url: str | None = _var(
        "REDIS_URL",
        _url("redis", "rediss", "unix"),
        "",
        "Redis URL. Unset: an embedded Redis-protocol server (Valkey) starts.",
        secret=True,
    )
    redis_pool_min: int = _var(
        "REDIS_POOL_MIN", _int_range(0, 500), "2", "Redis connections opened at start."
    )
    redis_pool_max: int = _var(
        "REDIS_POOL_MAX", _int_range(1, 500), "10", "Most Redis connections (and threads)."
    )
    redis_timeout_ms: int = _var(
        "REDIS_TIMEOUT_MS",
        _int_range(50, 60_000),
        "1000",
        "Socket timeout of one Redis call: the backstop under the trio deadline.",
    )

    # --- Twilio ---
    twilio_account_sid: str | None = _var(
        "TWILIO_ACCOUNT_SID", _optional_text, "", "Twilio Account SID (AC...)."
    )
    twilio_auth_token: str | None = _var(
        "TWILIO_AUTH_TOKEN",
        _optional_text,
        "",
        "Signs webhooks and authenticates REST calls. Unset in local mode: generated.",
        secret=True,
    )
    twilio_phone_number: str | None = _var(
        "TWILIO_PHONE_NUMBER", _optional_text, "", "Our number; confirmations are sent from it."
    )
    twilio_api_base_url: str = _var(
        "TWILIO_API_BASE_URL",
        _http_base,
        "https://api.twilio.com",
        "Twilio REST and media origin (a local fake in tests).",
    )
    twilio_pool_max: int = _var(
        "TWILIO_POOL_MAX", _int_range(1, 200), "10", "Concurrent Twilio REST calls."
    )
    twilio_timeout_ms: int = _var(
        "TWILIO_TIMEOUT_MS", _int_range(100, 120_000), "10000", "Deadline of one REST call."
    )
    ack_message: str = _var(
        "ACK_MESSAGE",
        _text,
        "Got it! We're saving the details from your message.",
        "Text of the immediate TwiML reply; empty for an empty <Response/>.",
    )

    # --- ingest guardrails ---
    rate_limit_messages_per_hour: int = _var(
        "RATE_LIMIT_MESSAGES_PER_HOUR",
        _int_range(1, 1_000_000),
        "20",
        "Messages one sender may send in any sliding hour.",
    )
    cache_phone_lookup_ttl: int = _var(
        "CACHE_PHONE_LOOKUP_TTL",
        _int_range(0, 86_400_000),
        "900000",
        "Phone -> user cache lifetime, ms.",
    )
    cache_verification_ttl: int = _var(
        "CACHE_VERIFICATION_TTL",
        _int_range(0, 86_400_000),
        "300000",
        "Verification status cache lifetime, ms.",
    )
    # The seed's sizes are the defaults. Size a cache to the senders active within its
    # lifetime: past that, LRU evicts senders who come back (and a miss of the phone
    # cache costs a PostgreSQL lookup).
    cache_phone_lookup_size: int = _var(
        "CACHE_PHONE_LOOKUP_SIZE",
        _int_range(1, 10_000_000),
        "1000",
        "Phone -> user cache entries (LRU).",
    )
    cache_verification_size: int = _var(
        "CACHE_VERIFICATION_SIZE",
        _int_range(1, 10_000_000),
        "500",
        "Verification status cache entries (LRU).",
    )
    unknown_sender_reply_interval: int = _var(
        "UNKNOWN_SENDER_REPLY_INTERVAL",
        _int_range(0, 30 * 86_400),
        "86400",
        "At most one 'number not linked' reply per sender in this many seconds.",
    )
    verification_code_expiry_minutes: int = _var(
        "VERIFICATION_CODE_EXPIRY_MINUTES",
        _int_range(1, 1440),
        "10",
        "Lifetime of a phone verification code.",
    )
    jwt_secret: str | None = _var(
        "JWT_SECRET",
        _secret(32),
        "",
        "HS256 secret for the user phone-number API. Unset: that API is disabled.",
        secret=True,
    )
    admin_token: str | None = _var(
        "ADMIN_TOKEN",
        _secret(16),
        "",
        "Bearer token for /api/sms/performance/*. Unset: those routes answer 404.",
        secret=True,
    )

    # --- media ---
    max_media_size_mb: float = _var(
        "MAX_MEDIA_SIZE_MB", _float_range(0.01, 100), "5", "Largest media item, MiB."
    )
    media_download_timeout_ms: int = _var(
        "MEDIA_DOWNLOAD_TIMEOUT_MS",
        _int_range(100, 600_000),
        "30000",
        "Total deadline of one media download, redirects included.",
    )
    media_download_concurrency: int = _var(
        "MEDIA_DOWNLOAD_CONCURRENCY", _int_range(1, 1000), "20", "Concurrent media downloads."
    )
    media_redirect_hosts: tuple[str, ...] = _var(
        "MEDIA_REDIRECT_HOSTS",
        _host_list,
        DEFAULT_REDIRECT_HOSTS,
        "Hosts media downloads may be redirected to (Twilio's CDN); no credentials go there.",
    )
    media_allow_private_addresses: bool = _var(
        "MEDIA_ALLOW_PRIVATE_ADDRESSES",
        _bool,
        "false",
        "Allow private/loopback media hosts; only honoured when TWILIO_API_BASE_URL is local.",
    )

    # --- speech ---
    stt_engine: str = _var(
        "STT_ENGINE",
        _choice("auto", "google", "local", "none"),
        "auto",
        "auto: google with credentials, else local when installed, else none.",
    )
    speech_endpoint: str | None = _var(
        "SPEECH_ENDPOINT",
        _optional_text,
        "",
        "host:port of the Speech gRPC API (plain text when loopback). Default Google's.",
    )
    speech_language: str = _var("SPEECH_LANGUAGE", _text, "en-US", "BCP-47 language of notes.")
    speech_pool_max: int = _var(
        "SPEECH_POOL_MAX", _int_range(1, 200), "10", "Concurrent transcriptions."
    )
    speech_timeout_ms: int = _var(
        "SPEECH_TIMEOUT_MS", _int_range(100, 600_000), "30000", "Deadline of one recognize call."
    )

    # --- pipeline ---
    processing_concurrency: int = _var(
        "PROCESSING_CONCURRENCY", _int_range(1, 1000), "100",
        "Messages processed at once (most wait on media or speech, not the CPU)."
    )
    processing_target_lag_ms: float = _var(
        "PROCESSING_TARGET_LAG_MS", _float_range(0, 10_000), "5",
        "Acks first, in a process that also answers webhooks (role all): when the event "
        "loop runs later than this, fewer messages are worked on at once (down to none) "
        "until it catches up; waits on downloads and Speech do not count; 0 disables. A "
        "--role worker process paces on PROCESSING_TARGET_ACK_MS instead.",
    )
    processing_target_ack_ms: float = _var(
        "PROCESSING_TARGET_ACK_MS", _float_range(0, 60_000), "10",
        "Acks first across processes (--role worker): when a web process reports an "
        "ack slower than this (its slowest answer or its event-loop lag in the last "
        "100 ms, shared through Redis), fewer messages are worked on at once (down to "
        "none) until they recover; waits on downloads and Speech do not count; 0 disables.",
    )
    job_queue_size: int = _var(
        "JOB_QUEUE_SIZE", _int_range(1, 100_000), "256", "Jobs buffered in memory."
    )
    job_max_attempts: int = _var(
        "JOB_MAX_ATTEMPTS", _int_range(1, 100), "3", "Attempts before a message fails."
    )
    job_lease_seconds: int = _var(
        "JOB_LEASE_SECONDS",
        _int_range(5, 86_400),
        "120",
        "A claimed job not finished in this time is taken over by another worker.",
    )
    job_retry_base_ms: int = _var(
        "JOB_RETRY_BASE_MS", _int_range(10, 600_000), "2000", "First retry delay; doubles."
    )
    outbox_retry_base_ms: int = _var(
        "OUTBOX_RETRY_BASE_MS", _int_range(10, 600_000), "2000",
        "First retry delay of a reply SMS that failed to send; doubles.",
    )
    outbox_poll_interval_ms: int = _var(
        "OUTBOX_POLL_INTERVAL_MS", _int_range(10, 600_000), "2000",
        "How often the outbox looks for due replies (new ones wake it at once).",
    )
    recovery_interval_seconds: float = _var(
        "RECOVERY_INTERVAL_SECONDS",
        _float_range(0.1, 3600),
        "5",
        "How often the runner re-reads due rows (retries, expired leases, missed "
        "wake-ups); new messages wake it at once.",
    )

    # --- supervisor ---
    temp_cleanup_interval: int = _var(
        "TEMP_CLEANUP_INTERVAL", _int_range(1, 86_400), "3600", "Seconds between temp sweeps."
    )
    temp_max_age_days: float = _var(
        "TEMP_MAX_AGE_DAYS", _float_range(0, 3650), "30", "Temp files older than this go."
    )
    metrics_interval_seconds: float = _var(
        "METRICS_INTERVAL_SECONDS", _float_range(0.1, 3600), "5", "Metrics sampling period."
    )

    # --- derived, not read from the environment ---
    local_mode: bool = field(default=False, metadata={"derived": True})

    # ---------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable; raise ConfigError naming the first bad one."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("derived"):
                continue
            raw = source.get(meta["env"])
            text = meta["default"] if raw is None else raw
            try:
                values[f.name] = meta["parse"](text)
            except ValueError as exc:
                shown = "(hidden)" if meta["secret"] else repr(text)
                raise ConfigError(f"{meta['env']}={shown} is not valid: expected {exc}") from None
        settings = cls(**values)
        settings._check_consistency()
        return dataclasses.replace(
            settings,
            local_mode=settings.database_url is None and settings.redis_url is None,
        )

    def _check_consistency(self) -> None:
        if self.web_reuse_port and not (self.instance_id and self.database_url
                                        and self.redis_url):
            # Processes sharing a port must not share an instance id (temp files, leases)
            # nor start embedded servers of their own.
            raise ConfigError(
                "WEB_REUSE_PORT=true needs INSTANCE_ID (distinct per process), DATABASE_URL "
                "and REDIS_URL"
            )
        if self.database_pool_min > self.database_pool_max:
            raise ConfigError(
                f"DATABASE_POOL_MIN={self.database_pool_min} is larger than "
                f"DATABASE_POOL_MAX={self.database_pool_max}: expected MIN <= MAX"
            )
        if self.redis_pool_min > self.redis_pool_max:
            raise ConfigError(
                f"REDIS_POOL_MIN={self.redis_pool_min} is larger than "
                f"REDIS_POOL_MAX={self.redis_pool_max}: expected MIN <= MAX"
            )

    # --- derived values -----------------------------------------------------------------

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://localhost:{self.port}"

    @property
    def effective_temp_dir(self) -> Path:
        return self.temp_dir or self.data_dir / "tmp"

    @property
    def effective_instance_id(self) -> str:
        """Stable across restarts (host and port), so a restarted instance finds and
        cleans its own temp files, and distinct for instances sharing a host."""
        return self.instance_id or f"{socket.gethostname()}-{self.port}"

    @property
    def max_media_bytes(self) -> int:
        return int(self.max_media_size_mb * 1024 * 1024)


def describe_variables() -> list[tuple[str, str, str]]:
    """(name, default, description) of every variable, in declaration order."""
    return [
        (f.metadata["env"], f.metadata["default"], f.metadata["doc"])
        for f in dataclasses.fields(Settings)
        if not f.metadata.get("derived")
    ]
