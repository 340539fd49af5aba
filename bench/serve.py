"""The server under test: ``enrich serve`` with embedded PostgreSQL/Valkey in a temp dir,
its senders linked, and Twilio (and optionally Speech) faked on loopback.

    python -m bench.serve [--port 3000] [--senders 1000] [--rate-limit 1000000]
                          [--speech-latency 0.2] [--env NAME=VALUE ...]

starts everything, writes the load test's environment to ``bench/out/serve.env``
(mode 0600: it holds the generated tokens) and serves until Ctrl-C:

    set -a; . bench/out/serve.env; set +a
    python -m bench.load_test

In code, ``with BenchServer(ServeOptions(...)) as server:`` does the same and
``server.load_env()`` gives the load test's variables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.common import DEFAULT_ACCOUNT_SID, OUR_NUMBER, WEBHOOK_PATH, free_port, out_path

_OUR_VARS = ("DATABASE_URL", "REDIS_URL", "PUBLIC_URL", "ENRICH_DATA_DIR", "PORT", "HOST",
             "TWILIO_API_BASE_URL", "SPEECH_ENDPOINT", "STT_ENGINE", "ADMIN_TOKEN")


def spawn_json(args: list[str], env: dict[str, str], log: IO[bytes], timeout: float = 30.0
               ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a fake that prints one JSON line when ready; return it and that line."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.strip().startswith(b"{"):
                return proc, json.loads(line)
            if not line and proc.poll() is not None:
                break
    stop_process(proc)
    raise RuntimeError(f"{args[2] if len(args) > 2 else args} did not start: {line!r}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            response = httpx.get(url, timeout=1.0, trust_env=False)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s ({last})")


@dataclass
class ServeOptions:
    port: int = 0  # 0: a free port
    senders: int = 1000
    rate_limit: int = 1_000_000  # per sender per hour: high, so the limit is not measured
    speech_latency: float | None = None  # start the fake Speech server with this latency
    twilio_send_latency: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # extra server settings
    role: str = "all"  # enrich serve --role
    profile_to: Path | None = None  # run the server under cProfile, stats written here
    keep: bool = False  # keep the temp dir (logs) after stop


class BenchServer:
    def __init__(self, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.root = Path(tempfile.mkdtemp(prefix="enrich-bench-"))
        self.token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        self.account_sid = DEFAULT_ACCOUNT_SID
        self.port = self.options.port or free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.fake: dict[str, Any] = {}
        self.speech: dict[str, Any] = {}
        self.database_url = ""
        self.redis_url = ""
        self._embedded: Any = None
        self._logs: list[IO[bytes]] = []

    # -- addresses --------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + WEBHOOK_PATH

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def _log(self, name: str) -> IO[bytes]:
        fh = open(self.root / name, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(fh)
        return fh

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> BenchServer:
        import psycopg
        import trio

        from bench.common import link_senders
        from enrich.embedded import EmbeddedPostgres, EmbeddedRedis
        from enrich.local import Embedded

        try:
            self._embedded = Embedded(EmbeddedPostgres(self.root), EmbeddedRedis(self.root))
            assert self._embedded.postgres and self._embedded.redis
            self.redis_url = self._embedded.redis.start().url
            for attempt in (1, 2):
                self.database_url = self._embedded.postgres.start().url
                try:
                    trio.run(link_senders, self.database_url, self.options.senders)
                    break
                except Exception as exc:
                    # Seen once on this shared machine: the fresh cluster reported "shutting
                    # down" during setup. Start it again (same data) and link once more.
                    refused = isinstance(exc, psycopg.OperationalError) or (
                        isinstance(exc, ExceptionGroup)
                        and exc.subgroup(psycopg.OperationalError) is not None)
                    if attempt == 2 or not refused:
                        raise
                    self._embedded.postgres.stop()
            base_env = {k: v for k, v in os.environ.items() if k not in _OUR_VARS}
            fake_env = {**base_env, "TWILIO_AUTH_TOKEN": self.token,
                        "TWILIO_ACCOUNT_SID": self.account_sid}
            proc, self.fake = spawn_json(
                [sys.executable, "-m", "enrich.testing.fake_twilio",
                 "--send-latency", str(self.options.twilio_send_latency)],
                fake_env, self._log("fake_twilio.log"))
            self.procs.append(proc)
            if self.options.speech_latency is not None:
                proc, self.speech = spawn_json(
                    [sys.executable, "-m", "enrich.testing.fake_speech",
                     "--latency", str(self.options.speech_latency), "--no-validate"],
                    base_env, self._log("fake_speech.log"))
                self.procs.append(proc)
            env = {**base_env, **self.server_env(), **self.options.env}
            profile = (["-m", "cProfile", "-o", str(self.options.profile_to)]
                       if self.options.profile_to else [])
            self.server = subprocess.Popen(
                [sys.executable, *profile, "-m", "enrich", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--role", self.options.role],
                env=env, stdout=self._log("server.log"), stderr=subprocess.STDOUT)
            wait_ready(self.origin + "/health/ready", 60, self.server)
        except BaseException:
            self.stop()
            raise
        return self

    def server_env(self) -> dict[str, str]:
        cdn = httpx.URL(self.fake["cdn_url"])
        env = {
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
            "ENRICH_DATA_DIR": str(self.root / "data"),
            "TWILIO_ACCOUNT_SID": self.account_sid, "TWILIO_AUTH_TOKEN": self.token,
            "TWILIO_PHONE_NUMBER": OUR_NUMBER, "TWILIO_API_BASE_URL": self.fake["api_url"],
            "MEDIA_REDIRECT_HOSTS": f"{cdn.host}:{cdn.port}",
            "PUBLIC_URL": self.origin, "ADMIN_TOKEN": self.admin_token,
            "RATE_LIMIT_MESSAGES_PER_HOUR": str(self.options.rate_limit),
            "LOG_FORMAT": "json", "STT_ENGINE": "none",
            # A bench server is stopped with work left over: hand it back quickly.
            "SHUTDOWN_GRACE_SECONDS": "3",
        }
        if self.speech:
            env["SPEECH_ENDPOINT"] = self.speech["address"]
            env["STT_ENGINE"] = "google"
        return env

    def load_env(self) -> dict[str, str]:
        """The load test's environment for this server."""
        return {
            "LOAD_TEST_URL": self.url, "LOAD_TEST_SIGN_URL": self.url,
            "TWILIO_AUTH_TOKEN": self.token, "TWILIO_ACCOUNT_SID": self.account_sid,
            "LOAD_TEST_MEDIA_URL": self.fake["api_url"],
            "LOAD_TEST_SENDERS": str(self.options.senders),
            "LOAD_TEST_ADMIN_TOKEN": self.admin_token,
            "LOAD_TEST_SERVER_PID": str(self.pid),
            "LOAD_TEST_DATABASE_URL": self.database_url,
        }

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server)
            self.server = None
        for proc in self.procs:
            stop_process(proc, timeout=10)
        self.procs.clear()
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.stop()
            self._embedded = None
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        if not self.options.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log_tail(self, lines: int = 30) -> str:
        path = self.root / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--senders", type=int, default=1000)
    parser.add_argument("--rate-limit", type=int, default=1_000_000,
                        help="RATE_LIMIT_MESSAGES_PER_HOUR for this run")
    parser.add_argument("--speech-latency", type=float, help="also run the fake Speech server")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra server setting (repeatable)")
    parser.add_argument("--role", choices=("all", "web", "worker"), default="all")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the server under cProfile; stats written at exit")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    options = ServeOptions(port=args.port, senders=args.senders, rate_limit=args.rate_limit,
                           speech_latency=args.speech_latency, env=extra, keep=args.keep,
                           role=args.role, profile_to=args.profile)
    with BenchServer(options) as server:
        env_file = out_path("serve.env")
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in server.load_env().items())
        print(f"enrich serving {server.url} (pid {server.pid}, data and logs in {server.root})\n"
              f"{options.senders} senders linked; load test environment in {env_file}:\n"
              f"  set -a; . {env_file}; set +a; python -m bench.load_test\n"
              "Ctrl-C stops everything.", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            while server.server is not None and server.server.poll() is None:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
