"""Recurring problems: the fleet reference a site must stand out from (pure functions)."""

from __future__ import annotations

import pytest

from chargesight.cloud import recurring


def test_wifi_sites_do_not_stand_out_when_the_fleet_mixes_wired_and_wifi_sites() -> None:
    # 30 wired sites at ~0.2 small incidents per charger-week, 15 Wi-Fi sites at ~3, one flaky at 130
    rates = [0.2] * 30 + [3.0] * 14 + [3.6, 130.0]
    ref = recurring.fleet_reference_rate(rates)
    assert ref == pytest.approx(3.0)
    assert 5 * ref > 3.6  # the worst Wi-Fi site is not raised with a ratio of 5 ...
    assert 5 * ref <= 130.0  # ... the flaky site is
    # the median would have called every Wi-Fi site a problem
    assert 5 * sorted(rates)[len(rates) // 2] <= 3.0


def test_a_small_fleet_is_compared_to_its_median_site() -> None:
    assert recurring.fleet_reference_rate([1.0, 2.0, 40.0]) == pytest.approx(2.0)
    assert recurring.fleet_reference_rate([]) is None
