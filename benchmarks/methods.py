"""Every distillation method at one fixed budget, several seeds: test top-1 (mean, spread) and time per epoch.

    python benchmarks/methods.py                      # CPU budget (~75 min on 2 cores); table into docs/results.md
    python benchmarks/methods.py --train-limit 0 --val-size 5000 --epochs 240 --teacher-epochs 240   # full schedules (GPU)

One ResNet-56 teacher is trained once; each method then trains a ResNet-20 student from it through the CLI,
exactly as a user would (`distillctl distill recipe=cifar_<method> ...`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

from results_doc import replace_block, seed_row

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results.md"

# Method -> overrides on top of the cifar_resnet recipe (the recipes cifar_<method> select the same loss groups).
METHODS = {
    "no teacher (CE)": ["loss=ce"],
    "KD": ["loss=kd"],
    "FitNet": ["loss=fitnet"],
    "AT": ["loss=at"],
    "adversarial": ["loss=adversarial"],
    "DKD": ["loss=dkd"],
    "KD + AT": ["loss=kd_at"],
    "DIST": ["loss=dist"],
    "KD, standardized logits": ["loss=kd_ls"],
    "RKD": ["loss=rkd"],
    "PKT": ["loss=pkt"],
    "SP": ["loss=sp"],
    "CRD": ["loss=crd"],
    "NST": ["loss=nst"],
    "VID": ["loss=vid"],
    "CC": ["loss=cc"],
    "OFD": ["loss=ofd"],
    "ReviewKD": ["loss=reviewkd"],
    # One of the 4 epochs for the paraphraser (the reference: 30 before its 240), three for the student.
    "FT": ["loss=ft", "loss.terms.ft.paraphraser_epochs=1"],
}


def distillctl(*args: str, unless: Path | None = None) -> None:
    """One CLI call (its output dropped), skipped when `unless` names a metrics.json that is already there (--reuse)."""
    if unless is not None and unless.is_file():
        return
    subprocess.run([sys.executable, "-m", "distillctl", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10"))
    parser.add_argument("--train-limit", type=int, default=3600, help="training images; 0: all 50,000 but --val-size")
    parser.add_argument("--val-size", type=int, default=400, help="images held out for validation (picking the best epoch)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-methods")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs in --out (made by the same command) and run only the rest: a long table "
                             "interrupted, or one with methods added, goes on where it stopped")
    args = parser.parse_args()
    out = REPO / args.out
    data = [f"dataset.path={args.data}", f"dataset.val_size={args.val_size}"]
    if args.train_limit:
        data.append(f"dataset.train_limit={args.train_limit}")
    # A short budget gets a cosine schedule; the recipe's steps at 150/180/210 fit only its 240 epochs.
    schedule = [] if args.epochs >= 240 else ["scheduler=cosine"]
    teacher_dir = out / "teacher"
    distillctl("train-teacher", "recipe=cifar_resnet", *data, *schedule, f"trainer.epochs={args.teacher_epochs}", f"run_dir={teacher_dir}",
               unless=teacher_dir / "teacher" / "metrics.json" if args.reuse else None)
    teacher = json.loads((teacher_dir / "teacher" / "metrics.json").read_text())
    ckpt = teacher_dir / "teacher" / "model.safetensors"
    rows = {}
    for method, overrides in METHODS.items():
        scores, epoch_seconds = [], []
        for seed in args.seeds:
            # A comma in an override is a Hydra list: names keep letters, digits and _ only.
            run_dir = out / f"{method.replace(' ', '').replace('(', '').replace(')', '').replace('+', '_').replace(',', '')}-seed{seed}"
            distillctl("distill", "recipe=cifar_resnet", *data, *schedule, *overrides, f"seed={seed}", f"trainer.epochs={args.epochs}",
                       f"teacher.checkpoint={ckpt}", f"run_dir={run_dir}", unless=run_dir / "student" / "metrics.json" if args.reuse else None)
            metrics = json.loads((run_dir / "student" / "metrics.json").read_text())
            history = [json.loads(line) for line in (run_dir / "student" / "history.jsonl").read_text().splitlines()]
            scores.append(metrics["test_top1"])
            epoch_seconds.append(statistics.mean(h["seconds"] for h in history))
        rows[method] = (scores, statistics.median(epoch_seconds))
        print(f"{method:16s} " + " ".join(f"{s:.2%}" for s in scores) + f"  {statistics.median(epoch_seconds):.1f} s/epoch", flush=True)
    limit = (f"{args.train_limit:,} training and {args.val_size:,} validation images" if args.train_limit
             else f"all 50,000 training images, {args.val_size:,} of them for validation")
    cmd = "python benchmarks/methods.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    lines = [
        f"Measured {date.today()} with `{cmd}`: CIFAR-10 ({limit}; the full 10,000-image test split), "
        f"ResNet-56 teacher trained {args.teacher_epochs} epochs (test top-1 {teacher['test_top1']:.2%}), ResNet-20 students "
        f"{args.epochs} epochs each, batch 128, seeds {', '.join(map(str, args.seeds))}.",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | spread (std) | s/epoch |",
        "|---|" + "---:|" * (len(args.seeds) + 3),
    ]
    lines += [seed_row(method, scores, 2, f"{seconds:.1f}") for method, (scores, seconds) in rows.items()]
    block = replace_block(RESULTS, "methods", "Distillation methods at one budget (CPU)", "\n".join(lines))
    print(block)


if __name__ == "__main__":
    main()
