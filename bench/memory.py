"""Memory benches.

``python -m bench.memory downloads [--count 100] [--mb 5]``: peak RSS of this process
while ``count`` concurrent downloads of ``mb`` MiB each run through
``enrich.media.download.MediaFetcher`` (streamed to temp files) from the fake Twilio (in
a subprocess, serving generated ``MEgen`` media through its CDN redirect), and RSS after
they finished; then the same downloads buffered whole in memory with plain httpx (the
seed's "before") for contrast. RSS is sampled every 10 ms.

``python -m bench.memory server [--rate 100]``: RSS of ``enrich serve`` (bench.serve)
after a 10 s load run and after a following 60 s run at the same rate, each measured
once the pipeline has processed everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from bench.common import OUT_DIR, machine_info, wait_pipeline_idle

ACCOUNT_SID = "AC" + "3e" * 16
TOKEN = "memory-bench-token-" + "0" * 13


def _count_files(directory: Path) -> int:
    return len(os.listdir(directory))


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


async def _sampled(work: Any, interval: float = 0.01) -> tuple[int, int, int]:
    """(RSS before, peak RSS during, RSS after) while ``await work()`` runs."""
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = before
    async with trio.open_nursery() as nursery:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc.memory_info().rss)
                await trio.sleep(interval)

        nursery.start_soon(sample)
        await work()
        peak = max(peak, proc.memory_info().rss)
        nursery.cancel_scope.cancel()
    return before, peak, proc.memory_info().rss


async def downloads(api_url: str, cdn_host: str, *, count: int, size: int,
                    temp_dir: Path, warm_up: bool = True) -> dict[str, Any]:
    import httpx

    from enrich.media.download import MediaFetcher
    from enrich.media.policy import MediaPolicy
    from enrich.pipeline.errors import PermanentError, RecoverableError

    policy = MediaPolicy.from_settings(api_url, ACCOUNT_SID, [cdn_host])
    fetcher = MediaFetcher(policy, account_sid=ACCOUNT_SID, auth_token=TOKEN,
                           temp_dir=temp_dir, max_bytes=size, timeout_s=120,
                           concurrency=count)

    def url(i: int) -> str:
        return (f"{api_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{i:032x}"
                f"/Media/MEgen{size}")

    sizes: list[int] = []
    on_disk: list[int] = []

    failures: dict[str, int] = {}

    async def one(i: int, all_started: trio.Event, started: list[int]) -> None:
        def arrived() -> None:
            started.append(i)
            if len(started) == count:
                all_started.set()

        try:
            async with fetcher.download(url(i)) as media:
                sizes.append(media.size)
                arrived()
                # Hold the file until every download has finished: all exist at once.
                await all_started.wait()
                on_disk.append(_count_files(temp_dir))
        except (PermanentError, RecoverableError) as exc:  # counted, not fatal
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            arrived()

    async def run_all() -> None:
        done = trio.Event()
        started: list[int] = []
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i, done, started)

    try:
        if warm_up:
            async with fetcher.download(url(10**6)) as warm:  # imports, pool, first connect
                assert warm.size == size
        t0 = time.perf_counter()
        before, peak, after = await _sampled(run_all)
        streamed_s = time.perf_counter() - t0
    finally:
        await fetcher.aclose()
    left = _count_files(temp_dir)

    async def naive() -> None:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(limits=limits, follow_redirects=True, timeout=120,
                                     auth=(ACCOUNT_SID, TOKEN)) as client:
            bodies: list[bytes] = []

            async def get(i: int) -> None:
                try:
                    bodies.append((await client.get(url(i))).content)
                except httpx.HTTPError as exc:
                    key = f"buffered {type(exc).__name__}"
                    failures[key] = failures.get(key, 0) + 1

            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(get, i)

    n_before, n_peak, _ = await _sampled(naive)
    return {
        "count": count, "size_bytes": size, "all_complete": sizes == [size] * count,
        "failures": failures,
        "max_files_at_once": max(on_disk, default=0), "temp_files_left": left,
        "seconds": round(streamed_s, 2),
        "streamed": {"rss_before_mb": _mb(before), "rss_peak_mb": _mb(peak),
                     "rss_after_mb": _mb(after), "peak_growth_mb": _mb(peak - before),
                     "after_growth_mb": _mb(after - before)},
        "buffered_httpx": {"rss_before_mb": _mb(n_before), "rss_peak_mb": _mb(n_peak),
                           "peak_growth_mb": _mb(n_peak - n_before)},
        "goal_peak_growth_mb": 64, "passed": (peak - before) <= 64 * 2**20,
    }


def run_downloads(count: int, mb: float) -> dict[str, Any]:
    import httpx

    from bench.serve import spawn_json, stop_process

    env = {**os.environ, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT_SID}
    temp_dir = Path(tempfile.mkdtemp(prefix="enrich-bench-media-"))
    with open(os.devnull, "wb") as log:
        proc, fake = spawn_json([sys.executable, "-m", "enrich.testing.fake_twilio"], env, log)
        try:
            cdn = httpx.URL(fake["cdn_url"])
            result = trio.run(lambda: downloads(
                fake["api_url"], f"{cdn.host}:{cdn.port}", count=count,
                size=int(mb * 2**20), temp_dir=temp_dir))
        finally:
            stop_process(proc)
            shutil.rmtree(temp_dir, ignore_errors=True)
    return result


def run_server_rss(rate: float, first: float = 10.0, second: float = 60.0) -> dict[str, Any]:
    from bench.load_test import LoadConfig, run_load
    from bench.serve import BenchServer

    with BenchServer() as server:
        env = {**os.environ, **server.load_env()}
        proc = psutil.Process(server.pid)
        rows = []
        for seconds in (first, second):
            cfg = LoadConfig.from_env(env)
            cfg.rate, cfg.duration, cfg.progress = rate, seconds, False
            s = run_load(cfg)
            drained = wait_pipeline_idle(server.database_url)
            time.sleep(1.0)
            rows.append({"run_s": seconds, "rss_mb": _mb(proc.memory_info().rss),
                         "answers": s["totals"]["total"], "failed": s["totals"]["failed"],
                         "drain_s": round(drained, 1)})
            print(f"  after {seconds:.0f} s at {rate:g}/s: RSS {rows[-1]['rss_mb']} MB "
                  f"(pipeline drained in {drained:.1f} s)", file=sys.stderr)
    growth = (rows[1]["rss_mb"] - rows[0]["rss_mb"]) / rows[0]["rss_mb"]
    return {"rate": rate, "runs": rows, "growth_pct": round(100 * growth, 2),
            "goal": "RSS after the 60 s run within 10% of RSS after the 10 s run",
            "passed": abs(growth) <= 0.10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("downloads")
    d.add_argument("--count", type=int, default=100)
    d.add_argument("--mb", type=float, default=5.0)
    s = sub.add_parser("server")
    s.add_argument("--rate", type=float, default=100.0)
    s.add_argument("--first", type=float, default=10.0)
    s.add_argument("--second", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.command == "downloads":
        result = run_downloads(args.count, args.mb)
        st, nv = result["streamed"], result["buffered_httpx"]
        print(f"{args.count} concurrent downloads of {args.mb:g} MiB through MediaFetcher: "
              f"RSS {st['rss_before_mb']} MB -> peak {st['rss_peak_mb']} MB (+"
              f"{st['peak_growth_mb']} MB), after {st['rss_after_mb']} MB; all complete: "
              f"{result['all_complete']}; {result['max_files_at_once']} files on disk at once"
              f"{'; failures ' + str(result['failures']) if result['failures'] else ''}"
              f"\nbuffered in memory (httpx .content): peak +{nv['peak_growth_mb']} MB\n"
              f"{'✓' if result['passed'] else '✗'} peak growth <= 64 MB")
    else:
        result = run_server_rss(args.rate, args.first, args.second)
        print(f"server RSS after {args.second:g} s vs after {args.first:g} s: "
              f"{result['growth_pct']:+.1f}% {'✓' if result['passed'] else '✗'} (within 10%)")
    result["machine"] = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
