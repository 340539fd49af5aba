"""Local mode: embedded servers and a generated webhook token (DESIGN.md §8.1, §8.3)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from enrich.config import Settings
from enrich.embedded import EmbeddedPostgres, EmbeddedRedis

#: Local mode signs and fetches with a fixed, recognisable account SID.
LOCAL_ACCOUNT_SID = "AC" + "10ca1" + "0" * 27
TOKEN_FILE = "twilio_auth_token"  # noqa: S105 - a file name, not a secret
#: Where local mode expects the fake Twilio that `enrich send` runs (media + Messages API).
LOCAL_MEDIA_PORT = 3001
#: Twilio's documented magic "from" number for test credentials.
LOCAL_PHONE_NUMBER = "+15005550006"


@dataclass
class Embedded:
    """Embedded servers this process resolved (and must stop at exit)."""

    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()


def start_embedded(settings: Settings) -> tuple[Settings, Embedded]:
    """Start (or reuse) embedded servers for whichever URL is unset. Blocking."""
    embedded = Embedded()
    changes: dict[str, object] = {}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.database_url is None:
        embedded.postgres = EmbeddedPostgres(settings.data_dir)
        changes["database_url"] = embedded.postgres.start().url
    if settings.redis_url is None:
        embedded.redis = EmbeddedRedis(settings.data_dir)
        changes["redis_url"] = embedded.redis.start().url
    return dataclasses.replace(settings, **changes), embedded  # type: ignore[arg-type]


def apply_local_defaults(settings: Settings, env: Mapping[str, str] | None = None) -> Settings:
    """In local mode, unless set explicitly: Twilio is the local fake of `enrich send`,
    with a fixed account SID and sender number, so the whole loop runs on one machine."""
    if not settings.local_mode:
        return settings
    source = os.environ if env is None else env
    changes: dict[str, object] = {}
    if "TWILIO_API_BASE_URL" not in source:
        changes["twilio_api_base_url"] = f"http://127.0.0.1:{LOCAL_MEDIA_PORT}"
    if settings.twilio_account_sid is None:
        changes["twilio_account_sid"] = LOCAL_ACCOUNT_SID
    if settings.twilio_phone_number is None:
        changes["twilio_phone_number"] = LOCAL_PHONE_NUMBER
    return dataclasses.replace(settings, **changes) if changes else settings  # type: ignore[arg-type]


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def ensure_local_token(settings: Settings, *, announce: bool = True) -> Settings:
    """Give local mode a webhook token: read it from the data dir or generate it (0600).

    A new token is shown once on the terminal (stderr), never through logging, so it
    cannot end up in a log stream.
    """
    changes: dict[str, object] = {}
    if settings.twilio_account_sid is None:
        changes["twilio_account_sid"] = LOCAL_ACCOUNT_SID
    if settings.twilio_auth_token is None:
        path = token_path(settings.data_dir)
        if path.exists():
            changes["twilio_auth_token"] = path.read_text().strip()
        else:
            token = secrets.token_hex(16)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            changes["twilio_auth_token"] = token
            if announce:
                print(
                    f"\n  Local mode: generated a webhook signing token (saved to {path}):\n"
                    f"    TWILIO_AUTH_TOKEN={token}\n"
                    "  `enrich send` uses it automatically. It is not shown again.\n",
                    file=sys.stderr,
                )
    return dataclasses.replace(settings, **changes) if changes else settings  # type: ignore[arg-type]


def read_local_token(data_dir: Path) -> str | None:
    path = token_path(data_dir)
    return path.read_text().strip() if path.exists() else None
