"""Validating and storing edge messages: the idempotent, batched write path.

``classify`` (pure) turns one received payload into a validated message or a
dead letter with its reason. ``store_batch`` writes a batch in one
transaction: the ``messages`` table is the idempotency ledger (``message_id``
primary key, ``ON CONFLICT DO NOTHING RETURNING``), and only messages it did
not hold before are expanded into the escalation, digest, charger-interval
and roll-up tables — so a re-delivery never duplicates anything. Per batch:
one round trip for the ledger, one binary COPY of the charger rows into a
staging table, then everything else in one pipeline (one more round trip);
small per-message rows (ledger, digests) travel as one JSON document
unpacked by the server, not as Python-built arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format
from pydantic import ValidationError

from chargesight.cloud.fastdigest import ChargerRecord, DigestRecord, decode_digest, out_of_range
from chargesight.common.logs import get_logger
from chargesight.common.messages import (
    SCHEMA_VERSION,
    ChargerCounters,
    Digest,
    EdgeMessage,
    Escalation,
    Reply,
    SiteState,
    parse_edge_message,
    parse_site_topic,
)

log = get_logger("chargesight.cloud.ingest")

KINDS = ("escalations", "digests", "state", "replies")
MAX_PAYLOAD = 4 * 1024 * 1024

# what the store path takes: the models, or a digest as msgspec decoded it (cloud/fastdigest.py)
Received = EdgeMessage | DigestRecord


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    payload: bytes

    @property
    def fingerprint(self) -> str:
        """Same topic and bytes → same dead letter (a re-delivery only bumps its count)."""
        return hashlib.sha256(self.topic.encode() + b"\0" + self.payload).hexdigest()


def _reason(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(message)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errs) - 5} more)" if len(errs) > 5 else ""
    return "schema validation failed: " + "; ".join(parts) + more


def validate(kind: str, payload: bytes, where: str) -> Received | DeadLetter:
    """One message of ``kind`` (a site topic's last part) against the common schemas, never
    raising: a digest as msgspec decoded it when msgspec accepts it, else as pydantic
    validated it; what neither takes is a dead letter under ``where`` with pydantic's
    reason (see cloud/fastdigest.py). The collector's :func:`classify` and ``cloud import``
    both validate this way."""
    msg: Received | None = decode_digest(payload) if kind == "digests" else None
    try:
        if msg is None:
            msg = parse_edge_message(kind, payload)
    except ValidationError as exc:
        return DeadLetter(where, _reason(exc), payload)
    except ValueError as exc:
        return DeadLetter(where, str(exc), payload)
    if isinstance(msg, Digest) and (why := out_of_range(msg)):
        return DeadLetter(where, why, payload)
    if msg.schema_version != SCHEMA_VERSION:
        return DeadLetter(where, f"unsupported schema_version {msg.schema_version}", payload)
    return msg


def classify(topic: str, payload: bytes) -> Received | DeadLetter:
    """Validate one received message against the common schemas (never raises). A digest
    comes back as msgspec decoded it when msgspec accepts it, else as pydantic validated it
    (or a dead letter with pydantic's reason): see cloud/fastdigest.py."""
    parsed = parse_site_topic(topic)
    if parsed is None:
        return DeadLetter(topic, "topic is not chargesight/v1/sites/{site_id}/{kind}", payload)
    site_id, kind = parsed
    if kind not in KINDS:
        return DeadLetter(topic, f"unknown message kind {kind!r}", payload)
    if len(payload) > MAX_PAYLOAD:
        return DeadLetter(
            topic, f"payload of {len(payload)} bytes is over the limit", payload[:MAX_PAYLOAD]
        )
    msg = validate(kind, payload, topic)
    if isinstance(msg, DeadLetter):
        return msg
    if msg.site_id != site_id:
        return DeadLetter(
            topic, f"site_id {msg.site_id!r} does not match the topic's site {site_id!r}", payload
        )
    return msg


@dataclass(frozen=True, slots=True)
class DigestSummary:
    """What the analysis (``Engine.on_stored``) reads of a stored digest; the counters
    themselves it reads from the tables."""

    site_id: str
    interval_end: datetime
    cleared_incidents: tuple[str, ...] = ()
    # self-resolved incidents or disconnects in it: the site's recurring rule is evaluated
    small_incidents: bool = False
    # a self-resolved incident that was not a connectivity drop: the repeat rule is evaluated
    fault_blips: bool = False

    @classmethod
    def of(cls, d: Digest | DigestRecord) -> DigestSummary:
        return cls(
            d.site_id,
            d.interval_end,
            tuple(d.cleared_incidents),
            bool(d.self_resolved) or any(c.disconnects or c.self_resolved for c in d.chargers),
            any(b.kind != "connectivity" for b in d.self_resolved),
        )

    def to_list(self) -> list[object]:
        """As JSON values (ingest workers hand summaries to the collector's analysis)."""
        return [
            self.site_id,
            self.interval_end.isoformat(),
            list(self.cleared_incidents),
            self.small_incidents,
            self.fault_blips,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> DigestSummary:
        return cls(str(v[0]), datetime.fromisoformat(v[1]), tuple(v[2]), bool(v[3]), bool(v[4]))


@dataclass(frozen=True, slots=True)
class IdConflict:
    """One charge point id that two sites reported within a day of each other."""

    charge_point_id: str
    site_a: str
    site_b: str


# when each conflict was last logged: once an hour each, not once a batch
_warned: dict[IdConflict, float] = {}
WARN_EVERY_S = 3600.0


def _warn_conflicts(conflicts: list[IdConflict]) -> None:
    now = time.monotonic()
    for c in conflicts:
        if now - _warned.get(c, -WARN_EVERY_S) >= WARN_EVERY_S:
            _warned[c] = now
            log.warning(
                "charge_point_id_conflict",
                charge_point_id=c.charge_point_id,
                sites=[c.site_a, c.site_b],
                error=(
                    f"sites {c.site_a} and {c.site_b} both report a charge point"
                    f" {c.charge_point_id}; the cloud keys chargers by id alone, so their data"
                    " mix: give each charge point an id unique across the fleet"
                ),
            )


@dataclass
class StoreResult:
    """What a batch added: only messages that were new (digests as what the analysis reads)."""

    escalations: list[Escalation] = field(default_factory=list)
    digests: list[DigestSummary] = field(default_factory=list)
    states: int = 0
    replies: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    sites: set[str] = field(default_factory=set)
    # the ``unanalysed`` rows written with it (store_batch's ``owner``): deleted once analysed
    batch_keys: list[str] = field(default_factory=list)
    # charge point ids two sites report (seen when a charger's metadata changed)
    id_conflicts: list[IdConflict] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return len(self.escalations) + len(self.digests) + self.states + self.replies

    def add(self, other: StoreResult) -> None:
        """Count ``other`` (another batch's result) in this one; dead letters excepted."""
        self.escalations += other.escalations
        self.digests += other.digests
        self.states += other.states
        self.replies += other.replies
        self.duplicates += other.duplicates
        self.sites |= other.sites
        self.batch_keys += other.batch_keys
        self.id_conflicts += other.id_conflicts


def _kind(msg: Received) -> str:
    if isinstance(msg, Escalation):
        return "escalation"
    if isinstance(msg, Digest | DigestRecord):
        return "digest"
    if isinstance(msg, SiteState):
        return "state"
    return "reply"


_TOPIC_KIND = {
    "escalation": "escalations",
    "digest": "digests",
    "state": "state",
    "reply": "replies",
}


def topic_of(msg: Received) -> str:
    """The site topic a message is received on."""
    return f"chargesight/v1/sites/{msg.site_id}/{_TOPIC_KIND[_kind(msg)]}"


async def store_one_by_one(
    msgs: Sequence[Received],
    store: Callable[[list[Received]], Awaitable[StoreResult]],
    refused: list[DeadLetter],
    *,
    topic: Callable[[Received], str] = topic_of,
    payloads: Mapping[str, bytes] | None = None,
    fatal: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> StoreResult:
    """What is left to do with a batch the database refused as a whole: ``store`` each
    message alone; one that still fails is appended to ``refused`` as a dead letter under
    ``topic(m)``, with the bytes received (``payloads``, by message id) or else its JSON.
    Exceptions of a ``fatal`` class are raised (the caller gives up); any other is the
    message's fault. The dead letters are the caller's to store."""
    total = StoreResult()
    for m in msgs:
        try:
            r = await store([m])
        except fatal:
            raise
        except Exception as exc:
            why = "database refused it" if isinstance(exc, psycopg.Error) else "cannot store it"
            raw = (payloads or {}).get(m.message_id)
            if raw is None:
                with contextlib.suppress(Exception):
                    raw = m.to_json()
            refused.append(DeadLetter(topic(m), f"{why}: {type(exc).__name__}: {exc}", raw or b""))
            continue
        total.add(r)
    return total


INTERVAL_COLS = (
    "site_id",
    "charge_point_id",
    "interval_start",
    "interval_end",
    "message_id",
    "vendor",
    "model",
    "firmware",
    "connectors",
    "connected_s",
    "disconnects",
    "faults",
    "self_resolved",
    "sessions_started",
    "sessions_failed",
    "sessions_ended_early",
    "energy_wh",
    "max_power_w",
    "rated_power_w",
    "max_temperature_c",
    "mean_temperature_c",
    "resets",
    "health_score",
    "anomaly_score",
    "faults_by_category",
    "features",
    "occupied_s",
    "connector_health",
)


async def store_batch(
    conn: psycopg.AsyncConnection[dict[str, object]],
    messages: Sequence[Received],
    dead: Sequence[DeadLetter] = (),
    *,
    owner: int | None = None,
) -> StoreResult:
    """Store a batch in one transaction; return what was new.

    With ``owner`` (a collector's analysis owner, see cloud/catchup.py), the new escalations
    and digests are also recorded in ``unanalysed`` (one row for the batch, in the same
    transaction and pipeline): stored but not yet analysed until that row is deleted."""
    result = StoreResult(dead_letters=len(dead))
    unique: dict[str, Received] = {}
    for m in messages:
        if m.message_id in unique:
            result.duplicates += 1
        else:
            unique[m.message_id] = m
    async with conn.transaction():
        if dead:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO dead_letters (fingerprint, topic, reason, payload)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (fingerprint) DO UPDATE SET"
                    " times = dead_letters.times + 1, last_received_at = now()",
                    [(d.fingerprint, d.topic, d.reason, d.payload) for d in dead],
                )
        if not unique:
            return result
        ids = list(unique)
        cur = await conn.execute(
            "INSERT INTO messages (message_id, site_id, kind, sent_at)"
            " SELECT m->>0, m->>1, m->>2, (m->>3)::timestamptz"
            " FROM jsonb_array_elements(%s::text::jsonb) AS m"
            " ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            (
                orjson.dumps(
                    [[i, unique[i].site_id, _kind(unique[i]), unique[i].sent_at] for i in ids]
                ).decode(),
            ),
        )
        fresh = {str(r["message_id"]) for r in await cur.fetchall()}
        result.duplicates += len(ids) - len(fresh)
        new = [unique[i] for i in ids if i in fresh]
        digests: list[Digest | DigestRecord] = []
        for m in new:
            result.sites.add(m.site_id)
            if isinstance(m, Escalation):
                result.escalations.append(m)
            elif isinstance(m, Digest | DigestRecord):
                digests.append(m)
            elif isinstance(m, SiteState):
                result.states += 1
            else:
                result.replies += 1
        charger_updates = _charger_meta(digests, _db_key(conn))
        await _stage_intervals(conn, digests)
        # everything below depends only on ``fresh``: sent in one pipeline, one round trip
        conflicts = conn.cursor()
        async with conn.pipeline():
            await _write_escalations(conn, result.escalations)
            await _write_digests(conn, digests, charger_updates, conflicts)
            await _write_states(conn, [m for m in new if isinstance(m, SiteState)])
            replies = [m for m in new if isinstance(m, Reply)]
            if replies:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO replies (message_id, site_id, request_id, body)"
                        " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                        [
                            (r.message_id, r.site_id, r.request_id, r.to_json().decode())
                            for r in replies
                        ],
                    )
            await _touch_sites(conn, digests, result.escalations)
            to_analyse = [
                m.message_id for m in new if isinstance(m, Escalation | Digest | DigestRecord)
            ]
            if owner is not None and to_analyse:
                # keyed by its first new message's id: fresh in the ledger, so unique
                await conn.execute(
                    "INSERT INTO unanalysed (batch_key, owner, message_ids) VALUES (%s, %s, %s)",
                    (to_analyse[0], owner, to_analyse),
                )
                result.batch_keys.append(to_analyse[0])
        if charger_updates:
            result.id_conflicts = [
                IdConflict(str(r["charge_point_id"]), str(r["site_a"]), str(r["site_b"]))
                for r in await conflicts.fetchall()
            ]
        await conflicts.close()
    _warn_conflicts(result.id_conflicts)
    if charger_updates:
        _known_chargers.setdefault(_db_key(conn), {}).update(charger_updates)
    in_order = sorted(digests, key=lambda d: (d.interval_end, d.message_id))
    result.digests = [DigestSummary.of(d) for d in in_order]
    result.escalations.sort(key=lambda e: (e.sent_at, e.message_id))
    return result


async def _write_escalations(
    conn: psycopg.AsyncConnection[dict[str, object]], escs: list[Escalation]
) -> None:
    if not escs:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO escalations (message_id, site_id, incident_id, kind, scope,"
            " charge_point_id, connector_id, status, category, fault_code, vendor_code,"
            " hw_vendor, hw_model, hw_firmware, started_at, ended_at, sent_at, body)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb)",
            [
                (
                    e.message_id,
                    e.site_id,
                    e.incident_id,
                    e.kind,
                    e.scope,
                    e.charge_point_id,
                    e.connector_id,
                    e.status,
                    e.fault.category,
                    e.fault.code,
                    e.fault.vendor_code,
                    e.hardware.vendor,
                    e.hardware.model,
                    e.hardware.firmware,
                    e.started_at,
                    e.ended_at,
                    e.sent_at,
                    e.to_json().decode(),
                )
                for e in escs
            ],
        )
        hw = {
            e.charge_point_id: (e.site_id, e.hardware)
            for e in escs
            if e.charge_point_id and (e.hardware.model or e.hardware.vendor)
        }
        if hw:
            await cur.executemany(
                "INSERT INTO chargers (charge_point_id, site_id, vendor, model, firmware)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (charge_point_id) DO UPDATE SET"
                " site_id = EXCLUDED.site_id,"
                " vendor = coalesce(EXCLUDED.vendor, chargers.vendor),"
                " model = coalesce(EXCLUDED.model, chargers.model),"
                " firmware = coalesce(EXCLUDED.firmware, chargers.firmware)",
                [(cp, s, h.vendor, h.model, h.firmware) for cp, (s, h) in sorted(hw.items())],
            )


_DIGEST_JSON_COLS = (
    "message_id text, site_id text, interval_start timestamptz, interval_end timestamptz,"
    " currency text, price_per_kwh float8"
)
_DIGESTS = (
    "INSERT INTO digests (message_id, site_id, interval_start, interval_end, currency,"
    " price_per_kwh) SELECT message_id, site_id, interval_start, interval_end, currency,"
    f" price_per_kwh FROM json_to_recordset(%s::text::json) AS d({_DIGEST_JSON_COLS})"
)

INTERVAL_TYPES = (
    "text", "text", "timestamptz", "timestamptz", "text", "text", "text", "text", "int4", "float8",
    "int4", "int4", "int4", "int4", "int4", "int4", "float8", "float8", "float8", "float8", "float8",
    "int4", "float8", "float8", "jsonb", "jsonb", "float8", "jsonb",
)  # fmt: skip

# charger rows for the binary COPY: the digest's fields, then the charger's in one C call
# (``attrgetter``), then ``features`` (an empty map is stored as NULL: the edge sent none) and
# ``connector_health`` (connector numbers become the JSON object's keys)
_HEAD_COLS = ("site_id", "interval_start", "interval_end", "message_id")
_TAIL_COLS = ("features", "connector_health")
_CHARGER_COLS = tuple(c for c in INTERVAL_COLS if c not in _HEAD_COLS and c not in _TAIL_COLS)
_STAGE_COLS = (*_HEAD_COLS, *_CHARGER_COLS, *_TAIL_COLS)
_STAGE_TYPES = [dict(zip(INTERVAL_COLS, INTERVAL_TYPES, strict=True))[c] for c in _STAGE_COLS]
_STAGE_COPY = f"COPY stage_intervals ({', '.join(_STAGE_COLS)}) FROM STDIN (FORMAT BINARY)"
_charger_values = operator.attrgetter(*_CHARGER_COLS)

# PostgreSQL's binary COPY framing (the rows between are psycopg's): signature, flags, header
# extension length; the trailer is a field count of -1
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + b"\0\0\0\0" + b"\0\0\0\0"
_COPY_TRAILER = b"\xff\xff"
_COPY_CHUNK = 1 << 20
try:  # psycopg's binary row formatter (C in psycopg-binary), as ``Copy.write_row`` calls it
    from psycopg._copy_base import format_row_binary as _format_row_binary
except ImportError:  # pragma: no cover - another psycopg layout: write_row, row by row
    _format_row_binary = None


class _JsonbDumper(Dumper):
    """A map as binary jsonb for the staging COPY: orjson, one Python call per value."""

    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer | None:
        return b"\x01" + orjson.dumps(obj) if obj else b"\x01{}"


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_intervals"
    " (LIKE charger_intervals INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

_ROLLUP = """
INSERT INTO charger_daily AS t (charge_point_id, day, site_id, vendor, model, firmware, intervals,
    covered_s, connected_s, disconnects, faults, self_resolved, sessions_started, sessions_failed,
    sessions_ended_early, energy_wh, health_sum, health_n)
SELECT charge_point_id, (interval_start AT TIME ZONE 'UTC')::date, max(site_id), max(vendor),
    max(model), max(firmware), count(*),
    sum(extract(epoch FROM interval_end - interval_start)), sum(connected_s), sum(disconnects),
    sum(faults), sum(self_resolved), sum(sessions_started), sum(sessions_failed),
    sum(sessions_ended_early), sum(energy_wh), coalesce(sum(health_score), 0), count(health_score)
FROM stage_intervals
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (charge_point_id, day) DO UPDATE SET
    vendor = coalesce(EXCLUDED.vendor, t.vendor), model = coalesce(EXCLUDED.model, t.model),
    firmware = coalesce(EXCLUDED.firmware, t.firmware), intervals = t.intervals + EXCLUDED.intervals,
    covered_s = t.covered_s + EXCLUDED.covered_s, connected_s = t.connected_s + EXCLUDED.connected_s,
    disconnects = t.disconnects + EXCLUDED.disconnects, faults = t.faults + EXCLUDED.faults,
    self_resolved = t.self_resolved + EXCLUDED.self_resolved,
    sessions_started = t.sessions_started + EXCLUDED.sessions_started,
    sessions_failed = t.sessions_failed + EXCLUDED.sessions_failed,
    sessions_ended_early = t.sessions_ended_early + EXCLUDED.sessions_ended_early,
    energy_wh = t.energy_wh + EXCLUDED.energy_wh, health_sum = t.health_sum + EXCLUDED.health_sum,
    health_n = t.health_n + EXCLUDED.health_n
"""

_MODEL_ROLLUP = """
INSERT INTO model_daily AS t (day, vendor, model, firmware, covered_s, self_resolved, health_sum,
    health_n)
SELECT (interval_start AT TIME ZONE 'UTC')::date, coalesce(vendor, ''), coalesce(model, ''),
    coalesce(firmware, ''), sum(extract(epoch FROM interval_end - interval_start)),
    sum(self_resolved), coalesce(sum(health_score), 0), count(health_score)
FROM stage_intervals GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (day, vendor, model, firmware) DO UPDATE SET
    covered_s = t.covered_s + EXCLUDED.covered_s,
    self_resolved = t.self_resolved + EXCLUDED.self_resolved,
    health_sum = t.health_sum + EXCLUDED.health_sum, health_n = t.health_n + EXCLUDED.health_n
"""

_CHARGERS = """
INSERT INTO chargers (charge_point_id, site_id, vendor, model, firmware, connectors, rated_power_w,
    last_data_at)
SELECT DISTINCT ON (charge_point_id) charge_point_id, site_id, vendor, model, firmware, connectors,
    rated_power_w, interval_end
FROM stage_intervals WHERE charge_point_id = ANY(%s)
ORDER BY charge_point_id, interval_end DESC
ON CONFLICT (charge_point_id) DO UPDATE SET
    site_id = CASE WHEN EXCLUDED.last_data_at >= coalesce(chargers.last_data_at, '-infinity')
        THEN EXCLUDED.site_id ELSE chargers.site_id END,
    vendor = coalesce(EXCLUDED.vendor, chargers.vendor),
    model = coalesce(EXCLUDED.model, chargers.model),
    firmware = CASE WHEN EXCLUDED.last_data_at >= coalesce(chargers.last_data_at, '-infinity')
        THEN coalesce(EXCLUDED.firmware, chargers.firmware)
        ELSE coalesce(chargers.firmware, EXCLUDED.firmware) END,
    connectors = coalesce(EXCLUDED.connectors, chargers.connectors),
    rated_power_w = coalesce(EXCLUDED.rated_power_w, chargers.rated_power_w),
    last_data_at = greatest(EXCLUDED.last_data_at, chargers.last_data_at)
"""

# Charge point ids reported by two sites within a day of each other: the cloud keys a charger by
# its id alone (CONTRACT.md's /chargers/{id}), so their data mix. Asked (after the batch's rows
# are in charger_intervals) for the chargers whose metadata, their site among it, changed
# against what this process last wrote: two sites reporting one id keep changing it.
_ID_CONFLICTS = """
SELECT DISTINCT s.charge_point_id, least(s.site_id, ci.site_id) AS site_a,
    greatest(s.site_id, ci.site_id) AS site_b
FROM stage_intervals s JOIN charger_intervals ci ON ci.charge_point_id = s.charge_point_id
    AND ci.interval_start > s.interval_start - interval '1 day'
    AND ci.interval_start < s.interval_start + interval '1 day'
    AND ci.site_id <> s.site_id
WHERE s.charge_point_id = ANY(%(cps)s)
ORDER BY 1, 2, 3
"""

# Charger metadata this process last wrote, per database (charge point → site, vendor, model,
# firmware, connectors, rated power): unchanged chargers are not upserted on every digest.
# Updated only after the transaction that wrote them commits.
_known_chargers: dict[tuple[str, ...], dict[str, tuple[object, ...]]] = {}


def _db_key(conn: psycopg.AsyncConnection[dict[str, object]]) -> tuple[str, ...]:
    info = conn.info
    return (str(info.host), str(info.port), str(info.dbname))


_hardware = operator.attrgetter(
    "charge_point_id", "vendor", "model", "firmware", "connectors", "rated_power_w"
)


def _charger_meta(
    digests: list[Digest | DigestRecord], db: tuple[str, ...]
) -> dict[str, tuple[object, ...]]:
    """Charger metadata (site, vendor, model, firmware, connectors, rated power) that differs
    from what this process last wrote: only those chargers are upserted."""
    known = _known_chargers.get(db, {})
    get = known.get
    updates: dict[str, tuple[object, ...]] = {}
    for d in digests:
        site = (d.site_id,)
        for c in d.chargers:
            cp, *hw = _hardware(c)  # one C call per charger: most digests change nothing
            meta = site + tuple(hw)
            if get(cp) != meta:
                updates[cp] = meta
    return updates


async def _stage_intervals(
    conn: psycopg.AsyncConnection[dict[str, object]], digests: list[Digest | DigestRecord]
) -> None:
    """Binary COPY of the digests' charger rows into the session's staging table (before the
    pipeline: COPY cannot run in one); maps become jsonb through orjson.

    The rows are formatted by psycopg's own binary row formatter (C in psycopg-binary) into
    one buffer sent in a few large writes: through ``Copy.write_row`` each row also cost
    two Python calls, as much again as formatting it."""
    if not digests:
        return
    async with conn.cursor() as cur:
        cur.adapters.register_dumper(dict, _JsonbDumper)
        await cur.execute(_STAGE)
        async with cur.copy(_STAGE_COPY) as copy:
            copy.set_types(_STAGE_TYPES)
            values = _charger_values
            if _format_row_binary is None:  # a psycopg without it: row by row
                for d in digests:
                    head = (d.site_id, d.interval_start, d.interval_end, d.message_id)
                    for c in d.chargers:
                        await copy.write_row(head + values(c) + _tail(c))
                return
            fmt = _format_row_binary
            tx = copy.formatter.transformer
            buf = bytearray(_COPY_SIGNATURE)
            for d in digests:
                head = (d.site_id, d.interval_start, d.interval_end, d.message_id)
                for c in d.chargers:
                    per = c.connector_health
                    tail = (
                        c.features or None,
                        {str(k): v for k, v in per.items()} if per else None,
                    )
                    fmt(head + values(c) + tail, tx, buf)
                if len(buf) >= _COPY_CHUNK:
                    await copy.write(buf)
                    buf = bytearray()
            buf += _COPY_TRAILER
            await copy.write(buf)


def _tail(c: ChargerCounters | ChargerRecord) -> tuple[object, object]:
    """``features`` (an empty map is stored as NULL: the edge sent none) and
    ``connector_health`` (connector numbers become the JSON object's keys)."""
    per = c.connector_health
    return (c.features or None, {str(k): v for k, v in per.items()} if per else None)


async def _write_digests(
    conn: psycopg.AsyncConnection[dict[str, object]],
    digests: list[Digest | DigestRecord],
    updates: dict[str, tuple[object, ...]],
    conflicts: psycopg.AsyncCursor[dict[str, object]],
) -> None:
    """Digest rows, self-resolved incidents, charger intervals (the staging table, then one
    INSERT … SELECT), the daily roll-ups and changed charger metadata; ``conflicts`` gets the
    charge point ids two sites report (:data:`_ID_CONFLICTS`), when metadata changed."""
    if not digests:
        return
    async with conn.cursor() as cur:
        heads = orjson.dumps(
            [
                {
                    "message_id": d.message_id,
                    "site_id": d.site_id,
                    "interval_start": d.interval_start,
                    "interval_end": d.interval_end,
                    "currency": d.currency,
                    "price_per_kwh": d.price_per_kwh,
                }
                for d in digests
            ]
        ).decode()
        await cur.execute(_DIGESTS, (heads,))
        with_cleared = [d for d in digests if d.cleared_incidents]
        if with_cleared:
            await cur.executemany(
                "UPDATE digests SET cleared_incidents = %s WHERE message_id = %s",
                [(d.cleared_incidents, d.message_id) for d in with_cleared],
            )
        blips = [(d, s) for d in digests for s in d.self_resolved]
        if blips:
            await cur.executemany(
                "INSERT INTO self_resolved (site_id, incident_id, message_id, charge_point_id,"
                " connector_id, scope, kind, fault_code, category, started_at, ended_at, fixed_by,"
                " vendor_code, sessions_cut, energy_unmet_wh)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                [
                    (
                        d.site_id,
                        s.incident_id,
                        d.message_id,
                        s.charge_point_id,
                        s.connector_id,
                        s.scope,
                        s.kind,
                        s.fault_code,
                        s.category,
                        s.started_at,
                        s.ended_at,
                        s.fixed_by,
                        s.vendor_code,
                        s.sessions_cut,
                        s.energy_unmet_wh,
                    )
                    for d, s in blips
                ],
            )
        cols = ", ".join(INTERVAL_COLS)
        await cur.execute(
            f"INSERT INTO charger_intervals ({cols}) SELECT {cols} FROM stage_intervals"
        )
        await cur.execute(_ROLLUP)
        await cur.execute(_MODEL_ROLLUP)
        if updates:
            await conflicts.execute(_ID_CONFLICTS, {"cps": sorted(updates)})
            await cur.execute(_CHARGERS, (sorted(updates),))


async def _write_states(
    conn: psycopg.AsyncConnection[dict[str, object]], states: list[SiteState]
) -> None:
    if not states:
        return
    latest: dict[str, SiteState] = {}
    for s in states:
        # not older wins: a connection's last will carries the time its ``online`` does and
        # comes after it (edge/uplink.py)
        if s.site_id not in latest or s.sent_at >= latest[s.site_id].sent_at:
            latest[s.site_id] = s
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO sites (site_id, state, state_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (site_id) DO UPDATE SET state = EXCLUDED.state,"
            " state_at = EXCLUDED.state_at"
            " WHERE sites.state_at IS NULL OR sites.state_at <= EXCLUDED.state_at",
            [(s.site_id, s.state, s.sent_at) for _, s in sorted(latest.items())],
        )


async def _touch_sites(
    conn: psycopg.AsyncConnection[dict[str, object]],
    digests: list[Digest | DigestRecord],
    escalations: list[Escalation],
) -> None:
    """Keep each site's latest data time (a digest's interval end, an escalation's sending)
    and tariff (from the newest digest carrying one)."""
    latest: dict[str, datetime] = {}
    tariff: dict[str, tuple[datetime, str | None, float | None]] = {}
    for d in digests:
        site, t = d.site_id, d.interval_end
        was = latest.get(site)
        if was is None or was < t:
            latest[site] = t
        if d.price_per_kwh is not None or d.currency:
            prev = tariff.get(site)
            if prev is None or prev[0] <= t:
                tariff[site] = (t, d.currency, d.price_per_kwh)
    for e in escalations:
        was = latest.get(e.site_id)
        if was is None or was < e.sent_at:
            latest[e.site_id] = e.sent_at
    if not latest:
        return
    rows = []
    for site in sorted(latest):
        _, cur_, price = tariff.get(site, (latest[site], None, None))
        rows.append((site, latest[site], cur_, price, site in tariff))
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO sites (site_id, last_data_at, currency, price_per_kwh)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (site_id) DO UPDATE SET"
            " last_data_at = greatest(sites.last_data_at, EXCLUDED.last_data_at),"
            " currency = CASE WHEN %s AND EXCLUDED.last_data_at >= coalesce(sites.last_data_at,"
            "   '-infinity') THEN coalesce(EXCLUDED.currency, sites.currency) ELSE"
            "   coalesce(sites.currency, EXCLUDED.currency) END,"
            " price_per_kwh = CASE WHEN %s AND EXCLUDED.last_data_at >="
            "   coalesce(sites.last_data_at, '-infinity') THEN"
            "   coalesce(EXCLUDED.price_per_kwh, sites.price_per_kwh) ELSE"
            "   coalesce(sites.price_per_kwh, EXCLUDED.price_per_kwh) END",
            [(s, t, c, p, has, has) for s, t, c, p, has in rows],
        )


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def group_by_site(items: Sequence[EdgeMessage]) -> dict[str, list[EdgeMessage]]:
    out: dict[str, list[EdgeMessage]] = defaultdict(list)
    for m in items:
        out[m.site_id].append(m)
    return out
