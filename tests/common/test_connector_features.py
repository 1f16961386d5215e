"""Per-connector Foresight windows (issue 7): the same window code, each connector's own figures,
and the health score per connector built from them (the charge point's is the worst)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chargesight.common.events import (
    Boot,
    ConnectionUp,
    ConnectorStatus,
    Event,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.features import (
    CONNECTOR_FEATURE_NAMES,
    FeatureWindow,
    features_dict,
)
from chargesight.common.health import window_health

T0 = datetime(2026, 9, 1, tzinfo=UTC)
RATED = 50_000.0


def _conn(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(CONNECTOR_FEATURE_NAMES, values, strict=True))


def _session(
    cp: str, connector: int, at: datetime, tx: str, power: float, reason: str
) -> list[Event]:
    return [
        TransactionStarted(cp, at, connector, tx, meter_start_wh=0.0),
        MeterSample(cp, at + timedelta(minutes=5), connector, tx, {"Power.Active.Import": power}),
        TransactionEnded(
            cp, at + timedelta(minutes=30), tx, None, meter_stop_wh=20_000.0, reason=reason
        ),
    ]


def _two_connectors(days: int, *, infer_faults: bool = True) -> FeatureWindow:
    """Connector 1 charges at full power; connector 2 sags, ends early and faults every 6 h."""
    w = FeatureWindow("cp", infer_faults=infer_faults)
    w.feed(ConnectionUp("cp", T0, "1.6"))
    w.feed(Boot("cp", T0, "Voltix", "VX-DC50", firmware="2.1.0"))
    w.set_hardware(rated_power_w=RATED)
    for h in range(24 * days):
        at = T0 + timedelta(hours=h)
        for e in _session("cp", 1, at, f"a{h}", 0.95 * RATED, "EVDisconnected"):
            w.feed(e)
        for e in _session("cp", 2, at + timedelta(minutes=2), f"b{h}", 0.6 * RATED, "PowerLoss"):
            w.feed(e)
        if h % 6 == 0:
            w.feed(
                ConnectorStatus(
                    "cp", at + timedelta(minutes=40), 2, "Faulted", "OverCurrentFailure"
                )
            )
            if not infer_faults:
                w.record_fault("overcurrent", connector_id=w.last_connector)
            w.feed(ConnectorStatus("cp", at + timedelta(minutes=52), 2, "Available"))
        w.close(at + timedelta(hours=1))
    return w


def test_each_connector_gets_its_own_faults_early_ends_power_and_unavailable_time() -> None:
    w = _two_connectors(3)
    per = w.connector_features()
    assert set(per) == {1, 2}
    c1, c2 = _conn(per[1]), _conn(per[2])
    assert c1 == {
        "faults_per_day": 0.0,
        "faults_48h": 0.0,
        "sessions_per_day": 24.0,
        "start_failure_ratio": 0.0,
        "early_end_ratio": 0.0,
        "energy_per_session_kwh": 20.0,
        "power_ratio_max_48h": 0.95,
        "power_ratio_max_7d": 0.95,
        "power_ratio_drop": 0.0,
        "unavailable_share": 0.0,
    }
    assert c2["faults_per_day"] == 4.0 and c2["faults_48h"] == 8.0
    assert c2["early_end_ratio"] == 1.0
    assert c2["power_ratio_max_7d"] == 0.6
    assert c2["unavailable_share"] == pytest.approx(
        12 * 60 / 3600 / 6, abs=1e-6
    )  # 12 min every 6 h
    # the charge point's features are the sum / maximum of its connectors'
    cp = features_dict(w.features())
    assert cp["faults_power_per_day"] == c1["faults_per_day"] + c2["faults_per_day"]
    assert cp["sessions_per_day"] == c1["sessions_per_day"] + c2["sessions_per_day"]
    assert cp["power_ratio_max_7d"] == max(c1["power_ratio_max_7d"], c2["power_ratio_max_7d"])
    assert cp["early_end_ratio"] == 0.5


def test_faults_the_engine_opens_count_on_the_connector_of_the_event_that_opened_them() -> None:
    inferred, decided = _two_connectors(2), _two_connectors(2, infer_faults=False)
    assert inferred.connector_features() == decided.connector_features()
    assert inferred.features() == decided.features()


def test_connector_buckets_older_than_the_window_are_forgotten() -> None:
    w = _two_connectors(8)
    assert len(w.connector_rows(2)) == 24 * 7
    assert _conn(w.connector_features()[2])["faults_per_day"] == 4.0


def test_a_faulting_connector_scores_lower_and_the_charge_point_takes_the_worst() -> None:
    w = _two_connectors(3)
    cp, conns = window_health(w, typical_power_ratio=0.95, anomaly_score=0.05)
    assert set(conns) == {1, 2}
    assert conns[1].score >= 85 > conns[2].score
    assert cp.score == conns[2].score
    names = {c.name for c in conns[2].components if c.penalty > 0}
    assert {"faults", "performance", "availability"} <= names
    why = " ".join(conns[2].explanation())
    assert "fault(s) on record" in why and "peak power 63%" in why
    # connector 1 carries no fault of connector 2's
    assert all(c.name != "faults" or c.penalty == 0 for c in conns[1].components)


def test_a_window_without_connectors_is_scored_as_one_unit_with_its_faults() -> None:
    w = FeatureWindow("cp")
    w.feed(ConnectionUp("cp", T0, "1.6"))
    for h in range(24):
        w.record_fault("overcurrent", T0 + timedelta(hours=h))
        w.close(T0 + timedelta(hours=h + 1))
    cp, conns = window_health(w)
    assert conns == {}
    faults = next(c for c in cp.components if c.name == "faults")
    assert faults.penalty == 50.0  # 24 recent faults: the cap
