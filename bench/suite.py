"""Every bench in one session, for bench/RESULTS.md.

    python -m bench.suite [--quick] [--deployment split|all] [--skip sweep,e2e,...]
                          [--with sweepall]

Runs, in order, each load run against a fresh server (bench.serve): the framework
ceiling (closed model, 100 connections), the open model at 500/s, the seed's closed
model at 100 connections (as a fraction of that ceiling), the ceiling again, the rate
sweep (bench.sweep; the deployment's sweep measures a 10 s ceiling before every step,
to show how far the host drifted; the verdict takes the stricter ratio) and the sweep of
a ``--role web`` server (no job runner anywhere), a short rate-limit check (limit
20/hour, few senders), the memory benches, the insert comparison and the end-to-end
pipeline bench. Everything goes to ``bench/out/suite-<time>/``: each run's JSON and
PNG, ``summary.json`` and ``summary.md`` (the goals table). ``--quick`` shortens every
run (a dry run of the suite, not a measurement).

``--deployment`` is what the open, closed, sweep, rate-limit and end-to-end runs
measure: ``split`` (default, the recommended deployment: ``--role web`` answers webhooks,
a ``--role worker`` process at a lower CPU priority runs the jobs; bench.serve --split) or
``all`` (one process doing both, pacing its jobs by the event loop's lag). With split,
``--with sweepall`` also sweeps the one-process deployment, for the comparison in the
same session (a few minutes more). The server-RSS step always measures one ``all``
process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, machine_info, open_messages
from bench.load_test import LoadConfig, run_load
from bench.report import format_report, lookup_cache_counts, write_outputs
from bench.serve import BenchServer, ServeOptions
from bench.sweep import judged_fraction

STEPS = ("ceiling", "open500", "closed100", "ceiling2", "sweep", "sweepweb", "sweepall",
         "ratelimit", "downloads", "rss", "inserts", "e2e")
#: Run only when asked for (``--with``).
OPTIONAL_STEPS = ("sweepall",)
DEPLOYMENTS = {"split": "web + niced worker processes", "all": "one process, role all"}


def code_version() -> dict[str, Any]:
    """The commit measured, and enrich files changed in the working tree (read-only git)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  check=False, timeout=10).stdout.strip()
        except OSError:
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "enrich").splitlines()}


def load_run(out: Path, name: str, options: ServeOptions, **overrides: Any) -> dict[str, Any]:
    with BenchServer(options) as server:
        cfg = LoadConfig.from_env({**os.environ, **server.load_env()})
        targets = overrides.pop("targets", None)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        if targets is not None:
            cfg.targets = targets
        cfg.name, cfg.out_dir = name, out
        summary = run_load(cfg)
        summary["db_open_messages_at_end"] = open_messages(server.database_url)
        statuses = _statuses(server.database_url)
    summary["db_statuses"] = statuses
    print(format_report(summary), flush=True)
    write_outputs(summary, out, name)
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def _statuses(database_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url, application_name="enrich-bench") as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM inbound_messages GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("✓" if ok else "✗")


def best_ceiling(r: dict[str, Any]) -> float | None:
    """The higher of the ceilings measured in the session (the stricter reference)."""
    values = [r[k]["throughput"]["answers_per_s"] for k in ("ceiling", "ceiling2") if k in r]
    return max(values) if values else None


def _retries(sweep: dict[str, Any]) -> str:
    """How many missed steps were run again (bench.sweep confirms a miss once)."""
    n = sweep.get("retries") or 0
    return f" ({n} missed step{'s' if n > 1 else ''} run again)" if n else ""


def goals_table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, bool | None]] = []
    ceiling = best_ceiling(r)
    how = f" [{DEPLOYMENTS.get(r.get('deployment', 'all'), r.get('deployment'))}]"
    for key in ("ceiling", "ceiling2"):
        if key in r:
            c, g = r[key], r[key]["generator"]
            rows.append((f"framework ceiling ({'before' if key == 'ceiling' else 'after'} the "
                         "closed run): trivial route, c=100", "(report)",
                         f"{c['throughput']['answers_per_s']:.0f}/s, p99 "
                         f"{c['latency_ms']['p99']:.0f} ms; generator used "
                         f"{g['cpu_pct_of_one_core']:.0f} % of one core", None))
    if "open500" in r:
        o = r["open500"]
        rows.append(("open model 500/s, 60 s: ack p99" + how, "<= 50 ms",
                     f"{o['latency_ms']['p99']:.1f} ms", o["latency_ms"]["p99"] <= 50))
        rows.append(("open model 500/s: failures", "0", str(o["totals"]["failed"]),
                     o["totals"]["failed"] == 0))
    if "sweep" in r:
        s = r["sweep"]
        frac = s.get("fraction_of_ceiling")
        text = (f"{s.get('best_rate') or 0:.0f}/s of {ceiling or 0:.0f}/s = {(frac or 0):.1%}"
                + _retries(s))
        beside = s.get("fraction_of_beside_ceiling")
        if beside is not None:
            # The host drifts: the ceiling measured just before the best step shows how
            # far; the verdict takes the stricter of the two (bench.sweep.judged_fraction).
            text += (f"; of the ceiling measured beside that step "
                     f"({s['beside_ceiling_rps']:.0f}/s): {beside:.1%}")
        frac = judged_fraction(s)
        rows.append(("highest rate with ack p99 <= 100 ms, vs ceiling" + how, ">= 50 %",
                     text, bool(frac and frac >= 0.5)))
    if "sweepweb" in r:
        s = r["sweepweb"]
        frac = s.get("fraction_of_ceiling")
        rows.append(("(same, server with --role web alone: no job runner anywhere)",
                     "(report)",
                     f"{s.get('best_rate') or 0:.0f}/s = {(frac or 0):.1%} of the ceiling"
                     + _retries(s), None))
    if "sweepall" in r:
        s = r["sweepall"]
        frac = s.get("fraction_of_ceiling")
        rows.append(("(same, one process, role all: jobs paced in the loop)", "(report)",
                     f"{s.get('best_rate') or 0:.0f}/s = {(frac or 0):.1%} of the ceiling"
                     + _retries(s), None))
    if "closed100" in r:
        c = r["closed100"]
        thr, lat = c["throughput"], c["latency_ms"]
        ratio = thr["successful_per_s"] / ceiling if ceiling else None
        change = thr["change_pct"]
        rows += [
            ("closed model c=100, 60 s: throughput vs ceiling" + how, ">= 50 %",
             f"{thr['successful_per_s']:.0f}/s of {ceiling or 0:.0f}/s = {(ratio or 0):.1%}",
             None if ratio is None else ratio >= 0.5),
            ("closed model: p99 vs mean", "<= 2x",
             f"{lat['p99']:.1f} / {lat['avg']:.1f} ms = {lat['p99'] / lat['avg']:.2f}x",
             lat["p99"] <= 2 * lat["avg"]),
            ("closed model: failures", "0", str(c["totals"]["failed"]),
             c["totals"]["failed"] == 0),
            ("closed model: seed targets (avg < 5 s, p95 < 10 s, success > 95 %)", "all",
             f"avg {lat['avg']:.0f} ms, p95 {lat['p95']:.0f} ms, {c['success_pct']:.2f} %",
             lat["avg"] < 5000 and lat["p95"] < 10000 and c["success_pct"] > 95),
            ("closed model: last 10 s vs first 10 s", "within 10 %",
             f"{thr['first10_per_s']} -> {thr['last10_per_s']}/s ({change} %)",
             None if change is None else abs(change) <= 10),
        ]
        for label, run in (("closed c=100", c), ("open 500/s", r.get("open500"))):
            if not run:
                continue
            server = run.get("server", {})
            cache = server.get("cache") or {}
            for key, what in (("phoneNumberCache", "phone-number"),
                              ("verificationCache", "verification")):
                c = cache.get(key)
                if c and c["hits"] + c["misses"]:
                    rate = 100 * c["hits"] / (c["hits"] + c["misses"])
                    rows.append((f"{label}: {what} cache hit rate (Zipf, 1000 senders)",
                                 ">= 95 %", f"{rate:.2f} % ({c['size']} of {c['max']} "
                                 "entries)", rate >= 95))
            hits, misses = lookup_cache_counts(server)
            if hits + misses:
                rows.append((f"{label}: both caches together", "(report)",
                             f"{100 * hits / (hits + misses):.2f} %", None))
            if server.get("peak_pg_connections") is not None:
                rows.append((f"{label}: PostgreSQL connections", "<= DATABASE_POOL_MAX",
                             f"peak {server['peak_pg_connections']} of "
                             f"{server.get('db_pool_max')}",
                             server["peak_pg_connections"] <= (server.get("db_pool_max") or 0)))
    if "e2e" in r:
        e = r["e2e"]
        rows.append(("end-to-end throughput vs Little's-law bound", ">= 90 %",
                     f"{(e.get('judged_ratio') or 0):.1%} (whole run "
                     f"{(e.get('overall_ratio') or 0):.1%}, speech stage "
                     f"{(e.get('speech_stage_ratio') or 0):.1%}; steady window "
                     f"{(e['ratio'] or 0):.1%})", e["passed"]))
    if "downloads" in r:
        d = r["downloads"]
        rows.append(("peak RSS growth, 100 x 5 MB downloads", "<= 64 MB",
                     f"+{d['streamed']['peak_growth_mb']} MB (buffered: "
                     f"+{d['buffered_httpx']['peak_growth_mb']} MB)", d["passed"]))
    if "rss" in r:
        m = r["rss"]
        rows.append(("server RSS after 60 s vs after 10 s", "within 10 %",
                     f"{m['runs'][0]['rss_mb']} -> {m['runs'][1]['rss_mb']} MB "
                     f"({m['growth_pct']:+.1f} %)", m["passed"]))
    if "ratelimit" in r:
        rl = r["ratelimit"]
        rejected = rl["db_statuses"].get("rejected", 0)
        rows.append(("rate-limited answers counted apart (limit 20/h)",
                     "= rejected rows in DB",
                     f"{rl['totals']['rate_limited']} counted, {rejected} rejected rows, "
                     f"{rl['totals']['failed']} failed", rl["totals"]["rate_limited"] == rejected
                     and rl["totals"]["failed"] == 0))
    if "inserts" in r:
        i = r["inserts"]
        rows.append(("batch vs row-by-row inserts", "(report)",
                     f"{i['ratio_row_by_row_vs_batch']}x faster", None))
    lines = ["| goal | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {g} | {t} | {m} | {_verdict(ok)} |" for g, t, m, ok in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help=f"comma-separated of {', '.join(STEPS)}")
    parser.add_argument("--with", dest="also", default="",
                        help=f"optional steps to run too: {', '.join(OPTIONAL_STEPS)}")
    parser.add_argument("--deployment", choices=tuple(DEPLOYMENTS), default="split",
                        help="what the load runs measure: split (web + niced worker, "
                             "default) or all (one process)")
    parser.add_argument("--pin", action="store_true",
                        help="the web process (and the ceiling's server) on the last CPU; "
                             "the stores, fakes and generator on the others; the worker "
                             "anywhere")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    also = {s for s in args.also.split(",") if s}
    for name in (skip | also) - set(STEPS):
        parser.error(f"unknown step {name!r}")
    skip |= set(OPTIONAL_STEPS) - also
    if args.deployment == "all":
        skip.add("sweepall")  # "sweep" is that deployment already
    q = 0.1 if args.quick else 1.0
    out = args.out or OUT_DIR / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "quick": args.quick,
                               "code": code_version(), "deployment": args.deployment}
    base = ServeOptions(split=args.deployment == "split", pin=args.pin)
    results["pinned"] = args.pin

    def ceiling(name: str = "ceiling") -> dict[str, Any]:
        from bench.ceiling import measure

        s = measure(duration=30 * q, concurrent=100, layout=base.cpu_layout())
        print(format_report(s), flush=True)
        write_outputs(s, out, name)
        return {k: v for k, v in s.items() if not k.startswith("_")}

    def closed100() -> dict[str, Any]:
        ceiling_rps = results.get("ceiling", {}).get("throughput", {}).get("answers_per_s")
        targets = replace(LoadConfig().targets, ceiling_rps=ceiling_rps)
        return load_run(out, "closed-c100", base, concurrent=100, duration=60 * q,
                        targets=targets)

    def sweep(options: ServeOptions, beside: bool = False) -> dict[str, Any]:
        from bench.sweep import ceiling_now
        from bench.sweep import sweep as run_sweep

        rates = [100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0]
        s = run_sweep(options, rates, seconds=20 * q, p99_ms=100.0,
                      ceiling=partial(ceiling_now, 10 * q, options) if beside else None)
        s["role"] = options.role
        s["deployment"] = options.deployment
        ceiling_rps = best_ceiling(results)
        s["ceiling_rps"] = ceiling_rps
        s["fraction_of_ceiling"] = (round((s["best_rate"] or 0) / ceiling_rps, 4)
                                    if ceiling_rps else None)
        return s

    def rss() -> dict[str, Any]:
        from bench.memory import run_server_rss

        return run_server_rss(50.0, 10 * q, 60 * q)

    def downloads() -> dict[str, Any]:
        from bench.memory import run_downloads

        return run_downloads(100, 5.0)

    def inserts() -> dict[str, Any]:
        import subprocess

        path = out / "inserts.json"
        subprocess.run([sys.executable, "-m", "bench.inserts", "--out", str(out)]
                       + (["--quick"] if args.quick else []), check=True)
        latest = max(out.glob("inserts-*.json"), key=lambda p: p.stat().st_mtime)
        latest.rename(path)
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def e2e() -> dict[str, Any]:
        from bench.e2e import E2EOptions, format_result, run

        e = run(E2EOptions(messages=max(100, int(3000 * q)), split=base.split, pin=base.pin))
        print(format_result(e), flush=True)
        return e

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "ceiling": ceiling,
        "open500": lambda: load_run(out, "open-500", base, rate=500.0, duration=60 * q),
        "closed100": closed100,
        "ceiling2": lambda: ceiling("ceiling2"),
        "sweep": lambda: sweep(base, beside=True),
        "sweepweb": lambda: sweep(replace(base, split=False, role="web")),
        "sweepall": lambda: sweep(replace(base, split=False, role="all")),
        "ratelimit": lambda: load_run(
            out, "ratelimit", replace(base, senders=5, rate_limit=20), rate=50.0,
            duration=3.0 if args.quick else 5.0, targets=replace(LoadConfig().targets, p99_ms=1e9)),
        "downloads": downloads,
        "rss": rss,
        "inserts": inserts,
        "e2e": e2e,
    }
    for name in STEPS:
        if name in skip:
            continue
        print(f"\n##### {name} #####", file=sys.stderr, flush=True)
        try:
            results[name] = steps[name]()
        except Exception:
            results[name + "_error"] = traceback.format_exc()
            print(results[name + "_error"], file=sys.stderr)
        (out / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    table = goals_table(results)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
