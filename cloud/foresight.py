"""Fleet learning → every gateway: sign trained models and publish them retained over MQTT.

:func:`model_updates` turns the models of a training run (a
:class:`~chargesight.cloud.train.TrainedModel`, or a directory of
``{model_key}.onnx`` + ``{model_key}.card.json`` as ``chargesight cloud train``
writes them) into Ed25519-signed :class:`~chargesight.common.messages.ModelUpdate`
messages; :func:`publish_models` publishes each, QoS 1 and **retained**, on
``chargesight/v1/models/{model_key}``, so a gateway that connects later still
gets the newest model. A retained message is replaced by the next one on the
same topic; publishing an empty retained payload withdraws it.

Publishing is blocking (paho's network thread does the I/O); call it from a
worker thread or the CLI, not from the event loop.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.cloud.train import TrainedModel
from chargesight.common.features import FEATURE_NAMES
from chargesight.common.messages import ModelUpdate, model_topic
from chargesight.common.modelsign import ModelSignatureError, load_private_key, sign_model


class PublishError(Exception):
    """The broker could not be reached or did not acknowledge a model in time."""


def _models_in_dir(directory: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    out = []
    for onnx_path in sorted(directory.glob("*.onnx")):
        card_path = onnx_path.with_suffix(".card.json")
        if card_path.exists():
            out.append(
                (onnx_path.stem, onnx_path.read_bytes(), orjson.loads(card_path.read_bytes()))
            )
    return out


def model_updates(
    source: TrainedModel | str | Path,
    key: Ed25519PrivateKey,
    *,
    created_at: datetime | None = None,
) -> list[ModelUpdate]:
    """Signed updates for every model of a training run or a model directory."""
    if isinstance(source, TrainedModel):
        items = [(k, m.onnx, m.card) for k, m in sorted(source.models.items())]
    else:
        items = _models_in_dir(Path(source))
    return [
        sign_model(
            onnx,
            model_key=model_key,
            version=str(card.get("version", "unknown")),
            feature_names=card.get("feature_names", list(FEATURE_NAMES)),
            threshold=float(card["threshold"]),
            key=key,
            card=card,
            created_at=created_at,
        )
        for model_key, onnx, card in items
    ]


def _client(url: str, client_id: str) -> tuple[paho.Client, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise PublishError(f"mqtt url {url!r}: scheme must be mqtt:// or mqtts://")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if parts.username:  # percent-encoded in the URL, as URLs have it (a password with "@")
        password = unquote(parts.password) if parts.password is not None else None
        client.username_pw_set(unquote(parts.username), password)
    if parts.scheme == "mqtts":
        client.tls_set()
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    return client, parts.hostname or "127.0.0.1", port


def publish_models(
    updates: Sequence[ModelUpdate],
    mqtt_url: str,
    *,
    timeout: float = 15.0,
    client_id: str = "chargesight-foresight",
) -> list[str]:
    """Publish each update retained at QoS 1 and wait for the broker's PUBACKs; returns the topics."""
    client, host, port = _client(mqtt_url, client_id)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    topics = []
    try:
        infos = []
        for u in updates:
            topic = model_topic(u.model_key)
            infos.append((topic, client.publish(topic, u.model_dump_json(), qos=1, retain=True)))
        for topic, info in infos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise PublishError(f"{topic}: the broker did not acknowledge within {timeout:g} s")
            topics.append(topic)
    finally:
        client.disconnect()
        client.loop_stop()
    return topics


def run_publish(*, models: str | Path, mqtt_url: str, key: str | Path) -> int:
    """``chargesight cloud publish-models --models DIR --mqtt URL --key FILE``; returns the exit code."""
    try:
        if Path(str(key)).exists():
            private = load_private_key(Path(key))
        elif "-----BEGIN" in str(key) or len(str(key)) > 200:  # the key itself, not a path
            private = load_private_key(str(key))
        else:
            print(f"error: --key {key}: no such file (an Ed25519 private key in PEM)")
            return 2
        updates = model_updates(models, private)
    except ModelSignatureError as exc:
        print(f"error: --key {key}: {exc}")
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if not updates:
        print(f"error: no models (*.onnx with *.card.json) in {models}")
        return 2
    try:
        for topic in publish_models(updates, mqtt_url):
            print(f"published {topic}")
    except PublishError as exc:
        print(f"error: {exc}")
        return 1
    return 0


# ---------------------------------------------------------------- same early symptoms elsewhere

SYMPTOM_SCALES: dict[str, float] = {
    "power_ratio_max_48h": 0.1,  # ten points of rated power
    "power_ratio_max_7d": 0.1,
    "power_ratio_drop": 0.1,
    "temp_max_48h": 5.0,  # °C
    "temp_mean_7d": 5.0,
    "temp_trend_c_per_day": 0.5,
    "sessions_per_day": 5.0,
    "start_failure_ratio": 0.1,
    "early_end_ratio": 0.1,
    "energy_per_session_kwh": 10.0,
    "faults_power_per_day": 1.0,
    "faults_thermal_per_day": 1.0,
    "faults_connector_per_day": 1.0,
    "faults_other_per_day": 1.0,
    "faults_48h": 2.0,
    "disconnects_per_day": 2.0,
    "offline_share": 0.1,
    "resets_per_day": 2.0,
    "self_resolved_per_day": 2.0,
}
"""What one unit of deviation from typical means per feature, for comparing symptoms."""


def similar_symptoms(
    target: dict[str, float],
    others: dict[str, dict[str, float]],
    baseline: Sequence[float],
    *,
    min_similarity: float = 0.8,
    limit: int = 5,
    scores: dict[str, float] | None = None,
    min_score: float = 0.0,
) -> list[tuple[str, float, str]]:
    """Charge points whose features deviate from typical the same way as ``target``'s.

    ``target`` and ``others`` are feature dicts (an escalation's ``features``,
    the digests' ``features``); ``baseline`` the model card's typical values.
    Each feature's deviation is scaled by the typical magnitude, and units are
    compared by cosine similarity of their deviation vectors over the features
    where the target deviates. With ``scores`` (their Foresight risk), only
    units at or above ``min_score`` are candidates — on the simulator's fleet,
    half the model's threshold keeps every unrelated unit out (see
    scripts/evaluate_foresight.py). Returns ``(charge_point_id, similarity,
    reason)``, most similar first.
    """
    names = list(FEATURE_NAMES)
    base = {n: float(b) for n, b in zip(names, baseline, strict=True)}

    def dev(f: dict[str, float]) -> dict[str, float]:
        return {n: (f.get(n, base[n]) - base[n]) / SYMPTOM_SCALES[n] for n in names}

    t = dev(target)
    keys = [n for n in names if abs(t[n]) >= 0.5]
    if not keys:
        return []
    tn = sum(t[k] ** 2 for k in keys) ** 0.5
    out = []
    for cp, f in others.items():
        if scores is not None and scores.get(cp, 0.0) < min_score:
            continue
        d = dev(f)
        dn = sum(d[k] ** 2 for k in keys) ** 0.5
        if dn == 0:
            continue
        sim = sum(t[k] * d[k] for k in keys) / (tn * dn)
        # the same direction is not enough: the other unit must be at least half as far off
        if sim >= min_similarity and dn >= 0.5 * tn:
            top = sorted(keys, key=lambda k: -abs(t[k] * d[k]))[:2]
            reason = "same early symptoms: " + ", ".join(
                f"{k.replace('_', ' ')} {f.get(k, base[k]):.2f} (typical {base[k]:.2f})"
                for k in top
            )
            out.append((cp, round(sim, 3), reason))
    out.sort(key=lambda x: -x[1])
    return out[:limit]


# ---------------------------------------------------------------- fleet: who degrades faster


@dataclass(frozen=True)
class UnitState:
    """One charge point's latest Foresight state (from its digests)."""

    charge_point_id: str
    vendor: str | None
    model: str | None
    firmware: str | None
    anomaly_score: float | None
    features: dict[str, float]
    threshold: float | None = None  # its model's alert threshold (scores differ per model)


@dataclass(frozen=True)
class GroupDegradation:
    vendor: str | None
    model: str | None
    firmware: str | None
    units: int
    elevated: int  # units whose risk is at or above the alert level
    share_elevated: float
    median_power_ratio: float | None
    power_faults_per_unit_day: float
    faster_than_peers: bool
    evidence: str


def degradation_by_model(
    units: Sequence[UnitState],
    *,
    alert_score: float = 0.3,
    min_units: int = 3,
    factor: float = 2.0,
) -> list[GroupDegradation]:
    """Degradation per hardware model and firmware, worst first.

    A group *degrades faster than its peers* when its share of units at or
    above their model's threshold (``alert_score`` when unknown) is at least ``factor`` × the share over all other
    groups (and at least two units), with ``min_units`` units or more; the
    evidence says so in words, with the power-fault rate and peak power of the
    group against the rest of the fleet.
    """
    groups: dict[tuple[str | None, str | None, str | None], list[UnitState]] = {}
    for u in units:
        groups.setdefault((u.vendor, u.model, u.firmware), []).append(u)

    def elevated(us: Sequence[UnitState]) -> int:
        return sum(
            1
            for u in us
            if (u.anomaly_score or 0.0) >= (u.threshold if u.threshold is not None else alert_score)
        )

    def power_faults(us: Sequence[UnitState]) -> float:
        return sum(u.features.get("faults_power_per_day", 0.0) for u in us) / max(1, len(us))

    out = []
    for (vendor, model, firmware), us in groups.items():
        rest = [u for u in units if (u.vendor, u.model, u.firmware) != (vendor, model, firmware)]
        n_el = elevated(us)
        share = n_el / len(us)
        rest_share = elevated(rest) / len(rest) if rest else 0.0
        ratios = [
            u.features["power_ratio_max_7d"]
            for u in us
            if u.features.get("power_ratio_max_7d", -1.0) >= 0
        ]
        med = statistics.median(ratios) if ratios else None
        pf, rest_pf = power_faults(us), power_faults(rest)
        faster = len(us) >= min_units and n_el >= 2 and share >= factor * max(rest_share, 1e-9)
        name = " ".join(x for x in (vendor, model) if x) or "unknown hardware"
        evidence = (
            f"{name} firmware {firmware or '?'}: {n_el} of {len(us)} units show early symptoms "
            f"({100 * share:.0f}% against {100 * rest_share:.0f}% in the rest of the fleet); "
            f"power-electronics faults {pf:.2f} per unit-day against {rest_pf:.2f}"
            + (f"; median peak power {100 * med:.0f}% of rated" if med is not None else "")
        )
        out.append(
            GroupDegradation(
                vendor, model, firmware, len(us), n_el, round(share, 3),
                None if med is None else round(med, 3), round(pf, 3), faster, evidence,
            )
        )  # fmt: skip
    out.sort(key=lambda g: (-g.faster_than_peers, -g.share_elevated, -g.units))
    return out
