"""The quart-trio application factory.

``create_app`` wires settings and services into a QuartTrio app. Pools open and
migrations run in ``before_serving``; background work (job runner, outbox, supervisor)
starts in ``app.nursery`` once serving has begun; ``after_serving`` drains it within
SHUTDOWN_GRACE_SECONDS and closes the pools, so hypercorn's graceful shutdown holds.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from enrich.config import Settings
from enrich.services import Services
from enrich.state import EXTENSION_KEY, AppState, get_state
from enrich.web import health

log = logging.getLogger(__name__)

ROLES = ("all", "web", "worker")


def create_app(settings: Settings, *, role: str = "all", run_migrations: bool = True) -> QuartTrio:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    app = QuartTrio("enrich")
    # A Twilio form is a few KB: anything much larger is not Twilio.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.read_timeout_seconds
    app.config["RESPONSE_TIMEOUT"] = 60
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    state = AppState(settings=settings, role=role, services=Services.create(settings))
    app.extensions[EXTENSION_KEY] = state

    app.register_blueprint(health.bp)

    @app.before_serving
    async def startup() -> None:
        await state.services.open(run_migrations=run_migrations)
        log.info("services open", extra={"role": role})

    @app.after_serving
    async def shutdown() -> None:
        await state.services.close()
        log.info("services closed")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        # Always a short JSON reason, never an HTML page or a stack trace.
        response: Response = jsonify(
            {"success": False, "error": exc.name, "reason": exc.description or exc.name}
        )
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"error": type(exc).__name__})
        response: Response = jsonify(
            {"success": False, "error": "Service Unavailable", "reason": "temporary failure"}
        )
        response.status_code = 503
        return response

    return app


__all__ = ["create_app", "get_state"]
