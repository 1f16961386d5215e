"""Edge Foresight: predictive incidents from batched ONNX scoring, off the event loop, one per charger."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chargesight.common.events import (
    Boot,
    ConnectionUp,
    Event,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, FeatureBank
from chargesight.common.messages import ChargerCounters, Digest, Escalation
from chargesight.common.modelsign import generate_key, sign_model
from chargesight.edge.anomaly import AnomalyMonitor, IncidentTracker, score_snapshots
from chargesight.edge.modelstore import LoadedModel, ModelStore

T0 = datetime(2026, 9, 1, tzinfo=UTC)
RATED = 150_000.0
N = len(FEATURE_NAMES)


def _toy_store(key: Ed25519PrivateKey) -> ModelStore:
    """A store whose Voltix DC150 model says: peak power share under 0.7 in 48 h = at risk."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (400, N))
    clf = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0)
    clf.fit(X, (X[:, 0] < 0.7).astype(int))
    onnx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, N]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    ).SerializeToString()
    card: dict[str, Any] = {
        "feature_names": list(FEATURE_NAMES),
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "kind": "supervised",
        "persist_h": 3.0,
        "clear_h": 6.0,
        "clear_ratio": 0.5,
        "baseline": [0.93] + [0.5] * (N - 1),
        "output": {"name": "probabilities", "column": 1},
        "config": {"min_history_h": 1},
    }
    store = ModelStore(None, key.public_key(), load_defaults=False)
    store.offer(
        sign_model(
            onnx,
            model_key="voltix-vx-dc150",
            version="toy-1",
            feature_names=FEATURE_NAMES,
            threshold=0.5,
            key=key,
            card=card,
        )
    )
    return store


def _session_hour(cp: str, h: int, ratio: float) -> list[Event]:
    at = T0 + timedelta(hours=h)
    tx = f"{cp}-{h}"
    return [
        TransactionStarted(cp, at + timedelta(minutes=1), 1, tx, meter_start_wh=0.0),
        MeterSample(cp, at + timedelta(minutes=20), 1, tx, {"Power.Active.Import": RATED * ratio}),
        TransactionEnded(cp, at + timedelta(minutes=40), tx, 1, meter_stop_wh=30_000.0),
    ]


class Fleet:
    """Two Voltix DC150 chargers on one site: ``cp-ok`` stays fine, ``cp-psu`` sags when told."""

    def __init__(self, monitor: AnomalyMonitor) -> None:
        self.monitor = monitor
        for cp in ("cp-ok", "cp-psu"):
            monitor.feed(Boot(cp, T0, "Voltix", "VX-DC150", firmware="5.2.3"))
            monitor.feed(ConnectionUp(cp, T0, "1.6"))
            monitor.window(cp).set_hardware(rated_power_w=RATED)
        self.h = 0

    async def run(self, hours: int, psu_ratio: float) -> None:
        for _ in range(hours):
            for e in _session_hour("cp-ok", self.h, 0.93) + _session_hour(
                "cp-psu", self.h, psu_ratio
            ):
                self.monitor.feed(e)
            self.h += 1
            await self.monitor.close_window(T0 + timedelta(hours=self.h))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_key()


async def test_a_sagging_charger_opens_one_predictive_incident_with_the_features_that_drove_it(
    key: Ed25519PrivateKey,
) -> None:
    sent: list[Escalation] = []
    monitor = AnomalyMonitor("site-1", _toy_store(key), sent.append)
    fleet = Fleet(monitor)
    await fleet.run(72, psu_ratio=0.93)
    assert sent == []
    await fleet.run(72, psu_ratio=0.55)
    assert len(sent) == 1  # one incident per charge point until it clears
    esc = sent[0]
    assert (esc.kind, esc.scope, esc.charge_point_id, esc.connector_id) == (
        "predictive",
        "charge_point",
        "cp-psu",
        None,
    )
    assert esc.fault.code == "PredictedFailure" and esc.fault.category == "performance"
    assert esc.fault.component == "psu_module"
    assert esc.anomaly_score is not None and esc.anomaly_score >= 0.5
    assert list(esc.features) == list(FEATURE_NAMES)
    assert esc.features["power_ratio_max_48h"] == pytest.approx(0.55)
    assert esc.explanation[0].startswith("peak power in the last 48 h as a share of rated is 0.55")
    assert "typical for this model: 0.93" in esc.explanation[0]
    assert esc.hardware.model == "VX-DC150"
    # it opened only after the score stayed high for persist_h (3 h) — not on the first window
    assert esc.started_at >= T0 + timedelta(hours=72 + 3)
    assert monitor.anomaly_score("cp-ok") is not None and monitor.anomaly_score("cp-ok") < 0.5  # type: ignore[operator]
    Escalation.model_validate_json(esc.to_json())  # a valid wire message


async def test_the_digest_carries_the_closed_counters_score_features_and_health(
    key: Ed25519PrivateKey,
) -> None:
    monitor = AnomalyMonitor("site-1", _toy_store(key), lambda e: None)
    fleet = Fleet(monitor)
    await fleet.run(60, psu_ratio=0.5)
    buckets = await monitor.close_window(T0 + timedelta(hours=61))
    sick = ChargerCounters(
        charge_point_id="cp-psu",
        **buckets["cp-psu"].to_counters(),
        **monitor.digest_fields("cp-psu"),
    )
    fine = ChargerCounters(
        charge_point_id="cp-ok", **buckets["cp-ok"].to_counters(), **monitor.digest_fields("cp-ok")
    )
    assert sick.anomaly_score is not None and sick.anomaly_score >= 0.5
    assert list(sick.features) == list(FEATURE_NAMES)
    assert sick.health_score is not None and fine.health_score is not None
    assert sick.health_score < 70 <= 85 <= fine.health_score
    # each connector's score too (the sessions ran on connector 1); the charge point's is the worst
    assert sick.connector_health is not None and set(sick.connector_health) == {1}
    assert min(sick.connector_health.values()) == sick.health_score


async def test_the_incident_clears_after_recovery_and_a_new_one_can_open(
    key: Ed25519PrivateKey,
) -> None:
    sent: list[Escalation] = []
    cleared: list[tuple[str, str]] = []

    async def on_clear(cp: str, incident_id: str) -> None:
        cleared.append((cp, incident_id))

    monitor = AnomalyMonitor("site-1", _toy_store(key), sent.append, on_clear=on_clear)
    fleet = Fleet(monitor)
    await fleet.run(24, psu_ratio=0.5)
    assert len(sent) == 1
    await fleet.run(60, psu_ratio=0.93)  # repaired: 48 h for the window to forget, then 6 h low
    assert cleared == [("cp-psu", sent[0].incident_id)]
    await fleet.run(56, psu_ratio=0.5)  # the 48 h peak must sag again first
    assert len(sent) == 2 and sent[1].incident_id != sent[0].incident_id


async def test_scoring_runs_in_the_executor_not_on_the_event_loop_thread(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _toy_store(key)  # (accepting a model probes it once, where it is offered)
    threads: list[str] = []
    real_score = LoadedModel.score

    def score(self: LoadedModel, X: Any) -> Any:  # the ONNX inference
        threads.append(threading.current_thread().name)
        return real_score(self, X)

    monkeypatch.setattr(LoadedModel, "score", score)
    with ThreadPoolExecutor(1, thread_name_prefix="foresight") as pool:
        monitor = AnomalyMonitor("site-1", store, lambda e: None, executor=pool)
        fleet = Fleet(monitor)
        await fleet.run(2, psu_ratio=0.93)
    assert threads  # the windows were scored ...
    assert all(t.startswith("foresight") for t in threads), threads  # ... all in the pool


def test_windows_with_less_history_than_the_model_learnt_from_are_not_scored() -> None:
    store = ModelStore(None, None)  # the shipped models: trained on windows of >= 72 h
    assert store.get("generic").min_history_h == 72  # type: ignore[union-attr]
    bank = FeatureBank()
    for cp, hours in (("new", 71), ("known", 72)):
        w = bank.window(cp)
        w.set_hardware(vendor="Voltix", model="VX-DC150", rated_power_w=RATED)
        for h in range(hours):
            w.close(T0 + timedelta(hours=h + 1), start=T0 + timedelta(hours=h))
    assert [s.charge_point_id for s in score_snapshots(bank.snapshots(), store.get)] == ["known"]


async def test_a_restarted_agent_warmed_from_its_digests_scores_at_the_first_close() -> None:
    before = AnomalyMonitor("site-1", ModelStore(None, None), lambda e: None)
    Fleet(before)
    digests = []
    for h in range(80):
        for e in _session_hour("cp-ok", h, 0.93) + _session_hour("cp-psu", h, 0.93):
            before.feed(e)
        end = T0 + timedelta(hours=h + 1)
        buckets = await before.close_window(end)
        digests.append(
            Digest(
                site_id="site-1",
                interval_start=end - timedelta(hours=1),
                interval_end=end,
                chargers=[
                    ChargerCounters(
                        charge_point_id=cp, vendor="Voltix", model="VX-DC150", **b.to_counters()
                    )
                    for cp, b in buckets.items()
                ],
            )
        )
    after = AnomalyMonitor("site-1", ModelStore(None, None), lambda e: None)
    assert after.warm(digests[-72:]) == 72
    assert after.window("cp-psu").features() == before.window("cp-psu").features()
    await after.close_window(T0 + timedelta(hours=81))
    assert after.anomaly_score("cp-ok") is not None  # scored at once, no 72 h wait


def test_a_score_above_threshold_for_less_than_the_persistence_opens_nothing() -> None:
    tracker = IncidentTracker()
    rule = {"persist_h": 6.0, "clear_h": 24.0, "clear_ratio": 0.5}
    flicker = [0.9, 0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1] * 3
    changes = [
        tracker.update("cp", T0 + timedelta(hours=h), s, 0.5, **rule) for h, s in enumerate(flicker)
    ]
    assert "open" not in changes
    steady = [
        tracker.update("cp", T0 + timedelta(hours=100 + h), 0.9, 0.5, **rule) for h in range(8)
    ]
    assert steady.count("open") == 1 and steady.index("open") == 6


def test_charge_points_without_a_model_for_their_family_use_generic_or_are_skipped(
    key: Ed25519PrivateKey,
) -> None:
    store = _toy_store(key)
    bank = FeatureBank()
    for cp, (vendor, model) in {"a": ("Voltix", "VX-DC150"), "b": ("Acme", "Z1")}.items():
        w = bank.window(cp)
        w.set_hardware(vendor=vendor, model=model, rated_power_w=RATED)
        for e in _session_hour(cp, 0, 0.5):
            bank.feed(e)
        w.close(T0 + timedelta(hours=1), start=T0)
    scores = score_snapshots(bank.snapshots(), store.get)  # no generic model in this store
    assert [s.charge_point_id for s in scores] == ["a"]
    assert scores[0].contributions is not None  # above threshold: explained


def test_default_models_flag_the_simulators_psu_degradation_days_before_it_fails(
    tmp_path: Path,
) -> None:
    """The shipped model on a fresh simulator history (small scenario) through the edge's code."""
    from chargesight.cloud.train import failures_from_ground_truth, read_digests, read_ground_truth
    from chargesight.sim.history import generate_history
    from chargesight.sim.scenario import load_scenario

    root = Path(__file__).resolve().parents[2]
    generate_history(load_scenario(root / "sim/scenarios/small.toml"), 24.0, tmp_path, seed=11)
    failures = {
        f.charge_point_id: f
        for f in failures_from_ground_truth(read_ground_truth(tmp_path / "ground_truth.jsonl"))
    }
    assert len(failures) == 3
    store = ModelStore(None, None)
    bank, tracker = FeatureBank(), IncidentTracker()
    opened: dict[str, list[datetime]] = {}
    for d in read_digests(tmp_path / "digests.jsonl"):
        bank.add_digest(d)
        for s in score_snapshots(bank.snapshots(), store.get):
            m = store.get(bank.windows[s.charge_point_id].family)
            assert m is not None
            change = tracker.update(
                s.charge_point_id, s.at, s.score, s.threshold,
                persist_h=m.persist_h, clear_h=m.clear_h, clear_ratio=m.clear_ratio,
            )  # fmt: skip
            if change == "open":
                opened.setdefault(s.charge_point_id, []).append(s.at)
    for cp, f in failures.items():
        assert cp in opened, f"{cp}: no predictive incident before its PSU failed"
        lead_days = (f.failed - opened[cp][0].timestamp()) / 86400
        assert lead_days >= 3, f"{cp}: only {lead_days:.1f} days ahead"
    # anything else flagged has a real injected problem (failing starts, flaky network, ...)
    troubled = {
        cp
        for r in read_ground_truth(tmp_path / "ground_truth.jsonl")
        if not r["background"]
        for cp in r["charge_points"]
    }
    false = {cp for cp in opened if cp not in failures and cp not in troubled}
    assert not false, f"false predictive incidents on {sorted(false)}"
