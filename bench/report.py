"""Turn the workers' raw results into figures, the seed's report, targets, JSON and a PNG.

Counting rules: a request is *successful* when the server accepted it (``X-Enrich-Outcome:
accepted`` or ``duplicate``), *rate limited* when the answer says so (the header, or the
TwiML text when the header is missing), and *failed* otherwise (non-200, an unknown or
unverified sender, a timeout, a broken connection). Rate-limited answers are neither
successes nor failures; the success rate is successful / (total - rate limited).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from bench.common import machine_info
from bench.loadgen import FAILED, OK, RATE_LIMITED, new_histogram

PERCENTILES = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)


@dataclass(frozen=True)
class Targets:
    seed_avg_ms: float = 5000.0
    seed_p95_ms: float = 10000.0
    seed_success_pct: float = 95.0
    max_failures: int = 0
    p99_ms: float = 50.0  # open model
    tail_ratio: float = 2.0  # closed model: p99 <= ratio x mean
    stability_pct: float = 10.0  # closed model: last 10 s vs first 10 s
    ceiling_rps: float | None = None
    ceiling_fraction: float = 0.5
    cache_hit_pct: float = 95.0


def _merge(encoded: list[bytes]) -> HdrHistogram:
    total = new_histogram()
    for blob in encoded:
        total.add(HdrHistogram.decode(blob))
    return total


def _ms(hist: HdrHistogram, pct: float) -> float:
    return round(hist.get_value_at_percentile(pct) / 1000, 3) if hist.total_count else 0.0


def _timeline(t: np.ndarray, lat: np.ndarray, code: np.ndarray) -> list[dict[str, Any]]:
    if not len(t):
        return []
    seconds = np.floor(t).astype(int)
    rows: list[dict[str, Any]] = []
    for s in range(max(0, int(seconds.min())), int(seconds.max()) + 1):
        mask = seconds == s
        if not mask.any():
            rows.append({"t": s, "answers": 0})
            continue
        lm, cm = lat[mask], code[mask]
        row: dict[str, Any] = {
            "t": s, "answers": int(mask.sum()), "ok": int((cm == OK).sum()),
            "rate_limited": int((cm == RATE_LIMITED).sum()),
            "failed": int((cm == FAILED).sum()),
            "p50_ms": round(float(np.percentile(lm, 50)), 3),
            "p99_ms": round(float(np.percentile(lm, 99)), 3),
            "max_ms": round(float(lm.max()), 3),
        }
        rows.append(row)
    return rows


def analyse(config: dict[str, Any], results: list[dict[str, Any]], server: dict[str, Any],
            *, duration: float, started_at: float, targets: Targets) -> dict[str, Any]:
    hist = _merge([r["hist"] for r in results])
    lag = _merge([r["lag"] for r in results])
    t = np.concatenate([np.frombuffer(r["t"], dtype="d") for r in results] or [np.zeros(0)])
    lat = np.concatenate([np.frombuffer(r["lat_ms"], dtype="d") for r in results]
                         or [np.zeros(0)])
    code = np.concatenate([np.frombuffer(r["code"], dtype="b") for r in results]
                          or [np.zeros(0, dtype="b")])
    sent = sum(int(r["sent"]) for r in results)
    ok = int((code == OK).sum())
    limited = int((code == RATE_LIMITED).sum())
    failed = sent - ok - limited
    errors: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for r in results:
        for target, source in ((errors, r["errors"]), (outcomes, r["outcomes"]),
                               (kinds, r["kinds"])):
            for k, v in source.items():
                target[k] = target.get(k, 0) + int(v)
    span = duration
    if config.get("max_requests") and len(t):
        span = min(duration, float((t + lat / 1000).max()))
    answered = len(t)
    first = last = None
    if span >= 20 and len(t):
        first = float(((t >= 0) & (t < 10)).sum()) / 10
        last = float(((t >= span - 10) & (t < span)).sum()) / 10
    considered = sent - limited
    for proc in (server, server.get("worker") or {}):
        if proc.get("cpu_pct") and sent:
            proc["cpu_ms_per_request"] = round(proc["cpu_pct"]["avg"] * 10 * span / sent, 3)
    summary: dict[str, Any] = {
        "name": config.get("name"), "mode": config.get("mode"), "config": config,
        "machine": machine_info(), "started_at": started_at, "duration_s": span,
        "totals": {"total": sent, "successful": ok, "failed": failed, "rate_limited": limited,
                   "answered": answered, "no_answer": sent - answered},
        "success_pct": round(100.0 * ok / considered, 3) if considered else 0.0,
        "failed_pct": round(100.0 * failed / considered, 3) if considered else 0.0,
        "outcomes": outcomes, "kinds": kinds, "errors": errors,
        "latency_ms": {
            "avg": round(hist.get_mean_value() / 1000, 3) if hist.total_count else 0.0,
            "min": round(hist.get_min_value() / 1000, 3) if hist.total_count else 0.0,
            "max": round(hist.get_max_value() / 1000, 3) if hist.total_count else 0.0,
            "stddev": round(hist.get_stddev() / 1000, 3) if hist.total_count else 0.0,
            "p50": _ms(hist, 50), "p90": _ms(hist, 90), "p95": _ms(hist, 95),
            "p99": _ms(hist, 99), "p999": _ms(hist, 99.9), "count": hist.total_count,
        },
        "percentiles": [[p, _ms(hist, p)] for p in PERCENTILES],
        "throughput": {
            "answers_per_s": round(answered / span, 2) if span else 0.0,
            "successful_per_s": round(ok / span, 2) if span else 0.0,
            "first10_per_s": first, "last10_per_s": last,
            "change_pct": round(100.0 * (last - first) / first, 2) if first and last else None,
        },
        "timeline": _timeline(t, lat, code),
        "generator": {"workers": len(results), "lag_p99_ms": _ms(lag, 99),
                      "lag_max_ms": round(lag.get_max_value() / 1000, 3)
                      if lag.total_count else 0.0,
                      "unused_prebuilt": sum(int(r["unused_prebuilt"]) for r in results),
                      "cpu_s": round(sum(float(r["cpu_s"]) for r in results), 2),
                      "stale_keepalive_retries": sum(int(r.get("stale_retries", 0))
                                                     for r in results),
                      "cpu_pct_of_one_core": round(
                          100 * sum(float(r["cpu_s"]) for r in results) / span, 1)
                      if span else 0.0},
        "server": server,
        "_samples": (t, lat, code, hist),
    }
    summary["targets"] = [asdict(x) for x in assess(summary, targets)]
    summary["passed"] = all(x["ok"] for x in summary["targets"])
    return summary


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str


def assess(s: dict[str, Any], targets: Targets) -> list[Verdict]:
    lat, tot, thr = s["latency_ms"], s["totals"], s["throughput"]
    v = [
        Verdict(f"Average response time under {targets.seed_avg_ms / 1000:g} s (seed)",
                lat["avg"] < targets.seed_avg_ms, f"{lat['avg']:,.2f} ms"),
        Verdict(f"Success rate above {targets.seed_success_pct:g}% (seed)",
                s["success_pct"] > targets.seed_success_pct, f"{s['success_pct']:.2f}%"),
        Verdict(f"P95 response time under {targets.seed_p95_ms / 1000:g} s (seed)",
                lat["p95"] < targets.seed_p95_ms, f"{lat['p95']:,.2f} ms"),
        Verdict(f"At most {targets.max_failures} failed requests",
                tot["failed"] <= targets.max_failures, f"{tot['failed']} failed"),
    ]
    if s["mode"] == "open":
        v.append(Verdict(f"P99 at or under {targets.p99_ms:g} ms (open model)",
                         lat["p99"] <= targets.p99_ms, f"p99 {lat['p99']:,.2f} ms"))
    else:
        v.append(Verdict(f"P99 at or under {targets.tail_ratio:g} x the mean (no long tail)",
                         lat["p99"] <= targets.tail_ratio * lat["avg"],
                         f"p99 {lat['p99']:,.2f} ms vs mean {lat['avg']:,.2f} ms "
                         f"({lat['p99'] / lat['avg'] if lat['avg'] else 0:.2f}x)"))
        if thr["change_pct"] is not None:
            v.append(Verdict(f"Last 10 s throughput within {targets.stability_pct:g}% of the "
                             "first 10 s", abs(thr["change_pct"]) <= targets.stability_pct,
                             f"{thr['first10_per_s']:.0f} -> {thr['last10_per_s']:.0f} /s "
                             f"({thr['change_pct']:+.1f}%)"))
        if targets.ceiling_rps:
            ratio = thr["successful_per_s"] / targets.ceiling_rps
            s["ceiling_ratio"] = round(ratio, 4)
            v.append(Verdict(f"Throughput at least {targets.ceiling_fraction:.0%} of the "
                             "framework ceiling", ratio >= targets.ceiling_fraction,
                             f"{thr['successful_per_s']:.0f} of {targets.ceiling_rps:.0f} /s "
                             f"({ratio:.1%})"))
    server = s.get("server") or {}
    cache = server.get("cache") or {}
    for key, label in (("phoneNumberCache", "Phone-number"), ("verificationCache",
                                                               "Verification")):
        c = cache.get(key) or {}
        lookups = int(c.get("hits", 0)) + int(c.get("misses", 0))
        if lookups:
            rate = 100.0 * int(c["hits"]) / lookups
            v.append(Verdict(f"{label} cache hit rate at least {targets.cache_hit_pct:g}%",
                             rate >= targets.cache_hit_pct,
                             f"{rate:.2f}% ({c['hits']} hits, {c['misses']} misses, "
                             f"{c.get('size')} of {c.get('max')} entries)"))
    pool_max = server.get("db_pool_max")
    for key, label in (("peak_pool_connections", "pool"), ("peak_pg_connections",
                                                           "pg_stat_activity")):
        if pool_max and server.get(key) is not None:
            v.append(Verdict(f"At most DATABASE_POOL_MAX connections ({label})",
                             server[key] <= pool_max, f"peak {server[key]} of {pool_max}"))
    return v


def lookup_cache_counts(server: dict[str, Any]) -> tuple[int, int]:
    """Hits and misses of the phone-number and verification caches.

    The rate-limit "cache" only remembers blocked senders, so every allowed message is a
    miss there; the server's aggregate hit rate includes it, this figure does not.
    """
    cache = server.get("cache") or {}
    views = [cache[n] for n in ("phoneNumberCache", "verificationCache") if cache.get(n)]
    return sum(int(c["hits"]) for c in views), sum(int(c["misses"]) for c in views)


def format_report(s: dict[str, Any]) -> str:
    cfg, tot, lat, thr = s["config"], s["totals"], s["latency_ms"], s["throughput"]
    if s["mode"] == "open":
        how = (f"open model, {cfg['rate']:g} arrivals/s, at most {cfg['connections']} "
               "connections; latency from the scheduled send time")
    else:
        how = f"closed model, {cfg['concurrent']} concurrent connections"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["kinds"].items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
    considered = tot["total"] - tot["rate_limited"]
    out = [
        "=== Load Test Results ===",
        f"Run: {s['name']} ({how}; {s['duration_s']:.0f} s, "
        f"{s['generator']['workers']} generator processes)",
        f"Traffic: {kinds}",
        f"Total Requests: {tot['total']}",
        f"Successful: {tot['successful']} ({s['success_pct']:.2f}% of {considered})",
        f"Failed: {tot['failed']} ({s['failed_pct']:.2f}%)",
        f"Rate Limited: {tot['rate_limited']}",
        f"Outcomes: {outcomes or 'none'}",
        "",
        "Response Times:",
        *(f"  {label}: {lat[key]:,.2f}ms" for label, key in (
            ("Average", "avg"), ("Min", "min"), ("Max", "max"), ("P50", "p50"),
            ("P95", "p95"), ("P99", "p99"), ("P99.9", "p999"))),
        "",
        f"Throughput: {thr['answers_per_s']:,.1f} answers/s "
        f"({thr['successful_per_s']:,.1f} successful/s)"
        + (f"; first 10 s {thr['first10_per_s']:.1f}/s, last 10 s {thr['last10_per_s']:.1f}/s"
           if thr["first10_per_s"] is not None else ""),
        f"Generator lag behind schedule: p99 {s['generator']['lag_p99_ms']:.2f} ms, "
        f"max {s['generator']['lag_max_ms']:.2f} ms" if s["mode"] == "open" else
        "Generator: closed model (no schedule)",
        f"Generator CPU: {s['generator']['cpu_s']:.1f} s "
        f"({s['generator']['cpu_pct_of_one_core']:.0f}% of one core); requests resent on a "
        f"fresh connection after the server closed an idle one: "
        f"{s['generator']['stale_keepalive_retries']}",
        "",
        "Errors by kind:",
        *([f"  {k}: {v}" for k, v in sorted(s["errors"].items())] or ["  (none)"]),
    ]
    server = s.get("server") or {}
    if server.get("samples"):
        out += ["", "Server:"]
        metrics = (server.get("cache") or {}).get("metrics") or {}
        if metrics:
            hits, misses = lookup_cache_counts(server)
            out.append(f"  cache hit rate: lookups {100 * hits / max(1, hits + misses):.2f}% "
                       f"({hits} hits, {misses} misses); all caches incl. rate-limit memo "
                       f"{metrics.get('hitRate')}%")
        if "cpu_pct" in server:
            out.append(f"  CPU: avg {server['cpu_pct']['avg']}%, max {server['cpu_pct']['max']}%"
                       f" of one core ({server.get('cpu_ms_per_request')} ms of CPU per "
                       f"request); whole machine "
                       f"{server.get('machine_cpu_pct')}% of all cores")
        if "peak_pool_connections" in server:
            everyone = server.get("peak_pg_connections_all")
            out.append(f"  database connections: peak {server['peak_pool_connections']} "
                       f"(pool max {server.get('db_pool_max')}), pg_stat_activity peak "
                       f"{server.get('peak_pg_connections', 'n/a')} per process"
                       + (f" ({everyone} all processes)"
                          if everyone and everyone != server.get("peak_pg_connections")
                          else ""))
        if "rss_mb" in server:
            r = server["rss_mb"]
            out.append(f"  RSS: first {r['first']} MB, last {r['last']} MB, max {r['max']} MB")
        worker = server.get("worker") or {}
        if worker:
            out.append(f"Worker process (jobs; pid {worker.get('pid')}):")
            if "cpu_pct" in worker:
                out.append(f"  CPU: avg {worker['cpu_pct']['avg']}%, max "
                           f"{worker['cpu_pct']['max']}% of one core "
                           f"({worker.get('cpu_ms_per_request')} ms per request)")
            if "rss_mb" in worker:
                r = worker["rss_mb"]
                out.append(f"  RSS: first {r['first']} MB, last {r['last']} MB, "
                           f"max {r['max']} MB")
            pipeline = worker.get("pipeline") or {}
            if pipeline:
                latency = pipeline.get("jobLatencySeconds") or {}
                out.append(f"  jobs {pipeline.get('jobs')}, replies "
                           f"{pipeline.get('notifications')}; received -> stored avg "
                           f"{latency.get('avg')} s over {latency.get('count')} jobs")
    out += ["", "=== Performance Assessment ==="]
    out += [f"{'✓' if t['ok'] else '✗'} {t['name']}: {t['detail']}" for t in s["targets"]]
    out.append("All targets met" if s["passed"] else "Some targets were missed")
    return "\n".join(out)


def write_outputs(s: dict[str, Any], out_dir: Path, name: str, *, plot: bool = True
                  ) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in s.items() if not k.startswith("_")}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    paths = [path]
    if plot:
        paths.append(plot_run(s, out_dir / f"{name}.png"))
    return paths


def plot_run(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, lat, code, _hist = s["_samples"]
    rss = [x for x in (s.get("server") or {}).get("samples", []) if "rss_mb" in x]
    fig, axes = plt.subplots(3 if rss else 2, 1, figsize=(11, 11 if rss else 8))
    ax = axes[0]
    if len(t) > 40_000:
        pick = np.random.default_rng(0).choice(len(t), 40_000, replace=False)
        t, lat, code = t[pick], lat[pick], code[pick]
    for value, colour, label in ((OK, "tab:blue", "ok"), (RATE_LIMITED, "tab:orange",
                                  "rate limited"), (FAILED, "tab:red", "failed")):
        mask = code == value
        if mask.any():
            ax.scatter(t[mask], lat[mask], s=2, alpha=0.3, color=colour, label=label)
    rows = [r for r in s["timeline"] if r.get("answers")]
    if rows:
        ax.plot([r["t"] + 0.5 for r in rows], [r["p99_ms"] for r in rows], color="black",
                label="p99 per second")
        ax.plot([r["t"] + 0.5 for r in rows], [r["p50_ms"] for r in rows], color="gray",
                label="p50 per second")
        ax2 = ax.twinx()
        ax2.step([r["t"] for r in rows], [r["answers"] for r in rows], where="post",
                 color="tab:green", alpha=0.5)
        ax2.set_ylabel("answers / s", color="tab:green")
        ax2.set_ylim(bottom=0)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since start (send time)")
    ax.set_ylabel("latency, ms")
    ax.set_title(f"{s['name']}: latency over time")
    ax.legend(loc="upper left", markerscale=4, fontsize="small")
    ax = axes[1]
    pts = [(p, ms) for p, ms in s["percentiles"] if p < 100]
    xs = [1 / (1 - p / 100) for p, _ in pts]
    ax.plot(xs, [ms for _, ms in pts], marker="o")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 10, 100, 1000, 10000])
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, ms")
    ax.set_title("latency by percentile (HdrHistogram)")
    ax.grid(True, which="both", alpha=0.3)
    if rss:
        ax = axes[2]
        ax.plot([x["t"] for x in rss], [x["rss_mb"] for x in rss], color="tab:purple")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("server RSS, MB")
        ax.set_title("server memory")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
