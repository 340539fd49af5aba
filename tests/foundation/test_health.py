"""Health probes on a real server: live touches nothing, ready names what fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from enrich.config import Settings
from tests.conftest import make_settings


async def test_live_and_ready(served: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=served["url"]) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]


async def test_unknown_route_is_a_json_404(served: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=served["url"]) as client:
        response = await client.post("/nope")
        assert response.status_code == 404
        assert response.json()["success"] is False


async def test_ready_names_redis_when_it_is_down(
    tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery
) -> None:
    from enrich.app import create_app
    from enrich.server import serve_app

    settings: Settings = make_settings(
        tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url, REDIS_POOL_MIN="0"
    )
    app = create_app(settings)
    stop = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve_app(
            app, settings, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
            task_status=task_status,
        )
    )
    # Point the running app's Redis client at a dead address, as if Redis went away.
    from enrich.redis_client import RedisClient
    from enrich.state import get_state

    get_state(app).services.redis = RedisClient("redis://127.0.0.1:1/0", min_size=0, timeout=0.2)
    async with httpx.AsyncClient(base_url=binds[0]) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["failing"] == ["redis"]
        assert body["checks"]["database"]["ok"] is True
    stop.set()
