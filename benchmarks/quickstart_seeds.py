"""Quickstart accuracy over seeds: teacher, student with KD, student without a teacher (loss=ce).

    python benchmarks/quickstart_seeds.py --seeds 0 1 2       # writes the table into docs/results.md

Every run goes through the CLI exactly as a user runs it; the student without KD gets the same budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from results_doc import replace_block, seed_row

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results.md"


def distillctl(*args: str) -> None:
    """Run one CLI command, failing loudly."""
    subprocess.run([sys.executable, "-m", "distillctl", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def test_top1(run_dir: Path, stage: str) -> float:
    """The stage's test accuracy from its metrics.json."""
    return json.loads((run_dir / stage / "metrics.json").read_text())["test_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-quickstart")
    args = parser.parse_args()
    scores: dict[str, list[float]] = {"teacher (resnet20)": [], "student + KD (resnet8)": [], "student, no teacher (resnet8)": []}
    for seed in args.seeds:
        kd_dir, ce_dir = REPO / args.out / f"seed{seed}-kd", REPO / args.out / f"seed{seed}-ce"
        distillctl("pipeline", "recipe=quickstart", f"seed={seed}", f"run_dir={kd_dir}", "expect={}")
        distillctl("distill", "recipe=quickstart", f"seed={seed}", f"run_dir={ce_dir}", "loss=ce")
        scores["teacher (resnet20)"].append(test_top1(kd_dir, "teacher"))
        scores["student + KD (resnet8)"].append(test_top1(kd_dir, "student"))
        scores["student, no teacher (resnet8)"].append(test_top1(ce_dir, "student"))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1%}" for k, v in scores.items()), flush=True)
    lines = [
        f"Measured {date.today()} with `python benchmarks/quickstart_seeds.py --seeds {' '.join(map(str, args.seeds))}` "
        "(recipe `quickstart`: 2,250 train / 250 val / 500 test images of the embedded sample, 15 epochs each).",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | spread (std) |",
        "|---|" + "---:|" * (len(args.seeds) + 2),
    ]
    lines += [seed_row(name, values, 1) for name, values in scores.items()]
    block = replace_block(RESULTS, "quickstart-seeds", "Quickstart over seeds", "\n".join(lines))
    print(block)


if __name__ == "__main__":
    main()
