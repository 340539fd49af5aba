"""The performance API (``/api/sms/performance/*``) and Prometheus ``/metrics``.

Responses keep the replaced product's ``{"success": ..., "data": ...}`` wrapper.
``health`` is open (load balancers call it); the rest need ``Authorization: Bearer
ADMIN_TOKEN`` and answer 404 when ADMIN_TOKEN is unset, so an unconfigured deployment
exposes nothing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from quart import Blueprint, Response, current_app, request

from enrich.metrics import MetricsCollector
from enrich.state import AppState, get_state
from enrich.web.health import check_dependencies

PREFIX = "/api/sms/performance"
bp = Blueprint("performance", __name__)

Handler = Callable[..., Awaitable[Any]]


def _admin_only(fn: Handler) -> Handler:
    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = get_state(current_app).settings.admin_token
        if not token:
            return {"success": False, "error": "Not Found",
                    "reason": "the performance API is disabled (ADMIN_TOKEN is not set)"}, 404
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            reason = "missing bearer token" if not header else "invalid admin token"
            return {"success": False, "error": "Unauthorized", "reason": reason}, 401
        return await fn(*args, **kwargs)

    return wrapper


def _cache_view(state: AppState) -> dict[str, Any]:
    stats = state.cache_stats()
    # The aggregate covers the lookup caches. The rate-limit cache only remembers blocked
    # senders, so every allowed message is a "miss" there by design: it has its own view.
    lookup = [stats["phoneNumber"], stats["verification"]]
    hits = sum(c["hits"] for c in lookup)
    misses = sum(c["misses"] for c in lookup)
    lookups = hits + misses
    db = state.services.db

    def view(name: str) -> dict[str, Any]:
        c = stats[name]
        return {"size": c["size"], "max": c["max"], "hitRate": c["hitRate"],
                "hits": c["hits"], "misses": c["misses"]}

    return {
        "phoneNumberCache": view("phoneNumber"),
        "verificationCache": view("verification"),
        "rateLimitCache": view("rateLimit"),
        "metrics": {
            "cacheHits": hits,
            "cacheMisses": misses,
            "hitRate": round(100.0 * hits / lookups, 2) if lookups else 0.0,
            "dbQueries": db.borrows,
            "avgQueryTime": db.avg_query_ms,
        },
    }


async def _database_view(state: AppState) -> dict[str, Any]:
    checks = await check_dependencies()
    stats = state.services.db.stats()
    return {
        "healthy": bool(checks["database"]["ok"]),
        "totalConnections": stats.total,
        "idleConnections": stats.idle,
        "activeConnections": stats.inUse,
        "waitingClients": stats.waiting,
        "maxConnections": stats.max,
        "minConnections": stats.min,
        "latencyMs": checks["database"].get("latencyMs"),
    }


def _pipeline_view(state: AppState) -> dict[str, Any]:
    m = state.metrics
    return {
        "role": state.role,
        "queueDepth": state.runner.queue_depth if state.runner else 0,
        "inFlight": state.runner.in_flight if state.runner else 0,
        "webhooks": dict(m.webhooks),
        "jobs": dict(m.jobs),
        "notifications": dict(m.notifications),
        "ackLatencyMs": {"avg": round(m.ack.mean * 1000, 3), "count": m.ack.count},
        "jobLatencySeconds": {"avg": round(m.job_latency.mean, 3), "count": m.job_latency.count},
        "rateLimit": {
            "rejections": state.ingest.limiter.rejections,
            "fallbackEngaged": state.ingest.limiter.fallback_engaged,
        },
        # Round trips the webhooks shared (enrich.batching): items per batch grows
        # with the load.
        "batching": {
            "inserts": state.ingest.inserts.stats(),
            "ownerLookups": state.ingest.lookups.stats(),
            "rateLimitChecks": state.ingest.limiter.batcher.stats(),
        },
        "since": m.since,
    }


def _alerts(state: AppState) -> list[dict[str, Any]]:
    supervisor = state.extras.get("supervisor")
    if supervisor is None:
        return []
    return [a.as_dict() for a in supervisor.sample()]


@bp.get(f"{PREFIX}/stats")
@_admin_only
async def stats() -> Any:
    state = get_state(current_app)
    return {"success": True, "data": {
        "cache": _cache_view(state),
        "database": await _database_view(state),
        "connectionPools": state.pool_stats(),
        "pipeline": _pipeline_view(state),
        "alerts": _alerts(state),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }}


@bp.get(f"{PREFIX}/cache")
@_admin_only
async def cache() -> Any:
    return {"success": True, "data": _cache_view(get_state(current_app))}


@bp.delete(f"{PREFIX}/cache")
@bp.post(f"{PREFIX}/cache/clear")
@_admin_only
async def clear_cache() -> Any:
    state = get_state(current_app)
    state.ingest.clear_caches()
    return {"success": True, "data": {"cleared": sorted(state.caches())}}


@bp.get(f"{PREFIX}/database")
@_admin_only
async def database() -> Any:
    return {"success": True, "data": await _database_view(get_state(current_app))}


@bp.get(f"{PREFIX}/connections")
@_admin_only
async def connections() -> Any:
    return {"success": True, "data": get_state(current_app).pool_stats()}


@bp.post(f"{PREFIX}/reset")
@_admin_only
async def reset() -> Any:
    state = get_state(current_app)
    state.metrics.reset()
    state.services.db.reset_counters()
    for batcher in (state.ingest.inserts, state.ingest.lookups, state.ingest.limiter.batcher):
        batcher.reset_stats()
    for c in state.caches().values():
        c.reset_stats()
    return {"success": True, "data": {"reset": True}}


@bp.get(f"{PREFIX}/health")
async def health() -> Any:
    """Open: healthy (200) or degraded (503) with the reasons."""
    state = get_state(current_app)
    checks = await check_dependencies()
    reasons = [f"{name}: {c.get('error', 'failing')}" for name, c in checks.items() if not c["ok"]]
    reasons += [f"{name} is not running" for name, t in state.task_health().items() if not t["ok"]]
    critical = [a for a in _alerts(state) if a["severity"] == "critical"]
    reasons += [a["message"] for a in critical]
    body: dict[str, Any] = {
        "status": "degraded" if reasons else "healthy",
        "checks": checks,
        "uptimeSeconds": round(time.monotonic() - state.services.started_at, 1),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if reasons:
        body["reasons"] = reasons
        return {"success": False, "data": body}, 503
    return {"success": True, "data": body}, 200


@bp.get("/metrics")
async def metrics() -> Response:
    state = get_state(current_app)
    registry = state.extras.get("registry")
    if registry is None:
        registry = CollectorRegistry()
        registry.register(MetricsCollector(state.metrics, lambda: _gauges(state)))
        registry.register(ProcessCollector(registry=None))
        state.extras["registry"] = registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _gauges(state: AppState) -> dict[str, Any]:
    breakers = state.extras.get("breakers")
    return {
        "pools": state.pool_stats(),
        "caches": state.cache_stats(),
        "queue_depth": state.runner.queue_depth if state.runner else 0,
        "in_flight": state.runner.in_flight if state.runner else 0,
        "breakers": breakers() if callable(breakers) else {},
        "rate_limit_rejections": state.ingest.limiter.rejections,
        "rate_limit_fallback": state.ingest.limiter.fallback_engaged,
    }
