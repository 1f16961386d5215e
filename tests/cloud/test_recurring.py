"""Recurring problems: the fleet reference a site must stand out from (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chargesight.cloud import recurring

H = timedelta(hours=1)


def test_wifi_sites_do_not_stand_out_when_the_fleet_mixes_wired_and_wifi_sites() -> None:
    # 30 wired sites at ~0.2 small incidents per charger-week, 15 Wi-Fi sites at ~3, one flaky at 130
    rates = [0.2] * 30 + [3.0] * 14 + [3.6, 130.0]
    ref = recurring.fleet_reference_rate(rates)
    assert ref == pytest.approx(3.0)
    # both sites have enough incidents for the count rule; the ratio to the fleet decides
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    rows = [recurring.CounterRow("cp", t0 + i * H, t0 + (i + 1) * H, 1, 0) for i in range(25)]
    busy = recurring.count_recurring("s", [], rows, t0 + 25 * H, 86400)

    def decide(site_rate: float, fleet_rate: float) -> str:
        return recurring.recurring_decision(
            busy, 20, False, site_rate=site_rate, fleet_rate=fleet_rate, min_ratio=5
        )

    assert decide(3.6, ref) == "none"  # the worst Wi-Fi site is not raised ...
    assert decide(130.0, ref) == "open"  # ... the flaky one is
    # the median site as the reference would have called every Wi-Fi site a problem
    median = sorted(rates)[len(rates) // 2]
    assert decide(3.0, median) == "open"


def test_a_small_fleet_is_compared_to_its_median_site() -> None:
    assert recurring.fleet_reference_rate([1.0, 2.0, 40.0]) == pytest.approx(2.0)
    assert recurring.fleet_reference_rate([]) is None
