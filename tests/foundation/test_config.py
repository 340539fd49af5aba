"""Settings: defaults, validation messages, and the documented example file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enrich.config import ConfigError, Settings, describe_variables

EXAMPLE = Path(__file__).parents[2] / "config" / "enrich.env.example"


def test_defaults_match_the_seed() -> None:
    s = Settings.from_env({})
    assert s.port == 3000
    assert (s.database_pool_min, s.database_pool_max) == (2, 10)
    assert (s.redis_pool_min, s.redis_pool_max) == (2, 10)
    assert s.rate_limit_messages_per_hour == 20
    assert s.max_media_size_mb == 5
    assert s.max_media_bytes == 5 * 1024 * 1024
    assert s.media_download_timeout_ms == 30_000
    assert s.cache_phone_lookup_ttl == 900_000
    assert s.cache_verification_ttl == 300_000
    assert s.data_dir == Path(".enrich")
    assert s.effective_temp_dir == Path(".enrich") / "tmp"
    assert s.local_mode is True
    assert s.effective_public_url == "http://localhost:3000"


def test_urls_set_means_not_local_mode() -> None:
    s = Settings.from_env({"DATABASE_URL": "postgresql://u@db/x", "REDIS_URL": "redis://r:6379/0"})
    assert s.local_mode is False


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("PORT", "http", "an integer between 0 and 65535"),
        ("PORT", "70000", "an integer between 0 and 65535"),
        ("DATABASE_POOL_MAX", "0", "an integer between 1 and 500"),
        ("LOG_LEVEL", "loud", "one of debug, info, warning, error"),
        ("MAX_MEDIA_SIZE_MB", "-1", "a number between"),
        ("MEDIA_ALLOW_PRIVATE_ADDRESSES", "maybe", "true/false"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("PUBLIC_URL", "sms.example.com", "http://"),
        ("STT_ENGINE", "watson", "one of auto, google, local, none"),
        ("JWT_SECRET", "short", "at least 32 characters"),
        ("ADMIN_TOKEN", "abc", "at least 16 characters"),
    ],
)
def test_bad_value_names_the_variable_and_what_is_allowed(
    name: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}=")
    assert allowed in message


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(info.value)


def test_min_above_max_is_refused() -> None:
    expected = "DATABASE_POOL_MIN=12 is larger than DATABASE_POOL_MAX=10"
    with pytest.raises(ConfigError, match=expected):
        Settings.from_env({"DATABASE_POOL_MIN": "12"})
    with pytest.raises(ConfigError, match="REDIS_POOL_MIN"):
        Settings.from_env({"REDIS_POOL_MIN": "5", "REDIS_POOL_MAX": "3"})


def test_example_file_documents_every_variable() -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    declared = {name for name, _, _ in describe_variables()}
    assert declared - documented == set(), "undocumented variables"
    assert documented - declared == set(), "documented but unknown variables"


def test_example_file_defaults_parse() -> None:
    env = {}
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", line)
        if m:
            env[m[1]] = m[2]
    Settings.from_env(env)  # the example's values are all valid


def test_reuse_port_needs_an_instance_id_and_shared_servers() -> None:
    shared = {"DATABASE_URL": "postgresql://db/enrich", "REDIS_URL": "redis://cache:6379/0"}
    with pytest.raises(ConfigError, match="WEB_REUSE_PORT=true needs INSTANCE_ID"):
        Settings.from_env({"WEB_REUSE_PORT": "true", **shared})
    with pytest.raises(ConfigError, match="WEB_REUSE_PORT"):
        Settings.from_env({"WEB_REUSE_PORT": "true", "INSTANCE_ID": "web-1"})  # embedded
    settings = Settings.from_env({"WEB_REUSE_PORT": "yes", "INSTANCE_ID": "web-1", **shared})
    assert settings.web_reuse_port and settings.effective_instance_id == "web-1"


def test_cpu_affinity_is_a_kernel_cpu_list() -> None:
    assert Settings.from_env({}).cpu_affinity == frozenset()
    assert Settings.from_env({"CPU_AFFINITY": "0,2-3"}).cpu_affinity == {0, 2, 3}
    with pytest.raises(ConfigError, match="CPU_AFFINITY='fast' is not valid: expected a CPU"):
        Settings.from_env({"CPU_AFFINITY": "fast"})
