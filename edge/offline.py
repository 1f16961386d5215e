"""Keeping a site working while the CSMS is unreachable (ARCHITECTURE.md, "When the CSMS is unreachable").

Two policies for the proxy's :class:`~chargesight.edge.proxy.UpstreamUnavailable` hook:

``ServeOffline`` (``ocpp.offline = "serve"``, the default)
    The charge point stays connected and the agent answers it locally
    (:mod:`chargesight.edge.local`). Every CP→CSMS message the CSMS must see
    is committed to a durable per-charge-point FIFO in SQLite *before* the
    charge point gets its answer, and replayed in order, with its original
    timestamps, when the upstream returns — before live traffic resumes (live
    CALLs that arrive during the replay queue behind it). The CSMS's answers
    to replayed CALLs are consumed by the agent.

    OCPP 1.6 transaction ids are assigned by the CSMS, so an offline
    ``StartTransaction`` gets a provisional (negative) id; when the replayed
    start is answered, the provisional id is mapped to the CSMS's id in every
    later message (queued or live: ``StopTransaction``, ``MeterValues``) and
    back in CSMS calls to the charge point (``RemoteStopTransaction``). The
    map survives restarts. OCPP 2.0.1 transaction ids come from the charging
    station, so nothing needs mapping there.

    Known charger failure modes handled: a ``StopTransaction`` with
    ``transactionId`` -1/0 or an id nobody knows while exactly one transaction
    is open on that charge point is mapped to it (EVerest/libocpp#495); a
    retried ``StartTransaction`` identical to one already answered gets the
    same id instead of a second transaction (libocpp PR #688); a
    ``StopTransaction`` for a transaction the CSMS never saw (MicroOcpp#454)
    is still delivered and raises an alarm.

    A replayed message the CSMS rejects with a CALLERROR is retried with
    backoff ``offline.replay_max_attempts`` times, then *parked* (kept in the
    ``offline_parked`` table, never silently dropped) with an alarm in the log,
    in ``status()`` and through the ``on_alarm`` callback (the agent escalates
    it). The queue is bounded by ``offline.queue_max_messages``: from 90 % the
    agent warns loudly; when full, queued ``MeterValues`` are thinned (the
    oldest dropped) before any transaction message; transaction messages are
    never dropped (the queue then grows past its bound with an alarm).

``DisconnectOffline`` (``ocpp.offline = "disconnect"``)
    Strict OCPP Local Controller behaviour: when the upstream is lost the
    charge point's socket is closed so that its own offline queue takes over;
    it is accepted again when it reconnects and the CSMS is reachable.

Durability: the queue uses the edge's SQLite file in WAL mode with
``synchronous=FULL`` for its commits — a transaction message acknowledged to
a charger must survive a power cut of the gateway, not only a process crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson

from chargesight.common import ocppj
from chargesight.common.events import AuthorizeResult, Event, TransactionEnded, TransactionStarted
from chargesight.common.logs import get_logger
from chargesight.common.messages import _rfc3339, utcnow
from chargesight.edge.config import OfflineSection
from chargesight.edge.errors import CallTimeout
from chargesight.edge.errors import ConnectionClosed as CallConnectionClosed
from chargesight.edge.local import NoLocalAnswer, local_answer
from chargesight.edge.ocpplog import open_db

if TYPE_CHECKING:
    from chargesight.edge.proxy import ChargePointSession

log = get_logger("chargesight.edge.offline")

# recording a replayed message the CSMS took: retried up to this far apart
SETTLE_RETRY_MAX_S = 30.0

# Actions the CSMS must see even when they happened while it was away.
MUST_DELIVER_16 = frozenset(
    {
        "BootNotification",
        "StartTransaction",
        "StopTransaction",
        "MeterValues",
        "StatusNotification",
        "FirmwareStatusNotification",
        "DiagnosticsStatusNotification",
    }
)
NEVER_QUEUE_201 = frozenset({"Heartbeat", "Authorize", "DataTransfer"})
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS offline_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_point_id TEXT NOT NULL,
    version TEXT NOT NULL,
    action TEXT NOT NULL,
    payload BLOB NOT NULL,
    queued_at REAL NOT NULL,
    provisional_tx INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS offline_queue_cp ON offline_queue (charge_point_id, seq);
CREATE TABLE IF NOT EXISTS offline_parked (
    seq INTEGER PRIMARY KEY,
    charge_point_id TEXT NOT NULL,
    version TEXT NOT NULL,
    action TEXT NOT NULL,
    payload BLOB NOT NULL,
    queued_at REAL NOT NULL,
    parked_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_tx_map (
    charge_point_id TEXT NOT NULL,
    provisional INTEGER NOT NULL,
    real INTEGER,
    PRIMARY KEY (charge_point_id, provisional)
);
CREATE TABLE IF NOT EXISTS offline_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_auth_cache (
    id_tag TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

Alarm = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""``on_alarm(charge_point_id, message, details)``: the agent logs, shows and escalates it."""


@dataclass(slots=True)
class QueuedMessage:
    seq: int
    charge_point_id: str
    version: str
    action: str
    payload: dict[str, Any]
    queued_at: float
    provisional_tx: int | None = None
    attempts: int = 0


@dataclass
class OfflineStats:
    answered_locally: int = 0
    queued: int = 0
    replayed: int = 0
    parked: int = 0
    thinned: int = 0
    dropped_unqueueable: int = 0
    remapped: int = 0
    alarms: list[dict[str, Any]] = field(default_factory=list)


class OfflineStore:
    """The durable queue, transaction id map and authorisation cache."""

    def __init__(self, path: Path, config: OfflineSection) -> None:
        self.path = path
        self.config = config
        self._db: aiosqlite.Connection | None = None
        self.queues: dict[str, deque[QueuedMessage]] = {}
        self.tx_map: dict[str, dict[int, int | None]] = {}
        self.open_tx: dict[str, set[int]] = {}
        self.next_provisional = -1
        self.auth_cache: dict[str, tuple[str, float]] = {}
        self.starts: dict[tuple[str, str], int] = {}  # StartTransaction fingerprint → tx id
        self._lock = asyncio.Lock()
        self._removed = asyncio.Event()

    async def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        """Run write statements and commit them as one transaction; returns the last rowid.

        Shielded from cancellation: a transaction is never left open on the
        shared SQLite file (it would hold the write lock for every other
        component of the agent).
        """

        async def run() -> int:
            async with self._lock:
                rowid = 0
                try:
                    for sql, args in statements:
                        cur = await self.db.execute(sql, args)
                        rowid = int(cur.lastrowid or 0)
                    await self.db.commit()
                except BaseException:  # e.g. a full disk: leave no transaction open
                    with contextlib.suppress(Exception):
                        await self.db.rollback()
                    raise
                return rowid

        return await asyncio.shield(run())

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("OfflineStore is not open")
        return self._db

    async def open(self) -> None:
        self._db = await open_db(self.path)
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        async with self._db.execute(
            "SELECT seq, charge_point_id, version, action, payload, queued_at, provisional_tx, attempts "
            "FROM offline_queue ORDER BY seq"
        ) as cur:
            async for row in cur:
                msg = QueuedMessage(
                    row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5], row[6], row[7]
                )
                self.queues.setdefault(msg.charge_point_id, deque()).append(msg)
        async with self._db.execute(
            "SELECT charge_point_id, provisional, real FROM offline_tx_map"
        ) as cur:
            async for cp, prov, real in cur:
                self.tx_map.setdefault(cp, {})[prov] = real
                self.next_provisional = min(self.next_provisional, prov - 1)
        async with self._db.execute(
            "SELECT value FROM offline_state WHERE key = 'next_provisional'"
        ) as cur:
            state = await cur.fetchone()
            if state is not None:
                self.next_provisional = min(self.next_provisional, int(state[0]))
        now = time.time()
        async with self._db.execute(
            "SELECT id_tag, status, expires_at FROM offline_auth_cache WHERE expires_at > ?", (now,)
        ) as cur:
            async for tag, status, expires in cur:
                self.auth_cache[tag] = (status, expires)
        if self.size():
            log.warning(
                "offline_queue_loaded", messages=self.size(), charge_points=len(self.queues)
            )

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    def size(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def queued_for(self, charge_point_id: str) -> int:
        return len(self.queues.get(charge_point_id, ()))

    async def append(
        self,
        charge_point_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        provisional_tx: int | None = None,
    ) -> QueuedMessage:
        """Queue a message durably; the in-memory FIFO is updated before the first await."""
        msg = QueuedMessage(
            0, charge_point_id, version, action, payload, time.time(), provisional_tx
        )
        queue = self.queues.setdefault(charge_point_id, deque())
        queue.append(msg)
        try:
            msg.seq = await self._write(
                [
                    (
                        "INSERT INTO offline_queue (charge_point_id, version, action, payload, queued_at, provisional_tx) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            charge_point_id,
                            version,
                            action,
                            orjson.dumps(payload),
                            msg.queued_at,
                            provisional_tx,
                        ),
                    )
                ]
            )
        except BaseException:  # not stored: not queued either (it would be replayed twice)
            with contextlib.suppress(ValueError):
                queue.remove(msg)
            raise
        return msg

    async def remove(self, msg: QueuedMessage) -> None:
        q = self.queues.get(msg.charge_point_id)
        if q and q[0] is msg:
            q.popleft()
        elif q and msg in q:
            q.remove(msg)
        await self._write([("DELETE FROM offline_queue WHERE seq = ?", (msg.seq,))])
        self._removed.set()

    async def wait_empty(self, charge_point_id: str, timeout: float) -> None:
        """Wait until nothing is queued for ``charge_point_id`` (tests, status)."""
        async with asyncio.timeout(timeout):
            while self.queued_for(charge_point_id):
                self._removed.clear()
                await self._removed.wait()

    async def park(self, msg: QueuedMessage, error: str) -> None:
        """Move a message the CSMS keeps refusing out of the queue, keeping it for an operator."""
        q = self.queues.get(msg.charge_point_id)
        if q and msg in q:
            q.remove(msg)
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO offline_parked "
                    "(seq, charge_point_id, version, action, payload, queued_at, parked_at, error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        msg.seq,
                        msg.charge_point_id,
                        msg.version,
                        msg.action,
                        orjson.dumps(msg.payload),
                        msg.queued_at,
                        time.time(),
                        error,
                    ),
                ),
                ("DELETE FROM offline_queue WHERE seq = ?", (msg.seq,)),
            ]
        )
        self._removed.set()

    async def record_attempt(self, msg: QueuedMessage) -> None:
        msg.attempts += 1
        await self._write(
            [("UPDATE offline_queue SET attempts = ? WHERE seq = ?", (msg.attempts, msg.seq))]
        )

    async def thin_meter_values(self) -> bool:
        """Drop the oldest queued MeterValues anywhere; False when there is none."""
        oldest: QueuedMessage | None = None
        for q in self.queues.values():
            for m in q:
                if m.action == "MeterValues" and (oldest is None or m.seq < oldest.seq):
                    oldest = m
                    break
        if oldest is None:
            return False
        await self.remove(oldest)
        return True

    async def allocate_provisional(self, charge_point_id: str) -> int:
        tx = self.next_provisional
        self.next_provisional -= 1
        self.tx_map.setdefault(charge_point_id, {})[tx] = None
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO offline_tx_map (charge_point_id, provisional, real) "
                    "VALUES (?, ?, NULL)",
                    (charge_point_id, tx),
                ),
                (
                    "INSERT OR REPLACE INTO offline_state (key, value) VALUES ('next_provisional', ?)",
                    (str(self.next_provisional),),
                ),
            ]
        )
        return tx

    async def map_transaction(self, charge_point_id: str, provisional: int, real: int) -> None:
        self.tx_map.setdefault(charge_point_id, {})[provisional] = real
        await self._write(
            [
                (
                    "UPDATE offline_tx_map SET real = ? WHERE charge_point_id = ? AND provisional = ?",
                    (real, charge_point_id, provisional),
                )
            ]
        )

    async def cache_authorisation(self, id_tag: str, status: str) -> None:
        expires = time.time() + self.config.auth_cache_ttl_s
        self.auth_cache[id_tag] = (status, expires)
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO offline_auth_cache (id_tag, status, expires_at) VALUES (?, ?, ?)",
                    (id_tag, status, expires),
                )
            ]
        )

    def real_id(self, charge_point_id: str, tx: int) -> int | None:
        return self.tx_map.get(charge_point_id, {}).get(tx)

    def provisional_for(self, charge_point_id: str, real: int) -> int | None:
        for prov, r in self.tx_map.get(charge_point_id, {}).items():
            if r == real:
                return prov
        return None


def _start_fingerprint(payload: dict[str, Any]) -> str:
    keys = ("connectorId", "idTag", "meterStart", "timestamp")
    return orjson.dumps([payload.get(k) for k in keys]).decode()


class ServeOffline:
    """The ``serve`` policy: answer locally, queue durably, replay in order."""

    def __init__(
        self, store: OfflineStore, config: OfflineSection, on_alarm: Alarm | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.on_alarm = on_alarm
        self.stats = OfflineStats()
        self.unknown_accepted = 0
        self._warned_full = False

    # ------------------------------------------------------------ events

    def observe(self, event: Event) -> None:
        """Proxy subscriber: learn authorisations and open transactions from live traffic."""
        if isinstance(event, AuthorizeResult) and event.id_tag:
            task = asyncio.get_running_loop().create_task(
                self.store.cache_authorisation(event.id_tag, event.status)
            )
            task.add_done_callback(_log_failure)
        elif isinstance(event, TransactionStarted) and event.transaction_id:
            try:
                tx = int(event.transaction_id)
            except ValueError:
                return
            if tx > 0:
                self.store.open_tx.setdefault(event.charge_point_id, set()).add(tx)
        elif isinstance(event, TransactionEnded) and event.transaction_id:
            try:
                self.store.open_tx.get(event.charge_point_id, set()).discard(
                    int(event.transaction_id)
                )
            except ValueError:
                pass

    # ------------------------------------------------------------ offline answers

    def _authorize_status(self, id_tag: str | None) -> str:
        if not id_tag:
            return "Accepted"
        cached = self.store.auth_cache.get(id_tag)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        policy = self.config.unknown_id_policy
        if policy == "accept":
            return "Accepted"
        if policy == "limit" and self.unknown_accepted < self.config.unknown_id_limit:
            self.unknown_accepted += 1
            return "Accepted"
        return "Invalid"

    def _must_deliver(self, version: str, action: str) -> bool:
        if version == "1.6":
            return action in MUST_DELIVER_16
        return action not in NEVER_QUEUE_201

    async def handle_call(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> None:
        cp = session.charge_point_id
        version = session.version
        payload = dict(call.payload)
        if (
            version == "1.6"
            and payload.get("timestamp") is None
            and call.action == "StatusNotification"
        ):
            payload["timestamp"] = _rfc3339(utcnow())  # keep the original time for the replay
        provisional: int | None = None
        token = payload.get("idToken")  # 2.0.1: an object (a bare string breaks the schema)
        id_tag = payload.get("idTag") or (token.get("idToken") if isinstance(token, dict) else None)
        auth_status = self._authorize_status(id_tag if isinstance(id_tag, str) else None)
        fp: str | None = None
        try:
            if call.action == "StartTransaction" and version == "1.6":
                fp = _start_fingerprint(payload)
                known = self.store.starts.get((cp, fp))
                if known is not None:  # a retried start: same transaction, not a new one
                    await session.reply_locally(
                        call, {"transactionId": known, "idTagInfo": {"status": auth_status}}
                    )
                    return
                provisional = await self.store.allocate_provisional(cp)
                self.store.starts[(cp, fp)] = provisional
                self.store.open_tx.setdefault(cp, set()).add(provisional)
            try:
                answer = local_answer(
                    version,
                    call.action,
                    payload,
                    heartbeat_interval_s=self.config.heartbeat_interval_s,
                    authorize_status=auth_status,
                    provisional_transaction_id=provisional,
                )
            except NoLocalAnswer as exc:
                await session.reply_error(
                    call.unique_id, "InternalError", f"CSMS unreachable: {exc}"
                )
                return
            if self._must_deliver(version, call.action):
                await self._enqueue(cp, version, call.action, payload, provisional)
        except (sqlite3.Error, OSError) as exc:
            # not stored (a full disk): not answered as taken either; the charge point keeps
            # the message and sends it again (a start gets a new provisional id then)
            if provisional is not None and fp is not None:
                self.store.starts.pop((cp, fp), None)
                self.store.open_tx.get(cp, set()).discard(provisional)
            log.error("offline_queue_write_failed", charge_point_id=cp, action=call.action,
                      error=str(exc))  # fmt: skip
            await session.reply_error(
                call.unique_id,
                "InternalError",
                f"the gateway cannot store the message now ({exc}); send it again later",
            )
            return
        self.stats.answered_locally += 1
        await session.reply_locally(call, answer)

    async def _enqueue(
        self, cp: str, version: str, action: str, payload: dict[str, Any], provisional: int | None
    ) -> None:
        limit = self.config.queue_max_messages
        size = self.store.size()
        if size >= limit * 0.9 and not self._warned_full:
            self._warned_full = True
            log.error("offline_queue_nearly_full", messages=size, limit=limit)
            await self._alarm(cp, "offline queue is 90% full", {"messages": size, "limit": limit})
        if size >= limit:
            if action == "MeterValues" or await self.store.thin_meter_values():
                self.stats.thinned += 1
                if action == "MeterValues":
                    return
            else:
                log.error("offline_queue_over_capacity", messages=size, limit=limit, action=action)
        await self.store.append(cp, version, action, payload, provisional)
        self.stats.queued += 1

    # ------------------------------------------------------------ rewriting live traffic

    def rewrite_to_csms(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        """Map provisional transaction ids in live 1.6 traffic to the CSMS's ids."""
        if session.version != "1.6" or call.action not in ("StopTransaction", "MeterValues"):
            return raw
        new = self._map_payload(session.charge_point_id, call.action, call.payload)
        if new is None:
            return raw
        self.stats.remapped += 1
        return ocppj.call(call.unique_id, call.action, new)

    def rewrite_to_cp(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        """Map the CSMS's transaction id back to the provisional one the charge point knows."""
        if session.version != "1.6" or call.action != "RemoteStopTransaction":
            return raw
        tx = call.payload.get("transactionId")
        if not isinstance(tx, int):
            return raw
        prov = self.store.provisional_for(session.charge_point_id, tx)
        if prov is None:
            return raw
        return ocppj.call(call.unique_id, call.action, {**call.payload, "transactionId": prov})

    def _map_payload(self, cp: str, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        tx = payload.get("transactionId")
        if not isinstance(tx, int):
            return None
        real = self.store.real_id(cp, tx)
        if real is not None:
            return {**payload, "transactionId": real}
        if action == "StopTransaction" and tx <= 0 and tx not in self.store.tx_map.get(cp, {}):
            open_tx = [t for t in self.store.open_tx.get(cp, set()) if t > 0]
            if len(open_tx) == 1:  # EVerest/libocpp#495: stop sent with -1 after an offline start
                log.warning(
                    "stop_transaction_id_repaired", charge_point_id=cp, sent=tx, used=open_tx[0]
                )
                return {**payload, "transactionId": open_tx[0]}
        return None

    # ------------------------------------------------------------ upstream transitions

    async def upstream_lost(self, session: ChargePointSession) -> None:
        self.unknown_accepted = 0

    async def upstream_restored(self, session: ChargePointSession) -> None:
        """Replay this charge point's queue in order; returns when it is empty."""
        cp = session.charge_point_id
        queue = self.store.queues.get(cp)
        if not queue:
            return
        log.info("offline_replay_start", charge_point_id=cp, messages=len(queue))
        started = time.monotonic()
        replayed = 0
        while queue:
            msg = queue[0]
            payload = msg.payload
            if msg.version == "1.6":
                payload = self._map_payload(cp, msg.action, payload) or payload
                tx = payload.get("transactionId")
                if (
                    msg.action == "StopTransaction"
                    and isinstance(tx, int)
                    and tx <= 0
                    and msg.attempts == 0
                ):
                    # MicroOcpp#454: the start was lost, only the stop exists. Deliver it anyway.
                    await self._alarm(
                        cp,
                        "StopTransaction for a transaction the CSMS never saw (its start was lost)",
                        {"transaction_id": tx, "meter_stop": payload.get("meterStop")},
                    )
            try:
                reply = await session.call_upstream(
                    msg.action, payload, self.config.replay_timeout_s
                )
            except CallTimeout as exc:
                reply = ocppj.CallError("", "Timeout", str(exc), {})
            except CallConnectionClosed:
                log.warning("offline_replay_interrupted", charge_point_id=cp, left=len(queue))
                raise
            if isinstance(reply, ocppj.CallError):
                await self.store.record_attempt(msg)
                if msg.attempts >= self.config.replay_max_attempts:
                    error = f"{reply.error_code}: {reply.description}"
                    await self.store.park(msg, error)
                    self.stats.parked += 1
                    log.error(
                        "offline_message_parked", charge_point_id=cp, action=msg.action, error=error
                    )
                    await self._alarm(
                        cp,
                        f"CSMS rejected a queued {msg.action} {msg.attempts} times; parked for an operator",
                        {"action": msg.action, "error": error, "seq": msg.seq},
                    )
                    continue
                await asyncio.sleep(self.config.replay_backoff_s * 2 ** (msg.attempts - 1))
                continue
            await self._settle(
                cp, msg, reply.payload if isinstance(reply, ocppj.CallResult) else {}
            )
            replayed += 1
            self.stats.replayed += 1
        log.info(
            "offline_replay_done",
            charge_point_id=cp,
            messages=replayed,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _settle(self, cp: str, msg: QueuedMessage, result: dict[str, Any]) -> None:
        """Record that the CSMS took ``msg`` (its transaction id, its removal from the queue),
        retrying until the store can: a message left queued after the CSMS took it would be
        sent again, and a StartTransaction sent again opens a second transaction there. The
        replay of this charge point waits meanwhile."""
        delay = max(self.config.replay_backoff_s, 0.05)
        while True:
            try:
                await self._after_replayed(cp, msg, result)
                await self.store.remove(msg)
                return
            except (sqlite3.Error, OSError) as exc:
                log.error("offline_replayed_not_recorded", charge_point_id=cp, action=msg.action,
                          error=str(exc), retry_in=delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_RETRY_MAX_S)

    async def _after_replayed(self, cp: str, msg: QueuedMessage, result: dict[str, Any]) -> None:
        if msg.action == "StartTransaction" and msg.provisional_tx is not None:
            real = result.get("transactionId")
            if isinstance(real, int):
                await self.store.map_transaction(cp, msg.provisional_tx, real)
                opened = self.store.open_tx.setdefault(cp, set())
                opened.discard(msg.provisional_tx)

    async def _alarm(self, cp: str, message: str, details: dict[str, Any]) -> None:
        self.stats.alarms.append(
            {"charge_point_id": cp, "message": message, **details, "at": time.time()}
        )
        del self.stats.alarms[:-50]
        if self.on_alarm is not None:
            try:
                await self.on_alarm(cp, message, details)
            except Exception as exc:
                log.error("offline_alarm_failed", error=repr(exc))

    def status(self) -> dict[str, Any]:
        return {
            "mode": "serve",
            "queued": self.store.size(),
            "queued_by_charge_point": {cp: len(q) for cp, q in self.store.queues.items() if q},
            "answered_locally": self.stats.answered_locally,
            "replayed": self.stats.replayed,
            "parked": self.stats.parked,
            "thinned_meter_values": self.stats.thinned,
            "alarms": self.stats.alarms[-10:],
        }


class DisconnectOffline:
    """The ``disconnect`` policy: strict Local Controller behaviour."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def handle_call(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> None:
        await self._close(session)

    async def upstream_lost(self, session: ChargePointSession) -> None:
        await self._close(session)

    async def upstream_restored(self, session: ChargePointSession) -> None:
        return None

    def rewrite_to_csms(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        return raw

    def rewrite_to_cp(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        return raw

    async def _close(self, session: ChargePointSession) -> None:
        if not session.closed:
            self.disconnects += 1
            log.warning(
                "closing_charge_point_csms_unreachable",
                charge_point_id=session.charge_point_id,
                mode="disconnect",
            )
            await session.ws.close(1001, "CSMS unreachable")

    def status(self) -> dict[str, Any]:
        return {"mode": "disconnect", "disconnects": self.disconnects}


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("offline_background_write_failed", error=repr(task.exception()))
