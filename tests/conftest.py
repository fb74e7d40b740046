"""Shared fixtures: an isolated data cache and a CLI runner that works in a temporary directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import preloaded_cli
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10"

# Under pytest-xdist (`make test`), each worker and the runs it starts get an equal share of the cores: on 2 cores, 2
# workers of 1 thread finished a sample of the suite 1.2-1.5x sooner than 2 workers of 2 threads each. Set before any
# test module imports torch; a test's own trainer.threads still wins.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

# Tiny but real: the embedded CIFAR-10 sample, a few steps per epoch.
TINY = ["trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.batch_size=32", "dataset.test_limit=200"]


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded data lands in a per-session cache, never in the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["DISTILLCTL_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    return cache


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt, as in a terminal, whatever the test runner (an xdist worker) set up."""
    import signal

    host = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, host)


@dataclass
class Result:
    """A finished CLI call."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr together."""
        return self.out + self.err


@pytest.fixture
def cli(tmp_path: Path):
    """Run `distillctl ...` as a process of its own in tmp_path, as a user would (forked with torch and timm already
    imported: tests/preloaded_cli.py says when and why)."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
        proc = preloaded_cli.shared().run(args, cwd=cwd or tmp_path, env={**os.environ, **(env or {})}, timeout=600)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


TINY_RECIPE = """# @package _global_
description: a few steps of everything, for tests
defaults:
  - override /teacher: resnet8
  - override /student: resnet8
trainer: {epochs: 1, max_steps_per_epoch: 3, batch_size: 32, log_every: 1}
prune: {finetune_epochs: 1}
quantize: {calibration_batches: 2, qat_epochs: 1}
evaluate: {latency_repeats: 10, throughput_batch: 32}
dataset: {test_limit: 200}
expect:
  student.top1: {min: 0.0}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A user's own recipe in ./recipes of the working directory."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(TINY_RECIPE)
    return tmp_path


def write_photo_folder(root: Path, per_split: dict[str, int], size: tuple[int, int] = (96, 72)) -> Path:
    """An image folder of real photos: embedded CIFAR-10 images upscaled to `size` (width, height) and saved as JPEG
    in root/<split>/<class>/, the layout a user's own images come in (split "": root/<class>/, class folders alone)."""
    import datasets

    from distillctl.data.sources import EMBEDDED_DIR

    for split, count in per_split.items():
        table = datasets.load_dataset(str(EMBEDDED_DIR), split="train" if split != "test" else "test").select(range(count))
        names = table.features["label"].names
        for i, row in enumerate(table):
            folder = root / split / names[row["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            row["img"].convert("RGB").resize(size).save(folder / f"{i:05d}.jpg", quality=90)
    return root
