"""Serve the app with hypercorn's trio worker; shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from enrich.config import Settings

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings, host: str, port: int) -> Config:
    """Explicit, safe server limits in one place."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # In-flight requests get this long after SIGTERM; jobs are drained in after_serving.
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.shutdown_timeout = settings.shutdown_grace_seconds + 15
    # hypercorn's read_timeout defaults to none: a silent client would hold a slot forever.
    config.read_timeout = int(settings.read_timeout_seconds)
    # hypercorn applies read_timeout to the idle wait between keep-alive requests too, so
    # a longer keep_alive_timeout would never be reached: say what really happens. A
    # proxy in front must idle out sooner (or raise READ_TIMEOUT_SECONDS above its idle).
    config.keep_alive_timeout = int(settings.read_timeout_seconds)
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.backlog = 1024
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def wait_for_signal(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    on_signal: Callable[[int], None] | None = None,
) -> None:
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
            if on_signal is not None:
                on_signal(signum)
            return


async def serve_app(
    app: QuartTrio,
    settings: Settings,
    *,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (default: SIGTERM or SIGINT)."""
    config = hypercorn_config(settings, host, port)
    await serve(
        app,
        config,
        shutdown_trigger=shutdown_trigger or wait_for_signal,
        task_status=task_status,
    )
