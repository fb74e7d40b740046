"""A ViT student through the whole pipeline: distilled from the bundled ResNet-20, pruned structurally (its width and
its MLP hidden channels; its attention heads stay whole), then int8 in ONNX Runtime.

    python benchmarks/transformer_pruning.py                  # writes the table into docs/results.md

One `distillctl pipeline` on a CIFAR-10 training subset; `evaluate` then measures every artifact in one process on the
10,000 test images, and the table gives each as a ratio to the unpruned ViT measured in that same run.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from cli_runs import REPO, SHARED_CIFAR, distillctl
from results_doc import replace_block

ROWS = [("student", "ViT-Tiny/8 (KD)"), ("pruned", "pruned to 50% MACs + KD fine-tune"), ("onnx_int8", "pruned, ONNX Runtime int8")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that make the ViT student and its pruning (shared with benchmarks/head_pruning.py)."""
    parser.add_argument("--data", default=str(SHARED_CIFAR))
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/distillctl-transformer-pruning")


def overrides(args: argparse.Namespace, target: float = 0.5) -> list[str]:
    """The distillctl overrides of the ViT-Tiny/8 student, its distillation and its pruning to `target` of its MACs."""
    return ["recipe=quickstart", "dataset=cifar10", f"dataset.path={args.data}", f"dataset.train_limit={args.train_limit}",
            "dataset.val_size=1000", f"trainer.epochs={args.epochs}", f"trainer.threads={args.threads}",
            "student.name=vit_tiny_patch16_224", "++student.kwargs.img_size=32", "++student.kwargs.patch_size=8",
            "optimizer=adamw", "optimizer.lr=0.001", f"prune.target_macs_ratio={target}",
            f"prune.finetune_epochs={args.finetune_epochs}", "prune.finetune_lr=0.0005", "~expect"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    distillctl(["pipeline", *overrides(args), "quantize=onnx_int8", "run_dir=runs/vit"], work)
    report = json.loads((work / "runs/vit/report/metrics.json").read_text())
    models, context = report["models"], report["context"]
    base = models["student"]
    lines = [
        f"Measured {date.today()} with `python benchmarks/transformer_pruning.py --train-limit {args.train_limit} --epochs "
        f"{args.epochs} --finetune-epochs {args.finetune_epochs}`: `vit_tiny_patch16_224` built for 32 px in 8-px patches "
        f"(`++student.kwargs.img_size=32 ++student.kwargs.patch_size=8`, AdamW) distilled from the bundled ResNet-20 "
        f"({models['teacher']['top1']:.2%}) on {args.train_limit:,} CIFAR-10 training images, tested on the "
        f"{context['test_images']:,} test images. CPU: {context['cpu']}, {context['threads']} threads. Ratios are to the "
        "unpruned ViT in the same `evaluate` run.",
        "",
        "| model | top-1 | agree w/ ViT | params (M) | MMACs | file (MB) | latency b1 (ms) | b1 speed-up | b256 (img/s) | b256 speed-up | runtime |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage, label in ROWS:
        row = models[stage]
        lines.append(
            f"| {label} | {row['top1']:.2%} | {row['agreement_with_student']:.2%} | {row['params'] / 1e6:.3f} | {row['macs'] / 1e6:.1f} "
            f"| {row['size_mb']:.2f} | {row['latency_ms']:.2f} | {base['latency_ms'] / row['latency_ms']:.2f}x "
            f"| {row['throughput']:,.0f} | {row['throughput'] / base['throughput']:.2f}x | {row['runtime']} |")
    print(replace_block(REPO / "docs/results.md", "transformer_pruning", "A ViT student: structured pruning and int8 (CPU)", "\n".join(lines)))


if __name__ == "__main__":
    main()
