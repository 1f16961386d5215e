"""Foresight training: digests (+ ground truth) → one small ONNX detector per hardware family.

For every hardware-model family (:func:`~chargesight.common.features.model_family`)
seen in the digests, plus ``generic`` (all families pooled, for hardware a
gateway has no model for):

* an **unsupervised** detector: an IsolationForest fitted on the family's
  windows, *distilled* into a 100-tree GradientBoosting regressor that
  predicts its normalised anomaly score (0 = typical, 1 = as odd as the
  rarest 0.1 %). skl2onnx turns a 100-tree IsolationForest into a ~2,700-node
  graph (~870 µs a row, INFRA-NOTES); the distilled trees score a row in
  microseconds and a whole site in one batch;
* where the labels hold at least ``min_failures`` failures of the family, a
  **supervised** GradientBoosting classifier: "fails within ``horizon_days``".

Labelled failures come from the simulator's ground truth (``--history``:
records with ``failed_at``, e.g. PSU degradations) or from what the collector
stored (``--config``, :func:`failures_from_records`): a charge point's
power-component fault (PSU module, power electronics, contactor) escalated as
``kind = "fault"``, strongest when an operator resolved its issue with
``component_replacement`` or ``field_technician``; predictive, recurring,
repeat, connectivity and performance kinds are never failures, and a fault an
operator fixed otherwise (a reboot that worked) is not one either. The
database does not know when a unit's degradation began, so its failures take
their onset ``onset_days`` before the fault. The card's ``labels`` say how
many failures each source gave.

The detector the edge uses for a family (``kind`` in the card) is the
supervised one when it exists, else the unsupervised one. Its alert threshold
is chosen on out-of-fold scores (grouped by charge point, so a charger's
windows never sit in both halves) with the edge's own incident rule (score
above the threshold for ``persist_h``, cleared after ``clear_h`` below
``clear_ratio`` × threshold): the threshold that predicts the most failures
while keeping false predictive incidents under ``max_false_per_1000`` per
1,000 charger-days. Held-out figures go into the model card saved beside the
``.onnx``.

Everything is seeded; the same digests and config give the same bytes.
scikit-learn and skl2onnx are the ``train`` extra, needed only here.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from chargesight.common.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    RECENT,
    WINDOW,
    FeatureBank,
    compute_features_batch,
)
from chargesight.common.messages import Digest

GENERIC = "generic"

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    horizon_days: float = 14.0  # supervised label: fails within this many days
    sample_every_h: int = 6  # one training window per charge point every N hours
    min_history_h: int = 72  # skip windows with less history than this
    persist_h: float = 6.0  # edge rule: above threshold this long opens an incident
    clear_h: float = 24.0  # below clear_ratio × threshold this long clears it
    clear_ratio: float = 0.5
    max_false_per_1000: float = 0.5  # per 1,000 charger-days, on out-of-fold scores
    min_failures: int = 4  # labelled failures a family needs for a supervised model
    n_estimators: int = 100
    max_depth: int = 3
    folds: int = 4
    seed: int = 20260901
    onset_days: float = 30.0  # database labels: degradation taken to start this long before


@dataclass
class Dataset:
    """Windows sampled from a history: features, where and when."""

    X: F64
    charge_points: list[str]
    families: list[str]
    times: F64  # epoch seconds of each window's end
    start: datetime | None = None
    end: datetime | None = None

    def __len__(self) -> int:
        return len(self.charge_points)


@dataclass
class FamilyModel:
    family: str
    kind: str  # "supervised" | "unsupervised"
    onnx: bytes
    threshold: float
    card: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


@dataclass
class TrainedModel:
    models: dict[str, FamilyModel] = field(default_factory=dict)

    def save(self, out: str | Path) -> list[Path]:
        """Write ``{family}.onnx`` and ``{family}.card.json`` for every family; returns the paths."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        written = []
        for fam, m in sorted(self.models.items()):
            onnx_path, card_path = d / f"{fam}.onnx", d / f"{fam}.card.json"
            onnx_path.write_bytes(m.onnx)
            card_path.write_bytes(
                orjson.dumps(m.card, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
            )
            written += [onnx_path, card_path]
        return written


# ---------------------------------------------------------------- data


def read_digests(path: str | Path) -> Iterator[Digest]:
    """Digests from a JSON-lines file (the simulator's ``digests.jsonl``)."""
    with Path(path).open("rb") as fh:
        for line in fh:
            if line.strip():
                yield Digest.model_validate_json(line)


def read_digests_from_database(url: str) -> Iterator[Digest]:
    """Digests rebuilt from the collector's ``charger_intervals`` table, in time order.

    Streams with a server-side cursor. Columns the table lacks keep their
    defaults: without a ``faults_by_category`` column every fault counts as
    category "other" (the collector should store it, see the cloud schema).
    """
    import psycopg
    from psycopg.rows import dict_row

    from chargesight.common.messages import ChargerCounters

    fields = set(ChargerCounters.model_fields)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        cols = {
            str(r["column_name"])
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'charger_intervals'"
            )
        }
        if not cols:
            raise ValueError("the database has no charger_intervals table (no digests stored)")
        wanted = sorted((cols & fields) | {"site_id", "interval_start", "interval_end"})
        key: tuple[str, datetime, datetime] | None = None
        chargers: list[ChargerCounters] = []
        with conn.cursor(name="foresight_train") as cur:
            cur.itersize = 5000
            cur.execute(
                f"SELECT {', '.join(wanted)} FROM charger_intervals"  # names from the catalogue
                " ORDER BY interval_end, site_id, interval_start, charge_point_id"
            )
            for row in cur:
                k = (str(row["site_id"]), row["interval_start"], row["interval_end"])
                if key is not None and k != key and chargers:
                    yield _digest(key, chargers)
                    chargers = []
                key = k
                values = {f: row[f] for f in wanted if f in fields and row[f] is not None}
                chargers.append(ChargerCounters.model_validate(values))
        if key is not None and chargers:
            yield _digest(key, chargers)


def _digest(key: tuple[str, datetime, datetime], chargers: list[Any]) -> Digest:
    site, start, end = key
    mid = hashlib.blake2b(f"{site}/{start.isoformat()}".encode(), digest_size=16).hexdigest()
    return Digest(
        message_id=mid, site_id=site, interval_start=start, interval_end=end, chargers=chargers
    )


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [orjson.loads(line) for line in p.read_bytes().splitlines() if line.strip()]


def build_dataset(digests: Iterable[Digest], config: TrainConfig | None = None) -> Dataset:
    """Feed digests (in time order) through the shared feature code and sample windows."""
    cfg = config or TrainConfig()
    bank = FeatureBank()
    rows: list[F64] = []
    nows: list[datetime] = []
    cps: list[str] = []
    fams: list[str] = []
    first: dict[str, float] = {}
    start: datetime | None = None
    end: datetime | None = None
    step = cfg.sample_every_h * 3600
    for d in digests:
        bank.add_digest(d)
        start = d.interval_start if start is None else min(start, d.interval_start)
        end = d.interval_end if end is None else max(end, d.interval_end)
        t_end = d.interval_end.timestamp()
        if int(t_end) % step:
            continue
        for c in d.chargers:
            w = bank.windows[c.charge_point_id]
            t0 = first.setdefault(c.charge_point_id, d.interval_start.timestamp())
            if t_end - t0 < cfg.min_history_h * 3600:
                continue
            snap = w.snapshot()
            rows.append(snap.rows)
            nows.append(snap.now)
            cps.append(snap.charge_point_id)
            fams.append(snap.family)
    X = np.zeros((0, len(FEATURE_NAMES)))
    chunks = [
        compute_features_batch(rows[i : i + 2000], nows[i : i + 2000])
        for i in range(0, len(rows), 2000)
    ]
    if chunks:
        X = np.vstack(chunks)
    times = np.array([n.timestamp() for n in nows], dtype=np.float64)
    return Dataset(X, cps, fams, times, start, end)


# where a labelled failure came from (the card's ``labels``), strongest first
GROUND_TRUTH = "ground_truth"
OPERATOR = "operator"
ISSUE = "issue"
ESCALATION = "escalation"
LABEL_SOURCES: dict[str, str] = {
    GROUND_TRUTH: "the simulator's ground truth: faults with failed_at (PSU degradations)",
    OPERATOR: "power-component fault issues an operator resolved with component_replacement"
    " or field_technician",
    ISSUE: "power-component fault issues without such an operator resolution",
    ESCALATION: "power-component fault escalations no issue holds",
}


@dataclass(frozen=True)
class Failure:
    charge_point_id: str
    onset: float  # epoch s
    failed: float
    ended: float  # repaired (inf when never)
    source: str = GROUND_TRUTH  # a key of LABEL_SOURCES


def failures_from_ground_truth(ground_truth: Iterable[dict[str, Any]]) -> list[Failure]:
    """Ground-truth records with a hard failure (``failed_at``): what Foresight should predict."""
    out = []
    for r in ground_truth:
        if not r.get("failed_at") or not r.get("charge_point_id"):
            continue
        out.append(
            Failure(
                r["charge_point_id"],
                _ts(r["started_at"]),
                _ts(r["failed_at"]),
                _ts(r["ended_at"]) if r.get("ended_at") else float("inf"),
            )
        )
    return out


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _epoch(v: Any) -> float | None:
    """Epoch seconds of a datetime or an ISO 8601 string; None for anything else."""
    if isinstance(v, datetime):
        return v.timestamp()
    if isinstance(v, str) and v:
        try:
            return _ts(v)
        except ValueError:
            return None
    return None


# What makes a stored fault a labelled failure (the same notion as the ground truth's
# failed_at: a power component that broke, not a symptom, a glitch or a lost link).
POWER_COMPONENTS = frozenset({"psu_module", "power_module", "power_electronics", "contactor"})
POWER_CATEGORIES = frozenset({"contactor", "overcurrent"})  # when the fault names no component
NOT_FAILURE_CATEGORIES = frozenset({"connectivity", "performance"})
HARDWARE_FIXES = frozenset({"component_replacement", "field_technician"})
_RANK = {GROUND_TRUTH: 3, OPERATOR: 2, ISSUE: 1, ESCALATION: 0}


def is_power_failure(kind: Any, category: Any, component: Any) -> bool:
    """A fault escalation/issue that says a power component failed (see the module docstring).

    Only ``kind = "fault"``: predictive, recurring, repeat (glitches a reset
    clears), connectivity and performance (power below rated is a symptom) are
    never failures.
    """
    if kind != "fault" or category in NOT_FAILURE_CATEGORIES:
        return False
    if component:
        return component in POWER_COMPONENTS
    return category in POWER_CATEGORIES


@dataclass
class Labels:
    """Labelled failures read from stored issues and escalations."""

    failures: list[Failure] = field(default_factory=list)
    # charge points whose power-component fault an operator fixed without hardware
    # (a reboot or an update that worked): not failures, counted on the card
    fixed_otherwise: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.failures:
            out[f.source] = out.get(f.source, 0) + 1
        return dict(sorted(out.items()))


def failures_from_records(
    issues: Iterable[dict[str, Any]],
    escalations: Iterable[dict[str, Any]],
    config: TrainConfig | None = None,
) -> Labels:
    """Labelled failures from stored issue documents and escalation rows.

    ``issues``: ``issues.doc`` objects (:class:`chargesight.cloud.model.Issue`
    as JSON); each outage of a power-component fault issue is one failure,
    labelled ``operator`` when the operator's resolution of that outage was
    ``component_replacement``/``field_technician`` (and not reported as failed),
    dropped when it was another fix that worked, else ``issue``.
    ``escalations``: rows with ``site_id, incident_id, charge_point_id, kind,
    category, component, started_at, ended_at``; those whose incident an issue
    already holds are skipped, the rest are ``escalation`` failures. Failures of
    one charge point that overlap (a second fault while it is still broken) are
    one failure, with the strongest source. Onsets are ``onset_days`` before the
    failure: the stored data does not say when a degradation began.
    """
    cfg = config or TrainConfig()
    lead = cfg.onset_days * 86400
    found: list[Failure] = []
    fixed_otherwise: list[str] = []
    held: set[tuple[str, str]] = set()
    for doc in issues:
        cp = doc.get("charge_point_id")
        fault = doc.get("fault") or {}
        if not isinstance(cp, str) or doc.get("scope") == "site":
            continue
        if not is_power_failure(doc.get("kind"), fault.get("category"), fault.get("component")):
            continue
        site = str(doc.get("site_id", ""))
        held |= {(site, str(i)) for i in doc.get("incident_ids") or []}
        outages = doc.get("outages") or [doc]  # an issue without outages: its own span
        spans: list[tuple[float, float | None]] = []
        for o in outages:
            t0 = _epoch(o.get("started_at"))
            if t0 is not None:
                spans.append((t0, _epoch(o.get("ended_at"))))
        spans.sort(key=lambda x: x[0])
        actions: list[tuple[float, dict[str, Any]]] = []
        for a in doc.get("operator_actions") or []:
            at = _epoch(a.get("at"))
            if at is not None and a.get("action") != "acknowledge":
                actions.append((at, a))
        for k, (start, end) in enumerate(spans):
            until = spans[k + 1][0] if k + 1 < len(spans) else float("inf")
            taken = [a for at, a in actions if start <= at < until]
            last = taken[-1] if taken else None
            source = ISSUE
            if last is not None and last.get("action") in HARDWARE_FIXES:
                source = OPERATOR if last.get("worked") is not False else ISSUE
            elif last is not None and last.get("worked") is True:
                fixed_otherwise.append(cp)  # a reboot (or an update) fixed it: no failure
                continue
            if end is None and k + 1 == len(spans):
                end = _epoch(doc.get("ended_at"))
            found.append(Failure(cp, start - lead, start, _or_inf(end), source))
    by_incident: dict[tuple[str, str], tuple[str, float, float | None]] = {}
    for r in escalations:
        cp, key = r.get("charge_point_id"), (str(r.get("site_id")), str(r.get("incident_id")))
        t0 = _epoch(r.get("started_at"))
        if not isinstance(cp, str) or t0 is None or key in held:
            continue
        if not is_power_failure(r.get("kind"), r.get("category"), r.get("component")):
            continue
        t1 = _epoch(r.get("ended_at"))
        if key in by_incident:  # the same incident escalated again (or its clear)
            _, s0, e0 = by_incident[key]
            ends = [e for e in (e0, t1) if e is not None]
            t0, t1 = min(s0, t0), max(ends) if ends else None
        by_incident[key] = (cp, t0, t1)
    for cp, t0, t1 in by_incident.values():
        found.append(Failure(cp, t0 - lead, t0, _or_inf(t1), ESCALATION))
    return Labels(_merge_overlapping(found), sorted(fixed_otherwise))


def _or_inf(t: float | None) -> float:
    return float("inf") if t is None else t


def _merge_overlapping(failures: Iterable[Failure]) -> list[Failure]:
    out: list[Failure] = []
    for f in sorted(failures, key=lambda f: (f.charge_point_id, f.failed, -_RANK[f.source])):
        prev = out[-1] if out and out[-1].charge_point_id == f.charge_point_id else None
        if prev is None or f.failed >= prev.ended:
            out.append(f)
            continue
        out[-1] = Failure(
            prev.charge_point_id,
            min(prev.onset, f.onset),
            prev.failed,
            max(prev.ended, f.ended),
            prev.source if _RANK[prev.source] >= _RANK[f.source] else f.source,
        )
    return out


def read_failures_from_database(url: str, config: TrainConfig | None = None) -> Labels:
    """Labelled failures from the collector's ``issues`` and ``escalations`` tables."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        tables = {
            str(r["table_name"])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_name IN ('issues', 'escalations')"
            )
        }
        issues: list[dict[str, Any]] = []
        if "issues" in tables:
            issues = [
                r["doc"]
                for r in conn.execute(
                    "SELECT doc FROM issues WHERE kind = 'fault' AND charge_point_id IS NOT NULL"
                    " ORDER BY started_at, id"
                )
            ]
        escalations: list[dict[str, Any]] = []
        if "escalations" in tables:
            escalations = list(
                conn.execute(
                    "SELECT site_id, incident_id, charge_point_id, kind, category,"
                    " body->'fault'->>'component' AS component, started_at, ended_at"
                    " FROM escalations WHERE kind = 'fault' AND charge_point_id IS NOT NULL"
                    " ORDER BY sent_at, message_id"
                )
            )
    return failures_from_records(issues, escalations, config)


def label(ds: Dataset, failures: Sequence[Failure], horizon_days: float) -> npt.NDArray[np.int8]:
    """1 = fails within the horizon, 0 = healthy, -1 = not a training example.

    Excluded: windows of a degrading unit more than the horizon before its
    failure (neither healthy nor imminent) and windows from the failure until a
    week after its repair (a broken unit is not a prediction target).
    """
    y = np.zeros(len(ds), dtype=np.int8)
    by_cp: dict[str, list[Failure]] = {}
    for f in failures:
        by_cp.setdefault(f.charge_point_id, []).append(f)
    h = horizon_days * 86400
    for i, (cp, t) in enumerate(zip(ds.charge_points, ds.times, strict=True)):
        for f in by_cp.get(cp, ()):
            if f.failed <= t < f.ended + WINDOW.total_seconds():
                y[i] = -1
            elif f.onset <= t < f.failed:
                y[i] = 1 if f.failed - t <= h else -1
    return y


# ---------------------------------------------------------------- incidents (the edge's rule)


@dataclass(frozen=True)
class IncidentRule:
    threshold: float
    persist_h: float = 6.0
    clear_h: float = 24.0
    clear_ratio: float = 0.5


def incidents(times: Sequence[float], scores: Sequence[float], rule: IncidentRule) -> list[float]:
    """Open times of predictive incidents for one charge point's scores in time order.

    The same rule as :class:`chargesight.edge.anomaly.IncidentTracker`: open when
    the score stays >= threshold for ``persist_h``; clear when it stays below
    ``clear_ratio`` × threshold for ``clear_h``; at most one open at a time.
    """
    opened: list[float] = []
    above_since: float | None = None
    below_since: float | None = None
    is_open = False
    for t, s in zip(times, scores, strict=True):
        if not is_open:
            if s >= rule.threshold:
                above_since = t if above_since is None else above_since
                if t - above_since >= rule.persist_h * 3600:
                    is_open, below_since = True, None
                    opened.append(t)
            else:
                above_since = None
        elif s < rule.threshold * rule.clear_ratio:
            below_since = t if below_since is None else below_since
            if t - below_since >= rule.clear_h * 3600:
                is_open, above_since = False, None
        else:
            below_since = None
    return opened


@dataclass
class EventMetrics:
    failures: int
    predicted: int
    lead_days: list[float]
    false_incidents: int
    charger_days: float

    @property
    def share_predicted(self) -> float:
        return self.predicted / self.failures if self.failures else 0.0

    @property
    def false_per_1000(self) -> float:
        return 1000 * self.false_incidents / self.charger_days if self.charger_days else 0.0

    def as_dict(self) -> dict[str, Any]:
        leads = sorted(self.lead_days)
        return {
            "failures": self.failures,
            "predicted": self.predicted,
            "share_predicted": round(self.share_predicted, 3),
            "lead_days_median": round(statistics.median(leads), 2) if leads else None,
            "lead_days_p10": round(_quantile(leads, 0.1), 2) if leads else None,
            "false_incidents": self.false_incidents,
            "charger_days": round(self.charger_days, 1),
            "false_per_1000_charger_days": round(self.false_per_1000, 3),
        }


def _quantile(xs: Sequence[float], q: float) -> float:
    return float(np.quantile(np.array(xs, dtype=np.float64), q))


def evaluate_incidents(
    per_cp: dict[str, tuple[list[float], list[float]]],
    failures: Sequence[Failure],
    rule: IncidentRule,
    step_s: float,
) -> EventMetrics:
    """Lead time, share predicted and false incidents of ``rule`` over scored windows.

    An incident is *true* when it opens on a unit between its degradation onset
    and its failure (lead = failure − open); every other incident is false.
    Charger-days are the scored time, outside the failed-and-broken spans.
    """
    by_cp: dict[str, list[Failure]] = {}
    for f in failures:
        by_cp.setdefault(f.charge_point_id, []).append(f)
    n_fail = pred = false = 0
    leads: list[float] = []
    days = 0.0
    for cp, (times, scores) in per_cp.items():
        days += len(times) * step_s / 86400
        fl = [f for f in by_cp.get(cp, ()) if times and times[0] <= f.failed <= times[-1] + step_s]
        n_fail += len(fl)
        opened = incidents(times, scores, rule)
        hit: set[int] = set()
        for t in opened:
            match = next((k for k, f in enumerate(fl) if f.onset <= t < f.failed), None)
            if match is None:
                if not any(f.failed <= t < f.ended + WINDOW.total_seconds() for f in fl):
                    false += 1
            elif match not in hit:
                hit.add(match)
                leads.append((fl[match].failed - t) / 86400)
        pred += len(hit)
    return EventMetrics(n_fail, pred, leads, false, days)


def _group_by_cp(
    ds: Dataset, idx: npt.NDArray[np.intp], scores: F64
) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    order = sorted(range(len(idx)), key=lambda k: (ds.charge_points[idx[k]], ds.times[idx[k]]))
    for k in order:
        i = idx[k]
        ts, ss = out.setdefault(ds.charge_points[i], ([], []))
        ts.append(float(ds.times[i]))
        ss.append(float(scores[k]))
    return out


def choose_threshold(
    per_cp: dict[str, tuple[list[float], list[float]]],
    failures: Sequence[Failure],
    cfg: TrainConfig,
) -> tuple[IncidentRule, EventMetrics]:
    """The threshold predicting most failures (then: longest median lead) within the false budget."""
    best: tuple[tuple[float, float, float], IncidentRule, EventMetrics] | None = None
    for thr in np.round(np.arange(0.30, 0.99, 0.02), 2):
        rule = IncidentRule(float(thr), cfg.persist_h, cfg.clear_h, cfg.clear_ratio)
        m = evaluate_incidents(per_cp, failures, rule, cfg.sample_every_h * 3600)
        ok = m.false_per_1000 <= cfg.max_false_per_1000
        med = statistics.median(m.lead_days) if m.lead_days else 0.0
        key = (1.0 if ok else 0.0, m.share_predicted if ok else -m.false_per_1000, med)
        if best is None or key > best[0]:
            best = (key, rule, m)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------- models


def _export(model: Any) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    onx = convert_sklearn(
        model,
        name="chargesight_foresight",  # not skl2onnx's random uuid: reproducible bytes
        initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(onx.SerializeToString())


def _classifier(cfg: TrainConfig) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        learning_rate=0.1,
        subsample=0.8,
        random_state=cfg.seed,
    )


def _regressor(cfg: TrainConfig) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        learning_rate=0.1,
        subsample=0.8,
        random_state=cfg.seed,
    )


@dataclass
class _Unsupervised:
    model: Any  # the distilled regressor
    q50: float
    q999: float


def _fit_unsupervised(X: F64, cfg: TrainConfig) -> _Unsupervised:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, max_samples=min(256, len(X)), random_state=cfg.seed)
    forest.fit(X)
    raw = -forest.score_samples(X)
    q50, q999 = float(np.quantile(raw, 0.5)), float(np.quantile(raw, 0.999))
    target = np.clip((raw - q50) / max(q999 - q50, 1e-9), 0.0, 1.0)
    reg = _regressor(cfg)
    reg.fit(X, target)
    return _Unsupervised(reg, q50, q999)


def _score(model: Any, X: F64) -> F64:
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X)[:, 1], dtype=np.float64)
    return np.clip(np.asarray(model.predict(X), dtype=np.float64), 0.0, 1.0)


def _oof_scores(
    make: Any, X: F64, y: npt.NDArray[np.int8], groups: list[str], cfg: TrainConfig
) -> F64:
    """Out-of-fold scores, folds grouped by charge point (deterministic assignment)."""
    keys = sorted(set(groups))
    fold_of = {g: int(hashlib.sha256(g.encode()).hexdigest(), 16) % cfg.folds for g in keys}
    folds = np.array([fold_of[g] for g in groups])
    out = np.zeros(len(X))
    for k in range(cfg.folds):
        test = folds == k
        if not test.any() or test.all():
            continue
        if len(np.unique(y[~test])) < 2:
            continue  # nothing to learn from in this fold: its windows score 0
        m = make()
        m.fit(X[~test], y[~test])
        out[test] = _score(m, X[test])
    return out


def _baseline(X: F64) -> list[float]:
    return [round(float(v), 6) for v in np.median(X, axis=0)]


def train(
    digests: Iterable[Digest] | Dataset,
    ground_truth: Iterable[dict[str, Any]] | None = None,
    config: TrainConfig | None = None,
    *,
    families: Sequence[str] | None = None,
    labels: Labels | None = None,
) -> TrainedModel:
    """Train one detector per hardware family (and ``generic``) from digests in time order.

    Failures are the ground truth's plus ``labels`` (read from the database by
    :func:`read_failures_from_database`); either may be absent.
    """
    cfg = config or TrainConfig()
    ds = digests if isinstance(digests, Dataset) else build_dataset(digests, cfg)
    if len(ds) == 0:
        raise ValueError("no training windows: need at least a few days of digests")
    failures = failures_from_ground_truth(ground_truth or [])
    failures += labels.failures if labels is not None else []
    y_all = label(ds, failures, cfg.horizon_days)
    fam_arr = np.array(ds.families)
    wanted = [GENERIC, *sorted(set(ds.families))]
    if families is not None:
        wanted = [f for f in wanted if f in set(families)]
    out = TrainedModel()
    generic_oof: dict[str, tuple[list[float], list[float]]] = {}
    generic_rule: IncidentRule | None = None
    for fam in wanted:
        idx = np.flatnonzero(fam_arr == fam) if fam != GENERIC else np.arange(len(ds))
        idx = idx[y_all[idx] >= 0]
        if len(idx) < 50:
            continue
        X, y = ds.X[idx], y_all[idx]
        groups = [ds.charge_points[i] for i in idx]
        cps = set(groups)
        fam_failures = [f for f in failures if f.charge_point_id in cps]
        n_fail = len(fam_failures)
        # scores of every window of the family (excluded ones too) for event metrics
        all_idx = np.flatnonzero(fam_arr == fam) if fam != GENERIC else np.arange(len(ds))
        unsup = _fit_unsupervised(X[y == 0], cfg)
        unsup_scores = _score(unsup.model, ds.X[all_idx])
        unsup_rule, unsup_metrics = choose_threshold(
            _group_by_cp(ds, all_idx, unsup_scores), fam_failures, cfg
        )
        card: dict[str, Any] = {
            "model_key": fam,
            "family": fam,
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "window_h": WINDOW.total_seconds() / 3600,
            "recent_h": RECENT.total_seconds() / 3600,
            "training_window": {
                "start": _iso(ds.start),
                "end": _iso(ds.end),
                "windows": len(idx),
                "charge_points": len(cps),
                "labelled_failures": n_fail,
            },
            "config": asdict(cfg),
            "labels": _labels_card(fam_failures, labels, cps, cfg),
            "baseline": _baseline(X[y == 0] if (y == 0).any() else X),
            "unsupervised": {
                "detector": "IsolationForest(100 trees) distilled into GradientBoostingRegressor",
                "raw_score_q50": round(unsup.q50, 6),
                "raw_score_q999": round(unsup.q999, 6),
                "threshold": unsup_rule.threshold,
                "held_out": unsup_metrics.as_dict() | {"method": "in-sample windows"},
            },
            "versions": _versions(),
        }
        if n_fail >= cfg.min_failures and (y == 1).sum() >= 20:
            oof = _oof_scores(lambda: _classifier(cfg), X, y, groups, cfg)
            oof_all = np.full(len(all_idx), 0.0)
            pos = {int(i): k for k, i in enumerate(idx)}
            for k, i in enumerate(all_idx):
                if int(i) in pos:
                    oof_all[k] = oof[pos[int(i)]]
            per_cp = _group_by_cp(ds, all_idx, oof_all)
            rule, metrics = choose_threshold(per_cp, fam_failures, cfg)
            if fam == GENERIC:
                generic_oof, generic_rule = per_cp, rule
            elif metrics.false_per_1000 > cfg.max_false_per_1000 and generic_rule is not None:
                # too few failures of its own to learn from: the pooled model may do better
                pooled = evaluate_incidents(
                    {cp: v for cp, v in generic_oof.items() if cp in cps},
                    fam_failures,
                    generic_rule,
                    cfg.sample_every_h * 3600,
                )
                if pooled.false_per_1000 <= cfg.max_false_per_1000:
                    out.models[GENERIC].card.setdefault("serves", {})[fam] = pooled.as_dict() | {
                        "reason": f"its own model had {metrics.false_per_1000:.2f} false incidents "
                        "per 1,000 charger-days out of fold; the pooled one is used"
                    }
                    continue
            clf = _classifier(cfg)
            clf.fit(X, y)
            onnx, kind = _export(clf), "supervised"
            card["supervised"] = {
                "detector": f"GradientBoostingClassifier({cfg.n_estimators} trees, depth {cfg.max_depth})",
                "target": f"fails within {cfg.horizon_days:g} days",
                "positives": int((y == 1).sum()),
                "window_auc": round(_auc(y, oof), 4),
                "held_out": metrics.as_dict()
                | {"method": f"{cfg.folds}-fold out-of-fold, grouped by charge point"},
            }
            card["importances"] = [round(float(v), 6) for v in clf.feature_importances_]
            card["output"] = {"name": "probabilities", "column": 1}
        else:
            rule, kind = unsup_rule, "unsupervised"
            onnx = _export(unsup.model)
            card["importances"] = [round(float(v), 6) for v in unsup.model.feature_importances_]
            card["output"] = {"name": "variable", "column": 0}
        card |= {
            "kind": kind,
            "threshold": rule.threshold,
            "persist_h": rule.persist_h,
            "clear_h": rule.clear_h,
            "clear_ratio": rule.clear_ratio,
            "onnx_sha256": hashlib.sha256(onnx).hexdigest(),
            "onnx_bytes": len(onnx),
            "version": f"{(ds.end or datetime.now(UTC)).strftime('%Y%m%d')}-{hashlib.sha256(onnx).hexdigest()[:8]}",
        }
        out.models[fam] = FamilyModel(fam, kind, onnx, rule.threshold, card)
    return out


def _labels_card(
    failures: Sequence[Failure], labels: Labels | None, cps: set[str], cfg: TrainConfig
) -> dict[str, Any]:
    """Where a family's labelled failures came from: counts per source, in words."""
    sources: dict[str, int] = {}
    for f in failures:
        sources[f.source] = sources.get(f.source, 0) + 1
    out: dict[str, Any] = {
        "failures": len(failures),
        "sources": dict(sorted(sources.items())),
        "definitions": {k: LABEL_SOURCES[k] for k in sorted(sources) if k in LABEL_SOURCES},
    }
    if labels is not None:
        out["operator_fixed_otherwise"] = sum(cp in cps for cp in labels.fixed_otherwise)
        out["onset"] = f"{cfg.onset_days:g} days before the failure (not stored)"
    return out


def _auc(y: npt.NDArray[np.int8], s: F64) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def _versions() -> dict[str, str]:
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------- entry points


def train_from_history(
    history: str | Path, config: TrainConfig | None = None, *, families: Sequence[str] | None = None
) -> TrainedModel:
    """Train from a simulator history directory (``digests.jsonl`` [+ ``ground_truth.jsonl``])."""
    d = Path(history)
    digests = d / "digests.jsonl"
    if not digests.exists():
        raise FileNotFoundError(f"{digests}: no digests (generate a history first)")
    gt = read_ground_truth(d / "ground_truth.jsonl")
    return train(read_digests(digests), gt, config, families=families)


def train_from_database(
    url: str, config: TrainConfig | None = None, *, families: Sequence[str] | None = None
) -> TrainedModel:
    """Train from the collector's database: stored digests, failures from issues/escalations."""
    labels = read_failures_from_database(url, config)
    return train(read_digests_from_database(url), None, config, families=families, labels=labels)


def load_train_config(path: str | Path | None) -> TrainConfig:
    """``[train]`` table of a TOML file (keys of :class:`TrainConfig`); unknown keys are an error."""
    if path is None:
        return TrainConfig()
    import tomllib

    data = tomllib.loads(Path(path).read_text())
    section = data.get("train", {})
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{path}: [train] unknown key(s) {', '.join(unknown)}")
    return TrainConfig(**section)


def _database_url(config: str | Path) -> str | None:
    """The config's ``[database] url`` as ``cloud run`` reads it (environment overrides
    included, e.g. ``CHARGESIGHT_DATABASE__URL``); None unless it is a PostgreSQL URL."""
    from chargesight.cloud.config import load_cloud_config

    url = load_cloud_config(config).database.url
    return url if url.startswith("postgres") else None


def run_train(
    *, out: str | Path, history: str | Path | None = None, config: str | Path | None = None
) -> int:
    """``chargesight cloud train (--history DIR | --config FILE) --out DIR``; returns the exit code.

    ``--history``: a simulator history (digests + ground truth: supervised and
    unsupervised models). ``--config``: the cloud config; its ``[database] url``
    is read for stored digests and for labelled failures from stored issues and
    escalations (:func:`failures_from_records`; supervised where a family has
    ``min_failures`` of them), and its optional ``[train]`` table sets
    :class:`TrainConfig`.
    """
    from chargesight.common.configload import ConfigError

    def fail(message: str, code: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    try:
        cfg = load_train_config(config)
    except (OSError, ValueError, TypeError) as exc:
        return fail(str(exc), 2)
    try:
        if history is not None:
            trained = train_from_history(history, cfg)
        elif config is not None:
            try:
                url = _database_url(config)
            except ConfigError as exc:
                return fail(str(exc), 2)
            if url is None:
                return fail(
                    f"{config}: [database] url must be a PostgreSQL URL to train from it", 2
                )
            trained = train_from_database(url, cfg)
        else:
            return fail("give --history DIR or --config FILE (with [database] url)", 2)
    except (OSError, ValueError) as exc:
        return fail(str(exc), 1)
    for p in trained.save(out):
        print(f"wrote {p}")
    for fam, m in sorted(trained.models.items()):
        held = m.card.get("supervised", m.card["unsupervised"])["held_out"]
        sources = m.card["labels"]["sources"]
        print(
            f"{fam}: {m.kind}, threshold {m.threshold:.2f}, predicted "
            f"{held['predicted']}/{held['failures']}, false/1000 charger-days "
            f"{held['false_per_1000_charger_days']}, labels "
            + (", ".join(f"{k} {v}" for k, v in sources.items()) or "none")
        )
    return 0


__all__ = [
    "GENERIC",
    "Dataset",
    "EventMetrics",
    "Failure",
    "FamilyModel",
    "IncidentRule",
    "Labels",
    "TrainConfig",
    "TrainedModel",
    "build_dataset",
    "choose_threshold",
    "evaluate_incidents",
    "failures_from_ground_truth",
    "failures_from_records",
    "incidents",
    "is_power_failure",
    "label",
    "load_train_config",
    "read_digests",
    "read_digests_from_database",
    "read_failures_from_database",
    "read_ground_truth",
    "run_train",
    "train",
    "train_from_database",
    "train_from_history",
]
