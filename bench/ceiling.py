"""The framework ceiling: enrich's hypercorn trio configuration serving a trivial route.

``python -m bench.ceiling serve [--port P]`` serves a quart-trio app through
``enrich.server.serve_app`` (so ``enrich.server.hypercorn_config``: the same worker,
timeouts and limits as ``enrich serve``) whose webhook route reads the form body and
answers a fixed TwiML, with nothing else: no signature, no database, no Redis.

``python -m bench.ceiling [--duration 30] [--concurrent 100]`` starts that server in a
subprocess, drives it with the load generator (closed model, the same signed requests)
and prints the throughput: the most this stack can answer on this machine. Benches
report the webhook's throughput as a fraction of it, measured in the same session.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, WEBHOOK_PATH, CpuLayout, TrafficSpec, pinned

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>ok</Message></Response>'


def build_app() -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("ceiling")

    @app.post(WEBHOOK_PATH)
    async def webhook() -> Response:
        await request.get_data(cache=False)
        response = Response(TWIML, status=200, content_type="text/xml")
        response.headers["X-Enrich-Outcome"] = "accepted"
        return response

    @app.get("/health/ready")
    async def ready() -> str:
        return "ok"

    return app


def serve(port: int) -> None:
    import trio

    from enrich.config import Settings
    from enrich.server import serve_app

    settings = Settings.from_env({})

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve_app, build_app(), settings,
                                                host="127.0.0.1", port=port))
            print(json.dumps({"binds": binds}), flush=True)

    trio.run(run)


def measure(*, duration: float = 30.0, concurrent: int = 100, workers: int = 2,
            rate: float | None = None, progress: bool = True,
            layout: CpuLayout | None = None) -> dict[str, Any]:
    """Start the trivial server, load it, stop it; the load test's summary.

    With ``layout`` (the suite's ``--pin``) the server and the generator are placed as
    bench.serve places the web process and everything else, so the ratio compares like
    with like.
    """
    import os

    from bench.load_test import LoadConfig, run_load
    from bench.serve import spawn_json, stop_process
    from enrich.tuning import format_cpu_list

    env = dict(os.environ)
    log = open(os.devnull, "wb")  # noqa: SIM115
    with pinned(layout.web if layout else None):
        proc, ready = spawn_json(
            [sys.executable, "-m", "bench.ceiling", "serve", "--port", "0"], env, log)
    try:
        url = ready["binds"][0] + WEBHOOK_PATH  # bound to 127.0.0.1
        cfg = LoadConfig(traffic=TrafficSpec(url=url, sign_url=url, auth_token="ceiling"),
                         concurrent=concurrent, duration=duration, rate=rate, workers=workers,
                         name="ceiling", progress=progress,
                         cpu_affinity=format_cpu_list(layout.rest) if layout else "")
        cfg.server_pid = proc.pid
        summary = run_load(cfg)
    finally:
        stop_process(proc)
        log.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="serve the trivial app")
    srv.add_argument("--port", type=int, default=0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, help="open model instead of closed")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--pin", action="store_true",
                        help="the server alone on the last CPU, the generator on the others "
                             "(as bench.serve --pin)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return 0
    from bench.report import format_report, write_outputs

    summary = measure(duration=args.duration, concurrent=args.concurrent,
                      workers=args.workers, rate=args.rate, progress=not args.quiet,
                      layout=CpuLayout.dedicated() if args.pin else None)
    print(format_report(summary))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in write_outputs(summary, args.out, f"ceiling-{stamp}"):
        print(f"wrote {path}")
    thr = summary["throughput"]
    print(f"\nceiling: {thr['answers_per_s']:.0f} answers/s at {args.concurrent} connections, "
          f"p99 {summary['latency_ms']['p99']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
