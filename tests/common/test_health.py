"""Health scores: bands, explanations, recency, safety holds, charge point = worst connector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chargesight.common.health import (
    SAFETY_CAP,
    FaultRecord,
    HealthInputs,
    band,
    charge_point_health,
    connector_health,
    health_from_features,
)

NOW = datetime(2026, 10, 1, 12, tzinfo=UTC)


def test_a_connector_with_nothing_wrong_is_healthy_at_100() -> None:
    h = connector_health(
        HealthInputs(
            NOW, availability=1.0, anomaly_score=0.0, performance_ratio=1.0, resets_per_day=0
        )
    )
    assert (h.score, h.band) == (100.0, "healthy")
    assert h.explanation() == []


def test_bands_follow_the_documented_cut_points() -> None:
    assert [band(s) for s in (100, 85, 84.9, 70, 50, 30, 29.9, 0)] == [
        "healthy",
        "healthy",
        "watch",
        "watch",
        "degrading",
        "at risk",
        "critical",
        "critical",
    ]


def test_a_recent_fault_costs_more_than_the_same_fault_a_month_ago() -> None:
    recent = connector_health(
        HealthInputs(NOW, faults=[FaultRecord(NOW - timedelta(hours=2), "overcurrent")])
    )
    old = connector_health(
        HealthInputs(NOW, faults=[FaultRecord(NOW - timedelta(days=30), "overcurrent")])
    )
    assert recent.score < old.score < 100.0
    assert "1 fault(s) on record, 1 in the last 7 days" in recent.explanation()


def test_an_unacknowledged_safety_fault_holds_the_score_down_until_acknowledged() -> None:
    ground = FaultRecord(
        NOW - timedelta(days=60), "ground_fault", "GroundFailure", safety_critical=True
    )
    held = connector_health(HealthInputs(NOW, availability=1.0, faults=[ground]))
    assert held.score <= SAFETY_CAP and held.band == "critical"
    assert any("GroundFailure" in line and "acknowledged" in line for line in held.explanation())
    acked = FaultRecord(
        ground.at, ground.category, ground.code, safety_critical=True, acknowledged=True
    )
    released = connector_health(HealthInputs(NOW, availability=1.0, faults=[acked]))
    assert released.score > 95 and released.band == "healthy"


def test_foresight_risk_and_power_sag_move_a_charger_to_at_risk_with_reasons() -> None:
    h = connector_health(
        HealthInputs(
            NOW, availability=1.0, anomaly_score=0.7, performance_ratio=0.6, resets_per_day=1
        )
    )
    assert h.band in ("at risk", "critical")
    words = " ".join(h.explanation())
    assert "Foresight risk 0.70" in words and "early symptoms" in words
    assert "peak power 60%" in words
    assert "1.0 resets per day" in words


def test_charge_point_score_is_the_worst_connector_and_unit_faults_hit_every_connector() -> None:
    cp, per = charge_point_health(
        {
            1: HealthInputs(NOW, availability=1.0),
            2: HealthInputs(NOW, availability=0.5),
        },
        HealthInputs(
            NOW, faults=[FaultRecord(NOW - timedelta(hours=1), "internal", connector_id=0)]
        ),
    )
    assert cp.score == min(h.score for h in per.values()) == per[2].score
    assert per[1].score < 100  # the connector-0 fault counts for connector 1 too
    assert "available 50% of the time" in per[2].explanation()


def test_health_from_digest_features_uses_offline_share_resets_and_typical_power() -> None:
    features = {"power_ratio_max_7d": 0.45, "offline_share": 0.1, "resets_per_day": 2.0}
    h = health_from_features(features, NOW, anomaly_score=0.1, typical_power_ratio=0.9)
    names = {c.name: c for c in h.components}
    assert names["availability"].detail == "available 90% of the time"
    assert names["performance"].detail == "peak power 50% of what this model typically delivers"
    assert names["resets"].penalty == 10.0
    assert 0 <= h.score < 85
