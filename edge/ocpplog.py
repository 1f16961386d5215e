"""The local OCPP log: every frame the proxy sees, in SQLite, as evidence for escalations.

Frames are appended to an in-memory buffer on the hot path (no await, no I/O)
and written in batches by one writer task (``executemany`` + one commit per
batch: aiosqlite costs ~200 µs per commit, so single-row commits would cap the
proxy at a few thousand frames per second). The log is bounded by row count
and age; the oldest rows go first. If the disk stalls and the buffer reaches
``max_buffer`` frames, the oldest buffered frames are dropped and counted
rather than letting memory grow without bound: the proxy keeps serving.

The table lives in the edge's shared SQLite file (WAL); other components open
their own connections to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from chargesight.common.logs import get_logger
from chargesight.common.messages import EvidenceFrame

log = get_logger("chargesight.edge.ocpplog")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ocpp_log (
    id INTEGER PRIMARY KEY,
    charge_point_id TEXT NOT NULL,
    at REAL NOT NULL,
    direction TEXT NOT NULL,
    frame TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ocpp_log_cp_at ON ocpp_log (charge_point_id, at);
CREATE INDEX IF NOT EXISTS ocpp_log_at ON ocpp_log (at);
"""


async def open_db(path: Path) -> aiosqlite.Connection:
    """Open the edge's SQLite file with the pragmas every component uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    return db


@dataclass(slots=True)
class _Row:
    charge_point_id: str
    at: float
    direction: str
    frame: str


class OcppLog:
    """Batched, bounded OCPP frame log. Use as ``async with OcppLog(path) as log``."""

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 2_000_000,
        max_age_s: float = 30 * 86400,
        flush_interval_s: float = 0.25,
        batch_size: int = 2000,
        max_buffer: int = 200_000,
    ) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._buffer: deque[_Row] = deque(maxlen=max_buffer)
        self._db: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0
        self._last_prune = 0.0

    async def __aenter__(self) -> OcppLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._db = await open_db(self.path)
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        self._writer = asyncio.create_task(self._write_loop(), name="ocpp-log-writer")

    async def close(self) -> None:
        """Flush what is buffered and close. Safe to call twice."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._db is not None:
            try:
                for attempt in range(3):  # another writer on the shared file may hold it a while
                    try:
                        await self._flush()
                        break
                    except sqlite3.Error as exc:
                        if attempt == 2:
                            log.error(
                                "ocpp_log_frames_lost_at_close",
                                frames=len(self._buffer),
                                error=str(exc),
                            )
                            break
                        await asyncio.sleep(0.5)
            finally:  # always: an open connection's thread keeps the process from exiting
                await self._db.close()
                self._db = None

    def record(
        self, charge_point_id: str, direction: str, frame: bytes | str, at: float | None = None
    ) -> None:
        """Append a frame to the log buffer. Never blocks, never raises on bad bytes."""
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        text = frame if isinstance(frame, str) else frame.decode("utf-8", errors="replace")
        self._buffer.append(
            _Row(charge_point_id, time.time() if at is None else at, direction, text)
        )
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                await self._flush()
            except Exception as exc:  # a full disk must not stop the proxy
                log.error("ocpp_log_write_failed", error=str(exc), buffered=len(self._buffer))

    async def _flush(self) -> None:
        db = self._db
        if db is None:
            return
        while self._buffer:
            n = min(len(self._buffer), self.batch_size)
            rows = [self._buffer.popleft() for _ in range(n)]
            try:
                # Shielded: a cancelled flush must not leave a write transaction open
                # on the SQLite file the agent's other components share.
                await asyncio.shield(self._insert(db, rows))
            except Exception:
                self._buffer.extendleft(reversed(rows))
                raise
            self.written += n
        now = time.time()
        if now - self._last_prune > 60:
            self._last_prune = now
            await self.prune(now)

    @staticmethod
    async def _insert(db: aiosqlite.Connection, rows: list[_Row]) -> None:
        try:
            await db.executemany(
                "INSERT INTO ocpp_log (charge_point_id, at, direction, frame) VALUES (?, ?, ?, ?)",
                [(r.charge_point_id, r.at, r.direction, r.frame) for r in rows],
            )
            await db.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await db.rollback()  # no open transaction left holding the shared file
            raise

    async def prune(self, now: float | None = None) -> None:
        """Drop rows older than ``max_age_s`` and the oldest beyond ``max_rows``."""
        db = self._require()
        now = time.time() if now is None else now

        async def run() -> None:
            await db.execute("DELETE FROM ocpp_log WHERE at < ?", (now - self.max_age_s,))
            await db.execute(
                "DELETE FROM ocpp_log WHERE id <= (SELECT MAX(id) FROM ocpp_log) - ?",
                (self.max_rows,),
            )
            await db.commit()

        await asyncio.shield(run())

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("OcppLog is not open")
        return self._db

    async def flush(self) -> None:
        """Write everything buffered now (tests and shutdown)."""
        await self._flush()

    async def query(
        self,
        charge_point_id: str | None,
        start: datetime,
        end: datetime,
        limit: int = 200,
    ) -> list[EvidenceFrame]:
        """Frames of one charge point (or all) between ``start`` and ``end``, oldest first.

        When more than ``limit`` frames match, the newest ``limit`` are returned
        (the moments right before ``end`` tell most about a fault).
        """
        await self._flush()
        db = self._require()
        sql = "SELECT charge_point_id, at, direction, frame FROM ocpp_log WHERE at >= ? AND at <= ?"
        args: list[object] = [start.timestamp(), end.timestamp()]
        if charge_point_id is not None:
            sql += " AND charge_point_id = ?"
            args.append(charge_point_id)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        args.append(limit)
        async with db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        return [
            EvidenceFrame(
                at=datetime.fromtimestamp(at, UTC),
                direction=direction,
                frame=frame,
                charge_point_id=cp,
            )
            for cp, at, direction, frame in reversed(rows)
        ]

    async def evidence(
        self, charge_point_id: str, start: datetime, end: datetime, limit: int
    ) -> list[EvidenceFrame]:
        """The recovery engine's evidence source (same as :meth:`query` for one charge point)."""
        return await self.query(charge_point_id, start, end, limit)
