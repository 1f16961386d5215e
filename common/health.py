"""Health score: 0–100 per connector and per charge point, with bands and reasons in words.

Pure functions, shared by the edge (digests) and the cloud (``/chargers/{id}``,
``/sites/{id}``). A score starts at 100 and loses points for:

========================  ===============================================  ==========
component                 penalty                                          at most
========================  ===============================================  ==========
availability              60 × share of the window unavailable               60
fault history             8 per fault (20 safety-critical), × e^(−age/7 d)  50
anomaly                   60 × Foresight risk score (0–1)                   45
performance               40 × shortfall of peak power below 90 % of        40
                          what the model typically delivers
resets                    5 per reset per day                               20
========================  ===============================================  ==========

A safety-critical fault that no operator has acknowledged holds the score at
:data:`SAFETY_CAP` or below however old it is. A charge point's score is the
minimum of its connectors' (faults on connector 0 count for every connector).

At the edge, :func:`window_health` builds both from a Foresight window
(:class:`~chargesight.common.features.FeatureWindow`): each connector's own
faults, time Faulted or Unavailable and peak power against rated
(:data:`~chargesight.common.features.CONNECTOR_FEATURE_NAMES`), the charge
point's offline time, charge-point-wide faults, resets and risk score.

Bands: ``healthy`` ≥ 85 > ``watch`` ≥ 70 > ``degrading`` ≥ 50 > ``at risk`` ≥ 30 > ``critical``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from chargesight.common.features import (
    CONNECTOR_FEATURE_NAMES,
    FeatureWindow,
    features_dict,
)

BANDS: Final[tuple[tuple[float, str], ...]] = (
    (85.0, "healthy"),
    (70.0, "watch"),
    (50.0, "degrading"),
    (30.0, "at risk"),
    (0.0, "critical"),
)
SAFETY_CAP: Final = 25.0
FAULT_POINTS: Final = 8.0
SAFETY_FAULT_POINTS: Final = 20.0


def band(score: float) -> str:
    for lo, name in BANDS:
        if score >= lo:
            return name
    return "critical"


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault in a connector's (or, ``connector_id`` 0/None, the charge point's) history."""

    at: datetime
    category: str
    code: str = ""
    safety_critical: bool = False
    acknowledged: bool = False
    connector_id: int | None = None


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """What one connector's (or charge point's) score is built from; None = unknown, no penalty."""

    now: datetime
    availability: float | None = None  # 0–1, share of the window it could charge
    faults: Sequence[FaultRecord] = ()
    anomaly_score: float | None = None  # Foresight risk, 0–1
    performance_ratio: float | None = None  # peak delivered / typical for the model, ~1 when fine
    resets_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class HealthComponent:
    name: str  # availability | faults | safety | anomaly | performance | resets
    penalty: float  # points taken off 100
    detail: str  # in words


@dataclass(frozen=True, slots=True)
class Health:
    score: float
    band: str
    components: tuple[HealthComponent, ...] = field(default_factory=tuple)

    def explanation(self) -> list[str]:
        """The components that cost points, largest first, in words."""
        return [
            c.detail for c in sorted(self.components, key=lambda c: -c.penalty) if c.penalty > 0
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "band": self.band,
            "components": [
                {"name": c.name, "penalty": c.penalty, "detail": c.detail} for c in self.components
            ],
        }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def connector_health(inputs: HealthInputs) -> Health:
    """The score of one connector (or of a charge point treated as one unit)."""
    comps: list[HealthComponent] = []
    if inputs.availability is not None:
        a = min(1.0, max(0.0, inputs.availability))
        comps.append(
            HealthComponent(
                "availability", round(60.0 * (1 - a), 1), f"available {_pct(a)} of the time"
            )
        )
    weight = 0.0
    unacked: list[FaultRecord] = []
    for f in inputs.faults:
        age_days = max(0.0, (inputs.now - f.at).total_seconds() / 86400)
        weight += (SAFETY_FAULT_POINTS if f.safety_critical else FAULT_POINTS) * math.exp(
            -age_days / 7.0
        )
        if f.safety_critical and not f.acknowledged:
            unacked.append(f)
    if inputs.faults:
        recent = sum(1 for f in inputs.faults if (inputs.now - f.at).total_seconds() < 7 * 86400)
        comps.append(
            HealthComponent(
                "faults",
                round(min(50.0, weight), 1),
                f"{len(inputs.faults)} fault(s) on record, {recent} in the last 7 days",
            )
        )
    if inputs.anomaly_score is not None:
        s = min(1.0, max(0.0, inputs.anomaly_score))
        comps.append(
            HealthComponent(
                "anomaly",
                round(min(45.0, 60.0 * s), 1),
                f"Foresight risk {s:.2f}" + (" — early symptoms of a failure" if s >= 0.3 else ""),
            )
        )
    if inputs.performance_ratio is not None:
        r = max(0.0, inputs.performance_ratio)
        short = min(1.0, max(0.0, (0.9 - r) / 0.9))
        comps.append(
            HealthComponent(
                "performance",
                round(40.0 * short, 1),
                f"peak power {_pct(r)} of what this model typically delivers",
            )
        )
    if inputs.resets_per_day is not None:
        rpd = max(0.0, inputs.resets_per_day)
        comps.append(
            HealthComponent("resets", round(min(20.0, 5.0 * rpd), 1), f"{rpd:.1f} resets per day")
        )
    score = max(0.0, 100.0 - sum(c.penalty for c in comps))
    if unacked:
        codes = ", ".join(sorted({f.code or f.category for f in unacked}))
        held = max(0.0, score - SAFETY_CAP) if score > SAFETY_CAP else 0.0
        comps.append(
            HealthComponent(
                "safety",
                round(held, 1),
                f"safety-critical fault ({codes}) not yet acknowledged by an operator",
            )
        )
        score = min(score, SAFETY_CAP)
    score = round(score, 1)
    return Health(score, band(score), tuple(comps))


def charge_point_health(
    connectors: Mapping[int, HealthInputs],
    charge_point: HealthInputs | None = None,
) -> tuple[Health, dict[int, Health]]:
    """``(charge point, {connector: health})``; the charge point's score is the minimum.

    ``charge_point`` holds what concerns the whole unit (connector-0 faults,
    the Foresight score, resets); it is merged into every connector. With no
    connectors known, the charge point is scored on its own inputs.
    """
    if not connectors:
        h = connector_health(charge_point) if charge_point else Health(100.0, "healthy")
        return h, {}
    per: dict[int, Health] = {}
    for cid, inp in sorted(connectors.items()):
        if charge_point is not None:
            inp = HealthInputs(
                now=inp.now,
                availability=inp.availability
                if inp.availability is not None
                else charge_point.availability,
                faults=tuple(inp.faults) + tuple(charge_point.faults),
                anomaly_score=_first(inp.anomaly_score, charge_point.anomaly_score),
                performance_ratio=_first(inp.performance_ratio, charge_point.performance_ratio),
                resets_per_day=_first(inp.resets_per_day, charge_point.resets_per_day),
            )
        per[cid] = connector_health(inp)
    worst = min(per.values(), key=lambda h: h.score)
    return worst, per


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b


def health_from_features(
    features: Mapping[str, float],
    now: datetime,
    *,
    anomaly_score: float | None = None,
    faults: Sequence[FaultRecord] = (),
    typical_power_ratio: float | None = None,
    availability: float | None = None,
) -> Health:
    """A charge point's score from its Foresight features (what the edge digest has at hand).

    Availability defaults to the share of the window online (``1 - offline_share``);
    performance is ``power_ratio_max_7d / typical_power_ratio`` when both are known
    (the typical value is the model card's baseline for that feature).
    """
    perf = None
    ratio = features.get("power_ratio_max_7d")
    if typical_power_ratio and ratio is not None and ratio >= 0:
        perf = ratio / typical_power_ratio
    if availability is None and "offline_share" in features:
        availability = 1.0 - features["offline_share"]
    return connector_health(
        HealthInputs(
            now=now,
            availability=availability,
            faults=faults,
            anomaly_score=anomaly_score,
            performance_ratio=perf,
            resets_per_day=features.get("resets_per_day"),
        )
    )


def _records(
    times: Sequence[tuple[datetime, int]], connector_id: int | None
) -> tuple[FaultRecord, ...]:
    return tuple(
        FaultRecord(at=at, category="fault", connector_id=connector_id)
        for at, n in times
        for _ in range(n)
    )


def window_health(
    window: FeatureWindow,
    now: datetime | None = None,
    *,
    features: Mapping[str, float] | None = None,
    anomaly_score: float | None = None,
    faults: Sequence[FaultRecord] = (),
    typical_power_ratio: float | None = None,
) -> tuple[Health, dict[int, Health]]:
    """``(charge point, {connector: health})`` from one Foresight window, the charge point the minimum.

    Per connector: its faults (hour by hour, recent weigh more), the share of
    the connected time it was Faulted or Unavailable, its peak power against
    ``typical_power_ratio`` (the model card's typical ``power_ratio_max_7d``);
    for the whole unit (merged into every connector): the time offline and on
    connector 0's statuses, faults not on one connector (connector 0, or
    hours a digest carried without connectors), ``faults`` given by the
    caller, the risk score and resets per day. ``features`` are the charge
    point's (:data:`~chargesight.common.features.FEATURE_NAMES`), computed when not given.
    """
    end = now or window.now
    if end is None:
        return Health(100.0, "healthy"), {}
    feats = features if features is not None else features_dict(window.features(end))
    conn = window.connector_features(end)
    online = 1.0 - feats.get("offline_share", 0.0)

    def perf(ratio: float | None) -> float | None:
        if typical_power_ratio and typical_power_ratio > 0 and ratio is not None and ratio >= 0:
            return ratio / typical_power_ratio
        return None

    def unavailable(cid: int) -> float:
        f = conn.get(cid)
        return f[CONNECTOR_FEATURE_NAMES.index("unavailable_share")] if f else 0.0

    on_connectors: dict[datetime, int] = {}
    for cid in conn:
        if cid > 0:
            for at, n in window.connector_fault_times(cid):
                on_connectors[at] = on_connectors.get(at, 0) + n
    whole_unit = [(at, n - on_connectors.get(at, 0)) for at, n in window.fault_times()]
    ratio_i = CONNECTOR_FEATURE_NAMES.index("power_ratio_max_7d")
    whole = HealthInputs(
        now=end,
        availability=online * (1.0 - unavailable(0)),
        faults=tuple(faults) + _records([(a, n) for a, n in whole_unit if n > 0], None),
        anomaly_score=anomaly_score,
        performance_ratio=perf(feats.get("power_ratio_max_7d")),
        resets_per_day=feats.get("resets_per_day"),
    )
    per = {
        cid: HealthInputs(
            now=end,
            availability=online * (1.0 - unavailable(0)) * (1.0 - unavailable(cid)),
            faults=_records(window.connector_fault_times(cid), cid),
            performance_ratio=perf(f[ratio_i]),
        )
        for cid, f in conn.items()
        if cid > 0
    }
    return charge_point_health(per, whole)
