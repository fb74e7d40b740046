"""Training speed on a shared CPU: OpenMP's wait policy, with the machine idle and with one other busy process.

    python benchmarks/threads.py --repeats 3       # writes the table into docs/performance.md

Each run is `distillctl train-teacher` on the embedded sample (25 steps of batch 64, all cores), as a user runs it;
the figure is its images/s. Policies and conditions are interleaved so that drift on a shared machine hits all
alike, and the table gives medians and ratios, never a lone absolute time.
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


def main() -> None:
    """Interleave policies x {idle, one busy process}; write medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    policies, conditions = ["ACTIVE", "PASSIVE"], ["idle", "busy"]
    runs: dict[tuple[str, str], list[float]] = {(p, c): [] for p in policies for c in conditions}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for _ in range(args.repeats):
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
        f"Measured {date.today()} with `python benchmarks/threads.py --repeats {args.repeats}` on {os.cpu_count()} cores "
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
    print(replace_block(DOC, "threads", "Threads on a shared CPU", "\n".join(lines)))


if __name__ == "__main__":
    main()
