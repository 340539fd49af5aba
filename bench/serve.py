"""The server under test: ``enrich serve`` with embedded PostgreSQL/Valkey in a temp dir,
its senders linked, and Twilio (and optionally Speech) faked on loopback.

    python -m bench.serve [--port 3000] [--senders 1000] [--rate-limit 1000000]
                          [--speech-latency 0.2] [--env NAME=VALUE ...]
                          [--role all|web|worker | --split [--worker-nice 10]] [--pin]

starts everything, writes the load test's environment to ``bench/out/serve.env``
(mode 0600: it holds the generated tokens) and serves until Ctrl-C:

    set -a; . bench/out/serve.env; set +a
    python -m bench.load_test

``--split`` runs the recommended multi-process deployment instead of one ``--role all``
process: ``enrich serve --role web`` on the port (it answers every webhook) and
``enrich serve --role worker`` on another free port (it processes and sends replies; it
serves health and the performance API too), the worker started at a lower CPU priority
(``--worker-nice``, default 10), so the OS scheduler runs the acks first. Both share the
embedded PostgreSQL/Valkey, the fakes and the settings. The load test then watches the
web process as "the server" and the worker apart (its pid, CPU, RSS and pipeline).

``--pin`` gives the process answering webhooks a CPU of its own (CPU_AFFINITY) and starts
the stores, the fakes and the load generator (LOAD_TEST_CPU_AFFINITY) on the other CPUs;
the worker (niced, paced on the acks) may run anywhere.

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

from bench.common import (
    DEFAULT_ACCOUNT_SID,
    OUR_NUMBER,
    WEBHOOK_PATH,
    CpuLayout,
    free_port,
    out_path,
    pinned,
)
from enrich.tuning import format_cpu_list

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
    stop_processes([proc], timeout)
    return proc.returncode


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM all at once (they drain in parallel), then wait; SIGKILL what outlives
    ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
    role: str = "all"  # enrich serve --role (one process; ignored with split)
    # The split deployment: a --role web process on ``port`` and a --role worker process
    # on another port, started ``worker_nice`` steps nicer (lower CPU priority).
    split: bool = False
    worker_nice: int = 10
    # With split: this many web processes sharing ``port`` (WEB_REUSE_PORT), so the
    # webhooks use more than one core.
    web_processes: int = 1
    # Give the web process(es) CPUs of their own (CpuLayout.dedicated): the stores, the
    # fakes and the load generator (LOAD_TEST_CPU_AFFINITY) share the rest; the niced,
    # paced worker may use every CPU.
    pin: bool = False
    profile_to: Path | None = None  # run the server under cProfile, stats written here
    keep: bool = False  # keep the temp dir (logs) after stop

    @property
    def deployment(self) -> str:
        if not self.split:
            name = self.role
        else:
            name = "split" if self.web_processes == 1 else f"split, {self.web_processes} web"
        return name + (", pinned" if self.pin else "")

    def cpu_layout(self) -> CpuLayout | None:
        return CpuLayout.dedicated(self.web_processes if self.split else 1) if self.pin else None


class BenchServer:
    def __init__(self, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.root = Path(tempfile.mkdtemp(prefix="enrich-bench-"))
        self.token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        self.account_sid = DEFAULT_ACCOUNT_SID
        self.port = self.options.port or free_port()
        self.worker_port = free_port() if self.options.split else None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None  # the process answering webhooks
        self.worker: subprocess.Popen[bytes] | None = None  # split: the niced job process
        self.webs: list[subprocess.Popen[bytes]] = []  # split: the web processes
        self.fake: dict[str, Any] = {}
        self.speech: dict[str, Any] = {}
        self.database_url = ""
        self.redis_url = ""
        self._embedded: Any = None
        self._logs: list[IO[bytes]] = []
        self.layout = self.options.cpu_layout()

    # -- addresses --------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + WEBHOOK_PATH

    @property
    def pid(self) -> int:
        """The process answering webhooks ("the server")."""
        assert self.server is not None
        return self.server.pid

    @property
    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker is not None else None

    @property
    def worker_origin(self) -> str | None:
        return f"http://localhost:{self.worker_port}" if self.worker_port else None

    @property
    def jobs_origin(self) -> str:
        """Where the job runner runs (its limiters, its pipeline statistics)."""
        return self.worker_origin or self.origin

    @property
    def jobs_log(self) -> Path:
        """The log with the runner's lines ("job finished")."""
        return self.root / ("worker.log" if self.options.split else "server.log")

    @property
    def enrich_procs(self) -> list[subprocess.Popen[bytes]]:
        webs = self.webs or ([self.server] if self.server is not None else [])
        return [*webs, *([self.worker] if self.worker is not None else [])]

    def _log(self, name: str) -> IO[bytes]:
        fh = open(self.root / name, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(fh)
        return fh

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> BenchServer:
        try:
            with pinned(self.layout.rest if self.layout else None):
                self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        import psycopg
        import trio

        from bench.common import link_senders
        from enrich.embedded import EmbeddedPostgres, EmbeddedRedis
        from enrich.local import Embedded

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
        # The process answering webhooks moves itself to its own CPUs (CPU_AFFINITY).
        web_pin = ({"CPU_AFFINITY": format_cpu_list(self.layout.web)}
                   if self.layout is not None else {})
        if not self.options.split:
            self.server = self._spawn_enrich(self.options.role, self.port, {**env, **web_pin},
                                             "server.log", self.options.profile_to)
            wait_ready(self.origin + "/health/ready", 60, self.server)
        else:
            assert self.worker_port is not None and self.worker_origin is not None
            # Distinct instance ids: each process owns (and cleans) its temp
            # subdirectory, and its PostgreSQL connections are named after it.
            instance = env.get("INSTANCE_ID") or f"bench-{self.port}"
            profile = self.options.profile_to
            webs = self.options.web_processes
            for i in range(webs):
                web_env = {**env, **web_pin, "INSTANCE_ID": f"{instance}-web{i or ''}"}
                if webs > 1:
                    web_env["WEB_REUSE_PORT"] = "true"
                self.webs.append(self._spawn_enrich(
                    "web", self.port, web_env, f"server{i or ''}.log",
                    profile if i == 0 else None))
            self.server = self.webs[0]
            # The worker, niced and paced on the acks, may use every CPU: it fills what
            # the web process leaves idle (pinned to the rest, processing would share one
            # core with the stores and fakes; end to end fell to 86 % of the bound).
            worker_pin = ({"CPU_AFFINITY": format_cpu_list(self.layout.web | self.layout.rest)}
                          if self.layout is not None else {})
            self.worker = self._spawn_enrich(
                "worker", self.worker_port,
                {**env, **worker_pin, "INSTANCE_ID": f"{instance}-worker"},
                "worker.log", profile and profile.with_name(profile.name + ".worker"),
                nice=self.options.worker_nice)
            for web in self.webs:
                wait_ready(self.origin + "/health/ready", 60, web)
            wait_ready(self.worker_origin + "/health/ready", 60, self.worker)

    def _spawn_enrich(self, role: str, port: int, env: dict[str, str], log_name: str,
                      profile_to: Path | None, nice: int = 0) -> subprocess.Popen[bytes]:
        profile = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        proc = subprocess.Popen(
            [sys.executable, *profile, "-m", "enrich", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--role", role],
            env=env, stdout=self._log(log_name), stderr=subprocess.STDOUT)
        if nice:
            # Set from here rather than in a preexec_fn (not safe with threads in this
            # process): the child is still importing, and anything it starts inherits it.
            try:
                ours = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, ours + nice))
            except OSError:
                stop_process(proc)
                raise
        return proc

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
            # Tuned for the traffic, as README advises: both lookup caches hold every
            # active sender. At the seed's 500 entries the verification cache is bounded
            # by the Zipf mix, not by its code (bench/RESULTS.md); `--env
            # CACHE_VERIFICATION_SIZE=500` measures that.
            "CACHE_PHONE_LOOKUP_SIZE": str(max(1000, self.options.senders)),
            "CACHE_VERIFICATION_SIZE": str(max(500, self.options.senders)),
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
            # Every web process (they share the port): the load test sums their CPU.
            "LOAD_TEST_SERVER_PID": ",".join(str(p.pid) for p in self.webs) or str(self.pid),
            "LOAD_TEST_DATABASE_URL": self.database_url,
            **({"LOAD_TEST_CPU_AFFINITY": format_cpu_list(self.layout.rest)}
               if self.layout is not None else {}),
            **({"LOAD_TEST_WORKER_PID": str(self.worker_pid),
                "LOAD_TEST_WORKER_URL": self.worker_origin}
               if self.worker_pid and self.worker_origin else {}),
        }

    def stop(self) -> None:
        stop_processes(self.enrich_procs)
        self.server = self.worker = None
        self.webs.clear()
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

    def server_log_tail(self, lines: int = 30, name: str = "server.log") -> str:
        """The last lines of a log: server.log (webhooks), worker.log (split)."""
        path = self.root / name
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
    parser.add_argument("--role", choices=("all", "web", "worker"), default="all",
                        help="one enrich process with this role (default all)")
    parser.add_argument("--split", action="store_true",
                        help="two processes: --role web on --port and --role worker on a "
                             "free port, the worker at a lower CPU priority")
    parser.add_argument("--worker-nice", type=int, default=10, metavar="N",
                        help="with --split: the worker's niceness increment (default 10)")
    parser.add_argument("--web-processes", type=int, default=1, metavar="N",
                        help="with --split: N web processes sharing --port (WEB_REUSE_PORT)")
    parser.add_argument("--pin", action="store_true",
                        help="the web process(es) on the last CPU(s); the stores, fakes "
                             "and load generator on the others; the worker anywhere")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the server under cProfile; stats written at exit")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument("--env-file", type=Path, metavar="FILE",
                        help="where to write the load test's environment "
                             "(default bench/out/serve.env)")
    args = parser.parse_args(argv)
    if args.split and args.role != "all":
        parser.error("--split runs a web and a worker process: leave --role out")
    if not 0 <= args.worker_nice <= 19:
        parser.error("--worker-nice must be between 0 and 19")
    if args.web_processes < 1 or (args.web_processes > 1 and not args.split):
        parser.error("--web-processes N (N >= 1) goes with --split")
    extra = dict(item.split("=", 1) for item in args.env)

    def interrupted(signum: int, frame: object) -> None:
        # SIGTERM stops everything as Ctrl-C does; a second one must not cut the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    options = ServeOptions(port=args.port, senders=args.senders, rate_limit=args.rate_limit,
                           speech_latency=args.speech_latency, env=extra, keep=args.keep,
                           role=args.role, split=args.split, worker_nice=args.worker_nice,
                           web_processes=args.web_processes, profile_to=args.profile,
                           pin=args.pin)
    with BenchServer(options) as server:
        env_file = args.env_file or out_path("serve.env")
        env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in server.load_env().items())
        worker = (f"; worker pid {server.worker_pid} on {server.worker_origin}, nice "
                  f"+{options.worker_nice}" if server.worker is not None else "")
        pids = ", ".join(str(p.pid) for p in server.webs) or str(server.pid)
        print(f"enrich serving {server.url} (pid {pids}{worker}; data and logs in "
              f"{server.root})\n"
              f"{options.senders} senders linked; load test environment in {env_file}:\n"
              f"  set -a; . {env_file}; set +a; python -m bench.load_test\n"
              "Ctrl-C (or SIGTERM) stops everything.", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            while server.enrich_procs and all(p.poll() is None for p in server.enrich_procs):
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
