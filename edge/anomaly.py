"""Edge Foresight: score every charge point's window on each interval close, open predictive incidents.

:class:`AnomalyMonitor` owns a :class:`~chargesight.common.features.FeatureBank`
fed with the same normalised events as detection (plus the recovery engine's
resets and self-resolved incidents). At each interval end the agent awaits
:meth:`AnomalyMonitor.close_window`: the buckets are closed on the event loop
(cheap), then features, ONNX scoring and explanations run **in an executor**
in one batch across all charge points, grouped by model (hardware family,
else ``generic``). The incident rule (:class:`IncidentTracker`, sans I/O) opens
a **predictive incident** when a charger's score stays at or above the model's
threshold for ``persist_h`` hours — one per charge point until it clears
(score below ``clear_ratio`` × threshold for ``clear_h`` hours) — and hands an
``Escalation(kind="predictive")`` to the ``escalate`` callback, with the
features and, in words, the features that drove the score (occlusion: each
feature replaced by the family's typical value, the score drop is its
contribution).

One set of windows with the digests: :meth:`AnomalyMonitor.attach` makes the
monitor score the windows of the agent's digest builder
(:class:`~chargesight.edge.digest.DigestCollector`), which the recovery engine
feeds with the events *and* its decisions (faults it opened, resets it sent,
the disconnect of a reboot it ordered, sessions that failed, incidents that
resolved themselves); the digest cut closes them. The features scored at the
edge are then those the cloud computes from the stored digests. A monitor
not attached counts the events it is fed itself (faults inferred from
``Faulted`` statuses, no engine decisions).

Cancel-safety: cancelling :meth:`close_window` while it waits for the
executor leaves the buckets closed and the incident state untouched (the
next close scores again).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from chargesight.common import taxonomy
from chargesight.common.events import Event
from chargesight.common.features import (
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    FeatureBank,
    FeatureWindow,
    HourBucket,
    WindowSnapshot,
    features_dict,
    snapshot_features,
)
from chargesight.common.health import FaultRecord, Health, window_health
from chargesight.common.messages import Digest, Escalation, Fault, Hardware
from chargesight.edge.digest import DigestCollector
from chargesight.edge.modelstore import LoadedModel, ModelStore

log = structlog.get_logger(__name__)

PREDICTED_FAILURE = "PredictedFailure"
PSU_FEATURES = frozenset(
    {
        "power_ratio_max_48h",
        "power_ratio_max_7d",
        "power_ratio_drop",
        "temp_max_48h",
        "temp_mean_7d",
        "temp_trend_c_per_day",
        "faults_power_per_day",
        "faults_thermal_per_day",
    }
)


@dataclass(frozen=True, slots=True)
class Score:
    """One charge point's score at one window close."""

    charge_point_id: str
    at: datetime
    model_key: str
    model_version: str
    score: float
    threshold: float
    features: tuple[float, ...]
    contributions: tuple[float, ...] | None = None  # only when at/above threshold

    @property
    def above(self) -> bool:
        return self.score >= self.threshold


# ---------------------------------------------------------------- scoring (runs in an executor)


def score_snapshots(
    snapshots: Sequence[WindowSnapshot],
    resolve: Callable[[str], LoadedModel | None],
) -> list[Score]:
    """Features and scores for many windows, batched per model; contributions for those above threshold.

    A window with less history than the model's ``min_history_h`` (a charger
    just added, or an agent just restarted without warming its windows from
    stored digests) is not scored: its rates are extrapolated from hours.
    """
    picked: list[tuple[WindowSnapshot, LoadedModel]] = []
    for s in snapshots:
        m = resolve(s.family)  # once per window: a model swapped in meanwhile is used next time
        if m is not None and s.history_h >= m.min_history_h:
            picked.append((s, m))
    if not picked:
        return []
    # one pass for every window's features, then one ONNX run per model
    X64 = snapshot_features([s for s, _ in picked])
    X = X64.astype(np.float32)  # what the ONNX graphs take
    rows = X64.tolist()
    groups: dict[int, tuple[LoadedModel, list[int]]] = {}
    for i, (_, model) in enumerate(picked):
        groups.setdefault(id(model), (model, []))[1].append(i)
    out: list[Score] = []
    for model, idx in groups.values():
        Xm = X[idx]
        scores = model.score(Xm)
        above = np.flatnonzero(scores >= model.threshold)
        contrib: dict[int, npt.NDArray[np.float64]] = {}
        if len(above):
            contrib = dict(
                zip(above.tolist(), _contributions(model, Xm[above], scores[above]), strict=True)
            )
        key, version, threshold = model.model_key, model.version, model.threshold
        for k, (i, score) in enumerate(zip(idx, scores.tolist(), strict=True)):
            s = picked[i][0]
            c = contrib.get(k)
            out.append(
                Score(
                    s.charge_point_id,
                    s.now,
                    key,
                    version,
                    round(score, 6),
                    threshold,
                    tuple(rows[i]),
                    None if c is None else tuple(round(v, 6) for v in c.tolist()),
                )
            )
    return out


def _contributions(
    model: LoadedModel, rows: npt.NDArray[np.float32], scores: npt.NDArray[np.float64]
) -> list[npt.NDArray[np.float64]]:
    """Occlusion: score(x) − score(x with feature j set to the family's typical value)."""
    n, f = rows.shape
    probe = np.repeat(rows, f, axis=0)  # row r, feature j at r*f + j
    j = np.tile(np.arange(f), n)
    probe[np.arange(n * f), j] = model.baseline[0, j]
    occluded = model.score(probe).reshape(n, f)
    return [scores[r] - occluded[r] for r in range(n)]


def explain(
    features: Sequence[float],
    contributions: Sequence[float],
    baseline: Sequence[float],
    *,
    top: int = 4,
) -> list[str]:
    """The features that raised the score most, in words, largest first."""
    order = sorted(range(len(FEATURE_NAMES)), key=lambda j: -contributions[j])
    lines = []
    for j in order[:top]:
        if contributions[j] <= 0.01:
            break
        name = FEATURE_NAMES[j]
        lines.append(
            f"{FEATURE_DESCRIPTIONS[name]} is {_fmt(features[j])} "
            f"(typical for this model: {_fmt(baseline[j])}); raises the risk by {contributions[j]:.2f}"
        )
    if not lines:
        lines.append(
            "several features together, none alone, make this charger look like failing ones"
        )
    return lines


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


# ---------------------------------------------------------------- the incident rule (sans I/O)


@dataclass(slots=True)
class _State:
    above_since: datetime | None = None
    below_since: datetime | None = None
    incident_id: str | None = None
    opened_at: datetime | None = None


@dataclass
class IncidentTracker:
    """Open after ``persist_h`` at/above threshold; clear after ``clear_h`` below ``clear_ratio`` × threshold.

    The same rule :func:`chargesight.cloud.train.incidents` uses to choose thresholds.
    """

    states: dict[str, _State] = field(default_factory=dict)

    def update(
        self,
        charge_point_id: str,
        at: datetime,
        score: float,
        threshold: float,
        *,
        persist_h: float,
        clear_h: float,
        clear_ratio: float,
    ) -> str | None:
        """``"open"`` when an incident opens now, ``"clear"`` when the open one clears, else None."""
        st = self.states.setdefault(charge_point_id, _State())
        if st.incident_id is None:
            if score >= threshold:
                st.above_since = st.above_since or at
                if (at - st.above_since).total_seconds() >= persist_h * 3600:
                    raw = f"{charge_point_id}/{st.above_since.isoformat()}".encode()
                    st.incident_id = "pred-" + hashlib.blake2b(raw, digest_size=12).hexdigest()
                    st.opened_at, st.below_since = at, None
                    return "open"
            else:
                st.above_since = None
            return None
        if score < threshold * clear_ratio:
            st.below_since = st.below_since or at
            if (at - st.below_since).total_seconds() >= clear_h * 3600:
                st.incident_id = st.opened_at = st.above_since = st.below_since = None
                return "clear"
        else:
            st.below_since = None
        return None

    def open_incident(self, charge_point_id: str) -> str | None:
        st = self.states.get(charge_point_id)
        return st.incident_id if st else None


# ---------------------------------------------------------------- the monitor


EscalateFn = Callable[[Escalation], Awaitable[None] | None]
ClearFn = Callable[[str, str], Awaitable[None] | None]


class AnomalyMonitor:
    """Foresight for one site: feed events, close windows, escalate predictive incidents."""

    def __init__(
        self,
        site_id: str,
        store: ModelStore,
        escalate: EscalateFn,
        *,
        on_clear: ClearFn | None = None,
        executor: Executor | None = None,
        bank: FeatureBank | None = None,
    ) -> None:
        self.site_id = site_id
        self.store = store
        self.escalate = escalate
        self.on_clear = on_clear
        self.executor = executor
        self.bank = bank or FeatureBank()
        self.tracker = IncidentTracker()
        self.last_scores: dict[str, Score] = {}
        self._digest: DigestCollector | None = None

    # -- inputs (event loop)

    def attach(self, digest: DigestCollector) -> None:
        """Score ``digest``'s windows from now on (call before any event; see the module doc).

        The engine feeds them and each digest cut closes them, so :meth:`feed`
        does nothing and :meth:`close_window` scores what the last cut closed.
        """
        self._digest = digest
        self.bank = digest.bank

    @property
    def attached(self) -> bool:
        return self._digest is not None

    def feed(self, event: Event) -> None:
        if self._digest is None:
            self.bank.feed(event)

    def warm(self, digests: Iterable[Digest]) -> int:
        """Refill the windows from this site's own recent digests (oldest first) after a restart.

        Without it a restarted agent scores nothing for ``min_history_h`` (72 h).
        Returns how many digests were taken. Call before feeding live events.
        """
        n = 0
        for d in digests:
            if d.site_id == self.site_id:
                self.bank.add_digest(d)
                n += 1
        return n

    async def catch_up(self, digests: Iterable[Digest]) -> int:
        """Warm the windows from past digests *and* score every past hour, as if it had run then.

        For a gateway bootstrapped with its site's recent history (from the
        cloud, or a previous installation): the incident rule sees the hours
        a charger has already spent above its threshold, so a unit that has
        been degrading for days is flagged now, with its real onset. Scoring
        runs in the executor, one batch per hour. Returns the hours scored.
        """
        loop = asyncio.get_running_loop()
        hours = 0
        current_end: datetime | None = None

        async def score_hour() -> None:
            nonlocal hours
            snaps = self.bank.snapshots()
            scores = await loop.run_in_executor(
                self.executor, score_snapshots, snaps, self.store.get
            )
            for sc in scores:
                self.last_scores[sc.charge_point_id] = sc
                await self._apply(sc)
            hours += 1

        for d in digests:
            if d.site_id != self.site_id:
                continue
            if current_end is not None and d.interval_end != current_end:
                await score_hour()
            current_end = d.interval_end
            self.bank.add_digest(d)
        if current_end is not None:
            await score_hour()
        return hours

    def window(self, charge_point_id: str) -> FeatureWindow:
        """For the engine's decisions: ``window(cp).record_reset(at)`` etc., and ``set_hardware``."""
        return self.bank.window(charge_point_id)

    def anomaly_score(self, charge_point_id: str) -> float | None:
        s = self.last_scores.get(charge_point_id)
        return s.score if s else None

    def digest_fields(
        self, charge_point_id: str, faults: Sequence[FaultRecord] = ()
    ) -> dict[str, Any]:
        """``anomaly_score``, ``features``, ``health_score`` and ``connector_health`` for the
        charge point's ChargerCounters."""
        s = self.last_scores.get(charge_point_id)
        if s is None:
            return {}
        health, per_connector = self.health(charge_point_id, faults)
        assert health is not None
        out: dict[str, Any] = {
            "anomaly_score": s.score,
            "features": features_dict(s.features),
            "health_score": health.score,
        }
        connectors = {cid: h.score for cid, h in per_connector.items() if cid > 0}
        if connectors:
            out["connector_health"] = connectors
        return out

    def health(
        self, charge_point_id: str, faults: Sequence[FaultRecord] = ()
    ) -> tuple[Health | None, dict[int, Health]]:
        """The charge point's health and each connector's, as of its last score (None before).

        The charge point's is the minimum of its connectors'
        (:func:`~chargesight.common.health.window_health`); performance is
        measured against the model card's typical peak power share.
        """
        s = self.last_scores.get(charge_point_id)
        if s is None:
            return None, {}
        w = self.bank.window(charge_point_id)
        model = self.store.get(w.family)
        typical = None
        if model is not None:
            typical = float(model.baseline[0][FEATURE_NAMES.index("power_ratio_max_7d")])
        return window_health(
            w,
            s.at,
            features=features_dict(s.features),
            anomaly_score=s.score,
            faults=faults,
            typical_power_ratio=typical if typical and typical > 0 else None,
        )

    # -- the interval close

    async def close_window(self, end: datetime) -> dict[str, HourBucket]:
        """Close every window at ``end``, score all in an executor, act on the results.

        Returns the closed buckets: what the digest should carry per charge point
        (``ChargerCounters(**bucket.to_counters(), ...)``), with
        :meth:`anomaly_score` for its ``anomaly_score``.

        Attached to a digest builder (:meth:`attach`) the last digest cut has
        closed the windows: this scores those not scored since, and returns
        their buckets (empty when there is nothing new).
        """
        if self._digest is not None:
            buckets = self._digest.last_cut
            snaps = [
                s
                for s in self.bank.snapshots()
                if (last := self.last_scores.get(s.charge_point_id)) is None or last.at < s.now
            ]
            if not snaps:
                return {}
        else:
            buckets = self.bank.close(end)
            snaps = self.bank.snapshots()
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self.executor, score_snapshots, snaps, self.store.get)
        for s in scores:
            self.last_scores[s.charge_point_id] = s
            await self._apply(s)
        return buckets

    async def _apply(self, s: Score) -> None:
        model = self.store.get(self.bank.window(s.charge_point_id).family)
        if model is None:
            return
        was_open = self.tracker.open_incident(s.charge_point_id)
        change = self.tracker.update(
            s.charge_point_id,
            s.at,
            s.score,
            s.threshold,
            persist_h=model.persist_h,
            clear_h=model.clear_h,
            clear_ratio=model.clear_ratio,
        )
        if change == "open":
            esc = self.escalation(s, model)
            log.info(
                "predictive_incident",
                charge_point_id=s.charge_point_id,
                score=s.score,
                incident_id=esc.incident_id,
            )
            await _maybe_await(self.escalate(esc))
        elif change == "clear" and self.on_clear is not None and was_open is not None:
            log.info("predictive_incident_cleared", charge_point_id=s.charge_point_id)
            await _maybe_await(self.on_clear(s.charge_point_id, was_open))

    def escalation(self, s: Score, model: LoadedModel) -> Escalation:
        """The predictive ``Escalation`` for a score that opened an incident."""
        w = self.bank.window(s.charge_point_id)
        baseline = [float(v) for v in model.baseline[0]]
        contributions = s.contributions or tuple(0.0 for _ in FEATURE_NAMES)
        lines = explain(s.features, contributions, baseline)
        top = sorted(range(len(FEATURE_NAMES)), key=lambda j: -contributions[j])[:3]
        psu = any(FEATURE_NAMES[j] in PSU_FEATURES and contributions[j] > 0.01 for j in top)
        what = "PSU degradation" if psu else "a failure"
        iid = self.tracker.open_incident(s.charge_point_id) or "pred-unknown"
        return Escalation(
            site_id=self.site_id,
            kind="predictive",
            incident_id=iid,
            charge_point_id=s.charge_point_id,
            connector_id=None,
            scope="charge_point",
            fault=Fault(
                code=PREDICTED_FAILURE,
                category=taxonomy.PERFORMANCE,
                component="psu_module" if psu else None,
                info=f"early symptoms of {what}: risk {s.score:.2f} ≥ {s.threshold:.2f} "
                f"for {model.persist_h:g} h (model {model.model_key} {model.version})",
            ),
            started_at=s.at,
            hardware=Hardware(vendor=w.vendor, model=w.model, firmware=w.firmware),
            anomaly_score=s.score,
            recommended_action="field_technician",
            detail=f"Early symptoms of {what}, no fault yet. " + "; ".join(lines[:2]) + ".",
            features=features_dict(s.features),
            explanation=lines,
        )


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result
