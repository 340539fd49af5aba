"""The shipped systemd units: hardening policy (pure) and `systemd-analyze verify` (real).

Four units: enrich.service (one process, role all), the enrich@.service template (one
process per port), and the split deployment: enrich-web.service (role web) with
enrich-worker@.service (role worker, at a lower CPU priority).

`systemd-analyze verify` needs the ExecStart binary to exist, so each unit is
copied to a temp directory with ExecStart pointed at a stub executable; the
rest of the file is verified exactly as shipped. When systemd-analyze is
missing, CI (env CI set) installs it once with apt; elsewhere the test skips
and says so loudly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrich.config import Settings, describe_variables

UNITS = Path(__file__).parents[2] / "systemd"
SERVICE = UNITS / "enrich.service"
TEMPLATE = UNITS / "enrich@.service"
WEB = UNITS / "enrich-web.service"
WORKER = UNITS / "enrich-worker@.service"
#: Every shipped unit and the role its ExecStart runs.
ROLES = {SERVICE: "all", TEMPLATE: "all", WEB: "web", WORKER: "worker"}
SHIPPED_EXEC = "/opt/enrich/venv/bin/enrich"

Unit = dict[str, dict[str, list[str]]]


# --- a small unit-file reader (configparser cannot hold repeated keys) -----------


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order. An empty assignment resets the list,
    as it does in systemd ("ExecStart=" clears earlier ExecStart lines)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", text)  # line continuations
    for number, raw in enumerate(logical.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"line {number}: not a key=value inside a section: {raw!r}")
        key, _, value = line.partition("=")
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in service.get("Environment", []):
        for item in assignment.split():
            name, _, value = item.partition("=")
            env[name] = value
    return env


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unsupported time span {value!r}"
    number = float(match.group(1))
    return number * 60 if match.group(2) in ("min", "m") else number


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set more than once: {values}"
    return values[0]


def test_parser_handles_resets_repeats_and_comments() -> None:
    unit = parse_unit(
        "# comment\n[Service]\nExecStart=/a\nExecStart=\nExecStart=/b\n"
        "Environment=A=1 B=2\nEnvironment=C=3\n; other comment\nCapabilityBoundingSet=\n"
    )
    assert unit["Service"]["ExecStart"] == ["/b"]
    assert environment(unit["Service"]) == {"A": "1", "B": "2", "C": "3"}
    assert unit["Service"]["CapabilityBoundingSet"] == []
    with pytest.raises(ValueError, match="line 1"):
        parse_unit("Key=outside a section\n")


# --- the policy, read from the files ------------------------------------------

HARDENING_YES = (
    "DynamicUser",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "NoNewPrivileges",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "RestrictNamespaces",
    "LockPersonality",
    "RestrictRealtime",
)


@pytest.fixture(params=list(ROLES), ids=lambda p: p.name)
def unit_file(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


@pytest.fixture
def unit(unit_file: Path) -> Unit:
    return parse_unit(unit_file.read_text())


def test_service_type_and_lifecycle(unit: Unit, unit_file: Path) -> None:
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecStart") == f"{SHIPPED_EXEC} serve --role {ROLES[unit_file]}"
    assert one(service, "WatchdogSec") == "30"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartSec") == "2"
    assert one(service, "KillSignal") == "SIGTERM"
    assert "/etc/enrich/enrich.env" in service["EnvironmentFile"]
    assert one(service, "LimitNOFILE") == "65536"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_stop_timeout_outlasts_the_shutdown_grace(unit: Unit) -> None:
    # systemd must not SIGKILL while the app is still inside its own drain.
    grace = Settings.from_env({}).shutdown_grace_seconds
    assert seconds(one(unit["Service"], "TimeoutStopSec")) >= grace + 10


def test_hardening_keys(unit: Unit) -> None:
    service = unit["Service"]
    for key in HARDENING_YES:
        assert one(service, key) == "yes", key
    assert one(service, "ProtectSystem") == "strict"
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert one(service, "SystemCallFilter") == "@system-service"
    assert one(service, "SystemCallArchitectures") == "native"
    # Present and empty: no capabilities at all.
    assert service.get("CapabilityBoundingSet") == []
    # Deliberately off (libffi closures / FFmpeg), see the comment in the unit.
    assert service.get("MemoryDenyWriteExecute", ["no"]) == ["no"]


def test_environment_names_are_known_settings_and_values_parse(unit: Unit) -> None:
    env = environment(unit["Service"])
    known = {name for name, _, _ in describe_variables()}
    assert set(env) <= known, f"unknown variables: {sorted(set(env) - known)}"
    # Specifiers as systemd would expand them for instance 3001.
    expanded = {
        name: value.replace("%i", "3001").replace("%S", "/var/lib").replace("%H", "host")
        for name, value in env.items()
    }
    settings = Settings.from_env(expanded)
    assert str(settings.effective_temp_dir).startswith("/var/tmp/")
    assert one(unit["Service"], "PrivateTmp") == "yes"  # so /var/tmp is the unit's own


def test_single_instance_defaults() -> None:
    service = parse_unit(SERVICE.read_text())["Service"]
    env = environment(service)
    assert env["PORT"] == "3000"
    assert env["ENRICH_DATA_DIR"] == "/var/lib/enrich"
    assert one(service, "StateDirectory") == "enrich"
    assert one(service, "RuntimeDirectory") == "enrich"


def test_template_is_parameterised_by_port() -> None:
    service = parse_unit(TEMPLATE.read_text())["Service"]
    env = environment(service)
    assert env["PORT"] == "%i"
    assert env["ENRICH_DATA_DIR"] in ("%S/enrich/%i", "/var/lib/enrich/%i")
    assert "%i" in env["INSTANCE_ID"]
    assert one(service, "StateDirectory") == "enrich/%i"
    # Instances must not share (and on stop delete) each other's runtime dir.
    assert one(service, "RuntimeDirectory") == "enrich/%i"
    # The shared file first, the optional per-instance file after it.
    assert service["EnvironmentFile"] == [
        "/etc/enrich/enrich.env",
        "-/etc/enrich/enrich@%i.env",
    ]


def test_split_deployment_puts_the_webhooks_first() -> None:
    web = parse_unit(WEB.read_text())["Service"]
    worker = parse_unit(WORKER.read_text())["Service"]
    # The worker yields the CPU to the webhooks: by niceness within a cgroup, by weight
    # between the services' cgroups (default weight 100, nice 0).
    assert int(one(worker, "Nice")) >= 5
    assert int(one(worker, "CPUWeight")) < 100
    assert "Nice" not in web and "CPUWeight" not in web
    web_env, worker_env = environment(web), environment(worker)
    assert web_env["PORT"] == "3000" and worker_env["PORT"] == "%i"
    # Distinct instances: own leases' names, temp subdirectories, state and runtime dirs.
    assert web_env["INSTANCE_ID"] != worker_env["INSTANCE_ID"]
    assert "%i" in worker_env["INSTANCE_ID"]
    assert one(web, "StateDirectory") != one(worker, "StateDirectory")
    assert "%i" in one(worker, "StateDirectory") and "%i" in one(worker, "RuntimeDirectory")
    assert worker["EnvironmentFile"] == [
        "/etc/enrich/enrich.env",
        "-/etc/enrich/enrich-worker@%i.env",
    ]


# --- systemd-analyze verify -----------------------------------------------------

_LOUD_SKIP = (
    "!!! systemd-analyze NOT FOUND: the systemd unit files were NOT verified. "
    "Install systemd (apt-get install systemd) or run with CI=1 to install it. !!!"
)


def _install_systemd() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "systemd"],
    ):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            warnings.warn(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-500:]}",
                stacklevel=2,
            )
            return


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.environ.get("CI"):
        _install_systemd()
        found = shutil.which("systemd-analyze")
    if found is None:
        warnings.warn(_LOUD_SKIP, stacklevel=1)
        pytest.skip(_LOUD_SKIP)
    return found


@pytest.fixture
def unit_dir(tmp_path: Path) -> Iterator[Path]:
    """Copies of every unit with ExecStart pointed at an executable stub."""
    stub = tmp_path / "bin" / "enrich"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for source in ROLES:
        text, count = re.subn(
            rf"^ExecStart={re.escape(SHIPPED_EXEC)}\b",
            f"ExecStart={stub}",
            source.read_text(),
            flags=re.MULTILINE,
        )
        assert count == 1, f"{source.name}: expected one ExecStart={SHIPPED_EXEC}"
        (units / source.name).write_text(text)
    yield units


def verify(systemd_analyze: str, unit_path: Path) -> list[str]:
    """Run verify; return problems about *our* unit (others' noise is ignored)."""
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=unit_path.parent,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit_path.parent) in line or "enrich" in line
    ]
    if result.returncode != 0:
        ours.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return ours


def test_verify_single_instance_unit(systemd_analyze: str, unit_dir: Path) -> None:
    assert verify(systemd_analyze, unit_dir / "enrich.service") == []


@pytest.mark.parametrize("name", ["enrich@.service", "enrich@3001.service",
                                  "enrich-web.service", "enrich-worker@.service",
                                  "enrich-worker@3101.service"])
def test_verify_template_and_an_instance(systemd_analyze: str, unit_dir: Path, name: str) -> None:
    # enrich@3001.service is not a file: systemd-analyze loads it from the
    # template next to it, expanding %i, as systemctl would.
    assert verify(systemd_analyze, unit_dir / name) == []


def test_verify_reports_mistakes(systemd_analyze: str, unit_dir: Path) -> None:
    # The check itself must be able to fail: a misspelt key and a missing
    # binary are both reported.
    good = (unit_dir / "enrich.service").read_text()
    typo = unit_dir / "typo.service"
    typo.write_text(good.replace("WatchdogSec=30", "WatchdgSec=30"))
    assert any("WatchdgSec" in line for line in verify(systemd_analyze, typo))
    missing = unit_dir / "missing.service"
    missing.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/nonexistent/enrich", good))
    assert verify(systemd_analyze, missing) != []
