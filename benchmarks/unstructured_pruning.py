"""What fine-tuning buys unstructured pruning: the quickstart's student (bundled ResNet-20 teacher -> ResNet-8, KD)
zeroed to several sparsities, each with and without KD fine-tuning, as one `-m` sweep of the pipeline.

    python benchmarks/unstructured_pruning.py                 # writes the table into docs/results.md

The student is distilled once (the sweep links it into every job); each job prunes, fine-tunes for
`prune.finetune_epochs` with the recipe's KD terms while the zeros stay zero, and `evaluate` measures it on the
10,000 CIFAR-10 test images.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from cli_runs import REPO, SHARED_CIFAR, distillctl
from results_doc import replace_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_CIFAR))
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=15, help="the student's distillation epochs")
    parser.add_argument("--sparsities", default="0.5,0.7,0.9")
    parser.add_argument("--finetune-epochs", default="0,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/distillctl-unstructured")
    args = parser.parse_args()

    work = Path(args.work)
    sweep = work / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    distillctl(["pipeline", "-m", "recipe=quickstart", "dataset=cifar10", f"dataset.path={args.data}",
                f"dataset.train_limit={args.train_limit}", "dataset.val_size=1000", f"trainer.epochs={args.epochs}",
                f"trainer.threads={args.threads}", "~expect", "prune=unstructured", f"prune.sparsity={args.sparsities}",
                f"prune.finetune_epochs={args.finetune_epochs}", f"hydra.sweep.dir={sweep}"], work)
    rows = []
    for report in sorted(sweep.glob("*/report/metrics.json")):
        models = json.loads(report.read_text())["models"]
        pruned = json.loads((report.parent.parent / "pruned/metrics.json").read_text())
        rows.append((pruned["sparsity"], pruned["finetune_epochs"] if "finetune_epochs" in pruned else pruned["epochs"],
                     models["student"]["top1"], models["pruned"]["top1"], models["pruned"]["agreement_with_student"]))
    rows.sort()
    lines = [
        f"Measured {date.today()} with `python benchmarks/unstructured_pruning.py --train-limit {args.train_limit} "
        f"--epochs {args.epochs} --sparsities {args.sparsities} --finetune-epochs {args.finetune_epochs}`: the quickstart's "
        f"ResNet-8 distilled from the bundled ResNet-20 on {args.train_limit:,} CIFAR-10 training images, pruned by "
        f"`distillctl pipeline -m prune=unstructured prune.sparsity=... prune.finetune_epochs=...`, tested on the "
        f"10,000 test images. Unpruned student: {rows[0][2]:.2%}.",
        "",
        "| weights zeroed | KD fine-tuning epochs | top-1 | Δ top-1 vs student (pts) | agree w/ student |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {s:.1%} | {e} | {p:.2%} | {(p - st) * 100:+.2f} | {a:.2%} |" for s, e, st, p, a in rows]
    print(replace_block(REPO / "docs/results.md", "unstructured", "Unstructured pruning: what fine-tuning buys", "\n".join(lines)))


if __name__ == "__main__":
    main()
