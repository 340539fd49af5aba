"""Versioned SQL migrations: ``enrich/db/migrations/NNNN_name.sql``, applied in order.

Safe to run from several processes at once: each run takes a session-level advisory lock,
so the second process waits, then finds every version applied and does nothing. Each
migration and its bookkeeping row commit in one transaction, so a crash mid-way leaves
the schema at a whole version.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from enrich.db.connection import TrioConnection

log = logging.getLogger(__name__)

#: Any constant: two processes migrating at once serialise on it.
ADVISORY_LOCK_KEY = 0x656E72696368  # "enrich"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Every bundled migration, ordered by version; versions must be unique."""
    found: list[Migration] = []
    for entry in resources.files("enrich.db.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conn: TrioConnection[Any]) -> list[int]:
    """Apply pending migrations on ``conn`` (autocommit); return the versions applied."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
        done = {int(v): str(c) for v, c in await cur.fetchall()}
        for migration in load_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "migration changed after it was applied",
                        extra={"version": migration.version, "migration": migration.name},
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            log.info(
                "migration applied",
                extra={"version": migration.version, "migration": migration.name},
            )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now
