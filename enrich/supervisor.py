"""The supervisor: keeps background tasks alive and the process tidy.

Runs in ``app.nursery`` and owns:

* **task supervision**: the job runner, the outbox, the cache-invalidation listener and
  the new-message listener (``enrich.pipeline.wakeup``, role worker)
  run under ``keep_running``; if one dies it is logged, restarted with backoff, and
  readiness reports it (``/health/ready`` lists ``task:<name>``) until it runs again;
* **temp cleanup** of this instance's own temp subdirectory: everything at start (left by
  a crash), files older than TEMP_MAX_AGE_DAYS every TEMP_CLEANUP_INTERVAL, everything at
  shutdown;
* **metrics sampling** every METRICS_INTERVAL_SECONDS (pools, queue, RSS) and **alert
  evaluation** against the seed's thresholds, logged as warnings when they start;
* **watchdog pings** to systemd from the trio loop (if the loop stalls, pings stop and
  systemd restarts us: that is the point).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import psutil
import trio

from enrich.core.alerts import Alert, Snapshot, evaluate
from enrich.sdnotify import SystemdNotifier, run_watchdog
from enrich.state import AppState, TaskHealth

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 30.0


class Startable(Protocol):
    def __call__(self, *, task_status: trio.TaskStatus[Any] = ...) -> Awaitable[None]: ...


def instance_temp_dir(state: AppState) -> Path:
    """This instance's own temp subdirectory (instances never clean each other's)."""
    return state.settings.effective_temp_dir / state.settings.effective_instance_id


def clean_temp(directory: Path, *, older_than_s: float | None) -> int:
    """Delete files (and emptied subdirectories) in ``directory``; return files removed."""
    if not directory.exists():
        return 0
    removed = 0
    cutoff = None if older_than_s is None else time.time() - older_than_s
    for entry in list(directory.iterdir()):
        try:
            if entry.is_dir() and not entry.is_symlink():
                if cutoff is None:
                    removed += sum(1 for p in entry.rglob("*") if p.is_file())
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            if cutoff is None or entry.lstat().st_mtime < cutoff:
                entry.unlink(missing_ok=True)
                removed += 1
        except OSError as exc:
            log.warning("temp cleanup could not remove a file", extra={"error": str(exc)})
    return removed


class Supervisor:
    def __init__(self, state: AppState, notifier: SystemdNotifier | None = None) -> None:
        self.state = state
        self.notifier = notifier
        self.alerts: list[Alert] = []
        self.samples: dict[str, Any] = {}
        self._active_alerts: set[str] = set()

    # --- task supervision -------------------------------------------------------------

    async def keep_running(
        self,
        name: str,
        fn: Callable[..., Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``fn`` (a ``nursery.start``-style task); restart it whenever it crashes.

        Startup waits for the first successful start, not for the task to finish. A task
        that returns normally is done (e.g. the outbox when sending is disabled).
        """
        health = self.state.tasks.setdefault(name, TaskHealth())
        delay = 0.5
        announced = False
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(fn)
                    health.running = True
                    health.last_error = None
                    delay = 0.5
                    if not announced:
                        task_status.started()
                        announced = True
                return
            except Exception as exc:  # an ExceptionGroup from the task's nursery, usually
                health.running = False
                health.restarts += 1
                health.last_error = _describe(exc)
                log.error("supervised task died; restarting",
                          extra={"task": name, "error": health.last_error,
                                 "restart_in_s": delay})
                if not announced:
                    task_status.started()
                    announced = True
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)

    # --- the supervisor's own loops ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        removed = clean_temp(instance_temp_dir(self.state), older_than_s=None)
        if removed:
            log.info("removed temp files left by an earlier run", extra={"files": removed})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cleanup_loop)
            nursery.start_soon(self._sample_loop)
            if self.notifier is not None and self.notifier.enabled:
                await nursery.start(run_watchdog, self.notifier)
            task_status.started()

    def shutdown_cleanup(self) -> None:
        clean_temp(instance_temp_dir(self.state), older_than_s=None)

    async def _cleanup_loop(self) -> None:
        settings = self.state.settings
        max_age = settings.temp_max_age_days * 86_400
        while True:
            await trio.sleep(settings.temp_cleanup_interval)
            removed = await trio.to_thread.run_sync(
                lambda: clean_temp(instance_temp_dir(self.state), older_than_s=max_age)
            )
            if removed:
                log.info("removed old temp files", extra={"files": removed})

    async def _sample_loop(self) -> None:
        while True:
            self.sample()
            try:
                await self.state.services.db.trim_idle()
            except Exception as exc:
                log.debug("idle trim failed", extra={"error": type(exc).__name__})
            await trio.sleep(self.state.settings.metrics_interval_seconds)

    def sample(self) -> list[Alert]:
        """Take one sample and evaluate alerts; log alerts when they start and end."""
        state = self.state
        pools = state.pool_stats()
        caches = state.cache_stats()
        metrics = state.metrics
        self.samples = {
            "timestamp": time.time(),
            "rssBytes": psutil.Process(os.getpid()).memory_info().rss,
            "queueDepth": state.runner.queue_depth if state.runner else 0,
            "inFlight": state.runner.in_flight if state.runner else 0,
            "pools": pools,
        }
        snapshot = Snapshot(
            cache_hits=sum(c["hits"] for name, c in caches.items() if name != "rateLimit"),
            cache_misses=sum(c["misses"] for name, c in caches.items() if name != "rateLimit"),
            db_waiting=pools["postgres"]["waiting"],
            avg_response_s=metrics.ack.mean,
            responses=metrics.ack.count,
            errors=metrics.webhooks["error"] + metrics.jobs["failed"] + metrics.errors,
            events=metrics.webhook_total + sum(metrics.jobs.values()),
            pools=pools,
        )
        self.alerts = evaluate(snapshot)
        names = {a.name for a in self.alerts}
        for alert in self.alerts:
            if alert.name not in self._active_alerts:
                log.warning("alert: " + alert.message,
                            extra={"alert": alert.name, "severity": alert.severity})
        for ended in self._active_alerts - names:
            log.info("alert cleared", extra={"alert": ended})
        self._active_alerts = names
        return self.alerts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {str(exc)[:200]}"
