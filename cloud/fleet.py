"""Fleet views (pure): failure rates and MTBF per hardware model and firmware, availability.

* Failure rate per 1,000 charger-days = failures / charger-days × 1000, with
  Garwood's exact 95 % Poisson interval, so a model with three failures on a
  handful of units shows a wide interval instead of a verdict.
* MTBF = operating hours / failures, interval from the same Poisson bounds.
* Availability per charge point = 1 − outage / period. A connector outage
  counts as 1/connectors of the charge point being out.
* NEVI (23 CFR 680.116(b)): uptime % = ((525,600 − (T_outage − T_excluded)) /
  525,600) × 100, T in minutes over the trailing 365 days, evaluated at each of
  the trailing 12 month ends.
* UK (Public Charge Point Regulations 2023, reg. 7): the mean availability of
  the rapid charge points over the trailing year must be at least 99 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chargesight.cloud.stats import poisson_rate_ci

MINUTES_PER_YEAR = 525_600


@dataclass(frozen=True, slots=True)
class ModelExposure:
    vendor: str | None
    model: str | None
    firmware: str | None
    units: int
    charger_days: float
    failures: int
    self_resolved: int = 0
    mean_health: float | None = None


@dataclass(frozen=True, slots=True)
class ModelReliability:
    vendor: str | None
    model: str | None
    firmware: str | None
    units: int
    charger_days: float
    failures: int
    failure_rate_per_1000_charger_days: float | None
    failure_rate_ci95: tuple[float, float] | None
    mtbf_hours: float | None
    mtbf_hours_ci95: tuple[float | None, float | None] | None
    self_resolved_per_1000_charger_days: float | None
    mean_health: float | None
    verdict: str


def model_reliability(
    rows: Iterable[ModelExposure], fleet_rate: float | None = None
) -> list[ModelReliability]:
    """Rates with 95 % intervals; the verdict only calls a model worse when its interval says so."""
    out = []
    for r in rows:
        if r.charger_days <= 0:
            out.append(
                ModelReliability(
                    r.vendor,
                    r.model,
                    r.firmware,
                    r.units,
                    0.0,
                    r.failures,
                    None,
                    None,
                    None,
                    None,
                    None,
                    r.mean_health,
                    "no operating data",
                )
            )
            continue
        rate = r.failures / r.charger_days * 1000.0
        lo, hi = poisson_rate_ci(r.failures, r.charger_days)
        ci = (lo * 1000.0, hi * 1000.0)
        hours = r.charger_days * 24.0
        mtbf = hours / r.failures if r.failures else None
        mtbf_ci = (1.0 / (hi / 24.0) if hi > 0 else None, 1.0 / (lo / 24.0) if lo > 0 else None)
        if fleet_rate is None:
            verdict = "no fleet comparison"
        elif ci[0] > fleet_rate:
            verdict = "fails more often than the fleet (95% interval above the fleet rate)"
        elif ci[1] < fleet_rate:
            verdict = "fails less often than the fleet (95% interval below the fleet rate)"
        else:
            verdict = "not distinguishable from the fleet with this much data"
        out.append(
            ModelReliability(
                r.vendor,
                r.model,
                r.firmware,
                r.units,
                round(r.charger_days, 2),
                r.failures,
                round(rate, 4),
                (round(ci[0], 4), round(ci[1], 4)),
                round(mtbf, 1) if mtbf else None,
                (
                    round(mtbf_ci[0], 1) if mtbf_ci[0] else None,
                    round(mtbf_ci[1], 1) if mtbf_ci[1] else None,
                ),
                round(r.self_resolved / r.charger_days * 1000.0, 3),
                r.mean_health,
                verdict,
            )
        )
    return out


def fleet_failure_rate(rows: Sequence[ModelExposure]) -> float | None:
    days = sum(r.charger_days for r in rows)
    return sum(r.failures for r in rows) / days * 1000.0 if days > 0 else None


@dataclass(frozen=True, slots=True)
class OutageSpan:
    started_at: datetime
    ended_at: datetime
    weight: float = 1.0  # share of the charge point out (1/connectors for a connector outage)
    excluded: bool = False  # NEVI T_excluded: outside the operator's control


def outage_minutes(
    spans: Iterable[OutageSpan], start: datetime, end: datetime
) -> tuple[float, float]:
    """(outage minutes, excluded minutes) within ``[start, end)``; overlaps are not merged."""
    total = excl = 0.0
    for s in spans:
        lo, hi = max(s.started_at, start), min(s.ended_at, end)
        if hi > lo:
            m = (hi - lo).total_seconds() / 60.0 * s.weight
            total += m
            if s.excluded:
                excl += m
    return total, excl


def availability(spans: Iterable[OutageSpan], start: datetime, end: datetime) -> float:
    period = (end - start).total_seconds() / 60.0
    if period <= 0:
        return 1.0
    out, _ = outage_minutes(spans, start, end)
    return max(0.0, 1.0 - min(out, period) / period)


def nevi_uptime(spans: Sequence[OutageSpan], as_of: datetime) -> float:
    """NEVI uptime % over the 365 days ending at ``as_of``."""
    out, excl = outage_minutes(spans, as_of - timedelta(days=365), as_of)
    return round(
        (MINUTES_PER_YEAR - min(MINUTES_PER_YEAR, out - excl)) / MINUTES_PER_YEAR * 100.0, 3
    )


def month_ends(as_of: datetime, months: int = 12) -> list[datetime]:
    """The last ``months`` month boundaries at or before ``as_of`` (newest first)."""
    first = as_of.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ends = []
    y, m = first.year, first.month
    for _ in range(months):
        ends.append(first.replace(year=y, month=m))
        m -= 1
        if m == 0:
            y, m = y - 1, 12
    return ends


def nevi_monthly(
    spans: Sequence[OutageSpan], as_of: datetime, months: int = 12
) -> list[dict[str, object]]:
    """NEVI uptime evaluated at ``as_of`` and the previous month boundaries."""
    points = [as_of, *month_ends(as_of, months - 1)]
    return [{"as_of": p, "uptime_pct": nevi_uptime(spans, p)} for p in points]


def uk_reliability(
    per_charger: Mapping[str, Sequence[OutageSpan]], as_of: datetime
) -> dict[str, object]:
    """Mean availability over the trailing year across the given (rapid) charge points."""
    start = as_of - timedelta(days=365)
    if not per_charger:
        return {"availability_pct": None, "meets_99": None, "charge_points": 0}
    values = [availability(s, start, as_of) for s in per_charger.values()]
    mean = sum(values) / len(values) * 100.0
    return {
        "availability_pct": round(mean, 3),
        "meets_99": mean >= 99.0,
        "charge_points": len(values),
    }
