"""Attention heads or channels alone: a ViT student pruned to the same MACs three ways (`prune.head_ratio=0`, the
default, removes channels of its width and MLPs and keeps every head; `prune.head_ratio=0.34` first removes one head
of three in every block; `prune.round_to=8` keeps every pruned width a multiple of 8), each fine-tuned with KD over
several seeds, then timed side by side in one process; and how low each can take the MACs at all.

    python benchmarks/head_pruning.py                # writes the table into docs/results.md

It starts from the ViT-Tiny/8 student of benchmarks/transformer_pruning.py (distilled here first when `--work` holds
none), so the two tables describe the same model. Each variant's pruned files come from `distillctl prune` in a
workspace of its own; top-1 is what the stage measured on the 10,000 test images; speeds are medians over rounds that
alternate the models (batch 1 latency and batch 256 throughput, TorchScript as `evaluate` times them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from cli_runs import REPO, distillctl
from results_doc import replace_block
from transformer_pruning import add_arguments, overrides

sys.path.insert(0, str(REPO))
from distillctl.compress.channels import head_counts, prune_structured  # noqa: E402
from distillctl.evaluation import measure  # noqa: E402
from distillctl.models import load_model  # noqa: E402

# label -> (prune.head_ratio, prune.round_to)
VARIANTS = {"channels only (`head_ratio=0`)": (0.0, None), "1 of 3 heads, then channels (`head_ratio=0.34`)": (0.34, None),
            "channels in multiples of 8 (`round_to=8`)": (0.0, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = overrides(args, args.target)
    student = work / "runs/vit/student"
    if not (student / "model.safetensors").is_file():
        distillctl(["distill", *common, "run_dir=runs/vit"], work)

    top1: dict[str, list[float]] = {}
    pruned_files: dict[str, Path] = {}
    for label, (ratio, round_to) in VARIANTS.items():
        for seed in args.seeds:
            run_dir = work / f"runs/heads{ratio}-round{round_to}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(student, run_dir / "student")  # the same distilled student for every run
            distillctl(["prune", *common, f"run_dir={run_dir}", f"seed={seed}", f"prune.head_ratio={ratio}",
                        f"prune.round_to={'null' if round_to is None else round_to}"], work)
            metrics = json.loads((run_dir / "pruned/metrics.json").read_text())
            top1.setdefault(label, []).append(metrics["test_top1"])
            pruned_files.setdefault(label, run_dir / "pruned/model.safetensors")

    models = {"ViT-Tiny/8 student (KD)": load_model(student / "model.safetensors")[0]}
    models |= {label: load_model(path)[0] for label, path in pruned_files.items()}
    traced = {label: measure.deployable(model, 32)[0] for label, model in models.items()}
    timings: dict[str, list[dict[str, float]]] = {label: [] for label in models}
    torch.manual_seed(0)
    for _ in range(args.rounds):  # alternate the models so that a busy moment of the machine falls on all of them
        for label, model in traced.items():
            timings[label].append(measure.speed(model, 32, args.threads, latency_repeats=100, batch=256))  # evaluate's defaults
    base = {key: statistics.median(t[key] for t in timings["ViT-Tiny/8 student (KD)"]) for key in ("latency_ms", "throughput")}
    student_top1 = json.loads((student / "metrics.json").read_text())["test_top1"]

    seeds = " ".join(map(str, args.seeds))
    lines = [
        f"Measured {date.today()} with `python benchmarks/head_pruning.py --seeds {seeds} --target {args.target} "
        f"--finetune-epochs {args.finetune_epochs}`: the ViT-Tiny/8 student of the table above ({student_top1:.2%}) pruned to "
        f"{args.target:.0%} of its MACs {len(VARIANTS)} ways and fine-tuned with KD for {args.finetune_epochs} epochs, seeds {seeds}; "
        f"speeds are medians of {args.rounds} alternating rounds in one process on {args.threads} threads (seed "
        f"{args.seeds[0]}'s files; MACs count the attention products).",
        "",
        "| pruned | heads | MMACs | " + " | ".join(f"top-1 seed {s}" for s in args.seeds)
        + " | mean | std | latency b1 (ms) | b1 speed-up | b256 (img/s) | b256 speed-up |",
        "|---|---:|---:|" + "---:|" * (len(args.seeds) + 6),
    ]
    for label, model in models.items():
        speed = {key: statistics.median(t[key] for t in timings[label]) for key in ("latency_ms", "throughput")}
        cells = (f"{speed['latency_ms']:.2f}", f"{base['latency_ms'] / speed['latency_ms']:.2f}x",
                 f"{speed['throughput']:,.0f}", f"{speed['throughput'] / base['throughput']:.2f}x")
        if label in top1:
            values = top1[label]
            accuracy = [f"{v:.2%}" for v in values] + [f"{statistics.mean(values):.2%}", f"{statistics.stdev(values) if len(values) > 1 else 0:.2%}"]
        else:  # the unpruned student: one distillation
            accuracy = ["-"] * len(args.seeds) + [f"{student_top1:.2%}", "-"]
        lines.append(f"| {label} | {sum(head_counts(model).values())} | {measure.macs(model, 32) / 1e6:.1f} | "
                     + " | ".join([*accuracy, *cells]) + " |")
    # How far each can go: the MACs left when the bisection's largest channel ratio is removed from every group.
    example = torch.zeros(1, 3, 32, 32)
    floors = {ratio: prune_structured(models["ViT-Tiny/8 student (KD)"], example, None, 0.95, "l1", False, head_ratio=ratio)[1]
              for ratio in (0.0, 0.34, 0.67)}
    lines += ["", "The least structured pruning reaches (95% of every prunable group's channels removed): "
              + ", ".join(f"`head_ratio={ratio}` {floor:.1%} of the MACs" for ratio, floor in floors.items()) + "."]
    print(replace_block(REPO / "docs/results.md", "head_pruning", "A ViT student: attention heads or channels (CPU)",
                        "\n".join(lines)))


if __name__ == "__main__":
    main()
