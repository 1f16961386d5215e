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

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.cloud.train import TrainedModel
from chargesight.common.features import FEATURE_NAMES
from chargesight.common.messages import ModelUpdate, model_topic
from chargesight.common.modelsign import load_private_key, sign_model


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
    if parts.username:
        client.username_pw_set(parts.username, parts.password)
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
        private = load_private_key(Path(key) if Path(str(key)).exists() else str(key))
        updates = model_updates(models, private)
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
