"""What each charge point said about itself, kept across agent restarts.

A charge point tells who it is once, in its BootNotification (vendor, model, firmware,
serial), and the CSMS answers with its heartbeat interval. When the agent restarts, the
charge points reconnect without booting again, so without this the restarted agent would
escalate their faults with no hardware (no profile, no vendor-code mapping, no related
units in the cloud) and never notice missed heartbeats.

Table ``charge_point_identity`` in the shared edge SQLite file, one row per charge point,
written when a boot or an interval is seen (rare), read once at start. A write that fails
is logged and loses only that refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from chargesight.common.events import Boot, Event, HeartbeatInterval
from chargesight.common.logs import get_logger
from chargesight.common.messages import Hardware
from chargesight.edge.ocpplog import open_db

log = get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS charge_point_identity (
    charge_point_id TEXT PRIMARY KEY,
    vendor TEXT,
    model TEXT,
    firmware TEXT,
    serial TEXT,
    heartbeat_interval_s REAL,
    updated_at TEXT NOT NULL
);
"""

Identity = tuple[Hardware | None, float | None]  # hardware when booted, interval when given


class IdentityStore:
    """``observe`` is a proxy subscriber (synchronous: writes are scheduled); ``load`` reads
    every charge point's identity at start."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self._db is not None:
            raise RuntimeError("identity store already open")
        db = await open_db(self.path)
        await db.executescript(SCHEMA)
        await db.commit()
        self._db = db

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def observe(self, event: Event) -> None:
        if self._db is None or not isinstance(event, Boot | HeartbeatInterval):
            return
        task = asyncio.get_running_loop().create_task(self._write(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, event: Boot | HeartbeatInterval) -> None:
        now = datetime.now(UTC).isoformat()
        if isinstance(event, Boot):
            sql = (
                "INSERT INTO charge_point_identity (charge_point_id, vendor, model, firmware,"
                " serial, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (charge_point_id)"
                " DO UPDATE SET vendor = excluded.vendor, model = excluded.model,"
                " firmware = excluded.firmware, serial = excluded.serial,"
                " updated_at = excluded.updated_at"
            )
            args: tuple[object, ...] = (
                event.charge_point_id,
                event.vendor,
                event.model,
                event.firmware,
                event.serial,
                now,
            )
        else:
            sql = (
                "INSERT INTO charge_point_identity (charge_point_id, heartbeat_interval_s,"
                " updated_at) VALUES (?, ?, ?) ON CONFLICT (charge_point_id) DO UPDATE SET"
                " heartbeat_interval_s = excluded.heartbeat_interval_s,"
                " updated_at = excluded.updated_at"
            )
            interval = float(event.interval_s) if event.interval_s > 0 else None
            args = (event.charge_point_id, interval, now)
        try:
            async with self._lock:
                db = self._db
                if db is None:
                    return
                try:
                    await db.execute(sql, args)
                    await db.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await db.rollback()  # no open transaction left holding the file
                    raise
        except Exception as exc:  # e.g. a full disk: only this refresh is lost
            log.error(
                "charge point identity not saved",
                charge_point_id=event.charge_point_id,
                error=repr(exc),
            )

    async def load(self) -> dict[str, Identity]:
        if self._db is None:
            raise RuntimeError("identity store is not open")
        async with self._db.execute(
            "SELECT charge_point_id, vendor, model, firmware, serial, heartbeat_interval_s"
            " FROM charge_point_identity"
        ) as cur:
            rows = await cur.fetchall()
        out: dict[str, Identity] = {}
        for cp, vendor, model, firmware, serial, interval in rows:
            hardware = (
                Hardware(vendor=vendor, model=model, firmware=firmware, serial=serial)
                if vendor is not None or model is not None
                else None
            )
            out[str(cp)] = (hardware, float(interval) if interval is not None else None)
        return out
