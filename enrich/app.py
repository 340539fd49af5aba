"""The quart-trio application factory.

``create_app`` wires settings, services and the pipeline into a QuartTrio app:

* ``before_serving`` opens the pools (and migrates), then starts the background work in
  ``app.nursery``, which exists only once serving has begun: the job runner and the
  outbox (roles ``all`` and ``worker``), and in role ``worker`` the LISTEN/NOTIFY
  listener that wakes the runner when another process stores messages (role ``all``
  hints its runner in-process);
* ``after_serving`` runs after hypercorn stopped accepting and in-flight requests ended
  (within its graceful timeout): it drains running jobs within SHUTDOWN_GRACE_SECONDS,
  cancels the rest (they are handed back to the database), and closes the pools.
"""

from __future__ import annotations

import logging
import secrets
from functools import partial
from typing import Any

import httpx
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from enrich import invalidation
from enrich.config import Settings
from enrich.extraction import Extractor
from enrich.ingest import Ingest
from enrich.media.handler import build_media_pipeline
from enrich.metrics import Metrics
from enrich.pipeline.outbox import Outbox
from enrich.pipeline.pressure import AckPressurePublisher, AckPressureReader
from enrich.pipeline.process import MediaHandler, Processor
from enrich.pipeline.runner import JobRunner, measure_lag
from enrich.pipeline.wakeup import listen as listen_for_messages
from enrich.sdnotify import SystemdNotifier
from enrich.services import Services
from enrich.state import EXTENSION_KEY, AppState, get_state
from enrich.supervisor import Supervisor
from enrich.tuning import freeze_startup_heap, thaw_startup_heap
from enrich.twilio_rest import TwilioSender
from enrich.web import health, performance, phone_api, webhook

log = logging.getLogger(__name__)

ROLES = ("all", "web", "worker")


def sending_enabled(settings: Settings) -> bool:
    """Real credentials and a sender number; in local mode only towards a local fake."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token
            and settings.twilio_phone_number):
        return False
    if settings.local_mode:
        host = httpx.URL(settings.twilio_api_base_url).host
        return host in {"127.0.0.1", "localhost", "::1"}
    return True


def create_app(
    settings: Settings,
    *,
    role: str = "all",
    run_migrations: bool = True,
    extractor: Extractor | None = None,
    media: MediaHandler | None = None,
    processor: Processor | None = None,
    notifier: SystemdNotifier | None = None,
) -> QuartTrio:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    app = QuartTrio("enrich")
    # A Twilio form is a few KB: anything much larger is not Twilio.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.read_timeout_seconds
    app.config["RESPONSE_TIMEOUT"] = 60
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    services = Services.create(settings)
    metrics = Metrics()
    ingest = Ingest(settings, services.db, services.redis)
    state = AppState(settings=settings, role=role, services=services, ingest=ingest,
                     metrics=metrics)
    app.extensions[EXTENSION_KEY] = state

    http = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.twilio_timeout_ms / 1000),
        limits=httpx.Limits(max_connections=settings.twilio_pool_max,
                            max_keepalive_connections=settings.twilio_pool_max),
        follow_redirects=False,
    )
    if role in ("all", "worker"):
        sender = None
        if sending_enabled(settings):
            assert settings.twilio_account_sid and settings.twilio_auth_token
            assert settings.twilio_phone_number
            sender = TwilioSender(
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token,
                from_number=settings.twilio_phone_number,
                api_base_url=settings.twilio_api_base_url,
                http=http,
                max_concurrency=settings.twilio_pool_max,
                timeout=settings.twilio_timeout_ms / 1000,
            )
            state.limiters["twilio"] = sender.stats
        state.outbox = Outbox(
            services.db, sender, metrics,
            owner=f"{settings.effective_instance_id}/{secrets.token_hex(4)}",
            poll_interval_s=settings.outbox_poll_interval_ms / 1000,
            retry_base_s=settings.outbox_retry_base_ms / 1000,
        )
        if media is None and processor is None and settings.twilio_account_sid:
            pipeline = build_media_pipeline(settings, metrics, extractor=extractor)
            state.limiters["mediaDownloads"] = pipeline.fetcher.stats
            state.limiters["speech"] = pipeline.speech_stats
            state.extras["breakers"] = pipeline.breaker_states
            state.extras["speech_engine"] = pipeline.engine.name
            state.closers.append(pipeline.aclose)
            media = pipeline
        # Acks first: role all paces on its own loop's lag (the default); a worker on the
        # ack pressure the web processes publish (enrich.pipeline.pressure).
        pacing: dict[str, Any] = {}
        if role == "worker":
            pacing = {"lag_probe": AckPressureReader(services.redis).probe,
                      "pacing_target_s": settings.processing_target_ack_ms / 1000}
        state.runner = JobRunner(
            settings, services.db, processor or Processor(extractor, media), metrics,
            on_done=state.outbox.wake, **pacing,
        )
        ingest.on_accepted = state.runner.notify if role == "all" else None
        runner = state.runner
        state.outbox.pace = lambda: runner.pacing.limit

    app.register_blueprint(health.bp)
    app.register_blueprint(performance.bp)
    if role in ("all", "web"):
        app.register_blueprint(webhook.bp)
        app.register_blueprint(phone_api.bp)

    supervisor = Supervisor(state, notifier)
    state.extras["supervisor"] = supervisor

    @app.before_serving
    async def startup() -> None:
        await services.open(run_migrations=run_migrations)
        # The supervisor restarts any of these that dies; readiness reports it meanwhile.
        await app.nursery.start(supervisor.run)
        if role in ("all", "web"):
            assert settings.redis_url is not None
            listener = partial(invalidation.listen, settings.redis_url, ingest.invalidate,
                               ingest.clear_caches)
            await app.nursery.start(supervisor.keep_running, "invalidation", listener)
            # Tell workers (in other processes) how the acks are doing.
            publisher = AckPressurePublisher(services.redis, metrics, measure_lag)
            state.extras["ack_pressure"] = publisher
            await app.nursery.start(supervisor.keep_running, "ackPressure", publisher.run)
        if state.runner is not None:
            await app.nursery.start(supervisor.keep_running, "runner", state.runner.run)
        if role == "worker" and state.runner is not None:
            # Webhooks run in other processes: their INSERTs notify us (migration 0002).
            assert settings.database_url is not None
            wakeup = partial(
                listen_for_messages, settings.database_url, state.runner.poke,
                timeout=settings.database_connect_timeout_ms / 1000,
                application_name=f"enrich:{settings.effective_instance_id}:wakeup",
            )
            await app.nursery.start(supervisor.keep_running, "wakeup", wakeup)
        if state.outbox is not None:
            await app.nursery.start(supervisor.keep_running, "outbox", state.outbox.run)
        # Everything allocated so far lives until exit: keep it out of later collections.
        frozen = freeze_startup_heap()
        log.info("serving", extra={"role": role, "frozen_objects": frozen})

    @app.after_serving
    async def shutdown() -> None:
        # hypercorn has stopped accepting and in-flight requests are done: drain jobs.
        if state.runner is not None:
            await state.runner.drain(settings.shutdown_grace_seconds)
        if state.outbox is not None:
            state.outbox.stop()
        for closer in state.closers:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await closer()
        await http.aclose()
        supervisor.shutdown_cleanup()
        await services.close()
        thaw_startup_heap()
        log.info("services closed")

    @app.before_request
    async def read_body_first() -> None:
        # Answering before the request body has arrived (a 401, 404 or 415 decided from
        # the headers) leaves hypercorn's keep-alive connection unable to serve the next
        # request: the client waits for an answer that never comes. Every body is capped
        # (MAX_CONTENT_LENGTH, BODY_TIMEOUT), so receive it whole first; handlers read it
        # again from the cache.
        await request.get_data()

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        # Always a short JSON reason, never an HTML page or a stack trace.
        response: Response = jsonify(
            {"success": False, "error": exc.name, "reason": exc.description or exc.name}
        )
        response.status_code = exc.code or 500
        if response.status_code == 413:
            # The rest of the body was never read: the connection cannot carry another
            # request (hypercorn would leave the next one unanswered), so close it.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"error": type(exc).__name__})
        metrics.errors += 1
        response: Response = jsonify(
            {"success": False, "error": "Service Unavailable", "reason": "temporary failure"}
        )
        response.status_code = 503
        return response

    return app


__all__ = ["create_app", "get_state"]
