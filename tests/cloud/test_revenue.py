"""Revenue lost: the loss model on small hand-built sites (cloud/revenue.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from chargesight.cloud import revenue
from chargesight.cloud.revenue import IntervalUsage, Outage, Span

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
H = timedelta(hours=1)
WEEK = timedelta(days=7)


def site(
    units: dict[str, int],
    per_hour: float,
    hours_per_session: float | None,
    *,
    start: datetime = T0 - 4 * WEEK,
    hours: int = 4 * 7 * 24,
    energy_wh: float = 20_000.0,
    max_power_w: float | None = None,
) -> list[IntervalUsage]:
    """Hourly rows: every unit starts ``per_hour`` sessions an hour (whole numbers spread evenly)
    of ``energy_wh`` each, each keeping a connector ``hours_per_session`` (``occupied_s``)."""
    rows = []
    for h in range(hours):
        t = start + h * H
        for cp, n in units.items():
            k = int((h + 1) * per_hour) - int(h * per_hour)
            occ = None if hours_per_session is None else per_hour * hours_per_session * 3600
            rows.append(IntervalUsage(cp, t, t + H, k, k * energy_wh, n, 0, max_power_w, occ))
    return rows


def served_to_arrivals(served: float, servers: int, hours_per_session: float) -> float:
    lam = served
    for _ in range(200):
        lam = served / (1 - revenue.erlang_b(servers, lam * hours_per_session))
    return lam


def test_erlang_loss_formula_matches_its_table() -> None:
    assert revenue.erlang_b(1, 1.0) == pytest.approx(0.5)
    assert revenue.erlang_b(2, 1.0) == pytest.approx(0.2)
    assert revenue.erlang_b(5, 2.0) == pytest.approx(0.0367, abs=1e-4)  # published tables
    assert revenue.erlang_b(10, 5.0) == pytest.approx(0.0184, abs=1e-4)
    assert revenue.erlang_b(0, 3.0) == 1.0  # no connector left: every driver leaves
    assert revenue.erlang_b(4, 0.0) == 0.0


def test_a_site_with_one_charger_loses_every_driver_it_would_have_served() -> None:
    history = site({"solo": 1}, 2, 0.25)
    outage = [Span(T0 + 10 * H, T0 + 13 * H)]
    est = revenue.estimate_revenue_lost(outage, ["solo"], history, 0.5, "EUR")
    # 2 sessions an hour were served: all 6 of the three hours are lost, 20 kWh each
    assert est.lost_sessions == pytest.approx(6.0)
    assert est.amount == pytest.approx(6 * 20 * 0.5)
    assert "Erlang" in est.method and "as measured" in est.method


def test_siblings_take_the_drivers_they_have_room_for_so_a_quiet_site_loses_few() -> None:
    units = {f"u{i}": 2 for i in range(5)}  # 10 connectors
    outage = [Span(T0 + 10 * H, T0 + 20 * H)]
    quiet = revenue.estimate_revenue_lost(outage, ["u0"], site(units, 1, 0.5), 1.0, "EUR")
    busy = revenue.estimate_revenue_lost(outage, ["u0"], site(units, 3, 0.5), 1.0, "EUR")
    # quiet: 5 drivers an hour, 2.5 connectors busy of 10 — the other 8 take everyone
    assert quiet.lost_sessions < 0.01 * 10 * 5
    # busy: 15 an hour keep ~7.5 busy; with 8 working a real share finds them all taken
    lam = served_to_arrivals(15, 10, 0.5)
    extra = revenue.erlang_b(8, lam * 0.5) - revenue.erlang_b(10, lam * 0.5)
    assert busy.lost_sessions == pytest.approx(10 * lam * extra, rel=1e-6)
    assert busy.lost_sessions > 20 * quiet.lost_sessions
    # yet fewer than the unit's own 30 sessions: the others still took some of its drivers
    assert busy.lost_sessions < 30


def test_a_connector_outage_takes_one_connector_and_the_units_other_connector_stays() -> None:
    units = {"a": 2, "b": 2}
    history = site(units, 2, 0.5)
    outage = [Span(T0 + 10 * H, T0 + 12 * H)]
    one = revenue.estimate_revenue_lost(outage, ["a"], history, 1.0, "EUR", connector_scope=True)
    whole = revenue.estimate_revenue_lost(outage, ["a"], history, 1.0, "EUR")
    lam = served_to_arrivals(4, 4, 0.5)
    base = revenue.erlang_b(4, lam * 0.5)
    assert one.lost_sessions == pytest.approx(2 * lam * (revenue.erlang_b(3, lam * 0.5) - base))
    assert whole.lost_sessions == pytest.approx(2 * lam * (revenue.erlang_b(2, lam * 0.5) - base))
    assert 0 < one.lost_sessions < whole.lost_sessions


def test_overlapping_outages_share_what_they_cost_together() -> None:
    units = {f"u{i}": 1 for i in range(4)}
    history = site(units, 1, 0.8)
    span = [Span(T0 + 10 * H, T0 + 14 * H)]
    a, b = Outage(span, {"u0": 0}, label="a"), Outage(span, {"u1": 0}, label="b")
    alone = revenue.estimate_revenue_lost(span, ["u0"], history, 1.0, "EUR")
    share_a = revenue.estimate_revenue_lost([], [], history, 1.0, "EUR", own=[a], overlapping=[b])
    share_b = revenue.estimate_revenue_lost([], [], history, 1.0, "EUR", own=[b], overlapping=[a])
    both = revenue.estimate_revenue_lost([], [], history, 1.0, "EUR", own=[a, b])
    # two of four down turn away more than twice one of four: the rest fill up faster
    assert both.lost_sessions > 2 * alone.lost_sessions
    assert share_a.lost_sessions == pytest.approx(share_b.lost_sessions)
    assert share_a.lost_sessions + share_b.lost_sessions == pytest.approx(both.lost_sessions)
    assert "Shapley" in share_a.method


def test_shapley_share_is_the_mean_extra_over_join_orders() -> None:
    costs = {(): 0.0, (0,): 1.0, (1,): 2.0, (0, 1): 5.0}
    assert revenue.shapley_first(lambda m: costs[m], 1) == pytest.approx(0.5 * 1 + 0.5 * 3)


def test_drivers_try_a_unit_that_fails_every_start_and_leave_after_a_second_failure() -> None:
    units = {"a": 2, "b": 2}
    history = site(units, 1, 0.1)  # quiet: capacity is never the problem
    span = [Span(T0 + 10 * H, T0 + 20 * H)]
    skipped = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR")
    tried = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR", tried=True)
    # a driver's first try lands on "a" 2 times in 4; its next connector is "a" again 1 in 2
    lam = served_to_arrivals(2, 4, 0.1)
    retry = (1 - revenue.erlang_b(2, lam * 0.1)) * lam * 2 / 4 * 1 / 2
    assert tried.lost_sessions - skipped.lost_sessions == pytest.approx(10 * retry, rel=1e-6)
    assert "retried" in tried.method


def test_a_failing_single_connector_unit_sends_drivers_on_to_the_next_one() -> None:
    units = {"a": 1, "b": 1}
    history = site(units, 1, 0.1)
    span = [Span(T0 + 10 * H, T0 + 20 * H)]
    tried = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR", tried=True)
    skipped = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR")
    assert tried.lost_sessions == pytest.approx(skipped.lost_sessions)  # the retry is on "b"


def test_a_unit_charging_below_rated_power_or_a_warning_turns_no_driver_away() -> None:
    assert not revenue.out_of_service("performance", "PowerBelowRated")
    assert not revenue.out_of_service("predictive", "PsuDegradation")
    assert revenue.out_of_service("performance", "SessionStartFailures")
    assert revenue.out_of_service("fault", "GroundFailure")
    assert revenue.tried_by_drivers("performance", "SessionStartFailures")
    assert revenue.tried_by_drivers("connectivity", "ConnectionLost")
    assert not revenue.tried_by_drivers("fault", "ConnectorLockFailure")


def test_without_occupancy_charging_time_is_used_and_said_to_be_a_lower_bound() -> None:
    units = {"a": 1, "b": 1}
    span = [Span(T0 + 10 * H, T0 + 20 * H)]
    # 20 kWh at 40 kW peak: 0.5 h charging per session; no occupied_s reported
    proxy = site(units, 1, None, max_power_w=40_000.0)
    measured = site(units, 1, 0.5)
    a = revenue.estimate_revenue_lost(span, ["a"], proxy, 1.0, "EUR")
    b = revenue.estimate_revenue_lost(span, ["a"], measured, 1.0, "EUR")
    assert a.lost_sessions == pytest.approx(b.lost_sessions)
    assert "charging time" in a.method and "lower bound" in a.method
    assert "as measured" in b.method


def test_without_occupancy_or_power_what_the_rest_observably_absorbed_is_used() -> None:
    units = {"a": 1, "b": 1}
    history = site(units, 1, None)
    # "b" started 2 sessions instead of 1 in the outage hour: one driver moved over
    history.append(IntervalUsage("b", T0 + 10 * H, T0 + 11 * H, 2, 40_000.0, 1))
    est = revenue.estimate_revenue_lost(
        [Span(T0 + 10 * H, T0 + 11 * H)], ["a"], history, 1.0, "EUR"
    )
    assert est.lost_sessions == pytest.approx(0.0)
    assert "neither occupancy nor power" in est.method


def test_reference_hours_when_another_outage_was_on_are_left_out() -> None:
    units = {"a": 1, "b": 1}
    history = [r for r in site(units, 1, 0.5) if r.charge_point_id != "b"]
    # "b" was down the same hour a week before: it started nothing then, 2 per hour otherwise
    for h in range(4 * 7 * 24):
        t = T0 - 4 * WEEK + h * H
        n = 0 if t == T0 + 10 * H - WEEK else 2
        history.append(IntervalUsage("b", t, t + H, n, n * 20_000.0, 1, 0, None, n * 1800.0))
    span = [Span(T0 + 10 * H, T0 + 11 * H)]
    earlier = Outage([Span(T0 + 10 * H - WEEK, T0 + 11 * H - WEEK)], {"b": 0})
    clean = revenue.estimate_revenue_lost(
        [], [], history, 1.0, "EUR", own=[Outage(span, {"a": 0})], overlapping=[earlier]
    )
    dirty = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR")
    assert clean.lost_sessions > dirty.lost_sessions  # 3 expected, not (3 × 3 + 1) / 4


def test_sessions_in_progress_when_the_outage_began_count_half_a_session_each() -> None:
    units = {"a": 1, "b": 1, "c": 1, "d": 1}
    history = site(units, 1, 0.1, hours=4 * 7 * 24 + 24)  # through the outage's day
    at = T0 + 10 * H + timedelta(minutes=20)
    history = [  # a session on "a" ended early in the hour the fault began
        dataclasses.replace(r, sessions_ended_early=1)
        if r.charge_point_id == "a" and r.interval_start == T0 + 10 * H
        else r
        for r in history
    ]
    span = [Span(at, at + H)]
    est = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR")
    quiet_loss = est.lost_sessions * 20.0
    assert est.amount - quiet_loss == pytest.approx(0.5 * 20.0, rel=1e-2)
    assert "in progress when the outage began" in est.method
    off = revenue.estimate_revenue_lost(span, ["a"], history, 1.0, "EUR", cut_at_start=False)
    assert off.amount == pytest.approx(quiet_loss, rel=1e-2)


def test_sessions_the_edge_saw_cut_cost_what_their_drivers_still_wanted_not_half_a_session() -> (
    None
):
    units = {"a": 1, "b": 1, "c": 1, "d": 1}
    history = site(units, 1, 0.1, hours=4 * 7 * 24 + 24)
    at = T0 + 10 * H + timedelta(minutes=20)
    history = [  # the early end the edge measured is in the digests too: not counted twice
        dataclasses.replace(r, sessions_ended_early=1)
        if r.charge_point_id == "a" and r.interval_start == T0 + 10 * H
        else r
        for r in history
    ]
    quiet = revenue.estimate_revenue_lost(
        [Span(at, at + H)], ["a"], history, 1.0, "EUR", cut_at_start=False
    )
    measured = revenue.estimate_revenue_lost(
        [Span(at, at + H, sessions_cut=2, energy_unmet_wh=37_000.0)], ["a"], history, 1.0, "EUR"
    )
    assert measured.amount - quiet.amount == pytest.approx(37.0, rel=1e-3)
    assert (
        "2 session(s) the outage cut short as it began, as the edge saw: 37.0 kWh"
        in measured.method
    )
    # measured, but with no estimate of what was missing: half the unit's mean session each
    unknown = revenue.estimate_revenue_lost(
        [Span(at, at + H, sessions_cut=2, energy_unmet_wh=None)], ["a"], history, 1.0, "EUR"
    )
    assert unknown.amount - quiet.amount == pytest.approx(2 * 0.5 * 20.0, rel=1e-2)


def test_a_few_early_ends_are_chance_not_a_degrading_unit() -> None:
    rows = [IntervalUsage("a", T0, T0 + H, 200, 0.0, 1, 3)]
    assert revenue.cut_short_sessions(rows, 0.01) == 0.0  # 3 where 2 ± 1.4 are normal
    rows = [IntervalUsage("a", T0, T0 + H, 200, 0.0, 1, 20)]
    assert revenue.cut_short_sessions(rows, 0.01) == pytest.approx(18.0)


def test_a_driver_wants_the_energy_of_a_whole_session_ended_early_ones_counting_half() -> None:
    rows = [IntervalUsage("a", T0, T0 + H, 10, 190_000.0, 1, 2)]
    assert revenue.wanted_energy_kwh(rows) == pytest.approx(190 / 9)
    assert revenue.wanted_energy_kwh([]) is None


def test_brief_outages_over_the_whole_period_take_the_trailing_weeks_as_reference() -> None:
    units = {"a": 1, "b": 1}
    history = site(units, 1, 0.5, start=T0, hours=5 * 7 * 24)
    blips = [Span(T0 + d * 24 * H + 10 * H, T0 + d * 24 * H + 10 * H + 10 * timedelta(minutes=1))
             for d in range(7, 35, 3)]  # fmt: skip
    own = [Outage(blips, {"a": 0}, tried=True), Outage(blips, {"b": 0}, tried=True)]
    trailing = revenue.estimate_revenue_lost(
        [], [], history, 1.0, "EUR", own=own, reference_before_outage=False
    )
    # the whole site is offline: every driver of those minutes is lost, 2 an hour
    assert trailing.lost_sessions == pytest.approx(2 * len(blips) / 6, rel=0.05)
