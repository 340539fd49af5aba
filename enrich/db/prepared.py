"""Prepared statements sent straight through libpq, for the webhook's one statement.

Every accepted webhook stores its message with one INSERT (shared with whoever queued
behind the previous one, enrich.batching), on a process that is CPU-bound under load.
psycopg's cursor path costs that loop more than the round trip itself: it adapts each
parameter through its type registry, keeps the statement in its prepared-statement
cache, builds a cursor and rows through the row factory. Measured one INSERT at a time
on this machine, alternated: 153-155 µs of CPU per single-row call through
``conn.execute`` against 118-136 µs through this module, and 250-253 against 133-138 µs
for three rows (psycopg's ``unnest`` of column arrays against a multi-row ``VALUES``).
This module only encodes text parameters, prepares each statement once per connection
under its own name and reads the answer cell by cell.

The trade: parameters are text (``str``, or ``None`` for NULL), so SQL casts name any
other type, and the caller gets a ``PGresult``. The waits are the connection's own
(``TrioConnection.wait``), so a cancelled statement is cancelled server-side and the
connection comes back idle or closed, exactly as on psycopg's path; errors are
psycopg's exceptions (``IntegrityError``, ``DataError``...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as e
from psycopg import generators, pq

from enrich.db.connection import TrioConnection

# psycopg names its own prepared statements "_pg3_<n>"; ours never collide with them.
NAME_PREFIX = "enrich_"

# What psycopg raises for the same value, so callers see one error either way.
NUL_MESSAGE = "PostgreSQL text fields cannot contain NUL (0x00) bytes"


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement with ``$n`` placeholders, prepared under ``name`` where first used."""

    name: str
    sql: str

    def __post_init__(self) -> None:
        if not self.name.startswith(NAME_PREFIX):
            raise ValueError(f"statement names start with {NAME_PREFIX!r}: {self.name!r}")


def encode_params(params: Sequence[str | None]) -> list[bytes | None]:
    """Text parameters as libpq takes them. libpq sends text parameters as C strings,
    so a NUL would silently cut the value short: refuse it as psycopg does."""
    encoded: list[bytes | None] = []
    for value in params:
        if value is None:
            encoded.append(None)
            continue
        if "\x00" in value:
            raise psycopg.DataError(NUL_MESSAGE)
        encoded.append(value.encode("utf-8"))
    return encoded


async def execute(
    conn: TrioConnection[Any], statement: Statement, params: Sequence[str | None]
) -> pq.abc.PGresult:
    """Run ``statement`` with ``params`` on ``conn`` (autocommit); its result.

    Prepared on this connection the first time, and again if the server has forgotten
    it (a ``DEALLOCATE``).
    """
    values = encode_params(params)
    async with conn.lock:
        pgconn = conn.pgconn
        name = statement.name.encode("ascii")
        if statement.name not in conn.prepared_here:
            await _prepare(conn, name, statement)
        pgconn.send_query_prepared(name, values)
        result = await _last_result(conn)
        if _forgotten(result):
            conn.prepared_here.discard(statement.name)
            await _prepare(conn, name, statement)
            pgconn.send_query_prepared(name, values)
            result = await _last_result(conn)
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise e.error_from_result(result, encoding=conn.info.encoding)
    return result


async def _prepare(conn: TrioConnection[Any], name: bytes, statement: Statement) -> None:
    conn.pgconn.send_prepare(name, statement.sql.encode("utf-8"))
    result = await _last_result(conn)
    if result.status != pq.ExecStatus.COMMAND_OK:
        raise e.error_from_result(result, encoding=conn.info.encoding)
    conn.prepared_here.add(statement.name)


async def _last_result(conn: TrioConnection[Any]) -> pq.abc.PGresult:
    results: list[pq.abc.PGresult] = await conn.wait(generators.execute(conn.pgconn))
    return results[-1]


def _forgotten(result: pq.abc.PGresult) -> bool:
    """The server no longer has the statement (SQLSTATE 26000)."""
    return (result.status == pq.ExecStatus.FATAL_ERROR
            and result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000")


__all__ = ["Statement", "encode_params", "execute"]
