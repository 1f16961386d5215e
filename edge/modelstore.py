"""The edge's Foresight models: the shipped defaults, signed updates from the cloud, atomic swaps.

A gateway predicts from day one with the models shipped in
``chargesight/edge/models/`` (``{model_key}.onnx`` + ``{model_key}.card.json``,
one per hardware family plus ``generic``). The cloud publishes retrained
models as retained, Ed25519-signed :class:`~chargesight.common.messages.ModelUpdate`
messages on ``chargesight/v1/models/{model_key}``; :meth:`ModelStore.offer`
accepts one only when

1. it is signed and the signature verifies with the configured public key;
2. its input schema is ours: ``feature_names`` equal
   :data:`~chargesight.common.features.FEATURE_NAMES` and the card's
   ``feature_schema_version`` equals :data:`~chargesight.common.features.FEATURE_SCHEMA_VERSION`;
3. the ONNX graph loads, takes one ``[N, len(FEATURE_NAMES)]`` float input,
   has the output the card names, and scores a typical row to a finite number.

Then it is written to ``{directory}/{model_key}/current.json`` (temporary
file + ``os.replace``: a crash leaves the old or the new file, never half of
one), the model it replaces is kept as ``previous.json`` (:meth:`ModelStore.rollback`),
and the in-memory entry is swapped under a lock — a batch being scored keeps
the model it started with. Anything refused raises :class:`ModelRejected`
and calls the ``on_alarm`` callback with the model key and the reason.

onnxruntime sessions are thread-safe for ``run``; scoring happens in an
executor (:mod:`chargesight.edge.anomaly`), never on the event loop.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import pydantic
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chargesight.common.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION
from chargesight.common.messages import TOPIC_PREFIX, ModelUpdate
from chargesight.common.modelsign import ModelSignatureError, verify_model

log = structlog.get_logger(__name__)

GENERIC = "generic"
ALL_MODELS_TOPIC = f"{TOPIC_PREFIX}/models/+"


class ModelRejected(Exception):
    """A model update the edge refused; ``reason`` says why in words."""

    def __init__(self, model_key: str, reason: str) -> None:
        super().__init__(f"model {model_key} refused: {reason}")
        self.model_key = model_key
        self.reason = reason


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One ready-to-run detector."""

    model_key: str
    version: str
    kind: str
    threshold: float
    persist_h: float
    clear_h: float
    clear_ratio: float
    card: dict[str, Any]
    session: ort.InferenceSession
    output_name: str
    output_column: int
    baseline: npt.NDArray[np.float32]
    source: str  # "default" | "update"
    onnx_size: int = 0
    min_history_h: float = 72.0  # windows with less history are not scored (as in training)

    def score(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Risk scores in [0, 1] for the rows of ``X`` (float32, ``[N, len(FEATURE_NAMES)]``)."""
        if len(X) == 0:
            return np.zeros(0)
        out = self.session.run([self.output_name], {self.session.get_inputs()[0].name: X})[0]
        arr = np.asarray(out, dtype=np.float64)
        col = arr[:, self.output_column] if arr.ndim == 2 else arr
        return np.asarray(np.clip(col, 0.0, 1.0), dtype=np.float64)


def _session(onnx: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx, sess_options=opts, providers=["CPUExecutionProvider"])


def load_model(
    model_key: str,
    onnx: bytes,
    card: dict[str, Any],
    *,
    threshold: float | None = None,
    version: str | None = None,
    source: str = "update",
) -> LoadedModel:
    """Check ``onnx`` against our input schema and wrap it; raises :class:`ModelRejected`."""
    names = card.get("feature_names")
    if names != list(FEATURE_NAMES):
        raise ModelRejected(model_key, "its feature names are not this agent's features")
    if card.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
        raise ModelRejected(
            model_key,
            f"feature schema version {card.get('feature_schema_version')!r}, "
            f"this agent computes version {FEATURE_SCHEMA_VERSION}",
        )
    thr = float(threshold if threshold is not None else card.get("threshold", -1))
    if not 0.0 < thr <= 1.0:
        raise ModelRejected(model_key, f"threshold {thr} is outside (0, 1]")
    try:
        sess = _session(onnx)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelRejected(model_key, f"the ONNX graph does not load: {exc}") from exc
    inputs = sess.get_inputs()
    if len(inputs) != 1 or list(inputs[0].shape)[-1:] != [len(FEATURE_NAMES)]:
        raise ModelRejected(
            model_key, f"the graph's input is not [N, {len(FEATURE_NAMES)}] features"
        )
    out = card.get("output") or {}
    out_name = str(out.get("name") or sess.get_outputs()[-1].name)
    if out_name not in {o.name for o in sess.get_outputs()}:
        raise ModelRejected(model_key, f"the graph has no output {out_name!r}")
    base = card.get("baseline") or [0.0] * len(FEATURE_NAMES)
    if len(base) != len(FEATURE_NAMES):
        raise ModelRejected(model_key, "its baseline does not match the features")
    model = LoadedModel(
        model_key=model_key,
        version=str(version or card.get("version") or "unknown"),
        kind=str(card.get("kind", "unknown")),
        threshold=thr,
        persist_h=float(card.get("persist_h", 6.0)),
        clear_h=float(card.get("clear_h", 24.0)),
        clear_ratio=float(card.get("clear_ratio", 0.5)),
        card=card,
        session=sess,
        output_name=out_name,
        output_column=int(out.get("column", 0)),
        baseline=np.array([base], dtype=np.float32),
        source=source,
        onnx_size=len(onnx),
        min_history_h=float((card.get("config") or {}).get("min_history_h", 72.0)),
    )
    try:
        probe = model.score(model.baseline)
    except Exception as exc:
        raise ModelRejected(model_key, f"the graph fails on a typical row: {exc}") from exc
    if probe.shape != (1,) or not math.isfinite(float(probe[0])):
        raise ModelRejected(model_key, "the graph does not give one finite score per row")
    return model


def default_models_dir() -> Path:
    return Path(str(resources.files("chargesight.edge") / "models"))


def load_default_models(directory: Path | None = None) -> dict[str, LoadedModel]:
    """The models shipped with the package (trusted: they are part of the installed code)."""
    d = directory or default_models_dir()
    out: dict[str, LoadedModel] = {}
    if not d.is_dir():
        return out
    for onnx_path in sorted(d.glob("*.onnx")):
        key = onnx_path.stem
        card_path = onnx_path.with_suffix(".card.json")
        if not card_path.exists():
            log.warning("model_without_card", model_key=key, path=str(onnx_path))
            continue
        try:
            card = orjson.loads(card_path.read_bytes())
            out[key] = load_model(key, onnx_path.read_bytes(), card, source="default")
        except (ModelRejected, orjson.JSONDecodeError) as exc:
            log.error("default_model_unusable", model_key=key, error=str(exc))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class ModelStore:
    """The models an agent scores with, by model key (hardware family or ``generic``)."""

    def __init__(
        self,
        directory: str | Path | None,
        public_key: Ed25519PublicKey | None,
        *,
        on_alarm: Callable[[str, str], None] | None = None,
        defaults_dir: Path | None = None,
        load_defaults: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.public_key = public_key
        self.on_alarm = on_alarm
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._updates: dict[str, ModelUpdate] = {}
        if load_defaults:
            self._models.update(load_default_models(defaults_dir))
        self._load_stored()

    # -- reading

    def get(self, model_key: str) -> LoadedModel | None:
        """The family's model, else ``generic``, else None."""
        models = self._models
        return models.get(model_key) or models.get(GENERIC)

    def keys(self) -> list[str]:
        return sorted(self._models)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            k: {"version": m.version, "kind": m.kind, "threshold": m.threshold, "source": m.source}
            for k, m in sorted(self._models.items())
        }

    # -- updates

    def handle_message(self, topic: str, payload: bytes | bytearray) -> LoadedModel | None:
        """An MQTT message on ``chargesight/v1/models/{key}``; refusals are alarmed, not raised."""
        key = topic.rsplit("/", 1)[-1]
        if not payload:  # a cleared retained message
            return None
        try:
            update = ModelUpdate.model_validate_json(payload)
        except pydantic.ValidationError as exc:
            self._alarm(key, f"not a model update: {exc.error_count()} schema error(s)")
            return None
        if update.model_key != key:
            self._alarm(key, f"published on {topic} but names model {update.model_key!r}")
            return None
        try:
            return self.offer(update)
        except ModelRejected:
            return None

    def offer(self, update: ModelUpdate) -> LoadedModel:
        """Verify, check and swap in ``update``; raises :class:`ModelRejected` (after alarming)."""
        key = update.model_key
        try:
            model = self._check(update)
        except ModelRejected as exc:
            self._alarm(key, exc.reason)
            raise
        current = self._updates.get(key)
        if current is not None and current.version == update.version:
            return self._models[key]  # a retained message seen again
        with self._lock:
            if self.directory is not None:
                d = self.directory / key
                d.mkdir(parents=True, exist_ok=True)
                cur = d / "current.json"
                if cur.exists():
                    _write_atomic(d / "previous.json", cur.read_bytes())
                _write_atomic(cur, update.model_dump_json().encode())
            previous = self._models.get(key)
            self._models = {**self._models, key: model}
            self._updates[key] = update
        log.info(
            "model_swapped",
            model_key=key,
            version=update.version,
            previous=previous.version if previous else None,
        )
        return model

    def rollback(self, model_key: str) -> LoadedModel:
        """Go back to the model kept as ``previous.json``."""
        if self.directory is None:
            raise ModelRejected(model_key, "no model directory: nothing to roll back to")
        d = self.directory / model_key
        prev = d / "previous.json"
        if not prev.exists():
            raise ModelRejected(model_key, "no previous model kept")
        update = ModelUpdate.model_validate_json(prev.read_bytes())
        model = self._check(update)
        with self._lock:
            cur = d / "current.json"
            if cur.exists():
                _write_atomic(d / "rolled-back.json", cur.read_bytes())
            _write_atomic(cur, prev.read_bytes())
            self._models = {**self._models, model_key: model}
            self._updates[model_key] = update
        return model

    def _check(self, update: ModelUpdate) -> LoadedModel:
        key = update.model_key
        if self.public_key is None:
            raise ModelRejected(key, "no model public key configured: updates are refused")
        try:
            onnx = verify_model(update, self.public_key)
        except ModelSignatureError as exc:
            raise ModelRejected(key, str(exc)) from exc
        if update.feature_names != list(FEATURE_NAMES):
            raise ModelRejected(key, "its feature names are not this agent's features")
        return load_model(
            key, onnx, dict(update.card), threshold=update.threshold, version=update.version
        )

    def _alarm(self, key: str, reason: str) -> None:
        log.error("model_refused", model_key=key, reason=reason)
        if self.on_alarm is not None:
            self.on_alarm(key, reason)

    def _load_stored(self) -> None:
        if self.directory is None or not self.directory.is_dir():
            return
        for cur in sorted(self.directory.glob("*/current.json")):
            key = cur.parent.name
            try:
                update = ModelUpdate.model_validate_json(cur.read_bytes())
                self._models[key] = self._check(update)
                self._updates[key] = update
            except (ModelRejected, pydantic.ValidationError) as exc:
                self._alarm(key, f"stored model unusable, keeping the default: {exc}")
