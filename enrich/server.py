"""Serve the app with hypercorn's trio worker; shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
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


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


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
    if settings.web_reuse_port:
        # hypercorn sets SO_REUSEPORT only in its own multi-worker mode; bind the socket
        # here and hand it over by descriptor (hypercorn owns the descriptor from then).
        config.bind = [f"fd://{reuse_port_socket(host, port).detach()}"]
    await serve(
        app,
        config,
        shutdown_trigger=shutdown_trigger or wait_for_signal,
        task_status=task_status,
    )
