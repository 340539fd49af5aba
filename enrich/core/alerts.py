"""Alert evaluation: the replaced product's thresholds as a pure function over a snapshot.

Thresholds (seed): cache hit rate < 50 %, database waiting clients > 5, average response
> 5 s, error rate > 5 %, pool exhaustion. Rates need a minimum number of events before
they mean anything, so a fresh instance with an empty cache is healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CACHE_HIT_RATE_MIN = 50.0  # percent
DB_WAITING_MAX = 5
AVG_RESPONSE_MAX_S = 5.0
ERROR_RATE_MAX = 0.05
MIN_LOOKUPS = 100  # before a hit rate is judged
MIN_EVENTS = 20  # before an error rate is judged


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    severity: str  # "warning" | "critical"
    message: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Plain numbers the supervisor samples; nothing here touches I/O."""

    cache_hits: int
    cache_misses: int
    db_waiting: int
    avg_response_s: float
    responses: int
    errors: int
    events: int
    pools: Mapping[str, Mapping[str, int]]


def evaluate(s: Snapshot) -> list[Alert]:
    alerts: list[Alert] = []
    lookups = s.cache_hits + s.cache_misses
    if lookups >= MIN_LOOKUPS:
        rate = 100.0 * s.cache_hits / lookups
        if rate < CACHE_HIT_RATE_MIN:
            alerts.append(Alert("low_cache_hit_rate", "warning",
                                f"cache hit rate {rate:.1f}% is below {CACHE_HIT_RATE_MIN:.0f}%",
                                round(rate, 2), CACHE_HIT_RATE_MIN))
    if s.db_waiting > DB_WAITING_MAX:
        alerts.append(Alert("database_waiting_clients", "critical",
                            f"{s.db_waiting} tasks wait for a database connection "
                            f"(more than {DB_WAITING_MAX})",
                            float(s.db_waiting), float(DB_WAITING_MAX)))
    if s.responses and s.avg_response_s > AVG_RESPONSE_MAX_S:
        alerts.append(Alert("slow_responses", "critical",
                            f"average webhook response {s.avg_response_s:.2f}s is above "
                            f"{AVG_RESPONSE_MAX_S:.0f}s",
                            round(s.avg_response_s, 4), AVG_RESPONSE_MAX_S))
    if s.events >= MIN_EVENTS:
        rate = s.errors / s.events
        if rate > ERROR_RATE_MAX:
            alerts.append(Alert("high_error_rate", "critical",
                                f"error rate {rate:.1%} is above {ERROR_RATE_MAX:.0%}",
                                round(rate, 4), ERROR_RATE_MAX))
    for pool, stats in sorted(s.pools.items()):
        if stats.get("total", 0) and stats.get("available", 1) == 0 and stats.get("waiting", 0):
            alerts.append(Alert(f"pool_exhausted:{pool}", "warning",
                                f"{pool} pool exhausted: all {stats.get('total')} slots in use, "
                                f"{stats.get('waiting')} waiting",
                                float(stats.get("waiting", 0)), 0.0))
    return alerts
