"""Distillation images/s of one process against several (DDP) on the same machine: the CPU figure of
docs/distributed.md.

    python benchmarks/distributed.py --rounds 3 --json docs/figures/distributed_cpu.json

Each round runs `distillctl distill` (the quickstart pair: bundled ResNet-20 teacher, ResNet-8 student, KD, the
embedded CIFAR-10 sample) once as one process with all the machine's cores as threads and once as --processes
processes (trainer.devices, gloo) with the cores shared out, alternating, with the same global batch. The figure is
the last epoch's images/s from history.jsonl (the first pays for start-up and warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_runs import last_epoch_images_per_s


def run(devices: int, threads: int, epochs: int, batch: int, folder: Path) -> float:
    """Images/s of the last epoch of one distill run."""
    subprocess.run([sys.executable, "-m", "distillctl", "distill", f"trainer.devices={devices}", f"trainer.threads={threads}",
                    f"trainer.epochs={epochs}", f"trainer.batch_size={batch}", "distill.teacher_cache=off",
                    "dataset.test_limit=500", f"run_dir={folder}"], check=True, capture_output=True)
    return last_epoch_images_per_s(folder / "student")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    per_process = max(1, cores // args.processes)
    ratios, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one = run(1, cores, args.epochs, args.batch, Path(tmp) / f"one{r}")
            many = run(args.processes, per_process, args.epochs, args.batch, Path(tmp) / f"many{r}")
            ratios.append(many / one)
            rows.append({"round": r + 1, "one_process": one, f"{args.processes}_processes": many, "ratio": round(many / one, 3)})
            print(f"round {r + 1}: 1 process x {cores} threads {one:,.0f} img/s, {args.processes} processes x {per_process} "
                  f"threads {many:,.0f} img/s: {many / one:.2f}x", flush=True)
    summary = {"cores": cores, "processes": args.processes, "batch": args.batch, "rounds": rows,
               "ratio_median": round(statistics.median(ratios), 3)}
    print(f"{args.processes} processes / 1 process: median {summary['ratio_median']:.2f}x over {args.rounds} rounds")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
