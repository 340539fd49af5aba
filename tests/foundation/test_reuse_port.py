"""WEB_REUSE_PORT: several processes' servers on one port, the kernel sharing connections."""

from __future__ import annotations

import errno
import socket
from functools import partial

import httpx
import pytest
import trio
from quart_trio import QuartTrio

from enrich.config import Settings
from enrich.server import serve_app

SHARED = {"DATABASE_URL": "postgresql://db/enrich", "REDIS_URL": "redis://cache:6379/0"}


def _app(name: str) -> QuartTrio:
    app = QuartTrio(name)

    @app.get("/who")
    async def who() -> str:
        return name

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_two_servers_share_a_port_and_both_answer() -> None:
    port = _free_port()
    stops = [trio.Event(), trio.Event()]
    async with trio.open_nursery() as nursery:
        for i, stop in enumerate(stops):
            settings = Settings.from_env(
                {"WEB_REUSE_PORT": "true", "INSTANCE_ID": f"web-{i}", **SHARED})
            await nursery.start(partial(serve_app, _app(f"web-{i}"), settings,
                                        host="127.0.0.1", port=port, shutdown_trigger=stop.wait))
        seen: set[str] = set()
        with trio.fail_after(20):
            for _ in range(64):  # a new connection each time: the kernel picks a listener
                async with httpx.AsyncClient(timeout=5) as client:
                    reply = await client.get(f"http://127.0.0.1:{port}/who")
                assert reply.status_code == 200
                seen.add(reply.text)
                if len(seen) == 2:
                    break
        for stop in stops:
            stop.set()
    assert seen == {"web-0", "web-1"}


async def test_without_reuse_port_the_second_server_cannot_bind() -> None:
    port = _free_port()
    settings = Settings.from_env(SHARED)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_app, _app("first"), settings, host="127.0.0.1",
                                    port=port, shutdown_trigger=stop.wait))
        with pytest.raises(BaseException) as info:
            await nursery.start(partial(serve_app, _app("second"), settings,
                                        host="127.0.0.1", port=port,
                                        shutdown_trigger=trio.sleep_forever))
        stop.set()
    assert _addr_in_use(info.value)


def _addr_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_addr_in_use(e) for e in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
