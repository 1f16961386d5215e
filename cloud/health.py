"""Health scores for the API: a charge point's (and its connectors') 0–100 score from stored data.

A pure function over what the collector holds, scored with the shared
:mod:`chargesight.common.health` rules (the same the edge puts in digests):

* **availability** — share of the trailing 7 days the charge point could
  charge, from its issues' outage spans;
* **fault history** — every outage of every fault issue on the charge point
  (connector-level ones count for that connector, the rest for all), plus the
  short faults the edge fixed itself (digests' self-resolved incidents);
  a safety-critical one holds the score down until an operator has
  acknowledged or resolved its issue;
* **anomaly** — the latest Foresight score the edge reported;
* **performance** — the charge point's peak power over 7 days against the
  median peak of the same hardware model across the fleet;
* **resets** — resets per day over the covered part of the trailing 7 days.

When the edge also reported its own score it is shown beside the cloud's
(``edge_score``, and per connector ``edge_connectors``: the edge scores each
connector from its own windows — sessions, faults, power, unavailable time —
which digests carry as ``connector_health``); the cloud's is the one in
``score`` because it also sees
fleet-wide evidence (typical power of the model, operator acknowledgements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chargesight.cloud.model import Issue
from chargesight.common.health import FaultRecord, Health, HealthInputs, charge_point_health

WINDOW_DAYS = 7.0


@dataclass(frozen=True, slots=True)
class ShortFault:
    """A fault the edge fixed inside its window (from a digest), as the health score counts it."""

    at: datetime
    category: str
    code: str
    connector_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChargerEvidence:
    """What the stored data says about one charge point over the trailing window."""

    now: datetime
    connectors: int | None = None
    availability: float | None = None  # 0–1 over the window
    issues: Sequence[Issue] = ()
    short_faults: Sequence[ShortFault] = ()
    anomaly_score: float | None = None
    peak_power_w: float | None = None  # this charge point's peak over the window
    typical_peak_power_w: float | None = None  # median peak of its hardware model
    resets: int | None = None
    covered_days: float | None = None
    edge_score: float | None = None
    edge_connectors: dict[str, float] | None = None  # the edge's latest score per connector


def fault_records(issues: Iterable[Issue], short: Iterable[ShortFault] = ()) -> list[FaultRecord]:
    """One :class:`FaultRecord` per outage of every fault issue, plus the self-fixed faults."""
    out: list[FaultRecord] = []
    for i in issues:
        if i.kind in ("predictive", "recurring"):
            continue
        acked = i.status == "acknowledged" or i.resolution == "operator" or bool(i.operator_actions)
        conn = i.connector_id if i.scope == "connector" else None
        starts = [o.started_at for o in i.outages] or [i.started_at]
        for at in starts:
            out.append(
                FaultRecord(
                    at=at,
                    category=i.fault.category,
                    code=i.fault.code,
                    safety_critical=i.fault.safety_critical,
                    acknowledged=acked,
                    connector_id=conn,
                )
            )
    for s in short:
        out.append(
            FaultRecord(at=s.at, category=s.category, code=s.code, connector_id=s.connector_id)
        )
    return out


def _json(h: Health) -> dict[str, Any]:
    return {**h.as_dict(), "explanation": h.explanation() or ["no penalties: healthy"]}


def charger_health(ev: ChargerEvidence) -> dict[str, Any]:
    """``{score, band, components, explanation, connectors: {id: …}, basis, edge_score,
    edge_connectors}``."""
    now = ev.now
    faults = [
        f
        for f in fault_records(ev.issues, ev.short_faults)
        if (now - f.at).total_seconds() <= 30 * 86400 or (f.safety_critical and not f.acknowledged)
    ]
    perf = None
    if ev.peak_power_w is not None and ev.typical_peak_power_w:
        perf = ev.peak_power_w / ev.typical_peak_power_w
    rpd = None
    if ev.resets is not None and ev.covered_days:
        rpd = ev.resets / max(ev.covered_days, 1.0)
    whole = HealthInputs(
        now=now,
        availability=ev.availability,
        faults=tuple(f for f in faults if not f.connector_id),
        anomaly_score=ev.anomaly_score,
        performance_ratio=perf,
        resets_per_day=rpd,
    )
    ids = set(range(1, (ev.connectors or 0) + 1)) | {
        f.connector_id for f in faults if f.connector_id
    }
    per_conn = {
        cid: HealthInputs(now=now, faults=tuple(f for f in faults if f.connector_id == cid))
        for cid in sorted(ids)
    }
    cp, conns = charge_point_health(per_conn, whole)
    out = _json(cp)
    out["connectors"] = {str(cid): _json(h) for cid, h in conns.items()}
    out["basis"] = (
        "chargesight.common.health over the trailing 7 days: availability from outages, fault"
        " history (30 days, recent weighs more; unacknowledged safety faults hold it down),"
        " the edge's latest Foresight score, peak power vs the model's fleet median, resets per day"
    )
    out["edge_score"] = ev.edge_score
    out["edge_connectors"] = ev.edge_connectors
    return out
