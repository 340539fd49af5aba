"""The seed's load test, done right: signed, realistic webhook traffic from several processes.

Environment (the seed's names first):

    LOAD_TEST_URL          webhook URL (default http://localhost:3000/api/sms/webhook)
    TWILIO_AUTH_TOKEN      signs every request
    LOAD_TEST_CONCURRENT   closed model: connections each sending back-to-back (default 10)
    LOAD_TEST_DURATION     seconds (default 60)
    LOAD_TEST_RATE         open model: arrivals per second; latency from the scheduled time
    LOAD_TEST_SIGN_URL     URL the server believes it serves (PUBLIC_URL + path); default URL
    LOAD_TEST_CONNECTIONS  open model: most connections at once (default 200)
    LOAD_TEST_WORKERS      generator processes (default 2)
    LOAD_TEST_SENDERS, LOAD_TEST_ZIPF, LOAD_TEST_MMS_SHARE, LOAD_TEST_DUPLICATE_SHARE
    LOAD_TEST_MEDIA_URL    fake Twilio API origin for MediaUrl (default TWILIO_API_BASE_URL)
    LOAD_TEST_MEDIA_BYTES  size of each generated MMS image (default 102400)
    LOAD_TEST_ADMIN_TOKEN  read /api/sms/performance/* during the run (cache hit rate, pool)
    LOAD_TEST_SERVER_PID   sample the server's RSS; LOAD_TEST_DATABASE_URL: pg_stat_activity
    LOAD_TEST_WORKER_PID, LOAD_TEST_WORKER_URL  a separate job process (bench.serve --split):
                           its CPU and RSS, and its /api/sms/performance/stats
    LOAD_TEST_CEILING_RPS  framework ceiling measured in the same session (bench.ceiling)
    LOAD_TEST_CPU_AFFINITY the generator's CPUs, e.g. 0 (bench.serve --pin: off the web
                           process's core, as Twilio's traffic comes from elsewhere)

``--setup`` links the senders (verified) in the server's database first: DATABASE_URL,
or the embedded servers of ENRICH_DATA_DIR (local mode), as ``enrich phone link`` does.
Exit status: 0 all targets met, 1 a target missed, 2 usage or setup error.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_MEDIA_BYTES,
    DEFAULT_URL,
    OUT_DIR,
    TrafficSpec,
    env_float,
    env_int,
    pinned,
)
from bench.loadgen import WorkerPlan, worker_main
from bench.monitor import ServerMonitor
from bench.report import Targets, analyse, format_report, write_outputs
from enrich.tuning import parse_cpu_list


@dataclass
class LoadConfig:
    traffic: TrafficSpec = field(default_factory=TrafficSpec)
    concurrent: int = 10
    duration: float = 60.0
    rate: float | None = None
    connections: int = 200
    workers: int = 2
    timeout: float = 15.0
    max_requests: int | None = None
    admin_token: str | None = None
    database_url: str | None = None
    server_pid: int | None = None
    more_server_pids: tuple[int, ...] = ()  # further web processes (WEB_REUSE_PORT)
    worker_pid: int | None = None  # jobs in their own process (bench.serve --split)
    worker_url: str | None = None  # its origin, for its performance statistics
    # The generator's CPUs (bench.serve --pin: off the web process's core), as a list.
    cpu_affinity: str = ""
    targets: Targets = field(default_factory=Targets)
    out_dir: Path = OUT_DIR
    name: str = ""
    plot: bool = True
    progress: bool = True

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LoadConfig:
        e = dict(os.environ if env is None else env)
        url = e.get("LOAD_TEST_URL") or DEFAULT_URL
        rate = env_float("LOAD_TEST_RATE", 0.0, e)
        count = env_int("LOAD_TEST_COUNT", 0, e)
        # One pid, or several comma-separated (web processes sharing the port).
        pids = [int(p) for p in (e.get("LOAD_TEST_SERVER_PID") or "").split(",") if p.strip()]
        worker_pid = env_int("LOAD_TEST_WORKER_PID", 0, e)
        ceiling = env_float("LOAD_TEST_CEILING_RPS", 0.0, e)
        traffic = TrafficSpec(
            url=url,
            sign_url=e.get("LOAD_TEST_SIGN_URL") or url,
            auth_token=e.get("TWILIO_AUTH_TOKEN", ""),
            account_sid=e.get("TWILIO_ACCOUNT_SID") or DEFAULT_ACCOUNT_SID,
            senders=env_int("LOAD_TEST_SENDERS", 1000, e),
            zipf_s=env_float("LOAD_TEST_ZIPF", 1.1, e),
            mms_share=env_float("LOAD_TEST_MMS_SHARE", 0.3, e),
            duplicate_share=env_float("LOAD_TEST_DUPLICATE_SHARE", 0.02, e),
            media_base=e.get("LOAD_TEST_MEDIA_URL") or e.get("TWILIO_API_BASE_URL") or None,
            media_bytes=env_int("LOAD_TEST_MEDIA_BYTES", DEFAULT_MEDIA_BYTES, e),
        )
        return cls(
            traffic=traffic,
            concurrent=env_int("LOAD_TEST_CONCURRENT", 10, e),
            duration=env_float("LOAD_TEST_DURATION", 60.0, e),
            rate=rate or None,
            connections=env_int("LOAD_TEST_CONNECTIONS", 200, e),
            workers=env_int("LOAD_TEST_WORKERS", 2, e),
            timeout=env_float("LOAD_TEST_TIMEOUT", 15.0, e),
            max_requests=count or None,
            admin_token=e.get("LOAD_TEST_ADMIN_TOKEN") or None,
            database_url=e.get("LOAD_TEST_DATABASE_URL") or None,
            server_pid=pids[0] if pids else None,
            more_server_pids=tuple(pids[1:]),
            worker_pid=worker_pid or None,
            worker_url=e.get("LOAD_TEST_WORKER_URL") or None,
            cpu_affinity=e.get("LOAD_TEST_CPU_AFFINITY", ""),
            targets=Targets(p99_ms=env_float("LOAD_TEST_TARGET_P99_MS", 50.0, e),
                            ceiling_rps=ceiling or None),
            out_dir=Path(e.get("LOAD_TEST_OUT") or OUT_DIR),
            name=e.get("LOAD_TEST_NAME", ""),
        )

    def public(self) -> dict[str, Any]:
        """The configuration without secrets, for the JSON file."""
        data = asdict(self)
        data["traffic"].pop("auth_token", None)
        data.pop("admin_token", None)
        data["database_url"] = bool(self.database_url)
        data["out_dir"] = str(self.out_dir)
        data["mode"] = self.mode
        return data


def resolve(url: str) -> tuple[str, int]:
    """An address of the URL's host that accepts connections (else the first one)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        try:
            with socket.create_connection((address, port), timeout=1):
                return address, port
        except OSError:
            continue
    return addresses[0], port


def plans(cfg: LoadConfig, address: tuple[str, int], seed: int) -> list[WorkerPlan]:
    w = max(1, cfg.workers)
    result = []
    for i in range(w):
        if cfg.rate:
            conns = max(1, math.ceil(cfg.connections / w))
            rate_w = cfg.rate / w
            expected = math.ceil(rate_w * cfg.duration) + 2
        else:
            conns = cfg.concurrent // w + (1 if i < cfg.concurrent % w else 0)
            rate_w = 0.0
            expected = min(30_000, int(cfg.duration * 1500 / w) + 100)
        limit = None
        if cfg.max_requests is not None:
            limit = cfg.max_requests // w + (1 if i < cfg.max_requests % w else 0)
            expected = min(expected, limit)
        if conns == 0 or (limit == 0):
            continue
        result.append(WorkerPlan(
            index=i, traffic=cfg.traffic, address=address, mode=cfg.mode, rate=rate_w,
            phase=i / cfg.rate if cfg.rate else 0.0, connections=conns,
            duration=cfg.duration, max_requests=limit, timeout=cfg.timeout,
            seed=seed * 1000 + i, prebuild=min(expected, 200_000),
        ))
    return result


class Progress:
    def __init__(self, cfg: LoadConfig, enabled: bool) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.last: dict[int, dict[str, Any]] = {}
        self.prev_done = 0

    def update(self, index: int, data: dict[str, Any]) -> None:
        self.last[index] = data

    def line(self, elapsed: float, extra: str) -> str:
        total = {k: sum(d[k] for d in self.last.values())
                 for k in ("sent", "done", "ok", "rate_limited", "failed")}
        p99 = max((d["p99_ms"] for d in self.last.values()), default=0.0)
        rps = total["done"] - self.prev_done
        self.prev_done = total["done"]
        return (f"  {elapsed:5.1f}s/{self.cfg.duration:.0f}s  sent {total['sent']}  "
                f"ok {total['ok']}  failed {total['failed']}  rate-limited "
                f"{total['rate_limited']}  in flight {total['sent'] - total['done']}  "
                f"{rps} answers/s  p99(1s) {p99:.1f} ms{extra}")

    def show(self, elapsed: float, extra: str) -> None:
        if self.enabled:
            end = "\n" if not sys.stderr.isatty() else ""
            print("\r" + self.line(elapsed, extra), end=end, file=sys.stderr, flush=True)


def run_load(cfg: LoadConfig, *, seed: int | None = None) -> dict[str, Any]:
    """Run the workers, watch the server, return the analysed summary (see bench.report).

    With ``cfg.cpu_affinity`` the whole generator (its worker processes, and this
    thread's monitoring while they run) stays on those CPUs.
    """
    with pinned(parse_cpu_list(cfg.cpu_affinity)):
        return _run_load(cfg, seed=seed)


def _run_load(cfg: LoadConfig, *, seed: int | None = None) -> dict[str, Any]:
    seed = seed if seed is not None else int(time.time())
    address = resolve(cfg.traffic.url)
    worker_plans = plans(cfg, address, seed)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=worker_main, args=(p, q, go, start_at), daemon=True)
             for p in worker_plans]
    for proc in procs:
        proc.start()
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    ready = 0
    progress = Progress(cfg, cfg.progress)
    monitor = ServerMonitor(cfg.traffic.url, cfg.admin_token, cfg.server_pid, cfg.database_url,
                            worker_pid=cfg.worker_pid, worker_url=cfg.worker_url,
                            more_pids=cfg.more_server_pids)
    try:
        while ready < len(procs):
            kind, index, data = q.get(timeout=120)
            if kind == "error":
                raise RuntimeError(f"worker {index} failed:\n{data}")
            ready += kind == "ready"
        monitor.begin()
        start_at.value = time.monotonic() + 0.2
        started_wall = time.time() + 0.2
        go.set()
        next_tick = start_at.value + 1.0
        while len(results) + len(errors) < len(procs):
            try:
                kind, index, data = q.get(timeout=0.1)
            except queue_mod.Empty:
                kind = ""
            if kind == "progress":
                progress.update(index, data)
            elif kind == "result":
                results[index] = data
            elif kind == "error":
                errors.append(str(data))
            now = time.monotonic()
            if now >= next_tick:
                next_tick += 1.0
                sample = monitor.sample(now - start_at.value)
                progress.show(now - start_at.value, monitor.describe(sample))
            if now > start_at.value + cfg.duration + cfg.timeout + 30:
                raise RuntimeError("workers did not finish in time")
        if cfg.progress:
            print(file=sys.stderr)
        if errors:
            raise RuntimeError("worker failed:\n" + "\n".join(errors))
        server = monitor.finish(time.monotonic() - start_at.value)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        monitor.close()
    summary = analyse(cfg.public(), [results[i] for i in sorted(results)], server,
                      duration=cfg.duration, started_at=started_wall, targets=cfg.targets)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_test", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true",
                        help="link LOAD_TEST_SENDERS verified senders in the server's database")
    parser.add_argument("--setup-only", action="store_true", help="link senders and exit")
    parser.add_argument("--rate", type=float, help="open model arrivals/s (LOAD_TEST_RATE)")
    parser.add_argument("--concurrent", type=int, help="closed model (LOAD_TEST_CONCURRENT)")
    parser.add_argument("--duration", type=float, help="seconds (LOAD_TEST_DURATION)")
    parser.add_argument("--workers", type=int, help="generator processes (LOAD_TEST_WORKERS)")
    parser.add_argument("--count", type=int, help="stop after this many requests")
    parser.add_argument("--name", help="file name stem of the JSON/PNG outputs")
    parser.add_argument("--out", type=Path, help="output directory (default bench/out)")
    parser.add_argument("--ceiling-rps", type=float, help="framework ceiling for the ratio")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    try:
        cfg = LoadConfig.from_env()
    except ValueError as exc:
        print(f"load_test: bad environment: {exc}", file=sys.stderr)
        return 2
    if args.rate is not None:
        cfg.rate = args.rate or None
    for attr in ("concurrent", "duration", "workers"):
        if getattr(args, attr) is not None:
            setattr(cfg, attr, getattr(args, attr))
    if args.count is not None:
        cfg.max_requests = args.count
    if args.out is not None:
        cfg.out_dir = args.out
    if args.ceiling_rps is not None:
        cfg.targets = replace(cfg.targets, ceiling_rps=args.ceiling_rps)
    cfg.name = args.name or cfg.name or f"load-{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.plot = not args.no_plot
    cfg.progress = not args.quiet
    if not cfg.traffic.auth_token:
        print("load_test: TWILIO_AUTH_TOKEN is not set: the server would answer 403 to every "
              "request", file=sys.stderr)
        return 2
    if args.setup or args.setup_only:
        try:
            linked = setup_senders(cfg.traffic.senders)
        except Exception as exc:
            print(f"load_test: setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        print(f"setup: {cfg.traffic.senders} senders linked and verified ({linked} new)",
              file=sys.stderr)
        if args.setup_only:
            return 0
    try:
        summary = run_load(cfg)
    except (RuntimeError, OSError) as exc:
        print(f"load_test: {exc}", file=sys.stderr)
        return 2
    print(format_report(summary))
    paths = write_outputs(summary, cfg.out_dir, cfg.name, plot=cfg.plot)
    print("\n" + "\n".join(f"wrote {p}" for p in paths))
    return 0 if summary["passed"] else 1


def setup_senders(count: int) -> int:
    """Link senders 0..count-1 in DATABASE_URL, or the local-mode embedded database."""
    import trio

    from bench.common import link_senders
    from enrich.config import Settings
    from enrich.local import start_embedded

    settings, _embedded = start_embedded(Settings.from_env())  # reuses running servers
    assert settings.database_url is not None
    return trio.run(link_senders, settings.database_url, count)


if __name__ == "__main__":
    sys.exit(main())
