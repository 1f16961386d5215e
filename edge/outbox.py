"""The durable outbox: every edge → cloud message is committed here before it is published.

Messages live in the SQLite table ``outbox`` of the agent's database (the
other components keep their own tables in the same file, each with its own
connection: WAL, ``busy_timeout``). A row is deleted only after the broker's
PUBACK (:meth:`Outbox.ack`), so an outage of any length, a restart or a
``kill -9`` loses nothing; rows are replayed in ``seq`` order (``AUTOINCREMENT``
so a sequence number is never reused, even when the table empties) and keep
their ``message_id``, which the collector uses to drop duplicates.

Durability: ``journal_mode=WAL`` and ``synchronous=FULL`` by default. In WAL
mode ``NORMAL`` survives a crash of the process but may lose the last
commits on a power cut; a site gateway is a small box whose typical failure
*is* a power cut (a site-wide power loss is one of the incidents we
escalate), and :meth:`Outbox.put` promises that a message it returned for
survives. The fsync that ``FULL`` costs is shared by every message of a
batch: one writer task commits everything that arrived meanwhile in one
transaction. Deletions after PUBACK run with ``synchronous=NORMAL``: losing
one only means a re-send, which the collector drops by ``message_id``.

When full (``storage.outbox_max_messages``) the oldest message of the lowest
class goes first: digests, then replies, then escalations (and every other
kind). A message arriving into an outbox full of higher classes is refused
(:meth:`put` returns ``False``). Every drop is logged (``outbox_full``,
warning) and counted, and :meth:`Outbox.status` carries an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiosqlite

from chargesight.common.logs import get_logger
from chargesight.common.messages import Digest, EdgeMessage, Escalation, Reply, SiteState
from chargesight.edge.config import StorageSection

log = get_logger("chargesight.edge.outbox")

# Eviction classes: the lowest goes first when the outbox is full.
KIND_CLASS = {"digest": 0, "reply": 1, "state": 1, "escalation": 2, "other": 2}
KINDS = ("digest", "reply", "state", "escalation", "other")
NEARLY_FULL = 0.9
COMMIT_ATTEMPTS = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    class      INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    created_at REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_class_seq ON outbox (class, seq);
"""


class OutboxError(Exception):
    """Base of the outbox's errors."""


class OutboxClosed(OutboxError):
    """The outbox is not open (never opened, or closed)."""


def message_kind(message: EdgeMessage) -> str:
    if isinstance(message, Escalation):
        return "escalation"
    if isinstance(message, Digest):
        return "digest"
    if isinstance(message, Reply):
        return "reply"
    if isinstance(message, SiteState):
        return "state"
    return "other"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One committed message waiting for its PUBACK."""

    seq: int
    message_id: str
    topic: str
    kind: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    queued: int
    max_messages: int
    full: bool
    dropped: dict[str, int]
    alarms: list[str]
    commits: int  # transactions committed since open (batching makes it ≪ messages)


@dataclass(slots=True)
class _Put:
    message_id: str
    topic: str
    kind: str
    payload: bytes
    future: asyncio.Future[bool]


@dataclass(slots=True)
class _Ack:
    seqs: list[int]
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Counters:
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    commits: int = 0


class Outbox:
    """Durable, bounded, ordered queue of edge → cloud messages in SQLite.

    Use as ``async with Outbox(path) as outbox:``. One writer task owns all
    writes; :meth:`put` and :meth:`ack` hand it work and wait for the commit.
    Readers (:meth:`fetch`) use a second connection and only ever see
    committed rows, so a message is never published before it is durable.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_messages: int = 100_000,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_ms: int = 5000,
        batch_max: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.batch_max = batch_max
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._ops: asyncio.Queue[_Put | _Ack | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._count = 0
        self._last_seq = 0
        self._new_rows = asyncio.Event()
        self._changed = asyncio.Event()
        self._counters = _Counters()
        self._state: Literal["unopened", "open", "closing", "closed"] = "unopened"
        self._sync_now: str = synchronous

    @classmethod
    def from_config(cls, storage: StorageSection) -> Outbox:
        """The outbox at ``storage.path``, bounded by ``storage.outbox_max_messages``."""
        return cls(storage.path, max_messages=storage.outbox_max_messages)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._state != "unopened":
            raise OutboxError(f"outbox is {self._state}, cannot open it again")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._writer.executescript(SCHEMA)
        await self._writer.commit()
        self._reader = await self._connect()
        async with self._writer.execute(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM outbox"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self._count, self._last_seq = int(row[0]), int(row[1])
        self._state = "open"
        self._writer_task = asyncio.create_task(self._write_loop(), name="outbox-writer")
        log.info("outbox_opened", path=str(self.path), queued=self._count)

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        await db.execute(f"PRAGMA synchronous={self.synchronous}")
        return db

    async def close(self) -> None:
        """Commit what was handed to the writer, then close both connections.

        Idempotent. Cancelling ``close()`` may leave the connections open.
        """
        if self._state in ("closing", "closed"):
            return
        if self._state == "unopened":
            self._state = "closed"
            return
        self._state = "closing"
        self._ops.put_nowait(None)
        if self._writer_task is not None:
            await self._writer_task
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._state = "closed"
        self._new_rows.set()  # wake waiters so they see the closed state
        self._changed.set()
        log.info("outbox_closed", queued=self._count)

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise OutboxClosed(f"outbox {self.path} is {self._state}")

    # ------------------------------------------------------------ API

    async def put(self, topic: str, message: EdgeMessage) -> bool:
        """Commit ``message`` for ``topic``; return once it is durable.

        Returns ``False`` when the full-outbox policy refused it (a digest or
        a reply into an outbox full of escalations), ``True`` otherwise,
        also when a row with the same ``message_id`` was already stored
        (putting the same message twice stores it once).

        Cancel-safety: cancelling ``put()`` does not withdraw the message;
        it may or may not be committed. Putting it again is safe (same
        ``message_id``, stored once; at worst the collector drops a re-send).
        """
        return await self.put_raw(
            topic, message.message_id, message.to_json(), kind=message_kind(message)
        )

    async def put_raw(self, topic: str, message_id: str, payload: bytes, *, kind: str) -> bool:
        """:meth:`put` for an already serialised message (same guarantees)."""
        self._check_open()
        if kind not in KIND_CLASS:
            raise ValueError(f"unknown kind {kind!r}; one of {sorted(KIND_CLASS)}")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ops.put_nowait(_Put(message_id, topic, kind, payload, fut))
        return await fut

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete the rows the broker acknowledged (PUBACK).

        Unknown sequence numbers (already deleted or evicted) are ignored.
        Cancel-safety: cancelling may or may not delete; deleting twice is
        harmless, and a row left behind is re-sent and dropped by the
        collector as a duplicate.
        """
        self._check_open()
        if not seqs:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.put_nowait(_Ack(list(seqs), fut))
        await fut

    async def fetch(self, after_seq: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Committed rows with ``seq > after_seq``, oldest first. Cancel-safe (read only)."""
        self._check_open()
        assert self._reader is not None
        async with self._reader.execute(
            "SELECT seq, message_id, topic, kind, payload FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [OutboxEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4])) for r in rows]

    async def wait_for_rows(self, after_seq: int) -> None:
        """Return once a row with ``seq > after_seq`` has been committed. Cancel-safe."""
        while self._last_seq <= after_seq:
            self._check_open()
            self._new_rows.clear()
            await self._new_rows.wait()

    async def wait_drained(self) -> None:
        """Return once the outbox holds no message (everything acknowledged). Cancel-safe."""
        while self._count > 0:
            self._check_open()
            self._changed.clear()
            await self._changed.wait()

    @property
    def queued(self) -> int:
        """Messages committed and not yet acknowledged."""
        return self._count

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def status(self) -> OutboxStatus:
        alarms: list[str] = []
        full = self._count >= self.max_messages
        if full:
            alarms.append(f"outbox full ({self._count}/{self.max_messages} messages)")
        elif self._count >= NEARLY_FULL * self.max_messages:
            alarms.append(f"outbox nearly full ({self._count}/{self.max_messages} messages)")
        dropped = {k: v for k, v in self._counters.dropped.items() if v}
        if dropped:
            words = ", ".join(f"{v} {k}" for k, v in dropped.items())
            alarms.append(f"outbox dropped messages since start: {words}")
        return OutboxStatus(
            queued=self._count,
            max_messages=self.max_messages,
            full=full,
            dropped=dict(self._counters.dropped),
            alarms=alarms,
            commits=self._counters.commits,
        )

    # ------------------------------------------------------------ the writer

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            op = await self._ops.get()
            batch: list[_Put | _Ack] = []
            if op is None:
                stop = True
            else:
                batch.append(op)
            while len(batch) < self.batch_max and not self._ops.empty():
                nxt = self._ops.get_nowait()
                if nxt is None:
                    stop = True
                    continue
                batch.append(nxt)
            if not batch:
                continue
            try:
                results = await self._commit_retrying(batch)
            except Exception as exc:  # sqlite3 errors: fail the callers, keep the writer alive
                log.exception("outbox_commit_failed", error=str(exc), batch=len(batch))
                err = OutboxError(f"outbox commit failed: {exc}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the caller was cancelled; the commit stands
                    continue
                if isinstance(item, _Put):
                    item.future.set_result(bool(result))
                else:
                    item.future.set_result(None)

    async def _commit_retrying(self, batch: list[_Put | _Ack]) -> list[bool | None]:
        """:meth:`_commit`, retried when another component holds the write lock
        longer than ``busy_timeout`` (the file is shared)."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return await self._commit(batch)
            except sqlite3.OperationalError as exc:
                if attempt == COMMIT_ATTEMPTS or (
                    "locked" not in str(exc) and "busy" not in str(exc)
                ):
                    raise
                log.warning("outbox_busy_retry", attempt=attempt, error=str(exc))
        raise AssertionError("unreachable")

    async def _commit(self, batch: list[_Put | _Ack]) -> list[bool | None]:
        db = self._writer
        assert db is not None
        puts = [op for op in batch if isinstance(op, _Put)]
        acks = [seq for op in batch if isinstance(op, _Ack) for seq in op.seqs]
        keep = [True] * len(puts)
        await self._set_synchronous(db, self.synchronous if puts else "NORMAL")
        await db.execute("BEGIN IMMEDIATE")
        try:
            count = self._count
            last = self._last_seq
            if acks:
                cur = await db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acks])
                count -= max(cur.rowcount, 0)
            if puts:
                keep, evicted = await self._make_room(db, puts, count)
                count -= evicted
                now = time.time()
                rows = [
                    (p.message_id, p.topic, p.kind, KIND_CLASS[p.kind], p.payload, now)
                    for p, k in zip(puts, keep, strict=True)
                    if k
                ]
                cur = await db.executemany(
                    "INSERT OR IGNORE INTO outbox"
                    " (message_id, topic, kind, class, payload, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                inserted = max(cur.rowcount, 0)
                count += inserted
                if inserted:
                    async with db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox") as cur2:
                        row = await cur2.fetchone()
                    last = max(last, int(row[0]) if row else 0)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            raise
        self._counters.commits += 1
        self._count = count
        self._changed.set()
        if last > self._last_seq:
            self._last_seq = last
            self._new_rows.set()
        results: list[bool | None] = []
        kept = iter(keep)
        for op in batch:
            results.append(next(kept) if isinstance(op, _Put) else None)
        return results

    async def _set_synchronous(self, db: aiosqlite.Connection, level: str) -> None:
        if level != self._sync_now:
            await db.execute(f"PRAGMA synchronous={level}")
            self._sync_now = level

    async def _make_room(
        self, db: aiosqlite.Connection, puts: list[_Put], count: int
    ) -> tuple[list[bool], int]:
        """Apply the full-outbox policy: which of ``puts`` may be inserted, rows evicted.

        Victims are taken class by class (digests, replies, escalations),
        oldest first; within a class stored rows are older than incoming ones.
        """
        keep = [True] * len(puts)
        overflow = count + len(puts) - self.max_messages
        if overflow <= 0:
            return keep, 0
        evicted = 0
        dropped: dict[str, int] = {}
        for cls in sorted(set(KIND_CLASS.values())):
            if overflow <= 0:
                break
            async with db.execute(
                "SELECT seq, kind FROM outbox WHERE class = ? ORDER BY seq LIMIT ?",
                (cls, overflow),
            ) as cur:
                victims = list(await cur.fetchall())
            if victims:
                await db.executemany(
                    "DELETE FROM outbox WHERE seq = ?", [(int(v[0]),) for v in victims]
                )
                for v in victims:
                    dropped[str(v[1])] = dropped.get(str(v[1]), 0) + 1
                overflow -= len(victims)
                evicted += len(victims)
            for i, p in enumerate(puts):
                if overflow <= 0:
                    break
                if keep[i] and KIND_CLASS[p.kind] == cls:
                    keep[i] = False
                    dropped[p.kind] = dropped.get(p.kind, 0) + 1
                    overflow -= 1
        for kind, n in dropped.items():
            self._counters.dropped[kind] = self._counters.dropped.get(kind, 0) + n
        log.warning(
            "outbox_full",
            max_messages=self.max_messages,
            dropped=dropped,
            dropped_total={k: v for k, v in self._counters.dropped.items() if v},
            policy="oldest of the lowest class first: digest, reply, escalation",
        )
        return keep, evicted
