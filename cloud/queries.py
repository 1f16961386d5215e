"""Read-side queries behind the API: issues, sites, chargers (the same SQL on both engines)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from chargesight.cloud import fleet
from chargesight.cloud.engine import Engine
from chargesight.cloud.health import WINDOW_DAYS, ChargerEvidence, ShortFault, charger_health
from chargesight.cloud.issuestore import Conn, issue_from_row
from chargesight.cloud.model import Issue

STATUSES = ("open", "acknowledged", "resolved", "active", "all")


def issue_json(issue: Issue) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(issue.model_dump_json())
    return out


async def list_issues(
    conn: Conn, status: str, site_id: str | None, limit: int
) -> list[dict[str, Any]]:
    args: list[Any] = []
    if status == "all":
        where = "TRUE"
    elif status == "active":
        where = "status <> 'resolved'"
    else:
        where = "status = %s"
        args.append(status)
    if site_id:
        where += " AND site_id = %s"
        args.append(site_id)
    args.append(limit)
    cur = await conn.execute(
        f"SELECT doc FROM issues WHERE {where} ORDER BY priority DESC, started_at DESC, id LIMIT %s".encode(),
        args,
    )
    return [issue_json(issue_from_row(r)) for r in await cur.fetchall()]


async def site_summary(conn: Conn, engine: Engine, site_id: str) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT * FROM sites WHERE site_id = %s", (site_id,))
    site = await cur.fetchone()
    if site is None:
        return None
    as_of: datetime = site["last_data_at"] or datetime.now(UTC)
    cur = await conn.execute(
        "SELECT charge_point_id, vendor, model, firmware, connectors, rated_power_w, last_data_at"
        " FROM chargers WHERE site_id = %s ORDER BY charge_point_id",
        (site_id,),
    )
    chargers = await cur.fetchall()
    # ``chargers.last_data_at`` moves only when a charger's metadata is written (ingest skips
    # unchanged chargers): the newest interval of the last two days says when it last reported
    cur = await conn.execute(
        "SELECT charge_point_id, max(interval_end) AS last FROM charger_intervals"
        " WHERE site_id = %s AND interval_start >= %s GROUP BY charge_point_id",
        (site_id, as_of - timedelta(days=2)),
    )
    recent = {str(r["charge_point_id"]): r["last"] for r in await cur.fetchall()}
    for c in chargers:
        seen = [t for t in (c["last_data_at"], recent.get(str(c["charge_point_id"]))) if t]
        c["last_data_at"] = max(seen, default=None)
    spans = await engine.outage_spans(conn, site_id=site_id)
    start30 = as_of - timedelta(days=30)
    avail = {
        c["charge_point_id"]: round(
            fleet.availability(spans.get(c["charge_point_id"], []), start30, as_of) * 100, 3
        )
        for c in chargers
    }
    all_spans = [s for cp in avail for s in spans.get(cp, [])]
    n = max(1, len(avail))
    nevi = [
        {"as_of": p["as_of"], "uptime_pct": round(100 - (100 - float(str(p["uptime_pct"]))) / n, 3)}
        for p in fleet.nevi_monthly(all_spans, as_of)
    ]
    uk = fleet.uk_reliability({cp: spans.get(cp, []) for cp in avail}, as_of)
    cur = await conn.execute(
        "SELECT doc FROM issues WHERE site_id = %s AND (status <> 'resolved' OR last_seen_at >= %s)"
        " ORDER BY priority DESC",
        (site_id, start30),
    )
    issues = [issue_from_row(r) for r in await cur.fetchall()]
    revenue_open = sum(
        i.revenue_lost.amount for i in issues if i.revenue_lost and i.status != "resolved"
    )
    revenue_30d = sum(i.revenue_lost.amount for i in issues if i.revenue_lost)
    recurring = [
        issue_json(i) for i in issues if i.recurring is not None and i.status != "resolved"
    ]
    cur = await conn.execute(
        "SELECT coalesce(sum(sessions_started), 0) AS s, coalesce(sum(energy_wh), 0) AS e FROM site_hourly"
        " WHERE site_id = %s AND hour >= %s",
        (site_id, as_of - timedelta(days=7)),
    )
    usage = await cur.fetchone() or {"s": 0, "e": 0}
    health = await _health_scores(conn, chargers, spans, as_of)
    scored = [h["score"] for h in health.values()]
    return {
        "site_id": site_id,
        "name": site["name"],
        "state": site["state"],
        "currency": site["currency"],
        "price_per_kwh": site["price_per_kwh"],
        "as_of": as_of,
        "chargers": [
            {
                **dict(c.items()),
                "availability_30d_pct": avail[c["charge_point_id"]],
                "health": health[c["charge_point_id"]],
            }
            for c in chargers
        ],
        "health": {
            "min_score": min(scored) if scored else None,
            "mean_score": round(sum(scored) / len(scored), 1) if scored else None,
            "by_band": {
                b: sum(1 for h in health.values() if h["band"] == b)
                for b in ("healthy", "watch", "degrading", "at risk", "critical")
            },
            "worst": [
                {
                    "charge_point_id": cp,
                    "score": h["score"],
                    "band": h["band"],
                    "explanation": h["explanation"],
                }
                for cp, h in sorted(health.items(), key=lambda kv: kv[1]["score"])[:5]
                if h["band"] != "healthy"
            ],
        },
        "availability": {
            "trailing_30d_pct": round(sum(avail.values()) / n, 3) if avail else None,
            "nevi_monthly": nevi,
            "nevi_method": "23 CFR 680.116(b): ((525,600 − (T_outage − T_excluded)) / 525,600) × 100 over the"
            " trailing 365 days at each month end, averaged over the site's charge points",
            "uk_reliability": uk,
        },
        "revenue_lost": {
            "open_issues": round(revenue_open, 2),
            "trailing_30d": round(revenue_30d, 2),
            "currency": site["currency"],
        },
        "sessions_7d": int(usage["s"]),
        "energy_kwh_7d": round(float(usage["e"]) / 1000.0, 1),
        "open_issues": [issue_json(i) for i in issues if i.status != "resolved"],
        "recurring_problems": recurring,
    }


async def charger_summary(conn: Conn, engine: Engine, cp: str) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT * FROM chargers WHERE charge_point_id = %s", (cp,))
    ch = await cur.fetchone()
    if ch is None:
        cur = await conn.execute(
            "SELECT site_id FROM issues WHERE charge_point_id = %s LIMIT 1", (cp,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        ch = {"charge_point_id": cp, "site_id": row["site_id"], "last_data_at": None}
    cur = await conn.execute(
        "SELECT day, connected_s, disconnects, faults, self_resolved, sessions_started, sessions_failed,"
        " sessions_ended_early, energy_wh, health_sum / nullif(health_n, 0) AS health"
        " FROM charger_daily WHERE charge_point_id = %s ORDER BY day DESC LIMIT 30",
        (cp,),
    )
    days = await cur.fetchall()
    cur = await conn.execute(
        "SELECT doc FROM issues WHERE charge_point_id = %s OR doc->'chargers' ? %s"
        " ORDER BY started_at DESC LIMIT 50",
        (cp, cp),
    )
    issues = [issue_from_row(r) for r in await cur.fetchall()]
    spans = (await engine.outage_spans(conn, charge_point_id=cp)).get(cp, [])
    cur = await conn.execute("SELECT last_data_at FROM sites WHERE site_id = %s", (ch["site_id"],))
    site_row = await cur.fetchone()
    as_of = (site_row["last_data_at"] if site_row else None) or max(
        (i.last_seen_at for i in issues), default=datetime.now(UTC)
    )
    health = (await _health_scores(conn, [ch], {cp: spans}, as_of))[cp]
    return {
        "charge_point_id": cp,
        "site_id": ch["site_id"],
        "hardware": {
            k: ch.get(k) for k in ("vendor", "model", "firmware", "connectors", "rated_power_w")
        },
        "health_score": health["score"],
        "health_band": health["band"],
        "health_basis": health["basis"],
        "health": health,
        "availability_30d_pct": round(
            fleet.availability(spans, as_of - timedelta(days=30), as_of) * 100, 3
        ),
        "nevi_uptime_pct": fleet.nevi_uptime(spans, as_of),
        "history": [
            {**{k: v for k, v in d.items() if k != "health"}, "health": d["health"]} for d in days
        ],
        "open_issues": [issue_json(i) for i in issues if i.status != "resolved"],
        "past_issues": [
            {
                "id": i.id,
                "fault": i.fault.code,
                "started_at": i.started_at,
                "ended_at": i.ended_at,
                "resolution": i.resolution,
            }
            for i in issues
            if i.status == "resolved"
        ],
    }


async def _health_scores(
    conn: Conn,
    chargers: list[dict[str, Any]],
    spans: dict[str, list[fleet.OutageSpan]],
    as_of: datetime,
) -> dict[str, dict[str, Any]]:
    """Health of each charge point in ``chargers`` (rows with ``charge_point_id``, ``model``,
    ``connectors``) as of ``as_of``: a few grouped queries, however many chargers."""
    cps = [str(c["charge_point_id"]) for c in chargers]
    if not cps:
        return {}
    start = as_of - timedelta(days=WINDOW_DAYS)
    start30 = as_of - timedelta(days=30)
    cur = await conn.execute(
        "SELECT charge_point_id, max(max_power_w) AS peak, sum(resets) AS resets,"
        " sum(extract(epoch FROM interval_end - interval_start)) AS covered_s,"
        " (array_agg(anomaly_score ORDER BY interval_start DESC)"
        "   FILTER (WHERE anomaly_score IS NOT NULL))[1] AS anomaly,"
        " (array_agg(health_score ORDER BY interval_start DESC)"
        "   FILTER (WHERE health_score IS NOT NULL))[1] AS edge_score,"
        " (array_agg(connector_health ORDER BY interval_start DESC)"
        "   FILTER (WHERE connector_health IS NOT NULL))[1] AS edge_connectors"
        " FROM charger_intervals WHERE charge_point_id = ANY(%s) AND interval_start >= %s"
        " AND interval_start < %s GROUP BY charge_point_id",
        (cps, start, as_of),
    )
    stats = {str(r["charge_point_id"]): r for r in await cur.fetchall()}
    models = sorted({str(c["model"]) for c in chargers if c.get("model")})
    typical: dict[str, float] = {}
    if models:
        cur = await conn.execute(
            "SELECT model, percentile_cont(0.5) WITHIN GROUP (ORDER BY peak) AS typical FROM"
            " (SELECT model, charge_point_id, max(max_power_w) AS peak FROM charger_intervals"
            "  WHERE model = ANY(%s) AND interval_start >= %s AND interval_start < %s"
            "  AND max_power_w IS NOT NULL GROUP BY model, charge_point_id) t GROUP BY model",
            (models, start, as_of),
        )
        typical = {str(r["model"]): float(r["typical"]) for r in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT doc FROM issues WHERE charge_point_id = ANY(%s)"
        " AND kind NOT IN ('predictive', 'recurring')"
        " AND (status <> 'resolved' OR last_seen_at >= %s"
        "      OR coalesce((doc->'fault'->>'safety_critical')::boolean, false))",
        (cps, start30),
    )
    issues: dict[str, list[Issue]] = {cp: [] for cp in cps}
    for r in await cur.fetchall():
        i = issue_from_row(r)
        issues.setdefault(i.charge_point_id or "", []).append(i)
    cur = await conn.execute(
        "SELECT charge_point_id, started_at, category, fault_code, connector_id FROM self_resolved"
        " WHERE charge_point_id = ANY(%s) AND started_at >= %s AND started_at < %s"
        " AND kind <> 'connectivity'",
        (cps, start30, as_of),
    )
    short: dict[str, list[ShortFault]] = {cp: [] for cp in cps}
    for r in await cur.fetchall():
        short[str(r["charge_point_id"])].append(
            ShortFault(r["started_at"], str(r["category"]), str(r["fault_code"]), r["connector_id"])
        )
    out: dict[str, dict[str, Any]] = {}
    for c in chargers:
        cp = str(c["charge_point_id"])
        st = stats.get(cp)
        covered = float(st["covered_s"]) / 86400 if st and st["covered_s"] else None
        out[cp] = charger_health(
            ChargerEvidence(
                now=as_of,
                connectors=c.get("connectors"),
                availability=fleet.availability(spans.get(cp, []), start, as_of),
                issues=issues.get(cp, []),
                short_faults=short.get(cp, []),
                anomaly_score=_opt(st["anomaly"]) if st else None,
                peak_power_w=_opt(st["peak"]) if st else None,
                typical_peak_power_w=typical.get(str(c.get("model"))),
                resets=int(st["resets"]) if st and st["resets"] is not None else None,
                covered_days=covered,
                edge_score=_opt(st["edge_score"]) if st else None,
                edge_connectors=(
                    {str(k): float(v) for k, v in st["edge_connectors"].items()}
                    if st and st["edge_connectors"]
                    else None
                ),
            )
        )
    return out


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)
