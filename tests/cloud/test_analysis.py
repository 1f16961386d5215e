"""The analysis functions on small hand-built data (no servers)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from chargesight.cloud import diagnosis, fleet, recurring, related, revenue
from chargesight.cloud.ingest import DigestSummary
from chargesight.cloud.issues import (
    IssueStateError,
    acknowledge,
    apply_cleared,
    apply_escalation,
    resolve,
)
from chargesight.cloud.model import RelatedUnit
from chargesight.cloud.stats import gamma_cdf, gamma_ppf, poisson_rate_ci
from tests.cloud.helpers import T0, blip, counters, digest, escalation

H = timedelta(hours=1)
WEEK = timedelta(days=7)


def ids() -> object:
    n = iter(range(1000))
    return lambda: f"issue-{next(n)}"


# ------------------------------------------------------------------ issue lifecycle


def test_repeated_escalation_updates_the_issue_without_duplicating_attempts() -> None:
    first = escalation("s", "cp", incident_id="a")
    issue = apply_escalation(None, first, ids())  # type: ignore[arg-type]
    assert issue is not None and issue.status == "open"
    again = apply_escalation(issue, escalation("s", "cp", incident_id="a"), ids())  # type: ignore[arg-type]
    assert again is not None
    assert again.id == issue.id
    assert again.escalations == 2
    assert len(again.recovery_attempts) == 2  # same attempts, not appended twice
    assert issue.escalations == 1  # the input is not modified


def test_cleared_escalation_resolves_with_resolution_cleared_and_ends_the_outage() -> None:
    issue = apply_escalation(None, escalation("s", "cp", incident_id="a"))
    assert issue is not None
    end = T0 + 2 * H
    done = apply_escalation(
        issue, escalation("s", "cp", incident_id="a", status="cleared", ended_at=end)
    )
    assert done is not None
    assert (done.status, done.resolution, done.ended_at) == ("resolved", "cleared", end)
    assert done.outages[-1].ended_at == end
    assert done.priority == 0


def test_a_late_open_copy_of_a_cleared_incident_changes_nothing() -> None:
    issue = apply_escalation(None, escalation("s", "cp", incident_id="a"))
    assert issue is not None
    cleared = apply_cleared(issue, "a", T0 + H)
    assert cleared is not None
    assert apply_escalation(cleared, escalation("s", "cp", incident_id="a")) is None
    assert apply_cleared(cleared, "a", T0 + 2 * H) is None


def test_fault_returning_after_it_cleared_reopens_with_a_new_outage_and_says_why() -> None:
    issue = apply_escalation(None, escalation("s", "cp", incident_id="a"))
    assert issue is not None
    cleared = apply_cleared(issue, "a", T0 + H)
    assert cleared is not None
    back = apply_escalation(cleared, escalation("s", "cp", incident_id="b", started_at=T0 + 5 * H))
    assert back is not None
    assert back.status == "open" and back.resolution is None and back.reopened == 1
    assert [o.started_at for o in back.outages] == [T0, T0 + 5 * H]
    assert "cleared by itself" in back.history[-1].detail


def test_operator_actions_follow_the_issue_state() -> None:
    issue = apply_escalation(None, escalation("s", "cp"))
    assert issue is not None
    acked = acknowledge(issue, T0 + H, "olga")
    assert acked.status == "acknowledged"
    done = resolve(acked, T0 + 2 * H, "olga", "field_technician", True, "replaced the contactor")
    assert (done.status, done.resolution) == ("resolved", "operator")
    assert (
        done.operator_actions[-1].action == "field_technician" and done.operator_actions[-1].worked
    )
    with pytest.raises(IssueStateError):
        acknowledge(done, T0 + 3 * H, "olga")
    with pytest.raises(IssueStateError):
        resolve(done, T0 + 3 * H, "olga", "reboot", True)


def test_connector_scope_key_keeps_connectors_apart() -> None:
    one = apply_escalation(None, escalation("s", "cp", connector=1, scope="connector"))
    assert one is not None
    two = escalation("s", "cp", connector=2, scope="connector")
    from chargesight.cloud.issues import issue_key

    assert issue_key(two) != issue_key(escalation("s", "cp", connector=1, scope="connector"))
    assert one.connector_id == 1


# ------------------------------------------------------------------ revenue


def usage(cp: str, start: datetime, hours: int, per_hour: dict[int, int], energy_wh: float = 10_000.0,
          connectors: int = 2) -> list[revenue.IntervalUsage]:  # fmt: skip
    """Hourly rows; ``per_hour`` maps hour of day to sessions (default 1)."""
    rows = []
    for h in range(hours):
        t = start + h * H
        n = per_hour.get(t.hour, 1)
        rows.append(revenue.IntervalUsage(cp, t, t + H, n, n * energy_wh, connectors))
    return rows


def test_expected_sessions_come_from_the_same_hour_of_week_over_trailing_weeks() -> None:
    history = usage("cp", T0 - 4 * WEEK, 4 * 7 * 24, {18: 4})
    outage = [revenue.Span(T0 + 18 * H, T0 + 19 * H)]  # Monday 18:00-19:00, the busy hour
    est = revenue.estimate_revenue_lost(outage, ["cp"], history, 0.5, "EUR", weeks=4)
    assert est.lost_sessions == pytest.approx(4.0)
    assert est.kwh_per_session == pytest.approx(10.0)
    assert est.amount == pytest.approx(4 * 10 * 0.5)
    quiet = revenue.estimate_revenue_lost(
        [revenue.Span(T0 + 3 * H, T0 + 4 * H)], ["cp"], history, 0.5, "EUR"
    )
    assert quiet.lost_sessions == pytest.approx(1.0)


def test_weeks_without_data_are_skipped_not_counted_as_zero() -> None:
    history = usage("cp", T0 - WEEK, 7 * 24, {18: 4})  # only one trailing week exists
    est = revenue.estimate_revenue_lost(
        [revenue.Span(T0 + 18 * H, T0 + 19 * H)], ["cp"], history, 1.0, "EUR"
    )
    assert est.lost_sessions == pytest.approx(4.0)


def test_partial_outage_hours_count_pro_rata() -> None:
    history = usage("cp", T0 - WEEK, 7 * 24, {})
    est = revenue.estimate_revenue_lost([revenue.Span(T0 + 30 * timedelta(minutes=1), T0 + 2 * H)], ["cp"],
                                        history, 1.0, "EUR")  # fmt: skip
    assert est.outage_hours == pytest.approx(1.5)
    assert est.lost_sessions == pytest.approx(1.5)


def test_connector_outage_subtracts_what_sibling_connectors_absorbed() -> None:
    history = usage("cp", T0 - WEEK, 7 * 24, {18: 4})
    # during the outage hour the charge point still started 3 sessions on its healthy connector
    history.append(revenue.IntervalUsage("cp", T0 + 18 * H, T0 + 19 * H, 3, 30_000.0, 2))
    est = revenue.estimate_revenue_lost([revenue.Span(T0 + 18 * H, T0 + 19 * H)], ["cp"], history, 1.0, "EUR",
                                        connector_scope=True)  # fmt: skip
    # 4 expected → 2 on the failed connector; the sibling took 3 instead of 2 → absorbed 1 → 1 lost
    assert est.lost_sessions == pytest.approx(1.0)
    assert "absorbed" in est.method


# ------------------------------------------------------------------ recurring


def test_a_disconnect_both_listed_and_counted_counts_once() -> None:
    at = T0 + 10 * timedelta(minutes=1)
    blips = [recurring.Blip("cp", "connectivity", "connectivity", at, at + timedelta(minutes=2))]
    rows = [recurring.CounterRow("cp", T0, T0 + H, disconnects=1, self_resolved=1)]
    f = recurring.count_recurring("s", blips, rows, T0 + H, 86400)
    assert f.incidents == 1 and f.connectivity


def test_recurring_counts_only_the_window_and_clears_below_half_the_threshold() -> None:
    rows = [recurring.CounterRow("cp", T0 + i * H, T0 + (i + 1) * H, 1, 0) for i in range(30)]
    f = recurring.count_recurring("s", [], rows, T0 + 30 * H, 20 * 3600)
    assert f.incidents == 20
    assert recurring.recurring_decision(f, 20, open_now=False) == "open"
    later = recurring.count_recurring("s", [], rows, T0 + 45 * H, 20 * 3600)
    assert later.incidents == 5
    assert recurring.recurring_decision(later, 20, open_now=True) == "clear"
    assert recurring.recurring_decision(later, 8, open_now=True) == "none"


def test_recurring_trend_is_rising_when_the_second_half_has_more() -> None:
    rows = [
        recurring.CounterRow("cp", T0 + i * H, T0 + (i + 1) * H, 1 if i >= 5 else 0, 0)
        for i in range(10)
    ]
    f = recurring.count_recurring("s", [], rows, T0 + 10 * H, 10 * 3600)
    assert f.trend == "rising"


# ------------------------------------------------------------------ related units


def test_signature_matches_list_each_other_unit_once_and_same_firmware_ranks_higher() -> None:
    hits = [
        related.SignatureHit("a", "s1", "1.0", T0),
        related.SignatureHit("a", "s1", "1.0", T0 + H),
        related.SignatureHit("b", "s2", "2.0", T0),
        related.SignatureHit("me", "s1", "1.0", T0),
    ]
    out = related.related_by_signature("me", "1.0", "OverCurrentFailure", "OC", "HPC", hits)
    assert [(r.charge_point_id, r.similarity) for r in out] == [("a", 1.0), ("b", 0.9)]
    assert "same firmware 1.0" in out[0].reason


def stats(cp: str, power: float, temp: float, early: float = 0.0) -> related.WindowStats:
    return related.WindowStats(cp, "s", hours=72, sessions_started=20, sessions_ended_early=early,
                               power_ratio=power, mean_temperature_c=temp)  # fmt: skip


def test_units_with_the_same_early_symptoms_are_related_and_healthy_ones_are_not() -> None:
    failing = related.symptom_vector(stats("me", 0.70, 55, early=6), stats("me", 0.95, 40))
    candidates = [
        (stats("twin", 0.72, 52, early=5), stats("twin", 0.96, 41)),  # same sag, heat, early ends
        (stats("healthy", 0.95, 40), stats("healthy", 0.95, 40)),
        (stats("hot-only", 0.95, 60), stats("hot-only", 0.95, 40)),  # different pattern
    ]
    out = related.related_by_symptoms(failing, "me", candidates)
    assert [r.charge_point_id for r in out] == ["twin"]
    assert out[0].similarity > 0.9
    assert "power delivered sagging below rated" in out[0].reason


# ------------------------------------------------------------------ diagnosis and priority


def issue_for(**kw: object) -> object:
    made = apply_escalation(None, escalation("s", "cp", **kw))  # type: ignore[arg-type]
    assert made is not None
    return made


def test_fault_concentrated_on_one_firmware_recommends_a_firmware_update() -> None:
    issue = issue_for(firmware="2.0-beta", code="InternalError", category="software")
    ev = diagnosis.FirmwareEvidence({"2.0-beta": 9, "1.9": 1}, {"2.0-beta": 3, "1.9": 17})
    action, why = diagnosis.recommend(issue, ev)  # type: ignore[arg-type]
    assert action == "firmware_update"
    assert "2.0-beta" in why


def test_operator_feedback_that_worked_before_wins() -> None:
    issue = issue_for(code="GroundFailure", category="hardware")
    prior = [diagnosis.PriorFix("component_replacement", True), diagnosis.PriorFix("reboot", False)]
    action, why = diagnosis.recommend(issue, None, prior)  # type: ignore[arg-type]
    assert action == "component_replacement" and "operator feedback" in why


def test_safety_critical_fault_goes_to_a_technician_and_outranks_a_connector_glitch() -> None:
    ground = issue_for(code="GroundFailure", category="hardware", safety_critical=True)
    glitch = issue_for(code="InternalError", category="software", scope="connector", connector=1)
    assert diagnosis.recommend(ground)[0] == "field_technician"  # type: ignore[arg-type]
    assert diagnosis.priority(ground, 1.0, 0.5) > diagnosis.priority(glitch, 1.0, 0.5)  # type: ignore[arg-type]


def test_priority_grows_with_revenue_drivers_and_units_sharing_the_pattern() -> None:
    base = issue_for()
    quiet = diagnosis.priority(base, 0.5, 0.1)  # type: ignore[arg-type]
    busy = diagnosis.priority(base, 30.0, 3.0)  # type: ignore[arg-type]
    shared = base.model_copy(deep=True)  # type: ignore[attr-defined]
    shared.related = [RelatedUnit(charge_point_id=f"x{i}", site_id="s", reason="r", similarity=1.0)
                      for i in range(3)]  # fmt: skip
    assert quiet < busy < diagnosis.priority(shared, 30.0, 3.0)


# ------------------------------------------------------------------ statistics and fleet views


@pytest.mark.parametrize(
    ("k", "lower", "upper"),
    [(0, 0.0, 3.6889), (1, 0.0253, 5.5716), (3, 0.6187, 8.7673), (10, 4.7954, 18.3904)],
)
def test_garwood_poisson_interval_matches_published_tables(
    k: int, lower: float, upper: float
) -> None:
    lo, hi = poisson_rate_ci(k, 1.0)
    assert lo == pytest.approx(lower, abs=1e-4)
    assert hi == pytest.approx(upper, abs=1e-4)


def test_gamma_functions_agree_with_scipy() -> None:
    sp = pytest.importorskip("scipy.stats")
    for shape in (0.5, 1, 2.5, 7, 40):
        for x in (0.1, 1, 5, 30):
            assert gamma_cdf(x, shape) == pytest.approx(sp.gamma.cdf(x, shape), abs=1e-10)
        for p in (0.025, 0.5, 0.975):
            assert gamma_ppf(p, shape) == pytest.approx(sp.gamma.ppf(p, shape), rel=1e-8)


def test_a_small_model_with_three_failures_is_not_called_worse_than_the_fleet() -> None:
    rows = [
        fleet.ModelExposure("A", "big", "1", units=500, charger_days=180_000, failures=180),
        fleet.ModelExposure("B", "tiny", "1", units=3, charger_days=900, failures=3),
        fleet.ModelExposure("C", "bad", "1", units=100, charger_days=36_000, failures=200),
    ]
    rate = fleet.fleet_failure_rate(rows)
    out = {m.model: m for m in fleet.model_reliability(rows, rate)}
    assert out["tiny"].failure_rate_per_1000_charger_days == pytest.approx(3.333, rel=1e-3)
    assert out["tiny"].verdict.startswith("not distinguishable")
    assert out["bad"].verdict.startswith("fails more often")
    assert out["big"].mtbf_hours == pytest.approx(180_000 * 24 / 180)
    lo, hi = out["big"].mtbf_hours_ci95  # type: ignore[misc]
    assert lo is not None and hi is not None and lo < 24_000 < hi


def test_nevi_uptime_follows_the_federal_formula_with_excluded_time() -> None:
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    spans = [
        fleet.OutageSpan(
            as_of - timedelta(days=10), as_of - timedelta(days=10) + timedelta(minutes=5256)
        ),
        fleet.OutageSpan(
            as_of - timedelta(days=3), as_of - timedelta(days=2), excluded=True
        ),  # grid outage
    ]
    # ((525,600 − (6,696 − 1,440)) / 525,600) × 100 = 99.0
    assert fleet.nevi_uptime(spans, as_of) == pytest.approx(99.0)
    monthly = fleet.nevi_monthly(spans, as_of)
    assert len(monthly) == 12 and monthly[-1]["uptime_pct"] == 100.0


def test_uk_reliability_figure_flags_a_network_below_99_percent() -> None:
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    bad = [
        fleet.OutageSpan(as_of - timedelta(days=20), as_of - timedelta(days=20) + timedelta(days=8))
    ]
    result = fleet.uk_reliability({"ok": [], "bad": bad}, as_of)
    # (100 + (1 − 8/365) × 100) / 2 ≈ 98.9 %
    assert result["availability_pct"] == pytest.approx(98.904, abs=1e-3)
    assert result["meets_99"] is False
    assert fleet.uk_reliability({"ok": []}, as_of)["meets_99"] is True


@pytest.mark.parametrize(
    ("fault", "action"),
    [
        ({"code": "ConnectorLockFailure", "category": "connector_lock", "component": "connector_lock"},
         "field_technician"),
        ({"code": "PowerSwitchFailure", "category": "contactor", "component": "psu_module"}, "component_replacement"),
        ({"code": "SessionStartFailures", "category": "performance", "component": "control_pilot",
          "kind": "performance", "vendor_code": None}, "field_technician"),
        ({"code": "ConnectionLost", "category": "connectivity", "kind": "connectivity"}, "network_fix"),
        ({"code": "LocalListConflict", "category": "configuration", "component": "local_auth_list"},
         "configuration_change"),
    ],
)  # fmt: skip
def test_recommended_action_follows_the_fault_not_its_wording(
    fault: dict[str, object], action: str
) -> None:
    issue = issue_for(**fault)
    assert diagnosis.recommend(issue)[0] == action  # type: ignore[arg-type]


def test_recurring_problem_mostly_faults_is_not_sent_to_the_network_team() -> None:
    from chargesight.cloud.engine import recurring_issue

    blips = [
        recurring.Blip("cp", "fault", "internal", T0 + i * H, T0 + i * H + timedelta(minutes=5))
        for i in range(14)
    ]
    blips += [
        recurring.Blip("cp", "connectivity", "connectivity", T0 + i * H, T0 + i * H)
        for i in range(8)
    ]
    finding = recurring.count_recurring("s", blips, [], T0 + 24 * H, 86400)
    issue = recurring_issue(None, finding, 86400)
    assert issue.fault.category == "internal"
    assert diagnosis.recommend(issue)[0] == "monitor"


def test_background_noise_every_site_shares_is_not_a_site_problem_when_compared_to_the_fleet() -> (
    None
):
    rows = [recurring.CounterRow("cp", T0 + i * H, T0 + (i + 1) * H, 1, 0) for i in range(25)]
    f = recurring.count_recurring("s", [], rows, T0 + 25 * H, 86400)
    assert (
        recurring.recurring_decision(f, 20, open_now=False) == "open"
    )  # the contract's count rule
    noisy = {"site_rate": 2.5, "fleet_rate": 2.0, "min_ratio": 3.0}
    assert recurring.recurring_decision(f, 20, open_now=False, **noisy) == "none"  # type: ignore[arg-type]
    assert recurring.recurring_decision(f, 20, open_now=True, **noisy) == "clear"  # type: ignore[arg-type]
    flaky = {"site_rate": 25.0, "fleet_rate": 2.0, "min_ratio": 3.0}
    assert recurring.recurring_decision(f, 20, open_now=False, **flaky) == "open"  # type: ignore[arg-type]


def test_sessions_the_rest_of_the_site_took_over_are_not_counted_as_lost() -> None:
    history = usage("a", T0 - WEEK, 7 * 24, {}, connectors=1) + usage(
        "b", T0 - WEEK, 7 * 24, {}, connectors=1
    )
    # during the outage of "a", "b" started 2 sessions instead of its usual 1: one driver moved over
    history.append(revenue.IntervalUsage("b", T0, T0 + H, 2, 20_000.0, 1))
    est = revenue.estimate_revenue_lost([revenue.Span(T0, T0 + H)], ["a"], history, 1.0, "EUR")
    assert est.lost_sessions == pytest.approx(0.0)
    assert "other charge points" in est.method
    alone = revenue.estimate_revenue_lost([revenue.Span(T0, T0 + H)], ["a"], history, 1.0, "EUR",
                                          site_absorption=False)  # fmt: skip
    assert alone.lost_sessions == pytest.approx(1.0)


def test_a_long_outage_expects_what_the_weeks_before_it_began_saw_not_its_own_empty_weeks() -> None:
    before = usage("cp", T0 - 4 * WEEK, 4 * 7 * 24, {18: 4})
    during = [  # the charger is down for three weeks: its digests report nothing started
        revenue.IntervalUsage("cp", T0 + h * H, T0 + (h + 1) * H, 0, 0.0, 2) for h in range(21 * 24)
    ]
    est = revenue.estimate_revenue_lost(
        [revenue.Span(T0, T0 + 21 * WEEK / 7)], ["cp"], before + during, 1.0, "EUR"
    )
    # 21 days × (23 quiet hours × 1 + the busy hour × 4) = 21 × 27 sessions
    assert est.lost_sessions == pytest.approx(21 * 27)


def test_energy_per_session_is_the_sites_total_energy_over_its_sessions() -> None:
    # one 30 kWh session spread over three hourly digests: per-interval ratios would say 10 kWh
    rows = [
        revenue.IntervalUsage("cp", T0, T0 + H, 1, 10_000.0),
        revenue.IntervalUsage("cp", T0 + H, T0 + 2 * H, 0, 10_000.0),
        revenue.IntervalUsage("cp", T0 + 2 * H, T0 + 3 * H, 0, 10_000.0),
        revenue.IntervalUsage("cp", T0 + 3 * H, T0 + 4 * H, 1, 6_000.0),
    ]
    assert revenue.mean_energy_kwh(rows) == pytest.approx(18.0)


def test_what_the_rest_of_the_site_absorbed_is_netted_over_the_outage_not_clipped_hourly() -> None:
    history = usage("a", T0 - WEEK, 7 * 24, {}, connectors=1) + usage(
        "b", T0 - WEEK, 7 * 24, {}, connectors=1
    )
    # "b" started 2 then 0 sessions in the two outage hours (usually 1 and 1): noise, no one moved
    history += [
        revenue.IntervalUsage("b", T0, T0 + H, 2, 20_000.0, 1),
        revenue.IntervalUsage("b", T0 + H, T0 + 2 * H, 0, 0.0, 1),
    ]
    est = revenue.estimate_revenue_lost([revenue.Span(T0, T0 + 2 * H)], ["a"], history, 1.0, "EUR")
    assert est.lost_sessions == pytest.approx(2.0)


def test_sessions_a_degrading_unit_cut_short_before_it_failed_count_half_a_session_each() -> None:
    history = usage("cp", T0 - WEEK, 7 * 24, {})  # 168 sessions of 10 kWh
    history = [
        dataclasses.replace(r, sessions_ended_early=1) if i % 8 == 0 else r
        for i, r in enumerate(history)
    ]  # 21 early ends: 12.5 % of its sessions
    rate = revenue.typical_early_rate([(200, 2), (200, 1), (200, 3), (168, 21), (10, 9)])
    # a healthy unit's rate: the lower quartile of 0.5, 1, 1.5 and 12.5 % (tiny units left out)
    assert rate == pytest.approx(0.00875)
    outage = [revenue.Span(T0, T0 + H)]
    plain = revenue.estimate_revenue_lost(outage, ["cp"], history, 1.0, "EUR")
    est = revenue.estimate_revenue_lost(outage, ["cp"], history, 1.0, "EUR", fleet_early_rate=rate)
    cut = 21 - 0.00875 * 168
    # at half of what a driver wants at this unit: its energy over its sessions, the 21 ended
    # early counting as half a session each (1,680 kWh ÷ 157.5)
    assert est.amount - plain.amount == pytest.approx(cut / 2 * 1680 / (168 - 21 / 2))
    assert "cut short" in est.method


def test_a_digest_summary_says_which_rules_its_site_needs_and_what_it_cleared() -> None:
    quiet = digest("s", T0, [counters("q"), counters("q2")], cleared=["inc-1"])
    assert DigestSummary.of(quiet) == DigestSummary("s", T0 + H, ("inc-1",), False, False)
    dropped = digest("s", T0, [counters("q"), counters("d", disconnects=2)])
    assert DigestSummary.of(dropped).small_incidents
    assert not DigestSummary.of(dropped).fault_blips
    fixed = digest("s", T0, [counters("f")], self_resolved=[blip("f", T0, kind="fault")])
    assert (DigestSummary.of(fixed).small_incidents, DigestSummary.of(fixed).fault_blips) == (
        True,
        True,
    )
    summary = DigestSummary.of(fixed)
    assert DigestSummary.from_list(orjson.loads(orjson.dumps(summary.to_list()))) == summary
