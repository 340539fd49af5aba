"""Liveness and readiness probes (open: load balancers and systemd call them)."""

from __future__ import annotations

import time
from typing import Any

import trio
from quart import Blueprint, current_app

from enrich.state import get_state

bp = Blueprint("health", __name__)

READY_DEADLINE_S = 1.0


@bp.get("/health/live")
async def live() -> tuple[dict[str, Any], int]:
    """The process answers: touches no dependency, so a slow database can't fail it."""
    return {"status": "ok"}, 200


async def check_dependencies(deadline: float = READY_DEADLINE_S) -> dict[str, dict[str, Any]]:
    """Ping PostgreSQL and Redis concurrently, each under its own short deadline."""
    state = get_state(current_app)
    results: dict[str, dict[str, Any]] = {}

    async def probe(name: str, ping: Any) -> None:
        start = time.perf_counter()
        try:
            with trio.fail_after(deadline):
                await ping(timeout=deadline)
        except trio.TooSlowError:
            results[name] = {"ok": False, "error": f"no answer within {deadline:.1f}s"}
        except Exception as exc:
            results[name] = {"ok": False, "error": type(exc).__name__}
        else:
            took_ms = round((time.perf_counter() - start) * 1000, 2)
            results[name] = {"ok": True, "latencyMs": took_ms}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "database", state.services.db.ping)
        nursery.start_soon(probe, "redis", state.services.redis.ping)
    return results


@bp.get("/health/ready")
async def ready() -> tuple[dict[str, Any], int]:
    state = get_state(current_app)
    checks = await check_dependencies()
    for name, status in state.task_health().items():
        checks[name] = status
    failing = sorted(name for name, c in checks.items() if not c["ok"])
    body: dict[str, Any] = {"status": "ready" if not failing else "not_ready", "checks": checks}
    if failing:
        body["failing"] = failing
        return body, 503
    return body, 200
