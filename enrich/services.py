"""The process's shared resources, opened at start and closed at exit.

One object holds every pool and client so handlers, the job runner and the supervisor
reach the same instances (and the same statistics) through ``app.extensions["enrich"]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio

from enrich.config import Settings
from enrich.db.migrate import migrate
from enrich.db.pool import ConnectionPool
from enrich.redis_client import RedisClient

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: ConnectionPool
    redis: RedisClient
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        if settings.database_url is None or settings.redis_url is None:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before services open")
        db = ConnectionPool(
            settings.database_url,
            min_size=settings.database_pool_min,
            max_size=settings.database_pool_max,
            connect_timeout=settings.database_connect_timeout_ms / 1000,
            acquire_timeout=settings.database_acquire_timeout_ms / 1000,
            idle_timeout=settings.database_idle_timeout_ms / 1000,
            application_name=f"enrich:{settings.effective_instance_id}",
        )
        redis = RedisClient(
            settings.redis_url,
            min_size=settings.redis_pool_min,
            max_size=settings.redis_pool_max,
            timeout=settings.redis_timeout_ms / 1000,
        )
        return cls(settings=settings, db=db, redis=redis)

    async def open(self, *, run_migrations: bool = True) -> None:
        if run_migrations:
            async with self.db.connection(timeout=30) as conn:
                applied = await migrate(conn)
            if applied:
                log.info("database migrated", extra={"versions": applied})
        await self.db.open()
        await self.redis.open()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.db.close()
            await self.redis.close()
