"""Evaluate the shipped Foresight models against the simulator's ground truth.

    .venv/bin/python scripts/evaluate_foresight.py [--days 120] [--models edge/models]

For each held-out history (generated fresh, never seen in training):

* ``demo``  — sim/scenarios/demo.toml (500 charge points, 50 sites, 5 PSU
  degradations on two families, every other fault kind), its own seed;
* ``train-scenario/seed 777`` — scripts/foresight_scenario.toml with a seed
  other than the training one (24 PSU degradations, new randomness);

the digests are replayed hour by hour through the edge's own code
(FeatureBank → score_snapshots → IncidentTracker, i.e. what AnomalyMonitor
does) and every predictive incident is matched with the ground truth:

* predicted: an incident opened between the degradation's onset and the
  hard failure; lead time = failure − first such incident;
* false: any other incident. Reported twice: *strict* (every incident not
  followed by a PSU failure) and *no injected fault* (the charge point had no
  injected problem at all — incidents on units with failing starts, a
  firmware bug or a flaky network are flagged real problems, just not PSU);
* "other units showing identical early symptoms": for each predicted
  failure, when its first predictive incident opens, the units the
  simulator's ground truth puts in the same ``related_group`` (a PSU
  degradation on the same hardware) that show symptoms at that moment (from
  their first symptom until they fail) are the truth; three ways the cloud
  could list them are scored by precision and recall:

  - ``cloud.related.related_by_symptoms`` — what the collector attaches to an
    issue (``related``, basis ``symptoms``): each unit's last 72 h of digests
    against its 14 days before (``symptom_vector``), same model, cosine ≥ 0.8;
  - ``cloud.foresight.similar_symptoms`` — the Foresight features the digests
    carry, deviation from the model card's typical values, candidates with a
    risk of at least half the threshold;
  - same signature — the other units of the model with a predictive incident
    open at that moment (what ``related`` lists by signature for a
    ``PredictedFailure`` issue).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from chargesight.cloud.foresight import similar_symptoms
from chargesight.cloud.related import WindowStats, related_by_symptoms, symptom_vector
from chargesight.cloud.train import failures_from_ground_truth, read_digests, read_ground_truth
from chargesight.common.features import FeatureBank, features_dict
from chargesight.common.messages import Digest
from chargesight.edge.anomaly import IncidentTracker, Score, score_snapshots
from chargesight.edge.modelstore import ModelStore
from chargesight.sim.history import generate_history
from chargesight.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
EVAL_START = datetime(2026, 4, 1, tzinfo=UTC)  # fixed, so the figures reproduce on any day
LOOKBACK = timedelta(hours=72)  # the collector's [analysis] symptom_lookback_h default
BASELINE = timedelta(days=14)  # and the baseline before it (cloud.engine._related_symptoms)
METHODS = ("related_by_symptoms", "similar_symptoms", "same signature")
MOMENTS = ("first predictive incident", "failure")


@dataclass
class PeerScore:
    """Precision and recall of one way of listing the units with the same early symptoms."""

    listed: int = 0
    found: int = 0  # listed and in the truth (same related_group, symptomatic then)
    in_group: int = 0  # listed and in the same related_group at any stage
    truth: int = 0

    def cell(self) -> str:
        p = f"{self.found / self.listed:.2f}" if self.listed else "–"
        r = f"{self.found / self.truth:.2f}" if self.truth else "–"
        return (
            f"{p} / {r} ({self.found} of {self.truth}; {self.listed} listed, "
            f"{self.in_group} of the group)"
        )


class Digests:
    """Each charge point's recent hourly digest counters, for the collector's WindowStats."""

    def __init__(self) -> None:
        keep = int((LOOKBACK + BASELINE).total_seconds() // 3600) + 2
        self.rows: dict[str, deque[tuple[float, ...]]] = {}
        self.site: dict[str, str] = {}
        self.keep = keep

    def add(self, d: Digest) -> None:
        start = d.interval_start.timestamp()
        hours = (d.interval_end - d.interval_start).total_seconds() / 3600
        for c in d.chargers:
            q = self.rows.get(c.charge_point_id)
            if q is None:
                q = self.rows[c.charge_point_id] = deque(maxlen=self.keep)
                self.site[c.charge_point_id] = d.site_id
            ratio = (
                c.max_power_w / c.rated_power_w
                if c.max_power_w is not None and c.rated_power_w
                else float("nan")
            )
            temp = c.mean_temperature_c if c.mean_temperature_c is not None else float("nan")
            q.append(
                (
                    start,
                    hours,
                    c.sessions_started,
                    c.sessions_failed,
                    c.sessions_ended_early,
                    c.faults,
                    c.disconnects,
                    ratio,
                    temp,
                )
            )

    def stats(self, cp: str, lo: datetime, hi: datetime) -> WindowStats:
        """What ``cloud.engine._window_stats`` aggregates for ``lo <= interval_start < hi``."""
        a, b = lo.timestamp(), hi.timestamp()
        rows = [r for r in self.rows.get(cp, ()) if a <= r[0] < b]
        ratios = [r[7] for r in rows if r[7] == r[7]]
        temps = [r[8] for r in rows if r[8] == r[8]]
        return WindowStats(
            charge_point_id=cp,
            site_id=self.site.get(cp, ""),
            hours=sum(r[1] for r in rows),
            sessions_started=sum(r[2] for r in rows),
            sessions_failed=sum(r[3] for r in rows),
            sessions_ended_early=sum(r[4] for r in rows),
            faults=sum(r[5] for r in rows),
            disconnects=sum(r[6] for r in rows),
            power_ratio=sum(ratios) / len(ratios) if ratios else None,
            mean_temperature_c=sum(temps) / len(temps) if temps else None,
        )

    def pair(self, cp: str, at: datetime) -> tuple[WindowStats, WindowStats] | None:
        recent = self.stats(cp, at - LOOKBACK, at)
        base = self.stats(cp, at - LOOKBACK - BASELINE, at - LOOKBACK)
        return (recent, base) if recent.hours > 0 and base.hours > 0 else None


@dataclass
class Result:
    name: str
    chargers: int = 0
    charger_days: float = 0.0
    failures: int = 0
    predicted: int = 0
    leads: list[float] = field(default_factory=list)
    false_strict: int = 0
    false_clean: int = 0
    flagged_other: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # per moment: predicted failures checked for units with the same early symptoms
    peer_checks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MOMENTS, 0))
    peers: dict[str, dict[str, PeerScore]] = field(
        default_factory=lambda: {t: {m: PeerScore() for m in METHODS} for t in MOMENTS}
    )

    def row(self) -> str:
        leads = sorted(self.leads)
        med = f"{statistics.median(leads):.1f}" if leads else "–"
        p10 = f"{float(np.quantile(leads, 0.1)):.1f}" if leads else "–"
        per = 1000 / self.charger_days if self.charger_days else 0.0
        return (
            f"| {self.name} | {self.chargers} | {self.charger_days:,.0f} | {self.predicted}/{self.failures} "
            f"({100 * self.predicted / max(1, self.failures):.0f}%) | {med} | {p10} | "
            f"{self.false_clean * per:.2f} | {self.false_strict * per:.2f} |"
        )

    def peer_rows(self) -> list[str]:
        return [
            f"| {self.name} | {t} | {self.peer_checks[t]} | "
            + " | ".join(self.peers[t][m].cell() for m in METHODS)
            + " |"
            for t in MOMENTS
        ]


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def evaluate(name: str, history: Path, store: ModelStore) -> Result:
    t = time.monotonic()
    gt = read_ground_truth(history / "ground_truth.jsonl")
    failures = {f.charge_point_id: f for f in failures_from_ground_truth(gt)}
    troubled: dict[str, str] = {}
    for r in gt:
        if not r["background"] and r["kind"] != "psu_degradation":
            for cp in r["charge_points"]:
                troubled.setdefault(cp, r["kind"])
    # the units with the same early symptoms: same related_group, from first symptom to failure
    symptomatic: list[tuple[str, str, float, float]] = []
    for r in gt:
        if r["kind"] == "psu_degradation" and r.get("related_group") and r["charge_point_id"]:
            symptomatic.append(
                (
                    r["charge_point_id"],
                    r["related_group"],
                    _ts(r["first_symptom_at"]),
                    _ts(r["failed_at"]) if r.get("failed_at") else float("inf"),
                )
            )
    group = {cp: g for cp, g, _, _ in symptomatic}
    bank, tracker, recent = FeatureBank(), IncidentTracker(), Digests()
    res = Result(name)
    opened: dict[str, list[datetime]] = {}
    checked: set[str] = set()
    failure_checked: set[str] = set()
    current_end: datetime | None = None
    windows = 0

    def check_peers(moment: str, target: Score, scores: list[Score], floor: float) -> None:
        cp, at = target.charge_point_id, target.at
        t = at.timestamp()
        truth = {o for o, g, a, b in symptomatic if g == group.get(cp) and o != cp and a <= t < b}
        members = {o for o, g, _, _ in symptomatic if g == group.get(cp) and o != cp}
        model = bank.windows[cp].model
        same = [o for o, w in bank.windows.items() if o != cp and w.model == model]
        found: dict[str, set[str]] = {}
        mine = recent.pair(cp, at)
        found["related_by_symptoms"] = set()
        if mine is not None:
            cands = [p for o in same if (p := recent.pair(o, at)) is not None]
            found["related_by_symptoms"] = {
                u.charge_point_id for u in related_by_symptoms(symptom_vector(*mine), cp, cands)
            }
        same_set = set(same)
        peers = [o for o in scores if o.charge_point_id in same_set]
        model_card = store.get(bank.windows[cp].family)
        assert model_card is not None
        found["similar_symptoms"] = {
            o
            for o, _, _ in similar_symptoms(
                features_dict(target.features),
                {o.charge_point_id: features_dict(o.features) for o in peers},
                [float(v) for v in model_card.baseline[0]],
                scores={o.charge_point_id: o.score for o in peers},
                min_score=floor,
            )
        }
        found["same signature"] = {o for o in same if tracker.open_incident(o) is not None}
        res.peer_checks[moment] += 1
        for m in METHODS:
            ps = res.peers[moment][m]
            ps.truth += len(truth)
            ps.listed += len(found[m])
            ps.found += len(found[m] & truth)
            ps.in_group += len(found[m] & members)

    def score_hour() -> None:
        nonlocal windows
        snaps = bank.snapshots()
        windows += len(snaps)
        scores = score_snapshots(snaps, store.get)
        for s in scores:
            m = store.get(bank.windows[s.charge_point_id].family)
            assert m is not None
            change = tracker.update(
                s.charge_point_id,
                s.at,
                s.score,
                s.threshold,
                persist_h=m.persist_h,
                clear_h=m.clear_h,
                clear_ratio=m.clear_ratio,
            )
            if change == "open":
                opened.setdefault(s.charge_point_id, []).append(s.at)
                f = failures.get(s.charge_point_id)
                if (
                    f is not None
                    and f.onset <= s.at.timestamp() < f.failed
                    and s.charge_point_id not in checked
                ):
                    checked.add(s.charge_point_id)  # once per predicted failure: its first incident
                    check_peers(MOMENTS[0], s, scores, m.threshold * m.clear_ratio)
        for s in scores:  # and when a predicted failure happens (its escalated issue)
            f = failures.get(s.charge_point_id)
            cp = s.charge_point_id
            if (
                f is not None
                and cp in checked
                and cp not in failure_checked
                and s.at.timestamp() >= f.failed
            ):
                failure_checked.add(cp)
                m = store.get(bank.windows[cp].family)
                assert m is not None
                check_peers(MOMENTS[1], s, scores, m.threshold * m.clear_ratio)

    for d in read_digests(history / "digests.jsonl"):
        if current_end is not None and d.interval_end != current_end:
            score_hour()
        current_end = d.interval_end
        bank.add_digest(d)
        recent.add(d)
    score_hour()
    res.chargers = len(bank.windows)
    res.charger_days = windows / 24
    res.failures = len(failures)
    for cp, times in opened.items():
        f = failures.get(cp)
        hit = False
        for at in times:
            ts = at.timestamp()
            if f is not None and f.onset <= ts < f.failed:
                if not hit:
                    res.leads.append((f.failed - ts) / 86400)
                    hit = True
                continue
            if f is not None and f.failed <= ts:
                continue  # after the failure: the unit is broken, not predicted
            res.false_strict += 1
            if cp in troubled:
                res.flagged_other[cp] = troubled[cp]
            else:
                res.false_clean += 1
        res.predicted += hit
    res.seconds = time.monotonic() - t
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=float, default=120.0)
    ap.add_argument("--models", type=Path, default=None, help="default: the shipped edge/models")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "foresight")
    args = ap.parse_args(argv)
    store = ModelStore(None, None, defaults_dir=args.models)
    print(
        "models:",
        ", ".join(f"{k} ({v['kind']}, thr {v['threshold']})" for k, v in store.status().items()),
    )
    runs = [
        ("demo (500 CPs)", ROOT / "sim/scenarios/demo.toml", None, args.days),
        ("foresight scenario, seed 777", ROOT / "scripts/foresight_scenario.toml", 777, 160.0),
    ]
    results = []
    for name, scenario, seed, days in runs:
        out = args.work / f"eval-{scenario.stem}-{seed or 'default'}"
        t = time.monotonic()
        generate_history(load_scenario(scenario), days, out, seed=seed, start=EVAL_START)
        print(f"{name}: history {days:g} days in {time.monotonic() - t:.1f} s", flush=True)
        r = evaluate(name, out, store)
        print(
            f"{name}: scored in {r.seconds:.1f} s; other-fault units flagged: {r.flagged_other}",
            flush=True,
        )
        results.append(r)
    print()
    print(
        "| history | charge points | charger-days | PSU failures predicted | median lead (d) "
        "| p10 lead (d) | false / 1,000 charger-days (no injected fault) | false / 1,000 (strict) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(r.row())
    print()
    print(
        "Other units showing the same early symptoms (the failing unit's related_group, from first"
        " symptom to failure at that moment), precision / recall:"
    )
    print()
    print("| history | moment | predicted failures | " + " | ".join(METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for r in results:
        for row in r.peer_rows():
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
