"""What `distillctl search` gains over a recipe's own values at the same budget: one search, then the winner and the
recipe's values each distilled over several seeds, compared on test top-1 (mean +- std) and the paired gain.

    python benchmarks/search_gain.py --json docs/figures/search_gain_cpu.json

Defaults: the quickstart recipe (bundled ResNet-20 teacher -> ResNet-8) on CIFAR-10 from ../shared, the search=kd
space (KD temperature and weight), 12 trials of 3 epochs each on a 10,000-image training subset; then 3 seeds of each
at the same 3 epochs. The search chooses on validation top-1; the comparison is on the test split, which the search
never saw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from cli_runs import SHARED_CIFAR, distillctl


def test_top1(run_dir: Path) -> float:
    """The test top-1 a distill run recorded."""
    return json.loads((run_dir / "student/metrics.json").read_text())["test_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--data", default=str(SHARED_CIFAR))
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/distillctl-search-gain")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = [f"recipe={args.recipe}", "dataset=cifar10", f"dataset.path={args.data}", f"dataset.train_limit={args.train_limit}",
              "dataset.val_size=1000", f"trainer.threads={args.threads}", f"trainer.epochs={args.epochs}", "~expect"]
    distillctl(["search", *common, "search=kd", f"search.trials={args.trials}", f"search.epochs={args.epochs}", "run_dir=runs/search"], work)
    found = json.loads((work / "runs/search/search/results.json").read_text())
    best = found["best"]["params"]
    winner = [f"{key}={value!r}" for key, value in best.items()]
    rows: dict[str, list[float]] = {"recipe": [], "searched": []}
    for seed in args.seeds:
        for name, extra in (("recipe", []), ("searched", winner)):
            run_dir = work / f"runs/{name}-seed{seed}"
            distillctl(["distill", *common, *extra, f"seed={seed}", f"run_dir={run_dir}"], work)
            rows[name].append(test_top1(run_dir))
    gains = [s - r for s, r in zip(rows["searched"], rows["recipe"])]
    summary = {
        "command": " ".join(sys.argv),
        "search": {"trials": found["context"]["trials"], "best_trial": found["best"]["number"], "best": best,
                   "best_val_top1": found["best"]["val_top1"],
                   "recipe_val_top1": (found.get("recipe_default") or {}).get("val_top1")},
        "seeds": args.seeds,
        "test_top1": {name: {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                      for name, v in rows.items()},
        "gain": {"values": gains, "mean": statistics.fmean(gains), "std": statistics.stdev(gains) if len(gains) > 1 else 0.0},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
