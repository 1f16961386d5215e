"""The collector service: MQTT ingest → PostgreSQL → analysis, and the API beside it.

Start order: database (embedded server when configured, migrations), MQTT
subscription, then the API's listening port — so the port opens only when
the collector is ready. Shutdown order: stop the API, stop taking messages,
store and acknowledge what was received, finish analysis, close the pool,
stop the embedded server.

Tasks (each owned by one ``TaskGroup``):

* **ingest**: takes batches from the MQTT buffer, validates, stores them in one
  transaction, then acknowledges them to the broker; a database error retries
  the same batch with backoff (nothing is acknowledged that is not stored).
* **analysis**: consumes what ingest stored (coalescing when it lags) and runs
  the engine; a periodic refresh re-enriches open issues and the fleet view.
* **api**: uvicorn serving :func:`chargesight.cloud.api.create_app`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import uvicorn

from chargesight.cloud.api import ApiState, create_app
from chargesight.cloud.config import CloudConfig
from chargesight.cloud.db import Database, open_database
from chargesight.cloud.embedded import EmbeddedPostgres, start_embedded
from chargesight.cloud.engine import Engine
from chargesight.cloud.ingest import DeadLetter, StoreResult, classify, store_batch
from chargesight.cloud.metrics import Metrics
from chargesight.cloud.mqttsource import Inbound, MqttSource
from chargesight.cloud.requests import RequestSender
from chargesight.common.configload import parse_host_port
from chargesight.common.logs import get_logger
from chargesight.common.messages import Digest, EdgeMessage, Escalation

log = get_logger(__name__)

RETRYABLE = (
    psycopg.OperationalError,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)
MAX_INFLIGHT_BATCHES = 4  # batches being stored at once: overlaps validation with round trips

ANALYSIS_MAX_DEFER_S = 2.0  # while ingest has a backlog, analysis waits at most this long

KIND_OF = {"escalations": "escalation", "digests": "digest", "state": "state", "replies": "reply"}


async def open_store(config: CloudConfig) -> tuple[Database, EmbeddedPostgres | None]:
    """Start the embedded server if configured and open the migrated database."""
    embedded = None
    url = config.database.url
    if url == "embedded":
        assert config.database.path is not None
        embedded = await start_embedded(config.database.path)
        url = embedded.url
    try:
        db = await open_database(
            url,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            timescale=config.database.timescale,
            compress_after_days=config.database.compress_after_days,
            retention_days=config.database.retention_days,
        )
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return db, embedded


@dataclass
class Pending:
    escalations: list[Escalation] = field(default_factory=list)
    digests: list[Digest] = field(default_factory=list)

    def add(self, r: StoreResult) -> None:
        self.escalations.extend(r.escalations)
        self.digests.extend(r.digests)

    def __bool__(self) -> bool:
        return bool(self.escalations or self.digests)


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the collector owns SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.listening.set()


class ApiBindError(Exception):
    """``[api] listen`` cannot be bound."""


def bind_api(listen: str) -> socket.socket:
    host, port = parse_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it small responses wait ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiBindError(f"api.listen {listen}: cannot listen: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


class Collector:
    """One collector replica. ``async with`` it, or call :meth:`run` for the whole service."""

    def __init__(self, config: CloudConfig, db: Database, metrics: Metrics | None = None) -> None:
        self.config = config
        self.db = db
        self.metrics = metrics or Metrics()
        self.engine = Engine(db.pool, config.analysis)
        self.engine.timescale = db.timescale
        self.source = MqttSource(config.mqtt, config.ingest.queue_max)
        self._stopping = asyncio.Event()
        self._pending = Pending()
        self._pending_event = asyncio.Event()
        self.stored_total = 0
        self.handled_total = 0
        self.analysed_batches = 0
        self._analysis_idle = asyncio.Event()
        self._analysis_idle.set()
        self.server: ApiServer | None = None
        self._progress = asyncio.Condition()
        self._inflight = 0  # batches taken from the buffer and not yet acknowledged
        self.api_port: int | None = None

    # -------------------------------------------------------------- ingest

    def _classify(self, items: list[Inbound]) -> tuple[list[EdgeMessage], list[DeadLetter]]:
        msgs: list[EdgeMessage] = []
        dead: list[DeadLetter] = []
        for it in items:
            kind = it.topic.rsplit("/", 1)[-1]
            self.metrics.received.labels(KIND_OF.get(kind, "unknown")).inc()
            res = classify(it.topic, it.payload)
            if isinstance(res, DeadLetter):
                dead.append(res)
                log.warning("dead letter", topic=it.topic, reason=res.reason)
            else:
                msgs.append(res)
        return msgs, dead

    async def store(self, msgs: list[EdgeMessage], dead: list[DeadLetter]) -> StoreResult:
        """Store one batch. Connection trouble is retried until it succeeds; a batch the
        database refuses (bad data) is stored message by message, and what it still refuses
        becomes a dead letter — bad input never raises here."""
        delay = 0.2
        while True:
            try:
                t0 = time.perf_counter()
                async with self.db.pool.connection() as conn:
                    result = await store_batch(conn, msgs, dead)
                self.metrics.batch_seconds.observe(time.perf_counter() - t0)
                break
            except RETRYABLE as exc:
                self.metrics.db_errors.inc()
                log.warning("store failed, retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except psycopg.Error as exc:
                log.warning("batch refused by the database, storing one by one", error=str(exc))
                result = await self._store_singly(msgs, dead)
                break
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.dead_letters.inc(result.dead_letters)
        self.metrics.stored.labels("escalation").inc(len(result.escalations))
        self.metrics.stored.labels("digest").inc(len(result.digests))
        self.metrics.stored.labels("state").inc(result.states)
        self.metrics.stored.labels("reply").inc(result.replies)
        self.stored_total += result.stored
        return result

    async def _store_singly(self, msgs: list[EdgeMessage], dead: list[DeadLetter]) -> StoreResult:
        total = StoreResult()
        refused: list[DeadLetter] = list(dead)
        for m in msgs:
            try:
                async with self.db.pool.connection() as conn:
                    r = await store_batch(conn, [m])
            except RETRYABLE:
                raise
            except psycopg.Error as exc:
                topic = f"chargesight/v1/sites/{m.site_id}/{type(m).__name__.lower()}"
                refused.append(DeadLetter(topic, f"database refused it: {exc}", m.to_json()))
                continue
            total.escalations += r.escalations
            total.digests += r.digests
            total.states += r.states
            total.replies += r.replies
            total.duplicates += r.duplicates
            total.sites |= r.sites
        async with self.db.pool.connection() as conn:
            r = await store_batch(conn, [], refused)
        total.dead_letters = r.dead_letters
        return total

    async def _ingest_loop(self) -> None:
        """Take batches, store up to ``MAX_INFLIGHT_BATCHES`` at once, acknowledge in order."""
        cfg = self.config.ingest
        inflight: collections.deque[tuple[list[Inbound], asyncio.Task[StoreResult]]]
        inflight = collections.deque()
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                get = asyncio.ensure_future(self.source.batch(cfg.batch_size, cfg.batch_delay_s))
                waits: set[asyncio.Future[Any]] = {get, stop}
                if inflight:
                    waits.add(inflight[0][1])
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    items = get.result()
                    # validation off the event loop, so database round trips and the MQTT
                    # socket are served while a batch is parsed (it yields the GIL every few ms)
                    msgs, dead = await asyncio.to_thread(self._classify, items)
                    inflight.append((items, asyncio.create_task(self.store(msgs, dead))))
                    self._inflight = len(inflight)
                else:
                    get.cancel()  # cancel-safe: nothing was taken from the buffer
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                while inflight and (inflight[0][1].done() or len(inflight) > MAX_INFLIGHT_BATCHES):
                    items, task = inflight.popleft()
                    self._inflight = len(inflight)
                    await self._after_store(items, await task)
            # store and acknowledge what the broker already handed us
            while self.source.depth:
                items = await self.source.batch(cfg.batch_size, 0)
                msgs, dead = self._classify(items)
                inflight.append((items, asyncio.create_task(self.store(msgs, dead))))
            while inflight:
                items, task = inflight.popleft()
                await self._after_store(items, await task)
        finally:
            self._inflight = 0
            stop.cancel()
            for _, task in inflight:
                task.cancel()

    async def _after_store(self, items: list[Inbound], result: StoreResult) -> None:
        self.source.ack(items)
        self.metrics.lag_seconds.set(time.monotonic() - items[0].received)
        self.metrics.queue_depth.set(self.source.depth)
        self.handled_total += len(items)
        if result.escalations or result.digests:
            self._pending.add(result)
            self._analysis_idle.clear()
            self._pending_event.set()
        await self._notify()

    # -------------------------------------------------------------- analysis

    async def _analysis_loop(self) -> None:
        while True:
            if not self._pending:
                self._analysis_idle.set()
                await self._notify()
                if self._stopping.is_set():
                    return
                self._pending_event.clear()
                waiter = asyncio.ensure_future(self._pending_event.wait())
                stop = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stop.cancel()
                continue
            # ingest first: while messages are waiting or being stored, let more results
            # coalesce (one analysis over many batches) — for at most ANALYSIS_MAX_DEFER_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANALYSIS_MAX_DEFER_S), self._progress:
                    await self._progress.wait_for(self._ingest_quiet)
            batch, self._pending = self._pending, Pending()
            t0 = time.perf_counter()
            try:
                await self.engine.on_stored(batch.escalations, batch.digests)
            except Exception as exc:  # analysis must never stop ingest; the data is stored
                log.error("analysis failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self.metrics.analysis_seconds.observe(time.perf_counter() - t0)
            self.analysed_batches += 1
            await self._update_issue_gauges()

    def _ingest_quiet(self) -> bool:
        return not (self.source.depth or self._inflight) or self._stopping.is_set()

    async def _update_issue_gauges(self) -> None:
        async with self.db.pool.connection() as conn:
            cur = await conn.execute("SELECT status, count(*) AS n FROM issues GROUP BY status")
            counts = {str(r["status"]): int(str(r["n"])) for r in await cur.fetchall()}
        for st in ("open", "acknowledged", "resolved"):
            self.metrics.issues.labels(st).set(counts.get(st, 0))

    async def _refresh_loop(self) -> None:
        interval = self.config.analysis.refresh_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                await self.engine.refresh_open()
                await self.engine.fleet_models()
            except psycopg.Error as exc:
                log.warning("refresh failed", error=str(exc))

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    def idle(self) -> bool:
        return not self.source.depth and not self._pending and self._analysis_idle.is_set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds after a store or analysis step (cancel-safe)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(predicate)

    async def wait_stored(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` messages (new, duplicate or dead) were handled and analysed."""
        await self.wait_until(lambda: self.handled_total >= n and self.idle(), timeout)

    # -------------------------------------------------------------- service

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Subscribe, serve the API, run until :meth:`stop`."""
        await self.source.start()
        sender = RequestSender(self.config.mqtt)  # operators' requests to the edge agents
        sender.start()
        state = ApiState(
            self.db.pool, self.engine, self.config.api.all_tokens(), self.metrics, requests=sender
        )
        sock = bind_api(self.config.api.listen)  # bound, not listening: the port opens when ready
        self.api_port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            create_app(state), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = ApiServer(uv_config)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ingest_loop())
                tg.create_task(self._analysis_loop())
                tg.create_task(self._refresh_loop())
                api = tg.create_task(self.server.serve(sockets=[sock]))
                started = asyncio.ensure_future(self.server.listening.wait())
                await asyncio.wait({started, api}, return_when=asyncio.FIRST_COMPLETED)
                started.cancel()
                if self.server.started:
                    log.info("collector ready", api=self.config.api.listen, port=self.api_port)
                    if ready is not None:
                        ready.set()
                else:
                    log.error("the API did not start")
                    self._stopping.set()
                await self._stopping.wait()
                self.server.should_exit = True
        finally:
            sock.close()
            await sender.close()
            await self.source.close()
            await self.engine.close()

    def stop(self) -> None:
        self._stopping.set()
        if self.server is not None:
            self.server.should_exit = True


async def run(config: CloudConfig) -> int:
    """``chargesight cloud run``: the whole service until SIGTERM/SIGINT."""
    db, embedded = await open_store(config)
    try:
        collector = Collector(config, db)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, collector.stop)
        await collector.serve()
        return 0
    finally:
        await db.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
