"""Counters and histograms kept in plain Python, exposed two ways.

The same numbers feed the JSON performance API (``/api/sms/performance/*``) and the
Prometheus exposition (``/metrics``): a custom prometheus-client collector reads them at
scrape time, so there is one source of truth and no label ever holds a phone number or
an id. Names follow Prometheus conventions: ``enrich_`` prefix, base units, ``_total``
for counters.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class Metrics:
    """Everything counted in this process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.time()
        self.webhooks: Counter[str] = Counter()
        self.ack = Histogram(LATENCY_BUCKETS)
        self.jobs: Counter[str] = Counter()
        self.job_latency = Histogram(JOB_BUCKETS)
        self.media_bytes = 0
        self.media_aborts: Counter[str] = Counter()
        self.transcription = Histogram(JOB_BUCKETS)
        self.notifications: Counter[str] = Counter()
        self.errors = 0
        self.ack_peak = 0.0  # the slowest answer since take_ack_peak() last ran

    # --- recording ----------------------------------------------------------------------

    def webhook_answered(self, outcome: str, seconds: float) -> None:
        self.webhooks[outcome] += 1
        self.ack.observe(seconds)
        if seconds > self.ack_peak:
            self.ack_peak = seconds

    def webhook_failed(self, seconds: float) -> None:
        """A webhook that ended in an error (a 503): no outcome, but its time counts for
        the ack pressure, since the slowest answers are often these."""
        if seconds > self.ack_peak:
            self.ack_peak = seconds

    def take_ack_peak(self) -> float:
        """The slowest answer since the previous call (0 if none): the ack-pressure beat."""
        peak, self.ack_peak = self.ack_peak, 0.0
        return peak

    def job_finished(self, outcome: str, seconds: float | None = None) -> None:
        self.jobs[outcome] += 1
        if seconds is not None:
            self.job_latency.observe(seconds)

    # --- summaries ----------------------------------------------------------------------

    @property
    def webhook_total(self) -> int:
        return sum(self.webhooks.values())

    @property
    def error_rate(self) -> float:
        """Share (0-1) of webhooks answered with an error or jobs that failed."""
        bad = self.webhooks["error"] + self.jobs["failed"]
        total = self.webhook_total + sum(self.jobs.values())
        return bad / total if total else 0.0


class MetricsCollector(Collector):
    """Builds Prometheus families from ``Metrics`` and live pool/cache readers."""

    def __init__(self, metrics: Metrics, gauges: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        c = CounterMetricFamily(
            "enrich_webhook_requests", "Webhook deliveries answered, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(m.webhooks.items()):
            c.add_metric([outcome], n)
        yield c
        yield _histogram("enrich_webhook_ack_seconds", "Time to answer a webhook", m.ack)
        c = CounterMetricFamily(
            "enrich_jobs", "Processing attempts, by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(m.jobs.items()):
            c.add_metric([outcome], n)
        yield c
        yield _histogram(
            "enrich_job_latency_seconds", "From webhook receipt to items stored", m.job_latency
        )
        yield CounterMetricFamily(
            "enrich_media_bytes", "Media bytes downloaded", value=m.media_bytes
        )
        c = CounterMetricFamily(
            "enrich_media_aborts", "Media downloads aborted, by reason", labels=["reason"]
        )
        for reason, n in sorted(m.media_aborts.items()):
            c.add_metric([reason], n)
        yield c
        yield _histogram(
            "enrich_transcription_seconds", "Time spent transcribing", m.transcription
        )
        c = CounterMetricFamily(
            "enrich_notifications", "Outbound SMS, by result", labels=["result"]
        )
        for result, n in sorted(m.notifications.items()):
            c.add_metric([result], n)
        yield c
        yield from _gauge_families(self.gauges())


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.total)


def _gauge_families(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """Pools, caches, queue, breakers and rate limiting, read live at scrape time."""
    pools = GaugeMetricFamily(
        "enrich_pool_slots", "Pool and limiter slots by state", labels=["pool", "state"]
    )
    for pool, stats in sorted(snapshot.get("pools", {}).items()):
        for state in ("total", "available", "inUse", "waiting"):
            pools.add_metric([pool, _snake(state)], float(stats.get(state, 0)))
    yield pools
    hits = CounterMetricFamily("enrich_cache_hits", "Cache hits", labels=["cache"])
    misses = CounterMetricFamily("enrich_cache_misses", "Cache misses", labels=["cache"])
    size = GaugeMetricFamily("enrich_cache_entries", "Cache entries", labels=["cache"])
    for name, stats in sorted(snapshot.get("caches", {}).items()):
        hits.add_metric([name], stats["hits"])
        misses.add_metric([name], stats["misses"])
        size.add_metric([name], stats["size"])
    yield hits
    yield misses
    yield size
    yield GaugeMetricFamily(
        "enrich_job_queue_depth", "Jobs waiting in memory for a worker",
        value=snapshot.get("queue_depth", 0),
    )
    yield GaugeMetricFamily(
        "enrich_jobs_in_flight", "Jobs being processed", value=snapshot.get("in_flight", 0)
    )
    breaker = GaugeMetricFamily(
        "enrich_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
        labels=["service"],
    )
    for service, state in sorted(snapshot.get("breakers", {}).items()):
        breaker.add_metric([service], state)
    yield breaker
    yield CounterMetricFamily(
        "enrich_rate_limit_rejections", "Messages refused by the rate limit",
        value=snapshot.get("rate_limit_rejections", 0),
    )
    yield GaugeMetricFamily(
        "enrich_rate_limit_fallback", "1 while Redis is down and limits are in-process",
        value=1.0 if snapshot.get("rate_limit_fallback") else 0.0,
    )


def _snake(name: str) -> str:
    return "in_use" if name == "inUse" else name
