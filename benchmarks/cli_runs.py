"""Running `distillctl` from a benchmark as a user would, offline, and reading back what a run recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10"


def distillctl(args: list[str], cwd: Path = REPO) -> None:
    """Run a distillctl command in `cwd` with the Hub offline; stop with its output when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "distillctl", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"distillctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def last_epoch_images_per_s(stage_dir: Path) -> float:
    """Training images/s of the last epoch a stage's history.jsonl holds."""
    lines = [line for line in (stage_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["images_per_s"]
