"""The edge's model store: signed, compatible updates swap in atomically; anything else is refused with an alarm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chargesight.common.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION
from chargesight.common.messages import ModelUpdate, model_topic
from chargesight.common.modelsign import generate_key, sign_model
from chargesight.edge.modelstore import ModelRejected, ModelStore, load_default_models

N = len(FEATURE_NAMES)


def toy_onnx(n_features: int = N, seed: int = 0) -> bytes:
    """A small classifier: high risk when the first feature (peak power share) is low."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (400, n_features))
    y = (X[:, 0] < 0.7).astype(int)
    clf = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=seed).fit(X, y)
    onx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(onx.SerializeToString())


def toy_card(**over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "feature_names": list(FEATURE_NAMES),
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "kind": "supervised",
        "threshold": 0.5,
        "persist_h": 3.0,
        "clear_h": 6.0,
        "clear_ratio": 0.5,
        "baseline": [0.95] + [0.0] * (N - 1),
        "output": {"name": "probabilities", "column": 1},
    }
    card.update(over)
    return card


def signed_update(
    key: Ed25519PrivateKey,
    *,
    model_key: str = "voltix-vx-dc150",
    version: str = "v2",
    onnx: bytes | None = None,
    feature_names: list[str] | None = None,
    card: dict[str, Any] | None = None,
) -> ModelUpdate:
    return sign_model(
        onnx if onnx is not None else toy_onnx(),
        model_key=model_key,
        version=version,
        feature_names=feature_names if feature_names is not None else list(FEATURE_NAMES),
        threshold=0.5,
        key=key,
        card=card if card is not None else toy_card(),
    )


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_key()


def _store(tmp_path: Path, key: Ed25519PrivateKey, alarms: list[tuple[str, str]]) -> ModelStore:
    return ModelStore(
        tmp_path / "models",
        key.public_key(),
        on_alarm=lambda k, r: alarms.append((k, r)),
    )


def test_shipped_default_models_load_and_cover_unknown_hardware_with_generic() -> None:
    models = load_default_models()
    assert "generic" in models
    for m in models.values():
        assert m.card["feature_names"] == list(FEATURE_NAMES)
        assert 0 < m.threshold <= 1
        scores = m.score(np.repeat(m.baseline, 3, axis=0))
        assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    store = ModelStore(None, None)
    assert store.get("acme-unknown-model") is store.get("generic") is not None


def test_a_signed_compatible_update_is_swapped_in_and_kept_across_restarts(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    alarms: list[tuple[str, str]] = []
    store = _store(tmp_path, key, alarms)
    before = store.get("voltix-vx-dc150")
    model = store.offer(signed_update(key))
    assert store.get("voltix-vx-dc150") is model is not before
    assert (model.version, model.source) == ("v2", "update")
    low, high = np.zeros((1, N), np.float32), np.ones((1, N), np.float32)
    assert model.score(low)[0] > 0.5 > model.score(high)[0]
    assert alarms == []
    # a restarted agent comes back with the update, verified again
    again = _store(tmp_path, key, alarms)
    assert again.get("voltix-vx-dc150").version == "v2"  # type: ignore[union-attr]


def test_the_previous_model_is_kept_and_can_be_rolled_back(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = _store(tmp_path, key, [])
    store.offer(signed_update(key, version="v2"))
    store.offer(signed_update(key, version="v3", onnx=toy_onnx(seed=1)))
    assert store.get("voltix-vx-dc150").version == "v3"  # type: ignore[union-attr]
    assert (tmp_path / "models" / "voltix-vx-dc150" / "previous.json").exists()
    assert store.rollback("voltix-vx-dc150").version == "v2"
    assert _store(tmp_path, key, []).get("voltix-vx-dc150").version == "v2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "not signed"),
        ("other_key", "does not verify"),
        ("tampered", "does not verify"),
        ("wrong_features", "feature names"),
        ("wrong_schema", "feature schema version"),
        ("wrong_input_width", "input is not"),
        ("not_onnx", "does not load"),
    ],
)
def test_unsigned_mis_signed_or_incompatible_models_are_refused_with_an_alarm(
    tmp_path: Path, key: Ed25519PrivateKey, case: str, reason: str
) -> None:
    alarms: list[tuple[str, str]] = []
    store = _store(tmp_path, key, alarms)
    before = store.get("voltix-vx-dc150")
    if case == "unsigned":
        update = signed_update(key).model_copy(update={"signature_b64": ""})
    elif case == "other_key":
        update = signed_update(generate_key())
    elif case == "tampered":
        update = signed_update(key).model_copy(update={"threshold": 0.01})
    elif case == "wrong_features":
        names = [*FEATURE_NAMES[:-1], "something_else"]
        update = signed_update(key, feature_names=names, card=toy_card(feature_names=names))
    elif case == "wrong_schema":
        update = signed_update(key, card=toy_card(feature_schema_version=99))
    elif case == "wrong_input_width":
        update = signed_update(key, onnx=toy_onnx(n_features=5))
    else:
        update = signed_update(key, onnx=b"this is not a graph")
    with pytest.raises(ModelRejected, match=reason):
        store.offer(update)
    assert store.get("voltix-vx-dc150") is before
    assert alarms and alarms[0][0] == "voltix-vx-dc150" and reason in alarms[0][1]
    assert not (tmp_path / "models" / "voltix-vx-dc150" / "current.json").exists()


def test_an_agent_without_a_public_key_refuses_every_update(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    alarms: list[tuple[str, str]] = []
    store = ModelStore(tmp_path, None, on_alarm=lambda k, r: alarms.append((k, r)))
    with pytest.raises(ModelRejected, match="no model public key"):
        store.offer(signed_update(key))
    assert alarms


def test_mqtt_payloads_on_the_wrong_topic_or_malformed_are_alarmed_not_raised(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    alarms: list[tuple[str, str]] = []
    store = _store(tmp_path, key, alarms)
    update = signed_update(key)
    assert (
        store.handle_message(model_topic("helion-hpc-300"), update.model_dump_json().encode())
        is None
    )
    assert store.handle_message(model_topic("voltix-vx-dc150"), b"{not json") is None
    assert len(alarms) == 2
    ok = store.handle_message(model_topic("voltix-vx-dc150"), update.model_dump_json().encode())
    assert ok is not None and ok.version == "v2"
    # the retained message delivered again is a no-op
    assert (
        store.handle_message(model_topic("voltix-vx-dc150"), update.model_dump_json().encode())
        is ok
    )
