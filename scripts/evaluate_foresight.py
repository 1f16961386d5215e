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
* same early symptoms: when a true incident opens, the other units of the
  same family that are degrading at that moment, and whether
  ``cloud.foresight.similar_symptoms`` lists them (plus how many units it
  listed that were not degrading at all).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from chargesight.cloud.foresight import similar_symptoms
from chargesight.cloud.train import failures_from_ground_truth, read_digests, read_ground_truth
from chargesight.common.features import FeatureBank, features_dict
from chargesight.edge.anomaly import IncidentTracker, score_snapshots
from chargesight.edge.modelstore import ModelStore
from chargesight.sim.history import generate_history
from chargesight.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
EVAL_START = datetime(2026, 4, 1, tzinfo=UTC)  # fixed, so the figures reproduce on any day


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
    peer_checks: int = 0  # true incidents with other units of the family degrading at the time
    peers_total: int = 0
    peers_found: int = 0
    unrelated_listed: int = 0

    def row(self) -> str:
        leads = sorted(self.leads)
        med = f"{statistics.median(leads):.1f}" if leads else "–"
        p10 = f"{float(np.quantile(leads, 0.1)):.1f}" if leads else "–"
        per = 1000 / self.charger_days if self.charger_days else 0.0
        return (
            f"| {self.name} | {self.chargers} | {self.charger_days:,.0f} | {self.predicted}/{self.failures} "
            f"({100 * self.predicted / max(1, self.failures):.0f}%) | {med} | {p10} | "
            f"{self.false_clean * per:.2f} | {self.false_strict * per:.2f} | "
            f"{self.peers_found}/{self.peers_total} ({self.unrelated_listed} unrelated) |"
        )


def evaluate(name: str, history: Path, store: ModelStore) -> Result:
    t = time.monotonic()
    gt = read_ground_truth(history / "ground_truth.jsonl")
    failures = {f.charge_point_id: f for f in failures_from_ground_truth(gt)}
    troubled: dict[str, str] = {}
    for r in gt:
        if not r["background"] and r["kind"] != "psu_degradation":
            for cp in r["charge_points"]:
                troubled.setdefault(cp, r["kind"])
    bank, tracker = FeatureBank(), IncidentTracker()
    res = Result(name)
    opened: dict[str, list[datetime]] = {}
    current_end: datetime | None = None
    windows = 0

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
                if f is not None and f.onset <= s.at.timestamp() < f.failed:
                    peers = {
                        cp
                        for cp, g in failures.items()
                        if cp != s.charge_point_id
                        and g.onset <= s.at.timestamp() < g.failed
                        and bank.windows[cp].family == bank.windows[s.charge_point_id].family
                    }
                    if peers:
                        # candidates: the same hardware, with a risk score that is up too
                        fam = bank.windows[s.charge_point_id].family
                        same = [
                            o
                            for o in scores
                            if o.charge_point_id != s.charge_point_id
                            and bank.windows[o.charge_point_id].family == fam
                        ]
                        found = similar_symptoms(
                            features_dict(s.features),
                            {o.charge_point_id: features_dict(o.features) for o in same},
                            [float(v) for v in m.baseline[0]],
                            scores={o.charge_point_id: o.score for o in same},
                            min_score=m.threshold * m.clear_ratio,
                        )
                        res.peer_checks += 1
                        res.peers_total += len(peers)
                        res.peers_found += len(peers & {cp for cp, _, _ in found})
                        res.unrelated_listed += len({cp for cp, _, _ in found} - set(failures))

    for d in read_digests(history / "digests.jsonl"):
        if current_end is not None and d.interval_end != current_end:
            score_hour()
        current_end = d.interval_end
        bank.add_digest(d)
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
        "| p10 lead (d) | false / 1,000 charger-days (no injected fault) | false / 1,000 (strict) "
        "| co-degrading units found with the same early symptoms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(r.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
