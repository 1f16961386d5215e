"""Revenue lost while charge points are out of service (pure; times from the data).

Method, stated in every estimate:

* expected sessions for each outage hour = the mean, over the trailing weeks
  *before the outage began* that have data, of the sessions the affected
  charge points started in the same hour of the week (digests'
  ``sessions_started``, spread pro rata over the hours an interval covers).
  Weeks inside the outage are never their own reference: a long outage would
  otherwise expect what it itself suppressed;
* less what the affected charge points still started in those hours (a charger
  that fails only some starts, or the hour the fault began);
* × the mean energy per session at the site over the same trailing weeks (a
  driver turned away is one of the site's drivers, wanting what they want): its
  total ``energy_wh`` over its total ``sessions_started`` (a ratio of sums: per-interval ratios undercount long
  sessions that span intervals, and a median undercounts a right-skewed
  energy distribution — the expected revenue of N sessions is N × the mean);
* × the site's price per kWh (from its digests);
* for a connector outage only the failed connector's share (1/connectors of the
  charge point's expected sessions) is at risk, minus what its sibling
  connectors absorbed: sessions they started during the outage beyond their own
  expected share;
* minus what the site's other charge points absorbed (drivers who moved over):
  their sessions during the outage beyond their own expectation.

Before the outage: a unit that degrades before it fails (a PSU) cuts sessions
short for weeks. Sessions the affected charge points ended early over the same
trailing weeks beyond a healthy charge point's early-end rate (the fleet's
lower quartile over the same weeks, so degrading units do not raise the bar) are added, each at half a
mean session: a session cut at an unknown point has, on average, delivered half
of what the driver wanted.

Absorption is netted over the whole outage before it is clipped to
[0, sessions at risk] — clipping hour by hour would count every hour's
positive noise as absorbed and none of its negative noise.
"""

from __future__ import annotations

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
    sessions_ended_early: int = 0


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
    before: datetime | None = None,
) -> float | None:
    """Mean sessions in the same hour of week over ``weeks`` weeks with data before ``before``.

    ``before`` (the outage start) keeps reference hours out of the outage itself: for an
    outage hour ``weeks`` or more into a long outage the reference weeks are the ones
    before it began. Without it, the trailing weeks of ``hour``.
    """
    limit = before if before is not None else hour
    seen = []
    first_k = max(1, -(-int((hour + HOUR - limit).total_seconds()) // int(WEEK.total_seconds())))
    for k in range(first_k, first_k + weeks):
        ref = hour - k * WEEK
        key = (charge_point_id, ref)
        cov = covered.get(key, 0.0)
        if cov >= 0.5:
            seen.append(sessions.get(key, 0.0) / min(cov, 1.0))
    if not seen:
        # not enough history for the same hour of week: the same hour of day over the
        # two weeks before (said in the method as a fallback)
        first_d = max(1, -(-int((hour + HOUR - limit).total_seconds()) // 86400))
        for d in range(first_d, first_d + 14):
            key = (charge_point_id, hour - timedelta(days=d))
            cov = covered.get(key, 0.0)
            if cov >= 0.5:
                seen.append(sessions.get(key, 0.0) / min(cov, 1.0))
        if not seen:
            return None
        return -sum(seen) / len(seen)  # negative: marks a fallback estimate
    return sum(seen) / len(seen)


def mean_energy_kwh(rows: Iterable[IntervalUsage]) -> float | None:
    """Mean energy per session: total energy over total sessions started (a ratio of sums)."""
    energy = sessions = 0.0
    for r in rows:
        energy += r.energy_wh
        sessions += r.sessions_started
    return energy / sessions / 1000.0 if sessions > 0 else None


def cut_short_sessions(rows: Iterable[IntervalUsage], fleet_rate: float | None) -> float:
    """Early-ended sessions in ``rows`` beyond ``fleet_rate`` × sessions started (>= 0)."""
    if fleet_rate is None:
        return 0.0
    started = early = 0
    for r in rows:
        started += r.sessions_started
        early += r.sessions_ended_early
    return max(0.0, early - fleet_rate * started)


def typical_early_rate(
    per_charger: Iterable[tuple[int, int]], min_sessions: int = 20
) -> float | None:
    """A healthy charge point's early-end rate: the lower quartile of the charge points' rates
    (``(sessions_started, ended_early)`` pairs with at least ``min_sessions`` sessions).

    A quartile rather than the median or the pooled rate so that a fleet where many units
    are degrading (whose early ends are what is being costed) does not raise the bar.
    """
    rates = sorted(e / s for s, e in per_charger if s >= min_sessions)
    if not rates:
        return None
    pos = 0.25 * (len(rates) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(rates) - 1)
    return rates[lo] + (rates[hi] - rates[lo]) * (pos - lo)


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
    kwh_per_session: float | None
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
    fleet_early_rate: float | None = None,
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
    at_risk = 0.0  # sessions expected on what failed
    still_started = 0.0  # sessions the failed charge points started anyway (full hours)
    sibling_extra = 0.0  # connector outage: the charge point's other connectors, net
    site_extra = 0.0  # the site's other charge points, net of their own expectation
    fallback_hours = 0
    missing_hours = 0
    for h, f in hours:
        for cp in cps:
            exp = expected_sessions(sessions, covered, cp, h, weeks, first)
            if exp is None:
                missing_hours += 1
                exp = 0.0
            elif exp < 0:
                fallback_hours += 1
                exp = -exp
            seen = covered.get((cp, h), 0.0) >= 0.5
            actual = sessions.get((cp, h), 0.0) if seen else None
            if connector_scope and n_conn and n_conn > 1:
                at_risk += exp / n_conn * f
                if actual is not None:
                    sibling_extra += (actual - exp * (n_conn - 1) / n_conn) * f
            else:
                at_risk += exp * f
                if actual is not None and f >= 1.0:
                    still_started += actual
        for o in others:
            if covered.get((o, h), 0.0) < 0.5:
                continue
            exp_o = expected_sessions(sessions, covered, o, h, weeks, first)
            if exp_o is not None:
                site_extra += (sessions.get((o, h), 0.0) - abs(exp_o)) * f
    lost = max(0.0, at_risk - still_started)
    absorbed_total = min(lost, max(0.0, sibling_extra)) if connector_scope else 0.0
    lost -= absorbed_total
    site_absorbed_total = min(lost, max(0.0, site_extra))
    lost -= site_absorbed_total
    kwh = mean_energy_kwh(trailing)
    price = price_per_kwh or 0.0
    cut = cut_short_sessions([r for r in trailing if r.charge_point_id in cps], fleet_early_rate)
    amount = (lost + cut / 2.0) * (kwh or 0.0) * price
    parts = [
        f"{lost:.1f} sessions lost in {total_hours:.1f} outage hours: {at_risk:.1f} expected "
        f"(same hour of week, mean of the {weeks} weeks with data before the outage began)"
        + (f" less {still_started:.1f} the charger still started" if still_started else ""),
        f"× mean {kwh:.1f} kWh per session (the site's energy ÷ its sessions over those weeks)"
        if kwh is not None
        else "× no session energy known",
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
            " beyond their own expectation over the outage, net (drivers who moved over)"
        )
    if cut >= 0.05:
        method += (
            f"; plus {cut:.1f} sessions cut short in the {weeks} weeks before (ended early beyond"
            f" a healthy unit's {100 * (fleet_early_rate or 0.0):.1f}%: the fleet's lower quartile),"
            " each at half"
            " a mean session"
        )
    if fallback_hours:
        method += (
            f"; {fallback_hours} charger-hours had no same-hour-of-week history and use the same"
            " hour of day over the two weeks before"
        )
    if missing_hours:
        method += f"; {missing_hours} charger-hours had no trailing data at all and count as zero"
    if price_per_kwh is None:
        method += "; the site's price is unknown (no digest carried price_per_kwh)"
    return RevenueEstimate(amount, currency, lost, total_hours, kwh, method)
