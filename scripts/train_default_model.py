"""Rebuild the default Foresight models shipped in edge/models/ (one command, fixed seeds).

    .venv/bin/python scripts/train_default_model.py [--days 160] [--out edge/models]

1. plays scripts/foresight_scenario.toml through the simulator's history
   generator (seed 4242, 160 days, 88 charge points, 24 PSU degradations and
   the other fault kinds as distractors) into build/foresight/history-train;
2. trains one detector per hardware family plus ``generic``
   (chargesight.cloud.train, seeded);
3. writes ``{family}.onnx`` + ``{family}.card.json`` to edge/models/.

Same scikit-learn/skl2onnx versions → same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from chargesight.cloud.train import TrainConfig, train_from_history
from chargesight.sim.history import generate_history
from chargesight.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scripts" / "foresight_scenario.toml"
SEED = 4242


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=float, default=160.0)
    ap.add_argument("--out", type=Path, default=ROOT / "edge" / "models")
    ap.add_argument("--history", type=Path, default=ROOT / "build" / "foresight" / "history-train")
    args = ap.parse_args(argv)
    t = time.monotonic()
    summary = generate_history(load_scenario(SCENARIO), args.days, args.history, seed=SEED)
    print(
        f"history: {summary.chargers} charge points, {summary.digests} digests, "
        f"{summary.faults} faults, {time.monotonic() - t:.1f} s"
    )
    t = time.monotonic()
    trained = train_from_history(args.history, TrainConfig())
    print(f"trained {len(trained.models)} models in {time.monotonic() - t:.1f} s")
    if args.out.exists():
        for old in list(args.out.glob("*.onnx")) + list(args.out.glob("*.card.json")):
            old.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    for p in trained.save(args.out):
        print(
            f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} ({p.stat().st_size} bytes)"
        )
    for fam, m in sorted(trained.models.items()):
        sup = m.card.get("supervised")
        held = (sup or m.card["unsupervised"])["held_out"]
        print(
            f"  {fam:18} {m.kind:12} threshold {m.threshold:.2f}  predicted "
            f"{held['predicted']}/{held['failures']}  median lead {held['lead_days_median']} d  "
            f"false/1000 charger-days {held['false_per_1000_charger_days']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
