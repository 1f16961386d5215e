"""The PostgreSQL connection pool and start-up: migrations, TimescaleDB detection.

``open_database`` returns a :class:`Database` (an ``async with`` resource)
whose pool is open and whose schema is current. Errors reaching or migrating
the database are raised as :class:`DatabaseError` with the URL's host named
(never its password).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from chargesight.cloud.migrations import MIGRATIONS, PLAIN_VIEWS, TIMESCALE
from chargesight.common.logs import get_logger

log = get_logger(__name__)

_MIGRATION_LOCK = 727_011  # pg_advisory_lock key for migrations


class DatabaseError(Exception):
    """The database cannot be reached, migrated or used."""


def safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or parts.query}:{parts.port or ''}{parts.path}"


@dataclass
class Database:
    url: str
    pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, object]]]
    timescale: bool

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def migrate(
    conn: psycopg.AsyncConnection[dict[str, object]],
    *,
    timescale: str = "auto",
    compress_after_days: int = 30,
    retention_days: int = 800,
) -> bool:
    """Apply pending migrations; return whether TimescaleDB features are in use."""
    await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(str(r["version"])) for r in await cur.fetchall()}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
            log.info("migration applied", version=version, name=name)
        use_ts = False
        if timescale == "auto":
            cur = await conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            )
            use_ts = await cur.fetchone() is not None
        if use_ts:
            try:
                for stmt in TIMESCALE:
                    sql = stmt.replace("{compress}", str(compress_after_days)).replace(
                        "{retention}", str(retention_days)
                    )
                    await conn.execute(sql.encode())
            except psycopg.Error as exc:
                log.warning("timescaledb features unavailable, using plain tables", error=str(exc))
                use_ts = False
        if not use_ts:
            cur = await conn.execute("SELECT relkind FROM pg_class WHERE relname = 'site_hourly'")
            row = await cur.fetchone()
            if row is None or row["relkind"] == b"v" or row["relkind"] == "v":
                await conn.execute(PLAIN_VIEWS.encode())
        return use_ts
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


async def open_database(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    timescale: str = "auto",
    compress_after_days: int = 30,
    retention_days: int = 800,
    timeout: float = 15.0,
) -> Database:
    """Open a pool on ``url`` and bring the schema up to date."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, row_factory=dict_row, connect_timeout=int(timeout)
        ) as conn:
            use_ts = await migrate(
                conn,
                timescale=timescale,
                compress_after_days=compress_after_days,
                retention_days=retention_days,
            )
    except psycopg.Error as exc:
        raise DatabaseError(f"database {safe_url(url)}: {exc}") from exc
    pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, object]]] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        open=False,
        timeout=timeout,
    )
    await pool.open(wait=True, timeout=timeout)
    return Database(url, pool, use_ts)


def transient(exc: BaseException) -> bool:
    """A database error that will pass by itself, so what hit it is tried again rather than
    refused: the connection or server is gone or restarting (SQLSTATE class 08, 57P01–57P03,
    or no SQLSTATE: the client's side), no connection came from the pool in time, the server
    is out of resources (class 53: disk full, too many connections), or a deadlock or
    serialisation conflict. Not: a statement cancelled or too big for a limit (a message that
    will fail again, which ingest makes a dead letter)."""
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in ("08", "53") or state in ("57P01", "57P02", "57P03")
