"""Foresight features: one implementation, identical on the edge (events) and in the cloud (digests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Event,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    NO_POWER,
    NO_TEMPERATURE,
    FeatureBank,
    FeatureWindow,
    HourBucket,
    compute_features,
    features_dict,
    model_family,
    snapshot_features,
)
from chargesight.common.messages import ChargerCounters, Digest

T0 = datetime(2026, 9, 1, tzinfo=UTC)
RATED = 150_000.0


def _hour_events(cp: str, h: int, *, sag: float, temp: float) -> list[Event]:
    """One hour of a DC charger: a session with meter samples, sometimes a fault or a drop."""
    at = T0 + timedelta(hours=h)
    tx = f"{cp}-{h}"
    power = RATED * 0.93 * (1 - sag) + (h % 5) * 13.7
    ev: list[Event] = [
        TransactionStarted(cp, at + timedelta(minutes=3), 1, tx, meter_start_wh=1000.0 * h),
    ]
    for k in range(4):
        ev.append(
            MeterSample(
                cp,
                at + timedelta(minutes=5 + 10 * k),
                1,
                tx,
                {"Power.Active.Import": power - 101.3 * k, "Temperature": temp + 0.37 * k},
            )
        )
    reason = "PowerLoss" if h % 7 == 3 else "EVDisconnected"
    ev.append(
        TransactionEnded(
            cp, at + timedelta(minutes=47), tx, 1, meter_stop_wh=1000.0 * h + 612.35, reason=reason
        )
    )
    if h % 11 == 5:
        ev += [
            ConnectorStatus(
                cp,
                at + timedelta(minutes=50),
                2,
                "Faulted",
                "OverCurrentFailure",
                "Voltix",
                "VX-31",
            ),
            # the same fault reported again is not a second fault
            ConnectorStatus(cp, at + timedelta(minutes=51), 2, "Faulted", "OverCurrentFailure"),
            ConnectorStatus(cp, at + timedelta(minutes=54), 2, "Available"),
            ConnectorStatus(cp, at + timedelta(minutes=55), 1, "Faulted", "HighTemperature"),
            ConnectorStatus(cp, at + timedelta(minutes=56), 1, "Available"),
        ]
    if h % 13 == 7:
        ev += [
            ConnectionDown(cp, at + timedelta(minutes=57, seconds=12)),
            ConnectionUp(cp, at + timedelta(minutes=58, seconds=40), "1.6"),
        ]
    return ev


def _run_both_paths(hours: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Feed the same events to an edge bank and, through JSON digests, to a cloud bank."""
    cps = ["cp-healthy", "cp-degrading"]
    edge, cloud = FeatureBank(), FeatureBank()
    for cp in cps:
        edge.feed(Boot(cp, T0, "Voltix", "VX-DC150", firmware="5.2.3"))
        edge.feed(ConnectionUp(cp, T0, "1.6"))
        edge.window(cp).set_hardware(rated_power_w=RATED)
    edge_rows, cloud_rows = [], []
    for h in range(hours):
        for cp in cps:
            degrading = cp == "cp-degrading"
            sag = 0.35 * h / hours if degrading else 0.0
            for e in _hour_events(cp, h, sag=sag, temp=30.0 + (0.4 * h / 24 if degrading else 0)):
                edge.feed(e)
            if h % 6 == 2:
                edge.window(cp).record_reset(T0 + timedelta(hours=h, minutes=52))
                edge.window(cp).record_self_resolved(T0 + timedelta(hours=h, minutes=53))
        end = T0 + timedelta(hours=h + 1)
        closed = edge.close(end)
        digest = Digest(
            site_id="site-1",
            interval_start=end - timedelta(hours=1),
            interval_end=end,
            chargers=[
                ChargerCounters(
                    charge_point_id=cp,
                    vendor=edge.window(cp).vendor,
                    model=edge.window(cp).model,
                    **b.to_counters(),
                )
                for cp, b in closed.items()
            ],
        )
        cloud.add_digest(Digest.model_validate_json(digest.to_json()))
        edge_rows.append(np.array([edge.window(cp).features() for cp in cps]))
        cloud_rows.append(np.array([cloud.window(cp).features() for cp in cps]))
    return edge_rows, cloud_rows


def test_edge_events_and_cloud_digests_give_identical_features() -> None:
    edge_rows, cloud_rows = _run_both_paths(hours=24 * 9)
    for h, (e, c) in enumerate(zip(edge_rows, cloud_rows, strict=True)):
        assert np.array_equal(e, c), f"hour {h}: edge {e} != cloud {c}"
    last = features_dict(edge_rows[-1][1])
    healthy = features_dict(edge_rows[-1][0])
    # and the features see what happened
    assert last["power_ratio_max_48h"] < healthy["power_ratio_max_48h"] - 0.05
    assert last["temp_trend_c_per_day"] > 0.2 > abs(healthy["temp_trend_c_per_day"])
    assert healthy["faults_power_per_day"] > 0
    assert healthy["faults_thermal_per_day"] > 0
    assert healthy["early_end_ratio"] > 0.1
    assert healthy["disconnects_per_day"] > 0
    assert healthy["resets_per_day"] == pytest.approx(4.0)


def test_batch_scoring_features_equal_one_window_at_a_time() -> None:
    bank = FeatureBank()
    for i in range(30):
        cp = f"cp-{i}"
        bank.window(cp).set_hardware(vendor="Voltix", model="VX-DC50", rated_power_w=50_000.0)
        for h in range(24 * 3 + i * 5):
            for e in _hour_events(cp, h, sag=0.01 * i, temp=20.0 + i):
                bank.feed(e)
            bank.window(cp).close(T0 + timedelta(hours=h + 1))
    snaps = bank.snapshots()
    batch = snapshot_features(snaps)
    single = np.array([bank.windows[s.charge_point_id].features() for s in snaps])
    assert np.array_equal(batch, single)
    assert batch.shape == (30, len(FEATURE_NAMES))


def test_feature_vector_has_fixed_names_order_and_schema_version() -> None:
    assert FEATURE_SCHEMA_VERSION == 1
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 19
    assert FEATURE_NAMES[0] == "power_ratio_max_48h"
    w = FeatureWindow("cp")
    w.close(T0 + timedelta(hours=1), start=T0)
    values = w.features()
    assert list(features_dict(values)) == list(FEATURE_NAMES)


def _bucket(h: int, **kw: float | int | dict[str, int] | None) -> HourBucket:
    start = T0 + timedelta(hours=h)
    defaults: dict[str, object] = {"connected_s": 3600.0, "rated_power_w": 100_000.0}
    defaults.update(kw)
    return HourBucket(start, start + timedelta(hours=1), **defaults)  # type: ignore[arg-type]


def test_power_sag_in_the_last_two_days_shows_as_a_drop_against_the_days_before() -> None:
    buckets = [
        _bucket(h, max_power_w=95_000.0 if h < 120 else 60_000.0, energy_wh=5000.0)
        for h in range(168)
    ]
    f = features_dict(compute_features(buckets, T0 + timedelta(hours=168)))
    assert f["power_ratio_max_48h"] == pytest.approx(0.6)
    assert f["power_ratio_max_7d"] == pytest.approx(0.95)
    assert f["power_ratio_drop"] == pytest.approx(0.35)


def test_no_session_means_no_power_reading_not_a_zero_ratio() -> None:
    f = features_dict(compute_features([_bucket(h) for h in range(48)], T0 + timedelta(hours=48)))
    assert f["power_ratio_max_48h"] == NO_POWER
    assert f["power_ratio_drop"] == 0.0
    assert f["temp_max_48h"] == NO_TEMPERATURE
    assert f["temp_mean_7d"] == NO_TEMPERATURE


def test_temperature_rising_one_degree_a_day_gives_a_trend_of_one() -> None:
    buckets = [
        _bucket(h, mean_temperature_c=25.0 + h / 24, max_temperature_c=30.0) for h in range(96)
    ]
    f = features_dict(compute_features(buckets, T0 + timedelta(hours=96)))
    assert f["temp_trend_c_per_day"] == pytest.approx(1.0, abs=1e-3)
    assert f["temp_max_48h"] == 30.0


def test_counters_older_than_the_window_are_forgotten() -> None:
    old = [_bucket(h, faults=3, faults_by_category={"overcurrent": 3}) for h in range(24)]
    recent = [_bucket(h) for h in range(24, 24 + 24 * 8)]
    f = features_dict(compute_features(old + recent, T0 + timedelta(hours=24 * 9)))
    assert f["faults_power_per_day"] == 0.0
    w = FeatureWindow("cp")
    for b in old + recent:
        w.add_counters(
            ChargerCounters(charge_point_id="cp", **b.to_counters()),
            b.start,
            b.end,
        )
    assert len(w.rows) == 168


def test_faults_are_counted_by_category_family_and_uncategorised_ones_as_other() -> None:
    buckets = [
        _bucket(0, faults=2, faults_by_category={"overcurrent": 1, "connector_lock": 1}),
        _bucket(1, faults=3, faults_by_category={"temperature": 1}),
        *(_bucket(h) for h in range(2, 24)),
    ]
    f = features_dict(compute_features(buckets, T0 + timedelta(hours=24)))
    assert f["faults_power_per_day"] == 1.0
    assert f["faults_connector_per_day"] == 1.0
    assert f["faults_thermal_per_day"] == 1.0
    assert f["faults_other_per_day"] == 2.0
    assert f["faults_48h"] == 5.0


def test_hardware_family_key_is_a_topic_safe_slug() -> None:
    assert model_family("Voltix", "VX-DC150") == "voltix-vx-dc150"
    assert model_family("Helion", "HPC 300 / EU") == "helion-hpc-300-eu"
    assert model_family(None, "X") == "generic"
