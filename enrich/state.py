"""What one running app holds: settings, services and its background tasks' health."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quart import Quart

from enrich.config import Settings
from enrich.ingest import Ingest
from enrich.metrics import Metrics
from enrich.pipeline.outbox import Outbox
from enrich.pipeline.runner import JobRunner
from enrich.services import Services

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
    extras: dict[str, Any] = field(default_factory=dict)

    def task_health(self) -> dict[str, dict[str, Any]]:
        return {f"task:{name}": t.as_dict() for name, t in self.tasks.items()}


def get_state(app: Quart) -> AppState:
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, AppState):
        raise TypeError("the enrich app state is not initialised")
    return state
