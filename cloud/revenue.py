"""Revenue lost while charge points are out of service (pure; times from the data).

The economics: drivers come to a *site*. A driver who finds a connector free charges there;
one who finds every working connector taken leaves. An outage therefore costs the drivers it
turns away that the rest of the site could not take: almost none at a quiet site with many
connectors, more at a busy hour than at a quiet one, every one at a site with one charger.

Method, stated in every estimate:

* **arrivals** for each outage hour: the sessions the site's charge points started in the same
  hour of the week, mean of the trailing weeks with data before the outage began (weeks inside
  an outage never serve as their own reference: a long outage would otherwise expect what it
  itself suppressed), grossed up for the drivers a full site turned away then;
* **occupancy**: how long a session keeps a connector, per charge point over the same weeks —
  the digests' occupied time (a vehicle plugged in) per session when the edge reports it, else
  the charging time (energy ÷ peak power), which leaves plugged-in idle time out and so makes
  the estimate a lower bound at busy sites;
* **drivers turned away** (Erlang's loss formula: arrivals at random, sessions of any length
  distribution with that mean): arrivals × [P(every working connector busy during the outage)
  − P(every connector busy without it)]. The unit's other connectors and the site's other
  charge points take every driver they have room for; the drivers a full site would have
  turned away anyway are not the outage's;
* outages that **overlap** at the site (other open or past issues) turn drivers away together;
  each gets its Shapley share (its extra loss averaged over the orders the outages could have
  begun in), so overlapping issues add up to what they cost together;
* a unit that **fails every start** (or is offline) is *tried*, not skipped: a driver whose
  start fails retries once at the next connector along — on a unit with m connectors the same
  unit m−1 times in m — and leaves if that fails too;
* × the mean energy per session at the site over the reference weeks (a driver turned away is
  one of the site's drivers): its total ``energy_wh`` over its total ``sessions_started`` (a
  ratio of sums: per-interval ratios undercount sessions that span intervals, and a median
  undercounts a right-skewed distribution — N sessions are worth N × the mean);
* × the site's price per kWh (from its digests);
* **before the outage**: a unit that degrades before it fails (a PSU) cuts sessions short for
  weeks. Sessions the affected units ended early over the reference weeks beyond a healthy
  unit's early-end rate (the fleet's lower quartile over the same weeks, so degrading units do
  not raise the bar) are added, each at half the unit's own mean session (a session cut at an
  unknown point has on average delivered half of what the driver wanted).

Without occupancy or power in the digests the site's spare capacity is unknown; the estimate
then falls back to what the data shows directly: the affected units' expected sessions, less
what they still started, less what the site's other charge points started beyond their own
expectation over the outage (netted over the whole outage before it is clipped to
[0, sessions at risk] — clipping hour by hour would count every hour's positive noise as
absorbed and none of its negative noise); for a connector outage 1/connectors of the unit's
sessions are at risk, less what its sibling connectors absorbed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations, pairwise

from chargesight.cloud.model import RevenueLost

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)
MAX_PLAYERS = 7  # overlapping outages priced one by one (more are pooled into one)


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
    max_power_w: float | None = None
    occupied_s: float | None = None  # connector-seconds a vehicle was plugged in (edge-reported)


@dataclass(frozen=True, slots=True)
class Span:
    started_at: datetime
    ended_at: datetime
    sessions_cut: int | None = None
    """Sessions the outage cut short as it began, as the edge measured (None: not measured)."""
    energy_unmet_wh: float | None = None
    """What their drivers still wanted, as the edge estimated (None: not estimated)."""


@dataclass(frozen=True, slots=True)
class Outage:
    """Capacity one problem took away at a site: when, and how many connectors of which units.

    ``connectors`` maps a charge point to the connectors out of service (0 = all of the
    unit's). ``tried`` marks a unit drivers still try and fail on (it fails every start, or it
    is offline) rather than one they see is out and skip.
    """

    spans: Sequence[Span]
    connectors: Mapping[str, int]
    tried: bool = False
    label: str = ""


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
    skip: Set[datetime] = frozenset(),
) -> float | None:
    """Mean sessions in the same hour of week over ``weeks`` weeks with data before ``before``.

    ``before`` (the outage start) keeps reference hours out of the outage itself: for an
    outage hour ``weeks`` or more into a long outage the reference weeks are the ones
    before it began. Without it, the trailing weeks of ``hour``. Reference hours in ``skip``
    (another outage at the site then) are used only when no other hour has data.
    """
    limit = before if before is not None else hour
    seen: list[float] = []
    skipped: list[float] = []
    first_k = max(1, -(-int((hour + HOUR - limit).total_seconds()) // int(WEEK.total_seconds())))
    for k in range(first_k, first_k + weeks):
        ref = hour - k * WEEK
        key = (charge_point_id, ref)
        cov = covered.get(key, 0.0)
        if cov >= 0.5:
            (skipped if ref in skip else seen).append(sessions.get(key, 0.0) / min(cov, 1.0))
    if not seen:
        seen = skipped
    if not seen:
        # not enough history for the same hour of week: the same hour of day over the
        # two weeks before (said in the method as a fallback)
        first_d = max(1, -(-int((hour + HOUR - limit).total_seconds()) // 86400))
        for d in range(first_d, first_d + 14):
            ref = hour - timedelta(days=d)
            key = (charge_point_id, ref)
            cov = covered.get(key, 0.0)
            if cov >= 0.5:
                (skipped if ref in skip else seen).append(sessions.get(key, 0.0) / min(cov, 1.0))
        if not seen:
            seen = skipped
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


def wanted_energy_kwh(rows: Iterable[IntervalUsage]) -> float | None:
    """Mean energy a driver wants per session: the energy delivered over the sessions started,
    a session ended early counting as the half of one it delivered on average."""
    energy = sessions = early = 0.0
    for r in rows:
        energy += r.energy_wh
        sessions += r.sessions_started
        early += r.sessions_ended_early
    full = sessions - min(early, sessions) / 2.0
    return energy / full / 1000.0 if full > 0 else None


def cut_short_sessions(rows: Iterable[IntervalUsage], fleet_rate: float | None) -> float:
    """Early-ended sessions in ``rows`` beyond ``fleet_rate`` × sessions started (>= 0), counted
    only when the excess is beyond chance (more than two Poisson standard deviations and one
    session): a healthy unit's few early ends are no degradation."""
    if fleet_rate is None:
        return 0.0
    started = early = 0
    for r in rows:
        started += r.sessions_started
        early += r.sessions_ended_early
    normal = fleet_rate * started
    excess = early - normal
    return excess if excess > 2.0 * math.sqrt(normal) + 1.0 else 0.0


def measured_cuts(own: Sequence[Outage]) -> tuple[int, float, int]:
    """What the edge measured of the sessions the outages cut short as they began: sessions,
    the energy their drivers still wanted (Wh), and sessions it could not estimate that for."""
    n = unpriced = 0
    wh = 0.0
    for o in own:
        for s in o.spans:
            if s.sessions_cut is None:
                continue
            n += s.sessions_cut
            if s.energy_unmet_wh is None:
                unpriced += s.sessions_cut
            else:
                wh += s.energy_unmet_wh
    return n, wh, unpriced


def sessions_cut_at_start(own: Sequence[Outage], rows: Iterable[IntervalUsage]) -> float:
    """Sessions the outages cut short as they began, where the edge did not measure them: the
    early ends the affected units reported in the interval each outage began in (each interval
    once)."""
    starts: dict[str, list[datetime]] = defaultdict(list)
    for o in own:
        if o.tried:  # a unit that fails starts (or is offline) has nothing in progress to cut
            continue
        for cp in o.connectors:
            starts[cp].extend(s.started_at for s in o.spans if s.sessions_cut is None)
    if not starts:
        return 0.0
    n = 0
    for r in rows:
        mine = starts.get(r.charge_point_id)
        if (
            mine
            and r.sessions_ended_early
            and any(r.interval_start <= t < r.interval_end for t in mine)
        ):
            n += r.sessions_ended_early
    return float(n)


def out_of_service(kind: str, code: str | None) -> bool:
    """Whether an issue of ``kind`` with fault ``code`` takes its connectors out of service: a
    predictive warning or a unit charging below its rated power still serves drivers."""
    if kind in ("predictive", "offline_queue", "recurring"):
        return False
    return not (kind == "performance" and code == "PowerBelowRated")


def tried_by_drivers(kind: str, code: str | None) -> bool:
    """Drivers cannot see the problem and try the unit: it fails every start, or it is offline
    (no authorisation); a faulted unit shows it and is skipped."""
    return kind == "connectivity" or (kind == "performance" and code == "SessionStartFailures")


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


# ---------------------------------------------------------------- the loss model


def erlang_b(servers: int, load: float) -> float:
    """Erlang's loss formula: the share of arrivals that find all ``servers`` busy under an
    offered ``load`` (arrivals per hour × hours per session). Holds for any distribution of
    session lengths with that mean; 1 without servers, 0 without load."""
    if servers <= 0:
        return 1.0
    if load <= 0:
        return 0.0
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return b


def connectors_per_unit(rows: Sequence[IntervalUsage]) -> dict[str, int]:
    """Each charge point's connector count, from its latest interval that states one (else 1)."""
    latest: dict[str, tuple[datetime, int]] = {}
    out: dict[str, int] = {}
    for r in rows:
        out.setdefault(r.charge_point_id, 1)
        if r.connectors:
            cur = latest.get(r.charge_point_id)
            if cur is None or r.interval_start >= cur[0]:
                latest[r.charge_point_id] = (r.interval_start, r.connectors)
    out.update({cp: n for cp, (_, n) in latest.items()})
    return out


def occupancy_hours(rows: Sequence[IntervalUsage]) -> tuple[dict[str, float], str | None]:
    """Hours a session keeps a connector, per charge point, and what that rests on.

    ``"measured"`` when the intervals carry ``occupied_s`` (a vehicle plugged in); else
    ``"charging time"`` from ``energy_wh ÷ max_power_w`` (a lower bound: it leaves out time
    plugged in without charging, and counts two sessions at once at the faster one's power);
    ``None`` when neither is known. A unit without sessions of its own gets the site's mean.
    """
    occ: dict[str, float] = defaultdict(float)
    sess: dict[str, float] = defaultdict(float)
    measured = [r for r in rows if r.occupied_s is not None]
    basis: str | None = None
    if measured:
        basis = "measured"
        for r in measured:
            occ[r.charge_point_id] += (r.occupied_s or 0.0) / 3600.0
            sess[r.charge_point_id] += r.sessions_started
    else:
        powered = [r for r in rows if r.max_power_w and r.energy_wh > 0]
        if powered:
            basis = "charging time"
            for r in powered:
                occ[r.charge_point_id] += r.energy_wh / float(r.max_power_w or 1.0)
            for r in rows:
                sess[r.charge_point_id] += r.sessions_started
    if basis is None:
        return {}, None
    total_s = sum(sess.values())
    if total_s <= 0:
        return {}, None
    site = sum(occ.values()) / total_s
    per = {cp: (occ[cp] / n if n > 0 and occ[cp] > 0 else site) for cp, n in sess.items()}
    for r in rows:
        per.setdefault(r.charge_point_id, site)
    return per, basis


def shapley_first(value: Callable[[tuple[int, ...]], float], n_others: int) -> float:
    """Player 0's Shapley value in a game of ``1 + n_others`` players (``value`` of a sorted
    tuple of player numbers): its extra value averaged over every order the players join in."""
    n = n_others + 1
    total = 0.0
    others = range(1, n)
    for size in range(n):
        w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
        for comb in combinations(others, size):
            total += w * (value((0, *comb)) - value(comb))
    return total


@dataclass(slots=True)
class SiteModel:
    """One site's capacity: connectors per unit, occupancy per session, arrivals per hour."""

    connectors: dict[str, int]
    occupancy: dict[str, float]
    arrivals: Callable[[datetime], float]  # arrivals per hour (served + turned away by a full site)
    basis: str = "measured"  # or "charging time" (occupancy_hours)
    _cache: dict[tuple[object, ...], float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.connectors.values())

    def _out(self, outs: Sequence[tuple[tuple[str, int], ...]]) -> dict[str, int]:
        got: dict[str, int] = defaultdict(int)
        for o in outs:
            for cp, k in o:
                n = self.connectors.get(cp, 1)
                got[cp] = min(n, got[cp] + (n if k <= 0 else k))
        return got

    def turned_away(
        self,
        lam: float,
        blocked: Sequence[tuple[tuple[str, int], ...]],
        tried: Sequence[tuple[tuple[str, int], ...]],
    ) -> float:
        """Drivers per hour turned away with ``blocked`` and ``tried`` units out, beyond those a
        full site turns away anyway (Erlang's formula, plus failed retries on tried units)."""
        n_all = self.total
        occ = self.occupancy
        s_all = sum(occ.get(cp, 0.0) * n for cp, n in self.connectors.items()) / max(1, n_all)
        base = erlang_b(n_all, lam * s_all)
        b_out = self._out(blocked)
        t_out = self._out(tried)
        out = self._out([*blocked, *tried])
        working = n_all - sum(out.values())
        s_w = (
            sum(occ.get(cp, 0.0) * (n - out.get(cp, 0)) for cp, n in self.connectors.items())
            / working
            if working > 0
            else 0.0
        )
        full = erlang_b(working, lam * s_w)
        loss = max(0.0, full - base)
        if t_out and working > 0:
            # a driver whose first try lands on a tried unit retries at the next connector
            # along: the same unit (t-1 times in t) or, else, another tried connector with the
            # share of tried connectors among the rest; a second failure sends them away
            tryable = n_all - sum(b_out.values())
            t_all = sum(
                min(t, self.connectors.get(cp, 1) - b_out.get(cp, 0)) for cp, t in t_out.items()
            )
            p = 0.0
            for cp, t in t_out.items():
                t = min(t, self.connectors.get(cp, 1) - b_out.get(cp, 0))
                if t <= 0 or tryable <= 0:
                    continue
                same = (t - 1) / t
                rest = (t_all - t) / max(1, tryable - t)
                p += t / tryable * (same + (1 - same) * rest)
            loss += (1.0 - full) * p
        return lam * loss

    def share(
        self,
        lam: float,
        own: tuple[tuple[str, int], ...],
        own_tried: bool,
        others: Sequence[tuple[tuple[tuple[str, int], ...], bool]],
    ) -> float:
        """Own outage's Shapley share of the drivers per hour turned away with ``others``."""
        key = (round(lam, 9), own, own_tried, tuple(others))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if len(others) > MAX_PLAYERS - 1:  # pool the rest into one player
            keep = list(others[: MAX_PLAYERS - 2])
            pooled = tuple(x for o, _ in others[MAX_PLAYERS - 2 :] for x in o)
            keep.append((pooled, any(t for _, t in others[MAX_PLAYERS - 2 :])))
            others = keep
        players = [(own, own_tried), *others]

        def value(members: tuple[int, ...]) -> float:
            if not members:
                return 0.0
            blocked = [players[i][0] for i in members if not players[i][1]]
            tried = [players[i][0] for i in members if players[i][1]]
            return self.turned_away(lam, blocked, tried)

        v = shapley_first(value, len(others)) if others else value((0,))
        self._cache[key] = v
        return v


def site_model(
    history: Sequence[IntervalUsage],
    reference: Sequence[IntervalUsage],
    before: datetime | None,
    weeks: int,
    stats: dict[str, int] | None = None,
    skip: Set[datetime] = frozenset(),
) -> SiteModel | None:
    """The site's capacity model from its ``history`` (all its units), occupancy from
    ``reference`` (the weeks before ``before``; ``None``: the trailing weeks of each hour),
    reference hours in ``skip`` left out where others exist; None when occupancy is unknown."""
    occ, basis = occupancy_hours(reference)
    if basis is None:
        occ, basis = occupancy_hours(history)
    if basis is None:
        return None
    conns = connectors_per_unit(history)
    for cp in conns:
        occ.setdefault(cp, sum(occ.values()) / max(1, len(occ)))
    sessions, covered = hourly_sessions(history)
    units = sorted(conns)
    n_all = sum(conns.values())
    s_all = sum(occ[cp] * n for cp, n in conns.items()) / max(1, n_all)
    cache: dict[datetime, float] = {}
    counts = stats if stats is not None else {}

    def arrivals(hour: datetime) -> float:
        hit = cache.get(hour)
        if hit is not None:
            return hit
        served = 0.0
        for cp in units:
            e = expected_sessions(sessions, covered, cp, hour, weeks, before, skip)
            if e is None:
                counts["missing"] = counts.get("missing", 0) + 1
                continue
            if e < 0:
                counts["fallback"] = counts.get("fallback", 0) + 1
            served += abs(e)
        lam = served
        for _ in range(20):  # served = arrivals × (1 − the share a full site turns away)
            lam = served / max(0.05, 1.0 - erlang_b(n_all, lam * s_all))
        cache[hour] = lam
        return lam

    return SiteModel(conns, occ, arrivals, basis)


def _key(o: Outage, conns: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((cp, k if k > 0 else conns.get(cp, 1)) for cp, k in o.connectors.items()))


def _segments(
    own: Sequence[Outage], others: Sequence[Outage]
) -> list[tuple[datetime, datetime, list[int], list[int]]]:
    """Pieces of time, within one clock hour, over which the same own and other outages are
    active: ``(start, end, own indices, other indices)`` for every piece some own one covers."""
    events: dict[datetime, list[tuple[int, int, int]]] = defaultdict(list)  # (side, idx, +-1)
    points: set[datetime] = set()
    for side, group in ((0, own), (1, others)):
        for i, o in enumerate(group):
            for s in o.spans:
                if s.ended_at <= s.started_at:
                    continue
                events[s.started_at].append((side, i, 1))
                events[s.ended_at].append((side, i, -1))
                points.update((s.started_at, s.ended_at))
    for o in own:
        for h, _ in outage_hours(o.spans):
            points.update((h, h + HOUR))
    active: tuple[dict[int, int], dict[int, int]] = (defaultdict(int), defaultdict(int))
    out: list[tuple[datetime, datetime, list[int], list[int]]] = []
    ordered = sorted(points)
    for a, b in pairwise(ordered):
        for side, i, d in events.get(a, ()):
            active[side][i] += d
        mine = [i for i, n in active[0].items() if n > 0]
        if not mine:
            continue
        theirs = [i for i, n in active[1].items() if n > 0]
        out.append((a, b, sorted(mine), sorted(theirs)))
    return out


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


@dataclass(frozen=True, slots=True)
class TurnedAway:
    """What the loss model found for one issue's outages."""

    lost: float  # drivers turned away (capacity and failed retries), its share of overlaps
    retried: float  # of which: drivers who failed on a tried unit twice
    arrivals: float  # drivers expected at the site over the outage
    overlap_hours: float  # hours other outages at the site overlapped it
    overlapping: int  # how many other outages overlapped it
    occupancy: float  # mean hours per session over the site's connectors
    connectors: int


def drivers_turned_away(
    model: SiteModel, own: Sequence[Outage], others: Sequence[Outage] = ()
) -> TurnedAway:
    """Drivers ``own`` outages turned away at the site modelled by ``model``, sharing the
    drivers turned away during overlaps with ``others`` by Shapley share."""
    conns = model.connectors
    lost = retried = arrivals = overlap = 0.0
    seen_others: set[int] = set()
    own_keys = [_key(o, conns) for o in own]
    other_keys = [(_key(o, conns), o.tried) for o in others]
    for a, b, mine, theirs in _segments(own, others):
        dur = (b - a).total_seconds() / 3600.0
        lam = model.arrivals(_floor_hour(a))
        arrivals += lam * dur
        merged: dict[str, int] = {}
        for i in mine:
            for cp, k in own_keys[i]:
                merged[cp] = min(conns.get(cp, 1), merged.get(cp, 0) + k)
        key = tuple(sorted(merged.items()))
        tried = any(own[i].tried for i in mine)
        ot = [other_keys[i] for i in theirs]
        if theirs:
            overlap += dur
            seen_others.update(theirs)
        x = model.share(lam, key, tried, ot)
        lost += x * dur
        if tried:
            plain = model.share(lam, key, False, ot)
            retried += max(0.0, x - plain) * dur
    n_all = model.total
    s_all = sum(model.occupancy.get(cp, 0.0) * n for cp, n in conns.items()) / max(1, n_all)
    return TurnedAway(lost, retried, arrivals, overlap, len(seen_others), s_all, n_all)


def _observed_lost(
    spans: Sequence[Span],
    cps: Sequence[str],
    history: Sequence[IntervalUsage],
    sessions: dict[tuple[str, datetime], float],
    covered: dict[tuple[str, datetime], float],
    first: datetime,
    weeks: int,
    connector_scope: bool,
    n_conn: int | None,
    site_absorption: bool,
) -> tuple[float, dict[str, float]]:
    """The fallback without occupancy: expected sessions less what the data shows was started
    anyway or absorbed (module docstring)."""
    others = sorted({r.charge_point_id for r in history} - set(cps)) if site_absorption else []
    at_risk = still_started = sibling_extra = site_extra = 0.0
    fallback_hours = missing_hours = 0
    for h, f in outage_hours(spans):
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
    absorbed = min(lost, max(0.0, sibling_extra)) if connector_scope else 0.0
    lost -= absorbed
    site_absorbed = min(lost, max(0.0, site_extra))
    lost -= site_absorbed
    return lost, {
        "at_risk": at_risk,
        "still": still_started,
        "absorbed": absorbed,
        "site_absorbed": site_absorbed,
        "others": float(len(others)),
        "fallback": float(fallback_hours),
        "missing": float(missing_hours),
    }


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
    tried: bool = False,
    overlapping: Sequence[Outage] = (),
    own: Sequence[Outage] | None = None,
    cut_at_start: bool = True,
    reference_before_outage: bool = True,
) -> RevenueEstimate:
    """Estimate what ``spans`` of outage on ``charge_points`` cost (module docstring).

    ``history`` is the site's usage (every unit of it) from ``weeks`` before the outage on. ``connector_scope``: one connector of the unit is out.
    ``tried``: drivers try the unit and fail (it fails every start, or is offline).
    ``overlapping``: other outages at the site in the same period. ``own`` replaces
    ``spans``/``charge_points`` with several outages of one issue (a recurring problem's
    incidents), priced together. ``cut_at_start``: count the sessions each outage cut short
    as it began (the affected units' early ends in that interval).
    ``reference_before_outage=False``: brief outages (blips of minutes) spread over the whole
    period take their reference from the trailing weeks of each hour instead of the weeks
    before the first one began — they never suppressed their own reference.
    """
    if own is None:
        per_unit = 1 if connector_scope else 0
        own = [Outage(spans, dict.fromkeys(charge_points, per_unit), tried)]
    all_spans = [s for o in own for s in o.spans]
    hours = outage_hours(all_spans)
    total_hours = sum(f for _, f in hours)
    if not hours:
        return RevenueEstimate(0.0, currency, 0.0, 0.0, None, "no outage time yet")
    first = min(s.started_at for s in all_spans)
    ref_end = first
    trailing = [r for r in history if ref_end - weeks * WEEK <= r.interval_start < ref_end]
    if not reference_before_outage:
        trailing = list(history)
    cps = sorted({cp for o in own for cp in o.connectors})
    price = price_per_kwh or 0.0
    kwh = wanted_energy_kwh(trailing)
    if kwh is None:
        kwh = wanted_energy_kwh(history)
    unit_rows = [r for r in trailing if r.charge_point_id in cps]
    unit_kwh = wanted_energy_kwh(unit_rows) or kwh
    retried = 0.0
    stats: dict[str, int] = {}
    # hours another outage at the site took capacity away are no clean reference: the drivers
    # it turned away are missing from them
    busy = {h for h, f in outage_hours([s for o in overlapping for s in o.spans]) if f >= 0.5}
    model = site_model(
        history, trailing, ref_end if reference_before_outage else None, weeks, stats, busy
    )
    parts: list[str] = []
    if model is not None:
        res = drivers_turned_away(model, own, overlapping)
        lost, retried = res.lost, res.retried
        measured = model.basis == "measured"
        parts.append(
            f"{lost:.1f} drivers turned away in {total_hours:.1f} outage hours: of the "
            f"{res.arrivals:.1f} expected at the site (same hour of week, mean of the {weeks} "
            + (
                "weeks with data before the outage began"
                if reference_before_outage
                else "trailing weeks with data"
            )
            + f"), those who found every working "
            f"connector of its {res.connectors} busy, less those a full site turns away anyway "
            f"(Erlang's loss formula, a session keeping a connector {res.occupancy:.2f} h on "
            + (
                "average as measured: the unit's other connectors and the site's other "
                "charge points take every driver they have room for)"
                if measured
                else "average from charging time, energy ÷ peak power: plugged-in idle time is "
                "not reported, so at a busy site this is a lower bound; the unit's other "
                "connectors and the site's other charge points take every driver they have "
                "room for)"
            )
        )
        if res.overlapping:
            parts.append(
                f"{res.overlapping} other outage(s) at the site overlapped it for "
                f"{res.overlap_hours:.1f} h: the drivers turned away together are shared by "
                "Shapley share"
            )
        if any(o.tried for o in own):
            parts.append(
                "drivers cannot see that the unit fails every start (or is offline) and try it: "
                f"{res.retried:.1f} of them retried at the next connector along (on a unit with m "
                "connectors the same unit m−1 times in m), failed again and left — each at the "
                f"unit's own mean session of {unit_kwh or 0.0:.1f} kWh"
            )
    else:
        sessions, covered = hourly_sessions(history)
        lost = 0.0
        tot: dict[str, float] = defaultdict(float)
        for o in own:
            for cp, k in o.connectors.items():
                n_conn = connectors or next(
                    (r.connectors for r in history if r.charge_point_id == cp and r.connectors),
                    None,
                )
                part, info = _observed_lost(
                    o.spans,
                    [cp],
                    history,
                    sessions,
                    covered,
                    ref_end,
                    weeks,
                    k > 0 and (n_conn or 1) > k,
                    n_conn,
                    site_absorption,
                )
                lost += part
                for name, v in info.items():
                    tot[name] += v
        parts.append(
            f"{lost:.1f} sessions lost in {total_hours:.1f} outage hours: {tot['at_risk']:.1f} "
            f"expected (same hour of week, mean of the {weeks} weeks with data before the "
            "outage began)"
            + (f" less {tot['still']:.1f} the charger still started" if tot["still"] else "")
            + " — the digests report neither occupancy nor power, so the site's spare capacity "
            "is unknown and what it observably absorbed is used"
        )
        if connector_scope:
            parts.append(
                "connector outage: 1/connectors of the charge point's sessions at risk, "
                f"minus {tot['absorbed']:.1f} sessions its sibling connectors absorbed"
            )
        if tot["others"]:
            parts.append(
                f"minus {tot['site_absorbed']:.1f} sessions the site's other charge points "
                "started beyond their own expectation over the outage, net (drivers who moved "
                "over)"
            )
        stats = {"fallback": int(tot["fallback"]), "missing": int(tot["missing"])}
    head = " ".join(
        [
            parts[0],
            f"× mean {kwh:.1f} kWh a driver wants (the site's energy ÷ its sessions over those "
            "weeks, one ended early counting as half)"
            if kwh is not None
            else "× no session energy known",
            f"× {price:g} {currency or ''}/kWh".rstrip(),
        ]
    )
    rest = parts[1:]
    # sessions the affected units cut short in the weeks before, at half their own mean session
    cut = cut_short_sessions(unit_rows, fleet_early_rate)
    at_start = sessions_cut_at_start(own, history) if cut_at_start else 0.0
    n_measured, unmet_wh, unpriced = measured_cuts(own) if cut_at_start else (0, 0.0, 0)
    amount = (
        (lost - retried) * (kwh or 0.0)
        + (retried + (cut + at_start + unpriced) / 2.0) * (unit_kwh or 0.0)
        + unmet_wh / 1000.0
    ) * price
    if cut >= 0.05:
        rest.append(
            f"plus {cut:.1f} sessions cut short in the {weeks} weeks before (ended early beyond a "
            f"healthy unit's {100 * (fleet_early_rate or 0.0):.1f}%: the fleet's lower quartile), "
            f"each at half the unit's own mean session of {unit_kwh or 0.0:.1f} kWh"
        )
    if at_start:
        rest.append(
            f"plus {at_start:.0f} session(s) in progress when the outage began and cut short (the "
            f"unit's early ends in that interval), each at half its mean session of "
            f"{unit_kwh or 0.0:.1f} kWh (a lower bound: a longer session is likelier to be in "
            "progress)"
        )
    if n_measured:
        rest.append(
            f"plus {n_measured} session(s) the outage cut short as it began, as the edge saw: "
            f"{unmet_wh / 1000.0:.1f} kWh their drivers still wanted (from the car's state of "
            "charge, else from the unit's past sessions)"
            + (
                f"; {unpriced} of them at half the unit's mean session of "
                f"{unit_kwh or 0.0:.1f} kWh (no estimate)"
                if unpriced
                else ""
            )
        )
    if stats.get("fallback"):
        rest.append(
            f"{stats['fallback']} charger-hours had no same-hour-of-week history and use the same"
            " hour of day over the two weeks before"
        )
    if stats.get("missing"):
        rest.append(
            f"{stats['missing']} charger-hours had no trailing data at all and count as zero"
        )
    if price_per_kwh is None:
        rest.append("the site's price is unknown (no digest carried price_per_kwh)")
    method = "; ".join([head, *rest])
    return RevenueEstimate(amount, currency, lost, total_hours, kwh, method)
