"""``chargesight cloud import --dir DIR``: bulk-load a simulator history directory.

Reads ``network.json`` (the network description, kept as-is and used for site
and charger metadata), ``digests.jsonl`` and ``escalations.jsonl`` (one
``Digest`` / ``Escalation`` JSON object per line) through the same validation
and idempotent store as live MQTT ingest, so importing twice, or importing
what the collector already received, adds nothing. Invalid lines go to the
dead-letter table with their file and line number. Analysis then runs over
the whole history in data-time order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from chargesight.cloud.engine import Cleared, Engine
from chargesight.cloud.ingest import (
    DeadLetter,
    DigestSummary,
    Received,
    StoreResult,
    store_batch,
    store_one_by_one,
    validate,
)
from chargesight.cloud.issuestore import Conn, Pool
from chargesight.common.logs import get_logger
from chargesight.common.messages import Escalation

log = get_logger(__name__)


class NetworkFileError(ValueError):
    """``network.json`` cannot be used: the import stops before anything is stored."""


@dataclass
class ImportReport:
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    issues_touched: int = 0
    sites: set[str] = field(default_factory=set)

    def text(self) -> str:
        return (
            f"imported {self.lines} lines: {self.stored} new messages, {self.duplicates} already stored, "
            f"{self.dead_letters} dead letters; {len(self.sites)} sites; "
            f"{self.issues_touched} issues opened or updated"
        )


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if line:
                yield n, line


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


async def load_network(conn: Conn, path: Path) -> int:
    """Keep ``network.json`` and upsert the sites and chargers it describes (best effort)."""
    try:
        doc = orjson.loads(await asyncio.to_thread(path.read_bytes))
    except orjson.JSONDecodeError as exc:
        raise NetworkFileError(f"{path}: not valid JSON: {exc}") from None
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO network (id, doc) VALUES (1, %s::jsonb) ON CONFLICT (id) DO UPDATE SET"
            " doc = EXCLUDED.doc, loaded_at = now()",
            (orjson.dumps(doc).decode(),),
        )
        sites = doc.get("sites", []) if isinstance(doc, dict) else doc
        n = 0
        for s in sites if isinstance(sites, list) else []:
            if not isinstance(s, dict):
                continue
            sid = _first(s, "site_id", "id")
            if not isinstance(sid, str):
                continue
            n += 1
            await conn.execute(
                "INSERT INTO sites (site_id, name, currency, price_per_kwh, info)"
                " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (site_id) DO UPDATE SET"
                " name = coalesce(EXCLUDED.name, sites.name),"
                " currency = coalesce(sites.currency, EXCLUDED.currency),"
                " price_per_kwh = coalesce(sites.price_per_kwh, EXCLUDED.price_per_kwh),"
                " info = EXCLUDED.info",
                (sid, _first(s, "name"), _first(s, "currency"), _first(s, "price_per_kwh"),
                 orjson.dumps({k: v for k, v in s.items() if not isinstance(v, list)}).decode()),
            )  # fmt: skip
            for c in _first(s, "charge_points", "chargers") or []:
                if not isinstance(c, dict):
                    continue
                cid = _first(c, "charge_point_id", "id")
                if not isinstance(cid, str):
                    continue
                conns = _first(c, "connectors")
                n_conn = len(conns) if isinstance(conns, list) else conns
                rated = _first(c, "rated_power_w")
                if rated is None and _first(c, "rated_power_kw") is not None:
                    try:
                        rated = float(c["rated_power_kw"]) * 1000.0
                    except (TypeError, ValueError):
                        raise NetworkFileError(
                            f"{path}: charge point {cid}: rated_power_kw"
                            f" {c['rated_power_kw']!r} is not a number"
                        ) from None
                if rated is not None and not isinstance(rated, int | float):
                    raise NetworkFileError(
                        f"{path}: charge point {cid}: rated_power_w {rated!r} is not a number"
                    )
                await conn.execute(
                    "INSERT INTO chargers (charge_point_id, site_id, vendor, model, firmware, connectors,"
                    " rated_power_w) VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (charge_point_id) DO UPDATE"
                    " SET site_id = EXCLUDED.site_id, vendor = coalesce(chargers.vendor, EXCLUDED.vendor),"
                    " model = coalesce(chargers.model, EXCLUDED.model),"
                    " firmware = coalesce(chargers.firmware, EXCLUDED.firmware),"
                    " connectors = coalesce(chargers.connectors, EXCLUDED.connectors),"
                    " rated_power_w = coalesce(chargers.rated_power_w, EXCLUDED.rated_power_w)",
                    (cid, sid, _first(c, "vendor"), _first(c, "model"), _first(c, "firmware", "firmware_version"),
                     n_conn if isinstance(n_conn, int) else None, rated),
                )  # fmt: skip
    return n


async def import_dir(
    pool: Pool, engine: Engine, directory: Path, batch: int = 1000
) -> ImportReport:
    """Load a history directory and analyse it; see the module docstring."""
    report = ImportReport()
    if not await asyncio.to_thread(directory.is_dir):
        raise FileNotFoundError(f"--dir {directory}: not a directory")
    net = directory / "network.json"
    if net.exists():
        async with pool.connection() as conn:
            n = await load_network(conn, net)
        log.info("network loaded", sites=n)
    seen: set[str] = set()  # every site the files speak of, stored now or before
    cleared_now: list[Cleared] = []  # incidents the digests this run stored report cleared
    for kind in ("digests", "escalations"):
        name = f"{kind}.jsonl"
        path = directory / name
        if not path.exists():
            log.warning("missing file", file=str(path))
            continue
        msgs: list[Received] = []
        dead: list[DeadLetter] = []
        for lineno, raw in _lines(path):
            report.lines += 1
            parsed = validate(kind, raw, f"import:{name}:{lineno}")  # as the collector does
            if isinstance(parsed, DeadLetter):
                dead.append(parsed)
            else:
                msgs.append(parsed)
                seen.add(parsed.site_id)
            if len(msgs) + len(dead) >= batch:
                await _flush(pool, msgs, dead, report, cleared_now)
                msgs, dead = [], []
        await _flush(pool, msgs, dead, report, cleared_now)
    # what is stored and not yet analysed, not only what this run stored: an import that
    # stopped half way (Ctrl-C, the database gone) is analysed in full by the next run, whose
    # lines are all duplicates by then
    escalations, cleared = await _to_analyse(pool, sorted(seen), cleared_now)
    touched = await engine.apply_events(escalations, cleared)
    for site in sorted(seen):
        touched |= await recurring_sweep(engine, site)
        touched |= await repeat_sweep(engine, site)
    ids = await engine._with_signature_peers(touched)
    await engine.enrich_many(ids)
    report.issues_touched = len(touched)
    await engine.fleet_models()
    return report


async def _flush(
    pool: Pool,
    msgs: list[Received],
    dead: list[DeadLetter],
    report: ImportReport,
    cleared: list[Cleared],
) -> None:
    """Store a batch; a batch the database refuses is stored line by line, and the lines it
    still refuses become dead letters (the import goes on)."""
    try:
        async with pool.connection() as conn:
            res = await store_batch(conn, msgs, dead)
    except psycopg.OperationalError:
        raise  # the database is gone: the import stops (run it again: nothing doubles)
    except Exception as exc:
        log.warning("batch refused, storing line by line", error=f"{type(exc).__name__}: {exc}")
        refused = list(dead)

        async def store(one: list[Received]) -> StoreResult:
            async with pool.connection() as conn:
                return await store_batch(conn, one)

        total = await store_one_by_one(
            msgs,
            store,
            refused,
            topic=lambda m: f"import:{m.message_id}",
            fatal=psycopg.OperationalError,  # the database is gone: the import stops
        )
        report.stored += total.stored
        report.duplicates += total.duplicates
        report.sites |= total.sites
        cleared.extend(_clears(total.digests))
        async with pool.connection() as conn:
            res = await store_batch(conn, [], refused)
        report.dead_letters += res.dead_letters
        return
    report.stored += res.stored
    report.duplicates += res.duplicates
    report.dead_letters += res.dead_letters
    report.sites |= res.sites
    cleared.extend(_clears(res.digests))


def _clears(digests: list[DigestSummary]) -> list[Cleared]:
    return [Cleared(d.site_id, i, d.interval_end) for d in digests for i in d.cleared_incidents]


async def _to_analyse(
    pool: Pool, sites: list[str], cleared_now: list[Cleared]
) -> tuple[list[Escalation], list[Cleared]]:
    """The escalations of ``sites`` not yet applied to an issue, and the clears to apply:
    those of the digests this run stored (``cleared_now``), and those the stored digests
    report for the incidents of those escalations. Not every clear ever stored: an old one
    applied again could resolve an issue that was reopened since."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT body FROM escalations WHERE site_id = ANY(%s) AND analysed_at IS NULL",
            (sites,),
        )
        escalations = [Escalation.model_validate(r["body"]) for r in await cur.fetchall()]
        incidents = sorted({e.incident_id for e in escalations})
        cur = await conn.execute(
            "SELECT site_id, incident_id, interval_end FROM digests,"
            " unnest(cleared_incidents) AS incident_id"
            " WHERE site_id = ANY(%s) AND incident_id = ANY(%s)",
            (sites, incidents),
        )
        stored = [
            Cleared(str(r["site_id"]), str(r["incident_id"]), r["interval_end"])
            for r in await cur.fetchall()
        ]
    return escalations, list(dict.fromkeys([*cleared_now, *stored]))


async def recurring_sweep(engine: Engine, site_id: str) -> set[str]:
    """Evaluate the recurring-problem rule over a site's history at the days it may change."""
    cfg = engine.config
    days_w = max(1, math.ceil(cfg.recurring_window_s / 86400))
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT day, sum(greatest(disconnects, self_resolved)) AS n FROM charger_daily"
            " WHERE site_id = %s GROUP BY day ORDER BY day",
            (site_id,),
        )
        rows = [(r["day"], int(r["n"] or 0)) for r in await cur.fetchall()]
    if not rows:
        return set()
    touched: set[str] = set()
    counts = dict(rows)
    first, last = rows[0][0], rows[-1][0]
    state_open = False
    day = first
    while day <= last:
        window = sum(counts.get(day - timedelta(days=k), 0) for k in range(days_w))
        crossing = (not state_open and window >= cfg.recurring_min_incidents) or (
            state_open and window < cfg.recurring_min_incidents / 2
        )
        if crossing:
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            iid = await engine.check_recurring(site_id, window_end=end)
            if iid:
                touched.add(iid)
            state_open = await engine.recurring_open(site_id)
        day += timedelta(days=1)
    iid = await engine.check_recurring(site_id)
    if iid:
        touched.add(iid)
    return touched


async def repeat_sweep(engine: Engine, site_id: str) -> set[str]:
    """Evaluate the repeating-fault rule over a site's history, day by day.

    Only sites where one charge point had the same fault at least twice in all are
    walked, from the day of that fault's first episode.
    """
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT min(started_at) AS first, max(last_data_at) AS last FROM ("
            " SELECT charge_point_id, min(started_at) AS started_at FROM self_resolved"
            " WHERE site_id = %s AND kind <> 'connectivity' AND charge_point_id IS NOT NULL"
            " GROUP BY charge_point_id, category, fault_code, vendor_code HAVING count(*) >= 2"
            ") s, sites WHERE sites.site_id = %s",
            (site_id, site_id),
        )
        row = await cur.fetchone()
    if row is None or row["first"] is None or row["last"] is None:
        return set()
    touched: set[str] = set()
    day: datetime = row["first"].replace(hour=0, minute=0, second=0, microsecond=0)
    last: datetime = row["last"]
    while day < last:
        day += timedelta(days=1)
        touched |= await engine.check_repeats(site_id, window_end=min(day, last))
    return touched
