"""Foresight training and distribution: simulator history → ONNX + card → signed, retained → a gateway."""

from __future__ import annotations

import asyncio
import queue
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.cloud.db import Database
from chargesight.cloud.foresight import (
    UnitState,
    degradation_by_model,
    model_updates,
    publish_models,
    similar_symptoms,
)
from chargesight.cloud.train import (
    Dataset,
    Failure,
    IncidentRule,
    TrainConfig,
    build_dataset,
    failures_from_records,
    incidents,
    label,
    read_digests,
    read_digests_from_database,
    read_failures_from_database,
    read_ground_truth,
    run_train,
    train,
)
from chargesight.common.features import FEATURE_NAMES, FeatureBank, features_dict
from chargesight.common.modelsign import generate_key
from chargesight.edge.anomaly import IncidentTracker, score_snapshots
from chargesight.edge.modelstore import ModelStore, load_default_models
from tests.servers import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
FAST = TrainConfig(n_estimators=15, folds=2, sample_every_h=12, min_failures=2)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chargesight.sim.history import generate_history
    from chargesight.sim.scenario import load_scenario

    out = tmp_path_factory.mktemp("history")
    generate_history(load_scenario(ROOT / "sim/scenarios/small.toml"), 30.0, out, seed=3)
    return out


@pytest.fixture(scope="module")
def dataset(history: Path) -> Dataset:
    return build_dataset(read_digests(history / "digests.jsonl"), FAST)


def test_training_on_simulator_history_writes_models_and_cards_the_edge_loads(
    history: Path, dataset: Dataset, tmp_path: Path
) -> None:
    trained = train(dataset, read_ground_truth(history / "ground_truth.jsonl"), FAST)
    assert "generic" in trained.models
    # the PSU degradations are on Voltix DC150s: that family learns from labels
    assert trained.models["generic"].kind == "supervised"
    paths = trained.save(tmp_path)
    assert {p.name for p in paths} >= {"generic.onnx", "generic.card.json"}
    card = orjson.loads((tmp_path / "generic.card.json").read_bytes())
    assert card["feature_names"] == list(FEATURE_NAMES)
    assert card["training_window"]["labelled_failures"] == 3
    held = card["supervised"]["held_out"]
    assert {"share_predicted", "lead_days_median", "false_per_1000_charger_days"} <= set(held)
    assert all(p.stat().st_size < 200_000 for p in paths)
    loaded = load_default_models(tmp_path)
    assert set(loaded) == set(trained.models)
    for m in loaded.values():
        assert m.score(np.repeat(m.baseline, 2, axis=0)).shape == (2,)


def test_training_twice_on_the_same_digests_gives_the_same_bytes(dataset: Dataset) -> None:
    a = train(dataset, None, FAST, families=["generic"])
    b = train(dataset, None, FAST, families=["generic"])
    assert a.models["generic"].onnx == b.models["generic"].onnx
    assert a.models["generic"].kind == "unsupervised"  # no ground truth, no labels
    assert a.models["generic"].card == b.models["generic"].card


def test_windows_are_labelled_positive_only_within_the_horizon_before_a_failure() -> None:
    day = 86400.0
    times = np.array([0, 5, 12, 20, 25, 40, 60], dtype=np.float64) * day
    ds = Dataset(np.zeros((7, len(FEATURE_NAMES))), ["cp"] * 7, ["f"] * 7, times)
    failure = Failure("cp", onset=2 * day, failed=30 * day, ended=35 * day)
    y = label(ds, [failure], horizon_days=14)
    # day 0 healthy, 5 and 12 degrading but too early, 20/25 imminent, 40 broken/just repaired, 60 healthy
    assert y.tolist() == [0, -1, -1, 1, 1, -1, 0]


def test_the_threshold_rule_used_in_training_is_the_edges_incident_rule() -> None:
    rng = random.Random(5)
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    scores = [
        min(1.0, max(0.0, 0.5 + 0.5 * np.sin(h / 9) + rng.uniform(-0.3, 0.3))) for h in range(600)
    ]
    rule = IncidentRule(0.7, persist_h=6, clear_h=12, clear_ratio=0.5)
    expected = incidents([h * 3600.0 for h in range(600)], scores, rule)
    tracker = IncidentTracker()
    edge = [
        (t0 + timedelta(hours=h)).timestamp() - t0.timestamp()
        for h, s in enumerate(scores)
        if tracker.update(
            "cp", t0 + timedelta(hours=h), s, 0.7, persist_h=6, clear_h=12, clear_ratio=0.5
        )
        == "open"
    ]
    assert edge == expected and len(expected) >= 3


def test_cli_entry_point_trains_from_a_history_directory(history: Path, tmp_path: Path) -> None:
    conf = tmp_path / "train.toml"
    conf.write_text(
        "[train]\nn_estimators = 10\nfolds = 2\nsample_every_h = 12\nmin_failures = 2\n"
    )
    assert run_train(out=tmp_path / "models", history=history, config=conf) == 0
    assert (tmp_path / "models" / "generic.onnx").exists()
    conf.write_text("[train]\nbogus = 1\n")
    assert run_train(out=tmp_path / "m2", history=history, config=conf) == 2
    assert run_train(out=tmp_path / "m3", history=tmp_path / "nowhere") == 1


@pytest.mark.mqtt
def test_a_published_model_reaches_a_gateway_that_connects_later_signed_and_verified(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    key = generate_key()
    updates = model_updates(ROOT / "edge" / "models", key)
    assert updates, "no shipped models to publish"
    topics = publish_models(updates, mosquitto.url)
    assert len(topics) == len(updates)
    # a gateway connecting afterwards gets the retained models
    got: queue.Queue[paho.MQTTMessage] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gateway-test")
    client.on_message = lambda c, u, msg: got.put(msg)
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("chargesight/v1/models/+", qos=1)
    client.loop_start()
    try:
        msgs = [got.get(timeout=10) for _ in updates]
    finally:
        client.disconnect()
        client.loop_stop()
    assert all(m.retain for m in msgs)
    alarms: list[tuple[str, str]] = []
    store = ModelStore(tmp_path, key.public_key(), on_alarm=lambda k, r: alarms.append((k, r)))
    for m in msgs:
        assert store.handle_message(m.topic, m.payload) is not None
    assert alarms == []
    assert all(store.get(u.model_key).source == "update" for u in updates)  # type: ignore[union-attr]
    # the same models signed with another key are refused
    intruder = ModelStore(
        tmp_path / "other", generate_key().public_key(), on_alarm=lambda k, r: alarms.append((k, r))
    )
    assert intruder.handle_message(msgs[0].topic, msgs[0].payload) is None
    assert alarms and "does not verify" in alarms[0][1]


def test_units_with_the_same_early_symptoms_are_found_and_healthy_ones_are_not(
    history: Path,
) -> None:
    """small.toml degrades three Voltix DC150 PSUs at once: from one, Foresight finds the other two."""
    bank = FeatureBank()
    end = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(hours=24 + 400)  # late in the degradation
    for d in read_digests(history / "digests.jsonl"):
        if d.interval_end > end:
            break
        bank.add_digest(d)
    feats = {cp: features_dict(w.features()) for cp, w in bank.windows.items()}
    baseline = orjson.loads((ROOT / "edge/models/generic.card.json").read_bytes())["baseline"]
    target = "berlin-mitte-03"
    others = {cp: f for cp, f in feats.items() if cp != target}
    found = similar_symptoms(feats[target], others, baseline)
    names = [cp for cp, _, _ in found]
    assert {"hamburg-hafen-01", "hamburg-hafen-02"} <= set(names[:3]), found
    assert all("same early symptoms" in reason for _, _, reason in found)
    assert "berlin-mitte-04" not in names  # a healthy DC150 on the same site


@pytest.mark.postgres
async def test_digests_stored_by_the_collector_give_the_same_features_and_train_from_the_database(
    database: Database, history: Path, tmp_path: Path
) -> None:
    from chargesight.cloud.ingest import store_batch

    digests = list(read_digests(history / "digests.jsonl"))[: 3 * 24 * 5]  # 3 sites, 5 days
    async with database.pool.connection() as conn:
        await store_batch(conn, digests)
    rebuilt = await asyncio.to_thread(lambda: list(read_digests_from_database(database.url)))
    assert len(rebuilt) == len(digests)
    direct, stored = FeatureBank(), FeatureBank()
    for d in digests:
        direct.add_digest(d)
    for d in rebuilt:
        stored.add_digest(d)
    with psycopg.connect(database.url) as conn:
        has_categories = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'charger_intervals' AND column_name = 'faults_by_category'"
        ).fetchone()
    by_category = {n for n in FEATURE_NAMES if n.startswith("faults_") and n != "faults_48h"}
    for cp, w in direct.windows.items():
        a, b = features_dict(w.features()), features_dict(stored.windows[cp].features())
        for n in FEATURE_NAMES:
            if has_categories or n not in by_category:
                assert a[n] == b[n], (cp, n)
    conf = tmp_path / "cloud.toml"
    conf.write_text(f'[database]\nurl = "{database.url}"\n[train]\nn_estimators = 10\nfolds = 2\n')
    code = await asyncio.to_thread(run_train, out=tmp_path / "models", config=conf)
    assert code == 0 and (tmp_path / "models" / "generic.onnx").exists()


def test_a_hardware_model_whose_units_degrade_together_stands_out_from_its_peers(
    history: Path,
) -> None:
    bank = FeatureBank()
    end = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(hours=24 + 400)
    for d in read_digests(history / "digests.jsonl"):
        if d.interval_end > end:
            break
        bank.add_digest(d)
    store = ModelStore(None, None)
    units = [
        UnitState(
            s.charge_point_id,
            bank.windows[s.charge_point_id].vendor,
            bank.windows[s.charge_point_id].model,
            bank.windows[s.charge_point_id].firmware,
            s.score,
            features_dict(s.features),
            s.threshold,
        )
        for s in score_snapshots(bank.snapshots(), store.get)
    ]
    groups = degradation_by_model(units)
    worst = groups[0]
    assert (worst.vendor, worst.model, worst.faster_than_peers) == ("Voltix", "VX-DC150", True)
    assert worst.elevated == 3 and worst.units == 4
    assert "3 of 4 units show early symptoms" in worst.evidence
    assert not any(g.faster_than_peers for g in groups[1:])


@pytest.mark.postgres
async def test_a_digests_fault_categories_and_features_round_trip_into_training_from_the_database(
    database: Database,
) -> None:
    from chargesight.cloud.ingest import store_batch
    from chargesight.common.messages import ChargerCounters, Digest

    start = datetime(2026, 9, 1, tzinfo=UTC)
    counters = ChargerCounters(
        charge_point_id="parity-01",
        model="DC150",
        faults=3,
        faults_by_category={"power_electronics": 2, "connector": 1},
        features={"power_ratio_max_7d": 0.82, "offline_share": 0.0},
    )
    digest = Digest(
        message_id="parity-digest-1",
        site_id="parity-site",
        sent_at=start + timedelta(hours=1),
        interval_start=start,
        interval_end=start + timedelta(hours=1),
        chargers=[counters, ChargerCounters(charge_point_id="parity-02", faults=0)],
    )
    async with database.pool.connection() as conn:
        await store_batch(conn, [digest])
    rebuilt = await asyncio.to_thread(lambda: list(read_digests_from_database(database.url)))
    assert len(rebuilt) == 1
    by_cp = {c.charge_point_id: c for c in rebuilt[0].chargers}
    assert by_cp["parity-01"].faults_by_category == {"power_electronics": 2, "connector": 1}
    assert by_cp["parity-01"].features == {"power_ratio_max_7d": 0.82, "offline_share": 0.0}
    assert by_cp["parity-02"].faults_by_category == {}
    direct, stored = FeatureBank(), FeatureBank()
    direct.add_digest(digest)
    stored.add_digest(rebuilt[0])
    a = features_dict(direct.windows["parity-01"].features())
    b = features_dict(stored.windows["parity-01"].features())
    assert a == b
    assert any(n.startswith("faults_") and n != "faults_48h" and a[n] > 0 for n in FEATURE_NAMES)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_stored_faults_are_labelled_failures_only_when_a_power_component_failed() -> None:
    t0 = datetime(2026, 9, 1, tzinfo=UTC)

    def at(days: float) -> str:
        return _iso(t0 + timedelta(days=days))

    psu = {
        "code": "PowerSwitchFailure",
        "vendor_code": "VX-PSU-031",
        "category": "contactor",
        "component": "psu_module",
    }

    def issue(
        cp: str,
        kind: str = "fault",
        fault: dict[str, object] | None = None,
        outages: tuple[tuple[float, float | None], ...] = ((20, None),),
        actions: tuple[tuple[float, str, bool | None], ...] = (),
        incidents: tuple[str, ...] = (),
    ) -> dict[str, object]:
        return {
            "site_id": "s",
            "charge_point_id": cp,
            "scope": "charge_point",
            "kind": kind,
            "fault": fault or psu,
            "incident_ids": list(incidents),
            "started_at": at(outages[-1][0]),
            "outages": [
                {"started_at": at(a), "ended_at": at(b) if b else None} for a, b in outages
            ],
            "operator_actions": [{"at": at(d), "action": a, "worked": w} for d, a, w in actions],
        }

    def esc(
        cp: str,
        incident: str,
        start: float,
        end: float | None = None,
        kind: str = "fault",
        category: str = "contactor",
        component: str | None = "psu_module",
    ) -> dict[str, object]:
        return {
            "site_id": "s",
            "incident_id": incident,
            "charge_point_id": cp,
            "kind": kind,
            "category": category,
            "component": component,
            "started_at": t0 + timedelta(days=start),
            "ended_at": t0 + timedelta(days=end) if end else None,
        }

    issues = [
        # replaced by an operator: the strongest label, repaired when resolved
        issue(
            "replaced",
            outages=((20, 23),),
            actions=((22, "acknowledge", None), (23, "component_replacement", True)),
            incidents=("i-replaced",),
        ),
        # cleared once by itself (issue), back a week later and a technician came (operator)
        issue("twice", outages=((10, 11), (18, 25)), actions=((25, "field_technician", True),)),
        # an operator's reboot fixed it: no hardware failure
        issue(
            "rebooted",
            outages=((15, 16),),
            actions=((16, "reboot", True),),
            incidents=("i-rebooted",),
        ),
        issue("open", incidents=("i-open",)),
        # never failures: early trips a reset clears, predictions, symptoms, other parts
        issue("trips", kind="repeat"),
        issue("predicted", kind="predictive"),
        issue(
            "slow",
            kind="performance",
            fault={
                "code": "PowerBelowRated",
                "category": "performance",
                "component": "power_electronics",
            },
        ),
        issue(
            "offline",
            kind="connectivity",
            fault={"code": "ConnectionLost", "category": "connectivity", "component": "network"},
        ),
        issue(
            "lock",
            fault={
                "code": "ConnectorLockFailure",
                "category": "connector_lock",
                "component": "connector_lock",
            },
        ),
    ]
    escalations = [
        esc("open", "i-open", 20),  # its issue holds it
        esc("rebooted", "i-rebooted", 15),  # and the operator's word stands
        esc("replaced", "i-replaced", 20),
        esc("lonely", "i-lonely", 12),  # no issue (stored before analysis ran): its own label
        esc("lonely", "i-lonely", 12, end=14),  # the same incident, cleared
        esc("lonely", "i-again", 13, end=15),  # a second fault while still broken: one failure
        esc("overcurrent", "i-oc", 8, category="overcurrent", component=None),
        esc("ground", "i-ground", 5, category="ground_fault", component="rcd"),
        esc("modem", "i-modem", 5, kind="connectivity", category="connectivity", component=None),
    ]
    labels = failures_from_records(issues, escalations, TrainConfig(onset_days=30))
    day = 86400.0
    got = {
        (f.charge_point_id, round((f.failed - t0.timestamp()) / day)): f for f in labels.failures
    }
    assert {k: f.source for k, f in got.items()} == {
        ("lonely", 12): "escalation",
        ("open", 20): "issue",
        ("overcurrent", 8): "escalation",
        ("replaced", 20): "operator",
        ("twice", 10): "issue",
        ("twice", 18): "operator",
    }
    assert got[("replaced", 20)].ended == (t0 + timedelta(days=23)).timestamp()
    assert got[("open", 20)].ended == float("inf")
    assert got[("lonely", 12)].ended == (t0 + timedelta(days=15)).timestamp()
    assert got[("twice", 10)].ended == (t0 + timedelta(days=11)).timestamp()
    assert all(f.failed - f.onset == 30 * day for f in labels.failures)  # onset unknown
    assert labels.fixed_otherwise == ["rebooted"]
    assert labels.counts() == {"escalation": 2, "issue": 2, "operator": 2}


@pytest.mark.postgres
async def test_training_from_the_database_labels_its_stored_failures_and_learns_them(
    database: Database, history: Path, dataset: Dataset, tmp_path: Path
) -> None:
    """small.toml's three Voltix DC150 PSU failures, imported, become the supervised labels."""
    from chargesight.cloud.config import AnalysisSection
    from chargesight.cloud.engine import Engine
    from chargesight.cloud.importer import import_dir
    from chargesight.cloud.issues import resolve
    from chargesight.cloud.issuestore import load_issue, save_issue

    await import_dir(database.pool, Engine(database.pool, AnalysisSection()), history)
    truth = {
        r["charge_point_id"]: datetime.fromisoformat(r["failed_at"])
        for r in read_ground_truth(history / "ground_truth.jsonl")
        if r.get("failed_at")
    }
    assert len(truth) == 3
    # an operator replaced one unit's PSU module three days after it failed (a unit is no
    # training example until a week after its repair: past the history's end, as in the truth)
    replaced = "hamburg-hafen-01"
    async with database.pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT id FROM issues WHERE charge_point_id = %s AND kind = 'fault'", (replaced,)
        )
        ids = [str(r["id"]) for r in await cur.fetchall()]
        assert len(ids) == 1
        found = await load_issue(conn, ids[0], for_update=True)
        assert found is not None
        when = truth[replaced] + timedelta(days=3)
        await save_issue(conn, resolve(found, when, "olga", "component_replacement", True))

    labels = await asyncio.to_thread(read_failures_from_database, database.url, FAST)
    # the failures and only them: not the PSUs' early trips (repeat issues), the ground
    # fault, the connector lock or the unit that fails every session start
    assert {f.charge_point_id: f.failed for f in labels.failures} == {
        cp: t.timestamp() for cp, t in truth.items()
    }
    assert labels.counts() == {"issue": 2, "operator": 1}

    conf = tmp_path / "cloud.toml"
    conf.write_text(
        f'[database]\nurl = "{database.url}"\n'
        "[train]\nn_estimators = 15\nfolds = 2\nsample_every_h = 12\nmin_failures = 2\n"
    )
    out = tmp_path / "models"
    assert await asyncio.to_thread(run_train, out=out, config=conf) == 0
    family = "voltix-vx-dc150"
    card = orjson.loads((out / f"{family}.card.json").read_bytes())
    assert card["kind"] == "supervised"
    assert card["training_window"]["labelled_failures"] == 3
    assert card["labels"]["sources"] == {"issue": 2, "operator": 1}
    assert set(card["labels"]["definitions"]) == {"issue", "operator"}
    assert card["labels"]["operator_fixed_otherwise"] == 0
    # the same features and the same failures as the ground truth: the same model, byte for byte
    from_truth = train(dataset, read_ground_truth(history / "ground_truth.jsonl"), FAST)
    for fam in ("generic", family):
        assert (out / f"{fam}.onnx").read_bytes() == from_truth.models[fam].onnx, fam
        assert from_truth.models[fam].card["labels"]["sources"] == {"ground_truth": 3}

    # as the edge loads it: a failing unit's last two weeks before its failure score above
    # every window of the family's healthy unit (and, for generic, of every healthy unit)
    stored = await asyncio.to_thread(
        lambda: build_dataset(read_digests_from_database(database.url), FAST)
    )
    loaded = load_default_models(out)
    cps, fams = np.array(stored.charge_points), np.array(stored.families)
    for fam in ("generic", family):
        scores = loaded[fam].score(stored.X.astype(np.float32))
        in_fam = np.ones(len(cps), bool) if fam == "generic" else fams == fam
        healthy = in_fam & ~np.isin(cps, list(truth))
        assert healthy.sum() >= 20
        for cp, failed in truth.items():
            ts = failed.timestamp()
            pre = (cps == cp) & (stored.times < ts) & (stored.times >= ts - 14 * 86400)
            assert pre.sum() >= 20
            assert scores[pre].min() > scores[healthy].max(), (fam, cp)


def test_training_reads_the_database_url_as_cloud_run_does_environment_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chargesight.cloud.train import _database_url

    conf = tmp_path / "cloud.toml"
    conf.write_text('[database]\nurl = "embedded"\npath = "pg"\n')
    assert _database_url(conf) is None  # the embedded server is not trained from
    monkeypatch.setenv("CHARGESIGHT_DATABASE__URL", "postgresql://trainer@db.example/fleet")
    assert _database_url(conf) == "postgresql://trainer@db.example/fleet"
