"""Foresight inference benchmark: onnxruntime vs scikit-learn, one core, same models, same run.

    .venv/bin/python bench/inference.py [--chargers 1000]

Measures, on one core (onnxruntime intra-op threads = 1):

1. the edge's whole job at a window close for N charge points: features for
   every window (vectorised) + ONNX scoring batched per model + explanations
   for those above threshold (``score_snapshots``) — p50/p99;
2. a 100-tree depth-3 GradientBoosting classifier (the shipped architecture)
   and a 100-tree IsolationForest, each in scikit-learn and in onnxruntime
   (converted by skl2onnx): single-row p50/p99, batched rows/s, and the
   largest difference between the two runtimes' outputs;
3. memory: resident set growth when loading the shipped models.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from chargesight.common.features import FEATURE_NAMES, FeatureBank, snapshot_features
from chargesight.common.messages import ChargerCounters
from chargesight.edge.anomaly import score_snapshots
from chargesight.edge.modelstore import ModelStore, load_default_models

T0 = datetime(2026, 9, 1, tzinfo=UTC)
N_FEAT = len(FEATURE_NAMES)
FAMILIES = [
    ("Voltix", "VX-DC150", 150_000.0),
    ("Voltix", "VX-DC50", 50_000.0),
    ("Ampero", "AC22-Duo", 44_000.0),
    ("Helion", "HPC-300", 300_000.0),
]


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs: list[float], q: float) -> float:
    return float(np.quantile(np.array(xs), q))


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fleet(n: int, rng: np.random.Generator) -> FeatureBank:
    """N charge points with a full 7-day window of hourly digest counters."""
    bank = FeatureBank()
    for i in range(n):
        vendor, model, rated = FAMILIES[i % len(FAMILIES)]
        cp = f"cp-{i:04d}"
        w = bank.window(cp)
        sag = 0.4 if i % 97 == 0 else 0.0
        for h in range(168):
            started = int(rng.poisson(0.4))
            c = ChargerCounters.model_construct(
                charge_point_id=cp,
                vendor=vendor,
                model=model,
                firmware="1.0",
                connected_s=3600.0,
                disconnects=int(rng.random() < 0.005),
                faults=0,
                faults_by_category={},
                self_resolved=0,
                sessions_started=started,
                sessions_failed=0,
                sessions_ended_early=0,
                energy_wh=25_000.0 * started,
                max_power_w=rated * (0.93 - sag * h / 168) if started else None,
                rated_power_w=rated,
                max_temperature_c=35.0 + 10 * sag * h / 168 if started else None,
                mean_temperature_c=30.0 + 10 * sag * h / 168 if started else None,
                resets=0,
            )
            w.add_counters(c, T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1))
    return bank


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(1)
    print(f"cpu: {os.cpu_count()} cores visible; onnxruntime intra-op threads = 1\n")

    # 3. memory of the shipped models
    gc.collect()
    before = rss_kib()
    models = load_default_models()
    after = rss_kib()
    size = sum(m.onnx_size for m in models.values())
    print(
        f"memory: {len(models)} shipped models ({size / 1024:.0f} KiB of ONNX) add "
        f"{(after - before) / 1024:.1f} MiB RSS ({(after - before) / max(1, len(models)):.0f} KiB per model)"
    )
    store = ModelStore(None, None)

    # 1. the edge's window close for N charge points
    bank = fleet(args.chargers, rng)
    snaps = bank.snapshots()
    feats = timed(lambda: snapshot_features(snaps), args.reps)
    close = timed(lambda: score_snapshots(snaps, store.get), args.reps)
    flagged = sum(s.contributions is not None for s in score_snapshots(snaps, store.get))
    print(
        f"window close, {len(snaps)} charge points (features + scoring + explanations, one core):\n"
        f"  features only      p50 {1e3 * pct(feats, 0.5):6.1f} ms   p99 {1e3 * pct(feats, 0.99):6.1f} ms\n"
        f"  whole close        p50 {1e3 * pct(close, 0.5):6.1f} ms   p99 {1e3 * pct(close, 0.99):6.1f} ms"
        f"   ({flagged} above threshold, explained)   target < 50 ms"
    )

    # 2. sklearn vs onnxruntime, same models
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier, IsolationForest

    X = snapshot_features(snaps)
    # a label that needs full-depth trees (like the shipped models), not one split
    score = X[:, 0] - 0.05 * X[:, 3] + 0.3 * X[:, 10] + rng.normal(0, 0.05, len(X))
    y = (score < np.median(score)).astype(int)
    gb = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(X, y)
    iso = IsolationForest(n_estimators=100, random_state=0).fit(X)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    big = np.repeat(X, max(1, 100_000 // len(X)), axis=0)
    print(f"\nscikit-learn vs onnxruntime ({N_FEAT} features; batch = {len(big):,} rows):")
    print(
        f"  {'model':34} {'runtime':12} {'1 row p50':>10} {'1 row p99':>10} {'batch rows/s':>14} {'size':>9}"
    )

    def gb_fn(a: np.ndarray) -> np.ndarray:
        return np.asarray(gb.predict_proba(a)[:, 1])

    def iso_fn(a: np.ndarray) -> np.ndarray:
        return np.asarray(iso.decision_function(a))

    cases: list[tuple[str, Any, Callable[[np.ndarray], np.ndarray]]] = [
        ("GradientBoosting 100x depth 3", gb, gb_fn),
        ("IsolationForest 100 trees", iso, iso_fn),
    ]
    for name, model, skl_fn in cases:
        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        onx = convert_sklearn(
            model,
            name="bench",
            initial_types=[("features", FloatTensorType([None, N_FEAT]))],
            options=options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        ).SerializeToString()
        sess = ort.InferenceSession(onx, sess_options=opts, providers=["CPUExecutionProvider"])
        out_name = sess.get_outputs()[-1].name
        inp = sess.get_inputs()[0].name

        def ort_fn(a: np.ndarray, s: Any = sess, o: str = out_name, i: str = inp) -> np.ndarray:
            r = np.asarray(s.run([o], {i: a.astype(np.float32)})[0])
            return r[:, 1] if r.ndim == 2 and r.shape[1] == 2 else r.ravel()

        diff = float(np.max(np.abs(ort_fn(X) - skl_fn(X))))
        for runtime, fn in (("scikit-learn", skl_fn), ("onnxruntime", ort_fn)):
            one = [X[k : k + 1] for k in range(200)]
            lat = []
            for row in one:
                t = time.perf_counter()
                fn(row)
                lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            fn(big)
            rate = len(big) / (time.perf_counter() - t)
            print(
                f"  {name:34} {runtime:12} {1e6 * pct(lat, 0.5):8.0f}µs {1e6 * pct(lat, 0.99):8.0f}µs "
                f"{rate:14,.0f} {len(onx) / 1024:7.0f}K"
            )
        print(f"  {'':34} max |onnx − sklearn| = {diff:.2e}")
    print(f"\nmedian of window-close p50 over the run: {1e3 * statistics.median(close):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
