"""What one running app holds: settings, services and its background tasks' health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from quart import Quart

from enrich.config import Settings
from enrich.ingest import Ingest
from enrich.metrics import Metrics
from enrich.pipeline.outbox import Outbox
from enrich.pipeline.runner import JobRunner
from enrich.services import Services
from enrich.twilio_rest import limiter_stats

EXTENSION_KEY = "enrich"


@dataclass
class TaskHealth:
    """Health of one supervised background task, as readiness reports it."""

    running: bool = False
    restarts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.running,
            "restarts": self.restarts,
            **({"error": self.last_error} if self.last_error else {}),
        }


@dataclass
class AppState:
    settings: Settings
    role: str
    services: Services
    ingest: Ingest
    metrics: Metrics
    runner: JobRunner | None = None
    outbox: Outbox | None = None
    tasks: dict[str, TaskHealth] = field(default_factory=dict)
    #: Live statistics of every limiter-fronted pool, by name (see pool_stats).
    limiters: dict[str, Callable[[], dict[str, int]]] = field(default_factory=dict)
    #: Async closers run at shutdown (media pipeline, speech clients, ...).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def task_health(self) -> dict[str, dict[str, Any]]:
        return {f"task:{name}": t.as_dict() for name, t in self.tasks.items()}

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """PostgreSQL, Redis, Speech, Twilio and media downloads, never null.

        A pool this process does not use (e.g. Speech with STT_ENGINE=none, or Twilio in
        a web-only process) reports its configured size, all of it available.
        """
        s = self.settings
        configured = {
            "speech": s.speech_pool_max,
            "twilio": s.twilio_pool_max,
            "mediaDownloads": s.media_download_concurrency,
        }
        stats: dict[str, dict[str, int]] = {
            "postgres": self.services.db.stats().as_dict(),
            "redis": self.services.redis.stats(),
        }
        for name, size in configured.items():
            reader = self.limiters.get(name)
            stats[name] = reader() if reader else {
                "total": size, "available": size, "inUse": 0, "waiting": 0,
            }
        if self.runner is not None:
            stats["processing"] = {
                "total": int(self.runner.limiter.total_tokens),
                "available": int(self.runner.limiter.available_tokens),
                "inUse": int(self.runner.limiter.borrowed_tokens),
                "waiting": self.runner.queue_depth,
            }
            # The paced share of it (enrich.pipeline.gate): jobs working here, not
            # waiting on a download or a Speech call; total follows the pacing signal.
            stats["processingPaced"] = limiter_stats(self.runner.gate)
        return stats

    def caches(self) -> dict[str, Any]:
        return {
            "phoneNumber": self.ingest.phone_cache,
            "verification": self.ingest.verification_cache,
            "rateLimit": self.ingest.limiter.status_cache,
        }

    def cache_stats(self) -> dict[str, dict[str, Any]]:
        return {name: cache.stats().as_dict() for name, cache in self.caches().items()}


def get_state(app: Quart) -> AppState:
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, AppState):
        raise TypeError("the enrich app state is not initialised")
    return state
