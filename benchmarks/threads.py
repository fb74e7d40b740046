"""Training speed and batch-1 latency on a shared CPU under OpenMP's wait policies.

    python benchmarks/threads.py --repeats 3                   # training, idle and busy: the `threads` table
    python benchmarks/threads.py --part latency --repeats 8    # batch-1 latency: the `threads-latency` table

Each training run is `distillctl train-teacher` on the embedded sample (25 steps of batch 64, all cores), as a user
runs it; the figure is its images/s. Each latency run is a fresh process timing an untrained ResNet-8 as `search`
times a student and `evaluate` a model (frozen TorchScript, median of 100 batch-1 forwards, all cores). Policies and
conditions are interleaved so that drift on a shared machine hits all alike, and the tables give medians and ratios,
never a lone absolute time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from results_doc import replace_block

from distillctl.evaluation import latency_probe

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def images_per_s(policy: str, workdir: Path) -> float:
    """One short training run under OMP_WAIT_POLICY=policy; its measured throughput."""
    run_dir = workdir / f"run-{policy}"
    cmd = [sys.executable, "-m", "distillctl", "train-teacher", "recipe=quickstart", "teacher.checkpoint=null",
           "trainer.epochs=1", "trainer.max_steps_per_epoch=25", f"run_dir={run_dir}", "force=true"]
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(cmd, check=True, cwd=workdir, env=env, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "teacher" / "metrics.json").read_text())["images_per_s"]


def latency(policy: str) -> float:
    """One fresh process's median batch-1 latency (ms) of ResNet-8 under OMP_WAIT_POLICY=policy, timed as `search`
    times a student (the probe takes this process's environment)."""
    os.environ["OMP_WAIT_POLICY"] = policy
    return latency_probe.latency_ms("resnet8", 10, {}, 32, os.cpu_count() or 1, 100)


def latency_table(repeats: int) -> str:
    """Interleave the policies on the idle machine; write medians and their ratio."""
    policies = ["ACTIVE", "PASSIVE"]
    runs: dict[str, list[float]] = {p: [] for p in policies}
    for _ in range(repeats):
        for policy in policies:
            runs[policy].append(latency(policy))
    median = {p: statistics.median(v) for p, v in runs.items()}
    lines = [
        f"Measured {date.today()} with `python benchmarks/threads.py --part latency --repeats {repeats}` on "
        f"{os.cpu_count()} idle cores: batch-1 latency of an untrained ResNet-8 at 32 px, frozen TorchScript, median "
        "of 100 forwards, one fresh process per run.",
        "",
        "| OMP_WAIT_POLICY | latency b1 (ms) | runs (ms) |",
        "|---|---:|---|",
        *(f"| {p} | {median[p]:.2f} | {', '.join(f'{v:.2f}' for v in runs[p])} |" for p in policies),
        "",
        f"PASSIVE against ACTIVE: {median['PASSIVE'] / median['ACTIVE']:.2f}x the latency.",
    ]
    return replace_block(DOC, "threads-latency", "Threads on a shared CPU", "\n".join(lines))


def main() -> None:
    """The training table (policies x {idle, one busy process}), the latency table, or both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=["training", "latency", "all"], default="training")
    args = parser.parse_args()
    if args.part in ("latency", "all"):
        print(latency_table(args.repeats))
    if args.part in ("training", "all"):
        print(training_table(args.repeats))


def training_table(repeats: int) -> str:
    """Interleave policies x {idle, one busy process}; write medians and ratios."""
    policies, conditions = ["ACTIVE", "PASSIVE"], ["idle", "busy"]
    runs: dict[tuple[str, str], list[float]] = {(p, c): [] for p in policies for c in conditions}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for _ in range(repeats):
            for condition in conditions:
                busy = subprocess.Popen([sys.executable, "-c", BUSY]) if condition == "busy" else None
                try:
                    for policy in policies:
                        runs[policy, condition].append(images_per_s(policy, workdir))
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    median = {key: statistics.median(values) for key, values in runs.items()}
    lines = [
        f"Measured {date.today()} with `python benchmarks/threads.py --repeats {repeats}` on {os.cpu_count()} cores "
        "(torch's default thread count: all of them). `busy`: one other process spinning on one core, as when CI or a "
        "second job shares the machine. Images/s of `train-teacher` on the embedded sample, median of the runs.",
        "",
        "| OMP_WAIT_POLICY | idle (img/s) | busy (img/s) | busy / idle | runs (idle; busy) |",
        "|---|---:|---:|---:|---|",
    ]
    for policy in policies:
        idle, busy = median[policy, "idle"], median[policy, "busy"]
        cells = "; ".join(", ".join(f"{v:.0f}" for v in runs[policy, c]) for c in conditions)
        lines.append(f"| {policy} | {idle:.0f} | {busy:.0f} | {busy / idle:.2f} | {cells} |")
    lines += [
        "",
        f"PASSIVE against ACTIVE: {median['PASSIVE', 'idle'] / median['ACTIVE', 'idle']:.2f}x idle, "
        f"{median['PASSIVE', 'busy'] / median['ACTIVE', 'busy']:.2f}x busy.",
    ]
    return replace_block(DOC, "threads", "Threads on a shared CPU", "\n".join(lines))


if __name__ == "__main__":
    main()
