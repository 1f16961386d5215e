"""Recurring small problems at one site (pure; the window ends at the latest data).

Many self-resolved incidents (disconnects, short faults) at one site within
``recurring_window_s`` add up to one site-scoped issue once they reach
``recurring_min_incidents``, even though none was escalated. The count per
charger interval is the largest of the digest's ``disconnects`` and
``self_resolved`` counters and the self-resolved incidents listed for it, so a
disconnect that was also listed as self-resolved counts once. A recurring
issue clears when the count in the window falls below half the threshold.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

CONNECTIVITY_WORDS = (
    "connectivity",
    "connection",
    "disconnect",
    "network",
    "offline",
    "heartbeat",
    "signal",
    "wifi",
    "cellular",
    "uplink",
)  # not "connect": a connector lock is not a network problem


def is_connectivity(kind: str, category: str) -> bool:
    text = f"{kind} {category}".lower()
    return any(w in text for w in CONNECTIVITY_WORDS)


@dataclass(frozen=True, slots=True)
class Blip:
    """One self-resolved incident from a digest."""

    charge_point_id: str | None
    kind: str
    category: str
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class CounterRow:
    charge_point_id: str
    interval_start: datetime
    interval_end: datetime
    disconnects: int
    self_resolved: int


@dataclass(frozen=True, slots=True)
class RecurringFinding:
    site_id: str
    incidents: int
    window_start: datetime
    window_end: datetime
    connectivity_share: float
    by_category: dict[str, int]
    chargers: list[str]
    first_half: int
    second_half: int
    blips: list[Blip]

    @property
    def connectivity(self) -> bool:
        return self.connectivity_share >= 0.5

    @property
    def trend(self) -> str:
        if self.second_half > 1.25 * self.first_half + 1:
            return "rising"
        if self.first_half > 1.25 * self.second_half + 1:
            return "falling"
        return "steady"


def count_recurring(
    site_id: str,
    blips: Sequence[Blip],
    counters: Sequence[CounterRow],
    window_end: datetime,
    window_s: int,
) -> RecurringFinding:
    """Count the site's small incidents in ``(window_end - window_s, window_end]``."""
    start = window_end - timedelta(seconds=window_s)
    mid = start + (window_end - start) / 2
    in_window = [b for b in blips if start < b.started_at <= window_end]
    listed: dict[tuple[str | None, datetime], list[Blip]] = defaultdict(list)
    rows = [c for c in counters if start < c.interval_end <= window_end]
    by_cp_rows: dict[str, list[CounterRow]] = defaultdict(list)
    for c in rows:
        by_cp_rows[c.charge_point_id].append(c)
    unmatched = []
    for b in in_window:
        match = next(
            (
                c
                for c in by_cp_rows.get(b.charge_point_id or "", [])
                if c.interval_start <= b.started_at < c.interval_end
            ),
            None,
        )
        if match is None:
            unmatched.append(b)
        else:
            listed[(match.charge_point_id, match.interval_start)].append(b)
    total = len(unmatched)
    first = sum(1 for b in unmatched if b.started_at <= mid)
    conn = sum(1 for b in unmatched if is_connectivity(b.kind, b.category))
    cats: Counter[str] = Counter(b.category for b in unmatched)
    chargers = {b.charge_point_id for b in unmatched if b.charge_point_id}
    for c in rows:
        mine = listed.get((c.charge_point_id, c.interval_start), [])
        n = max(c.disconnects, c.self_resolved, len(mine))
        if n == 0:
            continue
        total += n
        if c.interval_end <= mid:
            first += n
        chargers.add(c.charge_point_id)
        mine_conn = sum(1 for b in mine if is_connectivity(b.kind, b.category))
        # extra counted incidents beyond the listed ones are disconnects when the counter says so
        extra = n - len(mine)
        extra_conn = min(extra, max(0, c.disconnects - mine_conn))
        conn += mine_conn + extra_conn
        for b in mine:
            cats[b.category] += 1
        if extra_conn:
            cats["connectivity"] += extra_conn
        if extra - extra_conn > 0:
            cats["other"] += extra - extra_conn
    share = conn / total if total else 0.0
    return RecurringFinding(
        site_id=site_id,
        incidents=total,
        window_start=start,
        window_end=window_end,
        connectivity_share=round(share, 3),
        by_category=dict(cats),
        chargers=sorted(chargers),
        first_half=first,
        second_half=total - first,
        blips=sorted(in_window, key=lambda b: b.started_at),
    )


def fleet_reference_rate(site_rates: Sequence[float]) -> float | None:
    """What a site must stand out from: the upper quartile of the sites' rates.

    The upper quartile, not the median: when a fleet mixes wired and Wi-Fi sites the
    median is a wired site's rate, and every Wi-Fi site would stand out from it. A site
    several times above what one site in four sees is unusual for any uplink. Fewer than
    four sites: the median.
    """
    if not site_rates:
        return None
    if len(site_rates) < 4:
        return float(statistics.median(site_rates))
    return float(statistics.quantiles(site_rates, n=4, method="inclusive")[2])


def recurring_decision(
    finding: RecurringFinding,
    min_incidents: int,
    open_now: bool,
    *,
    site_rate: float | None = None,
    fleet_rate: float | None = None,
    min_ratio: float = 0.0,
) -> str:
    """``"open"`` (raise or update the site issue), ``"clear"`` or ``"none"``.

    With ``min_ratio > 0`` the site must also see at least ``min_ratio`` times the fleet's
    reference rate of small incidents per charge point (``site_rate`` vs ``fleet_rate``, see
    :func:`fleet_reference_rate`), so background noise shared by many sites is not a site
    problem.
    """
    unusual = True
    if min_ratio > 0 and site_rate is not None and fleet_rate is not None and fleet_rate > 0:
        unusual = site_rate >= min_ratio * fleet_rate
    if finding.incidents >= min_incidents and unusual:
        return "open"
    if open_now and (finding.incidents < min_incidents / 2 or not unusual):
        return "clear"
    return "none"


# ------------------------------------------------------------ one unit, the same fault again


@dataclass(frozen=True, slots=True)
class Episode:
    """One self-resolved fault on one charge point (not a disconnect)."""

    charge_point_id: str
    incident_id: str
    fault_code: str
    vendor_code: str | None
    category: str
    started_at: datetime
    ended_at: datetime
    fixed_by: str
    connector_id: int | None = None
    sessions_cut: int | None = None
    energy_unmet_wh: float | None = None


@dataclass(frozen=True, slots=True)
class RepeatFinding:
    """The same fault on one charge point, cleared again and again, within the window."""

    charge_point_id: str
    fault_code: str
    vendor_code: str | None
    category: str
    window_start: datetime
    window_end: datetime
    episodes: list[Episode]

    @property
    def count(self) -> int:
        return len(self.episodes)

    @property
    def fixed_by(self) -> dict[str, int]:
        return dict(Counter(e.fixed_by for e in self.episodes))


def find_repeats(
    episodes: Sequence[Episode], window_end: datetime, window_s: int
) -> list[RepeatFinding]:
    """Group the faults in ``(window_end - window_s, window_end]`` by charge point and signature.

    Disconnects are left out: a site's connectivity is the site rule's business.
    """
    start = window_end - timedelta(seconds=window_s)
    groups: dict[tuple[str, str, str | None, str], list[Episode]] = defaultdict(list)
    for e in episodes:
        if not start < e.started_at <= window_end or is_connectivity("", e.category):
            continue
        groups[(e.charge_point_id, e.fault_code, e.vendor_code, e.category)].append(e)
    return [
        RepeatFinding(cp, code, vc, cat, start, window_end, sorted(eps, key=lambda e: e.started_at))
        for (cp, code, vc, cat), eps in sorted(groups.items(), key=lambda kv: kv[0][:2])
    ]


PEER_MIN_UNITS = 3  # other units with the same repeating fault that make two episodes enough


def repeat_decision(count: int, min_repeats: int, open_now: bool, peers: int = 0) -> str:
    """``"open"`` (raise or update), ``"clear"`` or ``"none"``.

    Raised at ``min_repeats`` episodes in the window, or at two when at least
    ``PEER_MIN_UNITS`` other units of the same model and firmware have the same fault
    repeating (``peers``): the fleet already showed what it is. Once raised it stays open
    while any episode is left in the window (a fault that returns twice a week would
    otherwise flap), and clears after a whole window without one.
    """
    fleet_pattern = count >= 2 and peers >= PEER_MIN_UNITS
    if count >= min_repeats or fleet_pattern or (open_now and count > 0):
        return "open"
    if open_now and count == 0:
        return "clear"
    return "none"
