"""The audit trail: every action the agent takes on a charge point, who/what/when/result.

Stored in the shared edge SQLite file (``storage.path``), table ``audit``, on
a connection of its own in WAL mode so it never waits behind the OCPP log or
the outbox writer. ``chargesight edge status`` reads the recent rows.

:class:`MemoryAudit` keeps the same interface in memory, for tests and for
running without a database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    charge_point_id TEXT,
    connector_id INTEGER,
    incident_id TEXT,
    action TEXT NOT NULL,
    request TEXT,
    result TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_cp_at ON audit (charge_point_id, at);
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    action: str  # confirm | availability_toggle | soft_reset | hook:power-cycle | escalate | ...
    result: str
    actor: str = "recovery"
    charge_point_id: str | None = None
    connector_id: int | None = None
    incident_id: str | None = None
    request: dict[str, Any] | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


class Auditor(Protocol):
    async def record(self, entry: AuditEntry) -> None: ...

    def recent(self, limit: int = 50) -> list[AuditEntry]: ...


class MemoryAudit:
    """In-memory audit (tests, or no database)."""

    def __init__(self, keep: int = 1000) -> None:
        self.entries: deque[AuditEntry] = deque(maxlen=keep)

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        return list(self.entries)[-limit:]


class AuditLog:
    """SQLite audit table. ``async with AuditLog(path) as audit: ...``.

    :meth:`record` commits each row (actions are rare: a few per incident).
    Concurrent calls are serialised by a lock; cancelling one is safe (the row
    is either committed or not written).
    """

    def __init__(self, path: Path | str, keep_recent: int = 200) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._recent: deque[AuditEntry] = deque(maxlen=keep_recent)

    async def open(self) -> None:
        if self._db is not None:
            raise RuntimeError("audit log already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        await db.commit()
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> AuditLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def record(self, entry: AuditEntry) -> None:
        """Write ``entry`` (committed when this returns); raises what SQLite raises, e.g. on
        a full disk. It is in :meth:`recent` either way: the action was taken."""
        self._recent.append(entry)
        if self._db is None:
            raise RuntimeError("audit log is not open")
        async with self._lock:
            try:
                await self._insert(self._db, entry)
                await self._db.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._db.rollback()  # no open transaction left holding the file
                raise

    @staticmethod
    async def _insert(db: aiosqlite.Connection, entry: AuditEntry) -> None:
        await db.execute(
            "INSERT INTO audit (at, actor, charge_point_id, connector_id, incident_id, action,"
            " request, result, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at.isoformat(),
                entry.actor,
                entry.charge_point_id,
                entry.connector_id,
                entry.incident_id,
                entry.action,
                orjson.dumps(entry.request).decode() if entry.request is not None else None,
                entry.result,
                entry.detail,
            ),
        )

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """This process's latest entries (no I/O)."""
        return list(self._recent)[-limit:]

    async def maintenance_switches(self) -> dict[str, bool]:
        """Each charge point's latest maintenance switch by an operator (True: on)."""
        if self._db is None:
            raise RuntimeError("audit log is not open")
        async with self._db.execute(
            "SELECT charge_point_id, result FROM audit WHERE id IN (SELECT max(id) FROM audit"
            " WHERE action = 'maintenance' AND actor = 'operator'"
            " AND charge_point_id IS NOT NULL GROUP BY charge_point_id)"
        ) as cur:
            return {str(cp): result == "on" for cp, result in await cur.fetchall()}

    async def resets(self) -> list[tuple[str, datetime]]:
        """Resets and power cycles sent to charge points (charge point, when): what counts
        against ``max_resets_per_day``, as the engine counts it — any outcome but
        ``skipped`` and a reset that never left because the charge point was not connected
        (an other ``error`` may have reached it). Which are recent is the engine's business
        (:meth:`RecoveryEngine.restore_resets`)."""
        if self._db is None:
            raise RuntimeError("audit log is not open")
        async with self._db.execute(
            "SELECT charge_point_id, at FROM audit WHERE charge_point_id IS NOT NULL"
            " AND (action IN ('soft_reset', 'hard_reset') OR action LIKE 'hook:%')"
            " AND result <> 'skipped'"
            " AND NOT (result = 'error' AND coalesce(detail, '') LIKE '%not connected%')"
        ) as cur:
            return [(str(cp), datetime.fromisoformat(at)) for cp, at in await cur.fetchall()]

    async def query(
        self, limit: int = 50, charge_point_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Latest rows from the table, newest first (for ``edge status`` from another process)."""
        if self._db is None:
            raise RuntimeError("audit log is not open")
        sql = "SELECT at, actor, charge_point_id, connector_id, incident_id, action, request, result, detail FROM audit"
        args: tuple[Any, ...] = ()
        if charge_point_id is not None:
            sql += " WHERE charge_point_id = ?"
            args = (charge_point_id,)
        sql += " ORDER BY id DESC LIMIT ?"
        async with self._db.execute(sql, (*args, limit)) as cur:
            rows = await cur.fetchall()
        keys = (
            "at",
            "actor",
            "charge_point_id",
            "connector_id",
            "incident_id",
            "action",
            "request",
            "result",
            "detail",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]
