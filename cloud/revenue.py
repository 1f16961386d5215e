"""Revenue lost while charge points are out of service (pure; times from the data).

Method, stated in every estimate:

* expected sessions for each outage hour = the mean, over the trailing weeks
  that have data, of the sessions the affected charge points started in the
  same hour of the week (digests' ``sessions_started``, spread pro rata over
  the hours an interval covers);
* × the median energy per session at that site over the same trailing weeks
  (``energy_wh / sessions_started`` per charger interval);
* × the site's price per kWh (from its digests);
* for a connector outage only the failed connector's share (1/connectors of the
  charge point's expected sessions) is at risk, minus what its sibling
  connectors absorbed: sessions they started during the outage beyond their own
  expected share.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chargesight.cloud.model import RevenueLost

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class IntervalUsage:
    """One charger's digest interval: what the revenue model reads."""

    charge_point_id: str
    interval_start: datetime
    interval_end: datetime
    sessions_started: int
    energy_wh: float
    connectors: int | None = None


@dataclass(frozen=True, slots=True)
class Span:
    started_at: datetime
    ended_at: datetime


def _floor_hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


def hourly_sessions(
    rows: Iterable[IntervalUsage],
) -> tuple[dict[tuple[str, datetime], float], dict[tuple[str, datetime], float]]:
    """Sessions per (charger, hour) spread pro rata, and the covered fraction of each hour."""
    sessions: dict[tuple[str, datetime], float] = defaultdict(float)
    covered: dict[tuple[str, datetime], float] = defaultdict(float)
    for r in rows:
        total = (r.interval_end - r.interval_start).total_seconds()
        if total <= 0:
            continue
        h = _floor_hour(r.interval_start)
        while h < r.interval_end:
            lo = max(h, r.interval_start)
            hi = min(h + HOUR, r.interval_end)
            part = (hi - lo).total_seconds()
            if part > 0:
                sessions[(r.charge_point_id, h)] += r.sessions_started * part / total
                covered[(r.charge_point_id, h)] += part / 3600.0
            h += HOUR
    return sessions, covered


def expected_sessions(
    sessions: dict[tuple[str, datetime], float],
    covered: dict[tuple[str, datetime], float],
    charge_point_id: str,
    hour: datetime,
    weeks: int,
) -> float | None:
    """Mean sessions in the same hour of week over the trailing ``weeks`` with data."""
    seen = []
    for w in range(1, weeks + 1):
        key = (charge_point_id, hour - w * WEEK)
        cov = covered.get(key, 0.0)
        if cov >= 0.5:
            seen.append(sessions.get(key, 0.0) / min(cov, 1.0))
    if not seen:
        # not enough history for the same hour of week: the same hour of day over the
        # trailing two weeks (said in the method as a fallback)
        for d in range(1, 15):
            key = (charge_point_id, hour - timedelta(days=d))
            cov = covered.get(key, 0.0)
            if cov >= 0.5:
                seen.append(sessions.get(key, 0.0) / min(cov, 1.0))
        if not seen:
            return None
        return -sum(seen) / len(seen)  # negative: marks a fallback estimate
    return sum(seen) / len(seen)


def median_energy_kwh(rows: Iterable[IntervalUsage]) -> float | None:
    per_session = [
        r.energy_wh / r.sessions_started / 1000.0 for r in rows if r.sessions_started > 0
    ]
    return statistics.median(per_session) if per_session else None


def outage_hours(spans: Sequence[Span]) -> list[tuple[datetime, float]]:
    """(hour, fraction of that hour out of service) for every hour the spans touch."""
    frac: dict[datetime, float] = defaultdict(float)
    for s in spans:
        h = _floor_hour(s.started_at)
        while h < s.ended_at:
            lo = max(h, s.started_at)
            hi = min(h + HOUR, s.ended_at)
            if hi > lo:
                frac[h] = min(1.0, frac[h] + (hi - lo).total_seconds() / 3600.0)
            h += HOUR
    return sorted(frac.items())


@dataclass(frozen=True, slots=True)
class RevenueEstimate:
    amount: float
    currency: str | None
    lost_sessions: float
    outage_hours: float
    median_kwh: float | None
    method: str

    def as_model(self, as_of: datetime) -> RevenueLost:
        return RevenueLost(
            amount=round(self.amount, 2),
            currency=self.currency,
            method=self.method,
            lost_sessions=round(self.lost_sessions, 2),
            outage_hours=round(self.outage_hours, 2),
            as_of=as_of,
        )


def estimate_revenue_lost(
    spans: Sequence[Span],
    charge_points: Sequence[str],
    history: Sequence[IntervalUsage],
    price_per_kwh: float | None,
    currency: str | None,
    *,
    connector_scope: bool = False,
    connectors: int | None = None,
    weeks: int = 4,
    site_absorption: bool = True,
) -> RevenueEstimate:
    """Estimate what ``spans`` of outage on ``charge_points`` cost (module docstring)."""
    hours = outage_hours(spans)
    total_hours = sum(f for _, f in hours)
    if not hours:
        return RevenueEstimate(0.0, currency, 0.0, 0.0, None, "no outage time yet")
    first = min(s.started_at for s in spans)
    trailing = [r for r in history if first - weeks * WEEK <= r.interval_start < first]
    sessions, covered = hourly_sessions(history)
    cps = list(charge_points)
    n_conn = connectors or next(
        (r.connectors for r in history if r.charge_point_id in cps and r.connectors), None
    )
    others = sorted({r.charge_point_id for r in history} - set(cps)) if site_absorption else []
    lost = 0.0
    absorbed_total = 0.0
    site_absorbed_total = 0.0
    fallback_hours = 0
    missing_hours = 0
    for h, f in hours:
        lost_h = 0.0
        for cp in cps:
            exp = expected_sessions(sessions, covered, cp, h, weeks)
            if exp is None:
                missing_hours += 1
                exp = 0.0
            elif exp < 0:
                fallback_hours += 1
                exp = -exp
            if connector_scope and n_conn and n_conn > 1:
                share = exp / n_conn
                absorbed = 0.0
                if covered.get((cp, h), 0.0) >= 0.5:
                    actual = sessions.get((cp, h), 0.0)
                    absorbed = min(share, max(0.0, actual - exp * (n_conn - 1) / n_conn))
                absorbed_total += absorbed * f
                lost_h += max(0.0, share - absorbed)
            else:
                lost_h += exp
        # what the rest of the site took over: sessions the other charge points started in
        # this hour beyond their own expectation (only when their data for the hour is in)
        extra = 0.0
        for o in others:
            if covered.get((o, h), 0.0) < 0.5:
                continue
            exp_o = expected_sessions(sessions, covered, o, h, weeks)
            if exp_o is not None:
                extra += sessions.get((o, h), 0.0) - abs(exp_o)  # net: noise cancels out
        taken = min(lost_h, max(0.0, extra))
        site_absorbed_total += taken * f
        lost += (lost_h - taken) * f
    site_rows = [r for r in trailing if r.charge_point_id in cps] or trailing
    kwh = median_energy_kwh(site_rows)
    price = price_per_kwh or 0.0
    amount = lost * (kwh or 0.0) * price
    parts = [
        f"{lost:.1f} sessions expected in {total_hours:.1f} outage hours "
        f"(same hour of week at this site, mean of the trailing {weeks} weeks with data)",
        f"× median {kwh:.1f} kWh per session" if kwh is not None else "× no session energy known",
        f"× {price:g} {currency or ''}/kWh".rstrip(),
    ]
    method = " ".join(parts)
    if connector_scope:
        if n_conn and n_conn > 1:
            method += (
                f"; connector outage: 1/{n_conn} of the charge point's sessions at risk, "
                f"minus {absorbed_total:.1f} sessions its sibling connectors absorbed"
            )
        else:
            method += "; connector outage on a single-connector charge point counts in full"
    if others:
        method += (
            f"; minus {site_absorbed_total:.1f} sessions the site's other charge points started"
            " beyond their own expectation in those hours (drivers who moved over)"
        )
    if fallback_hours:
        method += (
            f"; {fallback_hours} charger-hours had no same-hour-of-week history and use the same"
            " hour of day over the trailing two weeks"
        )
    if missing_hours:
        method += f"; {missing_hours} charger-hours had no trailing data at all and count as zero"
    if price_per_kwh is None:
        method += "; the site's price is unknown (no digest carried price_per_kwh)"
    return RevenueEstimate(amount, currency, lost, total_hours, kwh, method)
