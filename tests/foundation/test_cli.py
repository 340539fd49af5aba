"""The `enrich` command as a person runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE", "REDIS", "TWILIO", "PORT"))}
    return subprocess.run([sys.executable, "-m", "enrich", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_bad_value_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    done = _run("serve", env={"PORT": "seventy", "ENRICH_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "PORT='seventy' is not valid: expected an integer between 0 and 65535" in done.stderr


def test_serve_refuses_without_a_token_outside_local_mode(tmp_path: Path) -> None:
    done = _run("serve", env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
                              "REDIS_URL": "redis://127.0.0.1:1/0",
                              "ENRICH_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "TWILIO_AUTH_TOKEN is not set" in done.stderr


def test_serve_refuses_a_cpu_affinity_it_cannot_have(tmp_path: Path) -> None:
    done = _run("serve", env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
                              "REDIS_URL": "redis://127.0.0.1:1/0",
                              "TWILIO_AUTH_TOKEN": "t" * 32, "CPU_AFFINITY": "4000",
                              "ENRICH_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "CPU_AFFINITY=4000 names no CPU this process may use" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_lists_every_variable() -> None:
    done = _run("config")
    assert done.returncode == 0
    for name in ("DATABASE_POOL_MIN=2", "RATE_LIMIT_MESSAGES_PER_HOUR=20",
                 "CACHE_PHONE_LOOKUP_TTL=900000", "PORT=3000"):
        assert name in done.stdout


def test_migrate_and_phone_link_list(database_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "ENRICH_DATA_DIR": str(tmp_path)}
    done = _run("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "schema is up to date" in done.stdout
    done = _run("phone", "link", "--phone", "(415) 555-0100", "--verified", env=env)
    assert done.returncode == 0, done.stderr
    assert "linked +14155550100" in done.stdout
    listed = _run("phone", "list", env=env)
    assert "***0100" in listed.stdout and "+14155550100" not in listed.stdout
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT verified FROM user_phone_numbers"
                           " WHERE phone_number = '+14155550100'").fetchone()
    assert row == (True,)
    bad = _run("phone", "link", "--phone", "not a number", env=env)
    assert bad.returncode != 0 and "is not a phone number" in bad.stderr


def test_python_dash_m_and_console_script_agree() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for command in ("serve", "migrate", "send", "phone", "config"):
        assert command in done.stdout
