"""Drivers: when sessions arrive (by hour of week), how much energy they want, at what power.

Busier evenings on weekdays, a broad midday peak at weekends, quiet nights.
:func:`arrival_rate_per_s` is the expected arrivals per second at a site in
a given hour of week (Monday 00:00 = 0); the history generator and the live
runner both draw from it.
"""

from __future__ import annotations

import math
import random

from chargesight.sim.scenario import DriversSection, Site


def _profile() -> list[float]:
    weekday = [
        0.15, 0.1, 0.08, 0.08, 0.1, 0.25, 0.6, 1.0, 1.2, 1.0, 0.9, 1.0,
        1.2, 1.1, 1.0, 1.1, 1.4, 1.8, 2.0, 1.8, 1.4, 1.0, 0.6, 0.3,
    ]  # fmt: skip
    weekend = [
        0.2, 0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.4, 0.8, 1.2, 1.6, 1.9,
        2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.2, 1.0, 0.7, 0.5, 0.3,
    ]  # fmt: skip
    week = weekday * 5 + weekend * 2
    mean = sum(week) / len(week)
    return [v / mean for v in week]


HOUR_OF_WEEK_PROFILE: list[float] = _profile()
"""168 multipliers with mean 1 (Monday 00:00 first)."""


def arrival_rate_per_s(
    site: Site, drivers: DriversSection, hour_of_week: int, hour_of_day: int
) -> float:
    o, c = site.spec.opening_hours
    if not (o <= hour_of_day < c):
        return 0.0
    connectors = sum(cp.connector_count for cp in site.chargers)
    per_hour = (
        connectors
        * drivers.sessions_per_connector_day
        / 24
        * HOUR_OF_WEEK_PROFILE[hour_of_week % 168]
        * site.spec.demand
    )
    return per_hour / 3600


def session_energy_wh(rng: random.Random, dc: bool, drivers: DriversSection) -> float:
    """Energy a driver wants: log-normal around the median for the connector type."""
    median = drivers.dc_energy_kwh if dc else drivers.ac_energy_kwh
    kwh = median * math.exp(rng.gauss(0.0, 0.5))
    return round(min(kwh, 120.0 if dc else 80.0) * 1000, 1)


def ev_max_power_w(rng: random.Random, dc: bool) -> float:
    """The car's own limit."""
    if dc:
        return rng.choice((50_000.0, 75_000.0, 100_000.0, 150_000.0, 200_000.0, 250_000.0))
    return rng.choice((7_400.0, 11_000.0, 11_000.0, 22_000.0))


def ambient_c(hour_of_day: int, day_of_year: int) -> float:
    season = 10 - 9 * math.cos(2 * math.pi * (day_of_year - 20) / 365)
    daily = 4 * math.sin(2 * math.pi * (hour_of_day - 9) / 24)
    return season + daily


def id_tag(rng: random.Random, drivers: DriversSection) -> str:
    return f"TAG{rng.randrange(drivers.id_tags):05d}"
