"""The collector service: MQTT ingest → PostgreSQL → analysis, and the API beside it.

Start order: database (embedded server when configured, migrations), the
catch-up of what collectors now gone stored and never analysed
(cloud/catchup.py), MQTT subscription (or the ingest worker processes, each
with its own), then the API's listening port — so the port opens only when the
collector is ready.
Shutdown order: stop the API, stop taking messages, store and acknowledge
what was received, finish analysis, close the pool, stop the embedded server.

Tasks (each owned by one ``TaskGroup``):

* **ingest** (:class:`IngestLoop`): takes batches from the MQTT buffer,
  validates them off the event loop, stores each in one transaction, then
  acknowledges it to the broker; a database error retries the same batch
  with backoff (nothing is acknowledged that is not stored). With
  ``[ingest] workers = N`` this runs in N processes instead
  (:class:`IngestWorkers`), each with its own MQTT session in the shared
  subscription, so the broker splits the stream between them; each reports
  what it stored to this process, which keeps analysis and the API.
* **analysis**: consumes what ingest stored (coalescing while ingest has a
  backlog) and runs the engine; a periodic refresh re-enriches open issues
  and the fleet view.
* **api**: uvicorn serving :func:`chargesight.cloud.api.create_app`.

A collector process holds many young objects per message (a validated
digest is ~65 of them), so :func:`tune_gc` freezes what start-up allocated
out of the cyclic collector's scans and lets it run rarely: with the default
thresholds it took about half of the ingest CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import os
import signal
import socket
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psycopg
import uvicorn

from chargesight.cloud.api import ApiState, create_app
from chargesight.cloud.catchup import AnalysisOwner, catch_up, mark_analysed, retry_failed
from chargesight.cloud.config import CloudConfig, IngestSection
from chargesight.cloud.db import Database, DatabaseError, open_database, transient
from chargesight.cloud.embedded import EmbeddedPostgres, start_embedded
from chargesight.cloud.engine import Engine
from chargesight.cloud.ingest import (
    DeadLetter,
    DigestSummary,
    Received,
    StoreResult,
    classify,
    store_batch,
    store_one_by_one,
)
from chargesight.cloud.metrics import Metrics
from chargesight.cloud.mqttsource import PERSISTENT_SESSION_S, Inbound, MqttError, MqttSource
from chargesight.cloud.requests import RequestSender
from chargesight.common.configload import ConfigError, parse_host_port
from chargesight.common.logs import configure_logging, get_logger
from chargesight.common.messages import Escalation

log = get_logger(__name__)

# batches taken from the buffer and not yet acknowledged: one being stored while the next is
# validated and sent. More only made concurrent transactions wait on each other's roll-up rows
# (the same chargers' days) and kept more validated messages alive for the GC to scan.
MAX_INFLIGHT_BATCHES = 2

ANALYSIS_MAX_DEFER_S = 2.0  # while ingest has a backlog, analysis waits at most this long
# tests only: analysis sleeps this long before each step, so a test can kill the collector
# between a batch's commit and its analysis
TEST_ANALYSIS_DELAY_ENV = "CHARGESIGHT_TEST_ANALYSIS_DELAY_S"

KIND_OF = {"escalations": "escalation", "digests": "digest", "state": "state", "replies": "reply"}

WORKER_SESSION_S = 60  # no [mqtt] client_id: a killed worker's restart resumes within this
WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 30.0
WORKER_RESTART_MAX_S = 30.0

GC_YOUNG_THRESHOLD = 1_000_000  # allocations between young collections (tune_gc)


def tune_gc() -> None:
    """Cyclic-GC settings for a collector process (``run`` and every ingest worker).

    What start-up allocated (modules, the app) is frozen out of the scans, and young
    collections run every 1,000,000 allocations instead of 700: objects die by reference
    counting, the cyclic collector only has to find cycles. A young collection costs
    what is still alive when it runs — under load the batches being validated, stored and
    analysed, some 200,000 objects whatever the threshold — so the rarer the cheaper: at
    50,000 it took 30–50 µs per 10-charger digest, at 1,000,000 ~3 µs (one pause of
    ~0.1 s every ~15,000 digests).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


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


def check_workers(config: CloudConfig) -> None:
    """``[ingest] workers`` needs the broker to split the stream: an MQTT 5 shared subscription."""
    if config.ingest.workers and (
        config.mqtt.shared_group is None or config.mqtt.protocol == "3.1.1"
    ):
        raise ConfigError(
            "ingest.workers: several ingest processes need an MQTT 5 shared subscription"
            ' (mqtt.shared_group set, mqtt.protocol "auto" or "5"); use workers = 0 otherwise'
        )


@dataclass
class Pending:
    escalations: list[Escalation] = field(default_factory=list)
    digests: list[DigestSummary] = field(default_factory=list)
    batch_keys: list[str] = field(default_factory=list)  # their ``unanalysed`` rows

    def add(
        self, escalations: list[Escalation], digests: list[DigestSummary], keys: list[str]
    ) -> None:
        self.escalations.extend(escalations)
        self.digests.extend(digests)
        self.batch_keys.extend(keys)

    def __bool__(self) -> bool:
        return bool(self.escalations or self.digests)


@dataclass
class BatchReport:
    """What storing one batch did, for the metrics; plain data, so a worker can send it."""

    handled: int = 0  # messages taken from the broker (new, duplicate or dead)
    received: dict[str, int] = field(default_factory=dict)  # by kind
    stored: dict[str, int] = field(default_factory=dict)  # new messages by kind
    duplicates: int = 0
    dead_letters: int = 0
    db_errors: int = 0  # attempts that failed and were retried
    seconds: float = 0.0  # time to store the batch
    lag: float = 0.0  # receipt of its oldest message → commit
    depth: int = 0  # messages still waiting in that process's buffer
    id_conflicts: int = 0  # charge point ids two sites reported (ingest.IdConflict)


def apply_report(metrics: Metrics, r: BatchReport) -> None:
    for kind, n in r.received.items():
        metrics.received.labels(kind).inc(n)
    for kind, n in r.stored.items():
        metrics.stored.labels(kind).inc(n)
    metrics.duplicates.inc(r.duplicates)
    metrics.dead_letters.inc(r.dead_letters)
    metrics.db_errors.inc(r.db_errors)
    metrics.id_conflicts.inc(r.id_conflicts)
    metrics.batch_seconds.observe(r.seconds)
    metrics.lag_seconds.set(r.lag)


@dataclass
class Classified:
    """One batch after validation."""

    msgs: list[Received] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)  # by kind
    payloads: dict[str, bytes] = field(default_factory=dict)  # message_id → the bytes received


StoredCallback = Callable[
    [list[Inbound], StoreResult, BatchReport, dict[str, bytes]], Awaitable[None]
]


_StoreTask = asyncio.Task[tuple[StoreResult, BatchReport]]


def _store_some(
    msgs: list[Received], conn: psycopg.AsyncConnection[dict[str, object]], *, owner: int | None
) -> Awaitable[StoreResult]:
    return store_batch(conn, msgs, owner=owner)


class IngestLoop:
    """One process's ingest: batches from ``source``, validated off the event loop, up to
    ``MAX_INFLIGHT_BATCHES`` stored at once, and in receipt order: ``stored`` is awaited, then
    the batch is acknowledged to the broker. No batch is taken while that many are in flight:
    under load the next one grows in the buffer (up to ``batch_size``) meanwhile."""

    def __init__(
        self, config: IngestSection, db: Database, source: MqttSource, stored: StoredCallback
    ) -> None:
        self.config = config
        self.db = db
        self.source = source
        self._stored = stored
        self.inflight = 0  # batches taken from the buffer and not yet acknowledged
        self.owner: int | None = None  # the analysis owner its batches are recorded under

    def classify(self, items: list[Inbound]) -> Classified:
        out = Classified()
        received: collections.Counter[str] = collections.Counter()
        payloads = out.payloads
        for it in items:
            received[KIND_OF.get(it.topic.rsplit("/", 1)[-1], "unknown")] += 1
            res = classify(it.topic, it.payload)
            if isinstance(res, DeadLetter):
                out.dead.append(res)
                log.warning("dead letter", topic=it.topic, reason=res.reason)
            else:
                out.msgs.append(res)
                payloads.setdefault(res.message_id, it.payload)
        out.received = dict(received)
        return out

    async def store(
        self,
        msgs: list[Received],
        dead: list[DeadLetter],
        report: BatchReport | None = None,
        payloads: dict[str, bytes] | None = None,
    ) -> StoreResult:
        """Store one batch. Connection trouble is retried until it succeeds; a batch that
        cannot be stored as a whole (the database refuses a row, or a value cannot even be
        encoded for it) is stored message by message, and what still fails becomes a dead
        letter with the bytes received (``payloads``) — bad input never raises here."""
        report = report if report is not None else BatchReport()
        t0 = time.perf_counter()
        try:
            result = await self._retrying(
                report, lambda conn: store_batch(conn, msgs, dead, owner=self.owner)
            )
            report.seconds = time.perf_counter() - t0
        except Exception as exc:  # not the connection: something in the batch
            log.warning(
                "batch refused, storing one by one",
                error=f"{type(exc).__name__}: {exc}",
                exc_info=not isinstance(exc, psycopg.Error),
            )
            result = await self._store_singly(msgs, dead, report, payloads or {})
        report.duplicates = result.duplicates
        report.dead_letters = result.dead_letters
        report.id_conflicts = len(result.id_conflicts)
        stored = {
            "escalation": len(result.escalations),
            "digest": len(result.digests),
            "state": result.states,
            "reply": result.replies,
        }
        report.stored = {k: n for k, n in stored.items() if n}
        return result

    async def _retrying(
        self,
        report: BatchReport,
        write: Callable[[psycopg.AsyncConnection[dict[str, object]]], Awaitable[StoreResult]],
    ) -> StoreResult:
        """``write`` on a pooled connection, retried (with backoff) while the database cannot
        be reached; any other error is raised."""
        delay = 0.2
        while True:
            try:
                async with self.db.pool.connection() as conn:
                    return await write(conn)
            except psycopg.Error as exc:
                if not transient(exc):
                    raise
                report.db_errors += 1
                log.warning("store failed, retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _store_singly(
        self,
        msgs: list[Received],
        dead: list[DeadLetter],
        report: BatchReport,
        payloads: dict[str, bytes],
    ) -> StoreResult:
        refused: list[DeadLetter] = list(dead)
        total = await store_one_by_one(
            msgs,
            lambda one: self._retrying(
                report, functools.partial(_store_some, one, owner=self.owner)
            ),
            refused,
            payloads=payloads,
        )
        r = await self._retrying(report, lambda conn: store_batch(conn, [], refused))
        total.dead_letters = r.dead_letters
        return total

    async def _store_classified(
        self, items: list[Inbound], batch: Classified
    ) -> tuple[StoreResult, BatchReport]:
        report = BatchReport(handled=len(items), received=batch.received)
        result = await self.store(batch.msgs, batch.dead, report, batch.payloads)
        return result, report

    async def _finish(self, items: list[Inbound], batch: Classified, task: _StoreTask) -> None:
        result, report = await task
        report.lag = time.monotonic() - items[0].received
        report.depth = self.source.depth
        await self._stored(items, result, report, batch.payloads)
        self.source.ack(items)

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: then take no more messages, store and acknowledge the rest."""
        cfg = self.config
        inflight: collections.deque[tuple[list[Inbound], Classified, _StoreTask]]
        inflight = collections.deque()
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                # a new batch only while fewer than MAX_INFLIGHT_BATCHES are being stored: the
                # rest waits in the buffer, so batches grow to what arrives while one is stored
                get: asyncio.Future[list[Inbound]] | None = None
                waits: set[asyncio.Future[Any]] = {stop}
                if len(inflight) < MAX_INFLIGHT_BATCHES:
                    get = asyncio.ensure_future(
                        self.source.batch(cfg.batch_size, cfg.batch_delay_s)
                    )
                    waits.add(get)
                if inflight:
                    waits.add(inflight[0][2])
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if get is not None and get in done:
                    items = get.result()
                    # validation off the event loop, so database round trips and the MQTT
                    # socket are served while a batch is parsed (it yields the GIL every few ms)
                    batch = await asyncio.to_thread(self.classify, items)
                    task = asyncio.create_task(self._store_classified(items, batch))
                    inflight.append((items, batch, task))
                    self.inflight = len(inflight)
                elif get is not None:
                    get.cancel()  # cancel-safe: nothing was taken from the buffer
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                while inflight and inflight[0][2].done():
                    items, batch, task = inflight.popleft()
                    self.inflight = len(inflight)
                    await self._finish(items, batch, task)
            # store and acknowledge what the broker already handed us
            self.source.stop_reading()
            while self.source.depth:
                items = await self.source.batch(cfg.batch_size, 0)
                batch = self.classify(items)
                inflight.append(
                    (items, batch, asyncio.create_task(self._store_classified(items, batch)))
                )
            while inflight:
                items, batch, task = inflight.popleft()
                await self._finish(items, batch, task)
        finally:
            self.inflight = 0
            stop.cancel()
            for _, _, task in inflight:
                task.cancel()


# ------------------------------------------------------------------ ingest worker processes


class IngestWorkerError(Exception):
    """An ingest worker could not start (its database or broker), or died before it was ready."""


_U32 = struct.Struct("!I")
WORKER_BOOT = (
    "from chargesight.cloud.collector import ingest_worker_main; "
    "raise SystemExit(ingest_worker_main())"
)


def encode_record(header: dict[str, Any], payloads: list[bytes] | None = None) -> bytes:
    """worker → collector: ``u32 size | u32 header size | header JSON | payloads``."""
    head = orjson.dumps(header)
    body = b"".join([_U32.pack(len(head)), head, *(payloads or ())])
    return _U32.pack(len(body)) + body


def decode_record(body: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _U32.unpack_from(body)
    header: dict[str, Any] = orjson.loads(body[4 : 4 + n])
    return header, body[4 + n :]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_line(fd: int) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf


class _StdinClosed(asyncio.Protocol):
    """Sets ``stopping`` when the collector closes the worker's stdin (or dies)."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping

    def eof_received(self) -> bool | None:
        self.stopping.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.stopping.set()


def ingest_worker_main() -> int:
    """An ingest worker process, started by the collector (``[ingest] workers``).

    Its spec (JSON: config, database URL, MQTT client id and session) is the first line on
    stdin; records for the collector go to the original stdout, and fd 1 then points at
    stderr, so nothing else can land in that stream. The end of stdin, SIGTERM or SIGINT
    stop it after it stored and acknowledged what it had received.
    """
    spec = orjson.loads(_read_line(0) or b"null")
    if not isinstance(spec, dict):
        print("chargesight: ingest worker: no spec on stdin", file=sys.stderr)
        return 2
    out = os.dup(1)
    os.dup2(2, 1)
    config = CloudConfig.model_validate(spec["config"])
    configure_logging(config.logging.level, config.logging.format)
    tune_gc()
    return asyncio.run(_worker(config, spec, out))


async def _worker(config: CloudConfig, spec: dict[str, Any], out: int) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    stdin, _ = await loop.connect_read_pipe(
        lambda: _StdinClosed(stopping), os.fdopen(0, "rb", buffering=0)
    )
    index = int(spec["index"])

    async def send(header: dict[str, Any], payloads: list[bytes] | None = None) -> None:
        await asyncio.to_thread(_write_all, out, encode_record(header, payloads))

    try:
        db = await open_database(
            str(spec["database_url"]),
            min_size=1,
            max_size=MAX_INFLIGHT_BATCHES + 1,
            timescale=config.database.timescale,
            compress_after_days=config.database.compress_after_days,
            retention_days=config.database.retention_days,
        )
    except DatabaseError as exc:
        await send({"t": "error", "message": str(exc)})
        return 1
    source = MqttSource(
        config.mqtt,
        config.ingest.queue_max,
        client_id=str(spec["client_id"]),
        session_expiry_s=int(spec["session_s"]),
        end_session_on_close=bool(spec["end_session"]),
    )
    try:
        try:
            await source.start()
        except MqttError as exc:
            await send({"t": "error", "message": str(exc)})
            return 1
        if not source.protocol5:
            await send({"t": "error", "message": f"mqtt.url {config.mqtt.url}: the broker has"
                        " no MQTT 5, which several ingest workers need (ingest.workers)"})  # fmt: skip
            return 1
        await send({"t": "ready"})
        log.info("ingest worker ready", worker=index, client_id=source.client_id)

        async def stored(
            items: list[Inbound], result: StoreResult, report: BatchReport,
            payloads: dict[str, bytes],
        ) -> None:  # fmt: skip
            # what is new goes to the collector's analysis before the broker hears of it
            # escalations as received; digests as what the analysis reads of them
            new = [payloads[m.message_id] for m in result.escalations]
            header = {"t": "batch", "report": asdict(report), "new": [len(p) for p in new],
                      "digests": [d.to_list() for d in result.digests],
                      "keys": result.batch_keys}  # fmt: skip
            await send(header, new)

        loop_ = IngestLoop(config.ingest, db, source, stored)
        loop_.owner = int(spec["owner"]) if spec.get("owner") is not None else None
        await loop_.run(stopping)
        return 0
    finally:
        await source.close()
        await db.close()
        stdin.close()


def _parse_new(header: dict[str, Any], rest: bytes) -> tuple[list[Escalation], list[DigestSummary]]:
    """What a worker stored, for the collector's analysis: the escalations validated again
    from their bytes (the analysis works on the models; the worker validated them against
    the same schemas), the digests as their summaries."""
    escalations: list[Escalation] = []
    pos = 0
    for size in header["new"]:
        escalations.append(Escalation.model_validate_json(rest[pos : pos + size]))
        pos += size
    return escalations, [DigestSummary.from_list(v) for v in header.get("digests", ())]


WorkerBatchCallback = Callable[
    [int, BatchReport, list[Escalation], list[DigestSummary], list[str]], Awaitable[None]
]


class IngestWorkers:
    """``[ingest] workers`` ingest processes, supervised from the collector.

    Each worker has its own MQTT session in the shared subscription, so the broker splits
    the stream between them, and stores what it receives exactly as the collector would
    (validated, idempotent, acknowledged after commit). What each stored comes back here
    for analysis (``on_batch``). A worker that dies is started again under the same MQTT
    client id, whose session the broker kept: what it had received and not acknowledged
    is re-sent to it, and stored once (``message_id``). Client ids are
    ``<[mqtt] client_id>-ingest-<n>`` (sessions kept across restarts of the service, as for
    a single collector), or a fresh ``chargesight-collector-<random>-ingest-<n>`` per start
    whose sessions end when the worker stops.
    """

    def __init__(self, config: CloudConfig, database_url: str, on_batch: WorkerBatchCallback):
        self.count = config.ingest.workers
        persistent = config.mqtt.client_id is not None
        base = config.mqtt.client_id or f"chargesight-collector-{uuid.uuid4().hex[:12]}"
        self.client_ids = [f"{base}-ingest-{k}" for k in range(self.count)]
        self._spec: dict[str, Any] = {
            "config": config.model_dump(mode="json"),
            "database_url": database_url,
            "session_s": PERSISTENT_SESSION_S if persistent else WORKER_SESSION_S,
            "end_session": not persistent,
        }
        self._on_batch = on_batch
        self._procs: list[asyncio.subprocess.Process | None] = [None] * self.count
        self.depths = [0] * self.count
        self.handled = [0] * self.count  # messages each worker stored and acknowledged
        self.exit_codes: list[int | None] = [None] * self.count  # of each one's last process
        self.restarts = 0
        self._stopping = False
        self.owner: int | None = None  # the collector's analysis owner, for their batches

    @property
    def depth(self) -> int:
        return sum(self.depths)

    def pid(self, k: int) -> int | None:
        proc = self._procs[k]
        return proc.pid if proc is not None else None

    async def _spawn(self, k: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER_BOOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the collector, which stops us
        )
        spec = {**self._spec, "index": k, "client_id": self.client_ids[k], "owner": self.owner}
        assert proc.stdin is not None
        self._procs[k] = proc
        proc.stdin.write(orjson.dumps(spec) + b"\n")
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        if self._stopping:  # stopped while it started: it will exit after subscribing
            proc.stdin.close()
        return proc

    async def _record(self, proc: asyncio.subprocess.Process) -> bytes | None:
        assert proc.stdout is not None
        try:
            (n,) = _U32.unpack(await proc.stdout.readexactly(4))
            return await proc.stdout.readexactly(n)
        except asyncio.IncompleteReadError:
            return None

    async def _until_ready(self, k: int, proc: asyncio.subprocess.Process) -> None:
        body = await self._record(proc)
        if body is None:
            rc = await proc.wait()
            raise IngestWorkerError(f"ingest worker {k} exited with {rc} before it was ready")
        header, _ = decode_record(body)
        if header.get("t") != "ready":
            raise IngestWorkerError(str(header.get("message", header)))

    async def start(self) -> None:
        """Start every worker and wait until each has subscribed; IngestWorkerError if one
        cannot (the others are stopped)."""
        try:
            async with asyncio.timeout(WORKER_START_TIMEOUT_S):
                procs = [await self._spawn(k) for k in range(self.count)]
                for k, proc in enumerate(procs):
                    await self._until_ready(k, proc)
        except BaseException:
            await self.close()
            raise
        log.info("ingest workers ready", workers=self.count)

    async def _relay(self, k: int, proc: asyncio.subprocess.Process) -> None:
        """Hand what the worker stored to ``on_batch``, until its stdout ends."""
        while (body := await self._record(proc)) is not None:
            header, rest = decode_record(body)
            if header.get("t") != "batch":
                continue
            report = BatchReport(**header["report"])
            self.depths[k] = report.depth
            self.handled[k] += report.handled
            if header["new"]:
                escalations, digests = await asyncio.to_thread(_parse_new, header, rest)
            else:
                escalations, digests = _parse_new(header, rest)
            await self._on_batch(k, report, escalations, digests, list(header.get("keys", ())))

    async def _stop(self, k: int) -> int | None:
        """Close the worker's stdin (it stores what it has and exits); kill it if it hangs."""
        proc = self._procs[k]
        if proc is None:
            return None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(WORKER_STOP_TIMEOUT_S):
                rc = await proc.wait()
        except TimeoutError:
            log.error("ingest worker did not stop, killing it", worker=k, pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rc = await proc.wait()
        self.exit_codes[k] = rc
        return rc

    async def _supervise(self, k: int, stopping: asyncio.Event) -> None:
        delay = 0.5
        while True:
            proc = self._procs[k]
            if proc is None:
                try:
                    proc = await self._spawn(k)
                    async with asyncio.timeout(WORKER_START_TIMEOUT_S):
                        await self._until_ready(k, proc)
                    log.info("ingest worker restarted", worker=k, pid=proc.pid)
                except (IngestWorkerError, OSError, TimeoutError) as exc:
                    log.error("ingest worker cannot start", worker=k, error=str(exc),
                              retry_in=delay)  # fmt: skip
                    await self._stop(k)
                    self._procs[k] = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), delay)
                    delay = min(delay * 2, WORKER_RESTART_MAX_S)
                    if self._stopping:
                        return
                    continue
            started = time.monotonic()
            await self._relay(k, proc)
            rc = await self._stop(k)
            self._procs[k] = None
            self.depths[k] = 0
            if self._stopping:
                return
            self.restarts += 1
            if time.monotonic() - started > 60:
                delay = 0.5
            log.error("ingest worker exited, starting it again", worker=k, code=rc)

    async def close(self) -> None:
        """Stop every worker still running (after :meth:`start` when :meth:`run` never ran)."""
        self._stopping = True
        await asyncio.gather(*(self._stop(k) for k in range(self.count)))
        self._procs = [None] * self.count

    async def run(self, stopping: asyncio.Event) -> None:
        """Supervise until ``stopping``, then stop every worker after it stored what it has."""
        async with asyncio.TaskGroup() as tg:
            for k in range(self.count):
                tg.create_task(self._supervise(k, stopping))
            await stopping.wait()
            self._stopping = True
            for k in range(self.count):
                proc = self._procs[k]
                if proc is not None and proc.stdin is not None:
                    proc.stdin.close()


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
        check_workers(config)
        self.config = config
        self.db = db
        self.metrics = metrics or Metrics()
        self.engine = Engine(db.pool, config.analysis)
        self.engine.timescale = db.timescale
        self.source: MqttSource | None = None
        self.ingest: IngestLoop | None = None
        self.workers: IngestWorkers | None = None
        if config.ingest.workers:
            self.workers = IngestWorkers(config, db.url, self._worker_stored)
        else:
            self.source = MqttSource(config.mqtt, config.ingest.queue_max)
            self.ingest = IngestLoop(config.ingest, db, self.source, self._stored)
        self.analysis_owner = AnalysisOwner(db.url)
        self.caught_up = 0  # messages analysed at catch-up (stored by collectors now gone)
        self._failed_keys: list[str] = []  # batches whose analysis failed, tried again later
        self._test_analysis_delay = float(os.environ.get(TEST_ANALYSIS_DELAY_ENV) or 0)
        self._stopping = asyncio.Event()
        self._ingest_done = asyncio.Event()
        self._pending = Pending()
        self._pending_event = asyncio.Event()
        self.stored_total = 0
        self.handled_total = 0
        self.analysed_batches = 0
        self._analysis_idle = asyncio.Event()
        self._analysis_idle.set()
        self.server: ApiServer | None = None
        self._progress = asyncio.Condition()
        self.api_port: int | None = None

    # -------------------------------------------------------------- ingest

    async def _stored(
        self, items: list[Inbound], result: StoreResult, report: BatchReport,
        payloads: dict[str, bytes],
    ) -> None:  # fmt: skip
        apply_report(self.metrics, report)
        self.metrics.queue_depth.set(report.depth)
        await self._handled(
            report.handled, result.stored, result.escalations, result.digests, result.batch_keys
        )

    async def _worker_stored(
        self, k: int, report: BatchReport, escalations: list[Escalation],
        digests: list[DigestSummary],
        keys: list[str],
    ) -> None:  # fmt: skip
        apply_report(self.metrics, report)
        self.metrics.queue_depth.set(self._ingest_depth())
        await self._handled(report.handled, sum(report.stored.values()), escalations, digests, keys)

    async def _handled(
        self, handled: int, stored: int, escalations: list[Escalation],
        digests: list[DigestSummary],
        keys: list[str],
    ) -> None:  # fmt: skip
        self.handled_total += handled
        self.stored_total += stored
        if escalations or digests:
            self._pending.add(escalations, digests, keys)
            self._analysis_idle.clear()
            self._pending_event.set()
        await self._notify()

    def _ingest_depth(self) -> int:
        if self.workers is not None:
            return self.workers.depth
        return self.source.depth if self.source is not None else 0

    async def _ingest_loop(self) -> None:
        try:
            if self.workers is not None:
                await self.workers.run(self._stopping)
            elif self.ingest is not None:
                await self.ingest.run(self._stopping)
        finally:
            self._ingest_done.set()
            self._pending_event.set()

    # -------------------------------------------------------------- analysis

    async def _analysis_loop(self) -> None:
        while True:
            if not self._pending:
                self._analysis_idle.set()
                await self._notify()
                if self._ingest_done.is_set():
                    return  # stopped, and everything ingest stored was analysed
                self._pending_event.clear()
                await self._pending_event.wait()
                continue
            # ingest first: while messages are waiting or being stored, let more results
            # coalesce (one analysis over many batches) — for at most ANALYSIS_MAX_DEFER_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANALYSIS_MAX_DEFER_S), self._progress:
                    await self._progress.wait_for(self._ingest_quiet)
            if self._test_analysis_delay:
                await asyncio.sleep(self._test_analysis_delay)
            batch, self._pending = self._pending, Pending()
            t0 = time.perf_counter()
            try:
                await self.engine.on_stored(batch.escalations, batch.digests)
                await mark_analysed(self.db.pool, batch.batch_keys)
            except Exception as exc:  # analysis must never stop ingest; the data is stored
                # its ``unanalysed`` rows stay: analysed again at the next refresh (or by the
                # next start, or another replica once this one is gone)
                log.error("analysis failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
                self._failed_keys.extend(batch.batch_keys)
            self.metrics.analysis_seconds.observe(time.perf_counter() - t0)
            self.analysed_batches += 1
            await self._update_issue_gauges()

    def _ingest_quiet(self) -> bool:
        inflight = self.ingest.inflight if self.ingest is not None else 0
        return not (self._ingest_depth() or inflight) or self._stopping.is_set()

    async def _update_issue_gauges(self) -> None:
        """The issue-count gauges (a metric: when the database cannot say, they wait)."""
        try:
            async with self.db.pool.connection() as conn:
                cur = await conn.execute("SELECT status, count(*) AS n FROM issues GROUP BY status")
                counts = {str(r["status"]): int(str(r["n"])) for r in await cur.fetchall()}
        except psycopg.Error as exc:
            log.warning("issue gauges not updated", error=str(exc))
            return
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
                await self.analysis_owner.keep()
                await self._catch_up()  # replicas that died since
                await self._retry_failed()  # this one's analyses that failed
                await self.engine.refresh_open()
                await self.engine.fleet_models()
            except Exception as exc:  # the next refresh tries again; the loop goes on
                log.error(
                    "refresh failed",
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=not isinstance(exc, psycopg.Error),
                )

    async def _retry_failed(self) -> None:
        owner = self.analysis_owner.owner
        if not self._failed_keys or owner is None:
            return
        keys, self._failed_keys = self._failed_keys, []
        try:
            again = await retry_failed(self.engine, self.db.url, owner, keys)
        except BaseException:
            self._failed_keys = keys + self._failed_keys
            raise
        # and what failed in the analysis loop meanwhile
        self._failed_keys = again + self._failed_keys
        if len(again) < len(keys):
            await self._update_issue_gauges()
        await self._notify()

    async def _catch_up(self) -> None:
        """Analyse what collectors now gone stored and never analysed (cloud/catchup.py)."""
        n = await catch_up(self.engine, self.db.url, self.analysis_owner.owner)
        if n:
            self.caught_up += n
            self.metrics.caught_up.inc(n)
            await self._update_issue_gauges()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    def idle(self) -> bool:
        return not self._ingest_depth() and not self._pending and self._analysis_idle.is_set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds after a store or analysis step (cancel-safe)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(predicate)

    async def wait_stored(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` messages (new, duplicate or dead) were handled and analysed."""
        await self.wait_until(lambda: self.handled_total >= n and self.idle(), timeout)

    # -------------------------------------------------------------- service

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Catch up on what a collector now gone stored and never analysed, subscribe (or
        start the ingest workers), serve the API, run until :meth:`stop`."""
        owner = await self.analysis_owner.acquire()
        try:
            await self._catch_up()
        except psycopg.Error as exc:  # the rows stay: the next pass takes them
            log.error("catch-up failed", error=str(exc))
        except BaseException:
            await self.analysis_owner.close()
            raise
        if self.ingest is not None:
            self.ingest.owner = owner
        if self.workers is not None:
            self.workers.owner = owner
        try:
            await self._subscribe_and_serve(ready)
        finally:
            await self.analysis_owner.close()

    async def _subscribe_and_serve(self, ready: asyncio.Event | None) -> None:
        if self.workers is not None:
            await self.workers.start()
        elif self.source is not None:
            await self.source.start()
        try:
            sender = RequestSender(self.config.mqtt)  # operators' requests to the edge agents
            sender.start()
            state = ApiState(
                self.db.pool, self.engine, self.config.api.all_tokens(), self.metrics,
                requests=sender,
            )  # fmt: skip
            sock = bind_api(self.config.api.listen)  # bound, not listening: opens when ready
        except BaseException:
            if self.source is not None:
                await self.source.close()
            if self.workers is not None:
                await self.workers.close()
            raise
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
            if self.source is not None:
                await self.source.close()
            if self.workers is not None:
                await self.workers.close()  # a no-op when they stopped with the ingest task
            await self.engine.close()

    def stop(self) -> None:
        self._stopping.set()
        if self.server is not None:
            self.server.should_exit = True


async def run(config: CloudConfig) -> int:
    """``chargesight cloud run``: the whole service until SIGTERM/SIGINT."""
    check_workers(config)
    if config.mqtt.client_id is None:
        log.warning(
            "no [mqtt] client_id: the broker keeps no session for this collector, so what the"
            " edge agents publish while it is not connected is lost; give each replica its own"
            " client_id"
        )
    db, embedded = await open_store(config)
    try:
        collector = Collector(config, db)
        tune_gc()
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
