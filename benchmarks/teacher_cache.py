"""Teacher-logit cache: distillation images/s reading cached logits against running the teacher, the cost of
filling the cache, and `reproduce` end to end with the cache off, filling as it goes (auto) and filled first (on).

    python benchmarks/teacher_cache.py --steps 20 --rounds 3 --json docs/figures/teacher_cache_cpu.json
    python benchmarks/teacher_cache.py --reproduce --modes off auto auto-fp16 --json docs/figures/teacher_cache_reproduce_cpu.json
    python benchmarks/teacher_cache.py --device cuda --steps 200 --rounds 5

Steps: the set-up of throughput.py (ResNet-56 teacher, ResNet-20 student, batch 128, 0.1 CE + 0.9 KD at T=4,
pad-crop and flip on CIFAR-10) through fit(). Each round trains twice from the same seed, alternating: once running
the teacher, once reading every logit from a cache (filled beforehand by a third, uncounted run of the same seed,
which draws the same views). Fill: the teacher over every view of --fill-images images in evaluation batches,
extrapolated to the whole training split. Reproduce: `distillctl reproduce recipe=quickstart` (3 seeds, one
bundled teacher) in fresh run and logit-cache folders, once per mode, sequentially.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distillctl.config import DatasetConfig, OptimizerConfig, SchedulerConfig, TrainerConfig  # noqa: E402
from distillctl.data import Batches, load_splits  # noqa: E402
from distillctl.engine.fit import Trainee, fit  # noqa: E402
from distillctl.engine.optim import build_optimizer, build_schedule  # noqa: E402
from distillctl.engine.teacher_cache import CacheSettings, fill, open_cache  # noqa: E402
from distillctl.losses import build_objective  # noqa: E402
from distillctl.models import create_model  # noqa: E402


def distill(images, labels, device, steps: int, batch: int, cache_dir: Path | None, alone: bool = False) -> tuple[float, float | None]:
    """Steady-state images/s of two short epochs of KD through fit(), with the teacher or with its cache (alone: the
    student trained with cross-entropy and no teacher, the ceiling); and the share of images the teacher ran on."""
    data = OmegaConf.structured(DatasetConfig)
    torch.manual_seed(0)
    teacher = create_model("resnet56", 10).to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    student = create_model("resnet20", 10).to(device, memory_format=torch.channels_last)
    trainer = OmegaConf.structured(TrainerConfig(epochs=2, batch_size=batch, max_steps_per_epoch=steps, log_every=50))
    batches = Batches(images, labels, batch, data.mean, data.std, device, seed=0, channels_last=True, max_steps=steps)
    objective = build_objective({"ce": {}} if alone else {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}})
    optimizer = build_optimizer(student.parameters(), OmegaConf.structured(OptimizerConfig), 0.05, device)
    scheduler = build_schedule(optimizer, OmegaConf.structured(SchedulerConfig(name="step", milestones=[150])), 0.05, steps, 2)
    cache = None
    if cache_dir is not None:
        cache = open_cache(CacheSettings("auto", cache_dir, 4.0, True, "auto", 512), batches, teacher, 10, [])
    result = fit(Trainee(student, objective, optimizer, scheduler, {}), batches, lambda m: 0.0, trainer,
                 Path(tempfile.mkdtemp()), "bench", teacher=None if alone else teacher, teacher_cache=cache)
    if cache is not None:
        cache.save()
    return result.history[-1]["images_per_s"], result.teacher_share


def fill_rate(images, labels, device, n: int) -> tuple[float, int]:
    """Teacher forwards per second while filling the cache for every view of n images; and the views per image."""
    data = OmegaConf.structured(DatasetConfig)
    torch.manual_seed(0)
    teacher = create_model("resnet56", 10).to(device, memory_format=torch.channels_last).eval()
    batches = Batches(images[:n], labels[:n], 128, data.mean, data.std, device, seed=0, channels_last=True)
    settings = CacheSettings("auto", Path(tempfile.mkdtemp()), 4.0, True, "auto", 512)
    cache = open_cache(settings, batches, teacher, 10, [])
    start = time.perf_counter()
    fill(cache, batches, teacher, settings)
    return n * batches.num_views / (time.perf_counter() - start), batches.num_views


def steps_benchmark(args) -> dict:
    device = torch.device(args.device)
    data = load_splits(OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"path": args.data, "val_size": 0}))
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    teacher_ips, cached_ips, alone_ips = [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up
        cache_dir = Path(tempfile.mkdtemp())
        distill(images, labels, device, args.steps, args.batch, cache_dir)  # fills the views this seed draws
        live, _ = distill(images, labels, device, args.steps, args.batch, None)
        cached, share = distill(images, labels, device, args.steps, args.batch, cache_dir)
        alone, _ = distill(images, labels, device, args.steps, args.batch, None, alone=True)
        assert share == 0.0, share
        if r:
            teacher_ips.append(live)
            cached_ips.append(cached)
            alone_ips.append(alone)
        print(f"round {r}: teacher {live:,.0f} img/s, cache {cached:,.0f} img/s, no teacher {alone:,.0f} img/s")
    rate, views = fill_rate(images, labels, device, args.fill_images)
    # The machine's speed drifts between rounds (shared cores): ratios are taken within a round, then the median.
    speedups = [c / t for c, t in zip(cached_ips, teacher_ips)]
    ceilings = [a / t for a, t in zip(alone_ips, teacher_ips)]
    live, cached = statistics.median(teacher_ips), statistics.median(cached_ips)
    n = len(labels)
    fill_s = n * views / rate
    saved_per_epoch = n / live - n / cached
    return {
        "device": args.device, "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
        "teacher_img_s": teacher_ips, "cached_img_s": cached_ips, "no_teacher_img_s": alone_ips,
        "speedup_per_round": [round(x, 2) for x in speedups], "speedup": round(statistics.median(speedups), 2),
        "no_teacher_speedup": round(statistics.median(ceilings), 2),
        "views": views, "fill_forwards_per_s": round(rate, 1), "train_images": n,
        "fill_seconds_full_split": round(fill_s), "epoch_seconds_teacher": round(n / live, 1),
        "epoch_seconds_cached": round(n / cached, 1), "break_even_epochs": round(fill_s / saved_per_epoch, 1),
    }


def reproduce_benchmark(args) -> dict:
    rows = {}
    for name in args.modes:
        # auto-fp16: the cache in float16 (distill.teacher_cache_half=true); otherwise float32, the default.
        mode, half = name.removesuffix("-fp16"), name.endswith("-fp16")
        work = Path(tempfile.mkdtemp(prefix=f"distillctl-cache-{name}-"))
        env = {**os.environ, "DISTILLCTL_CACHE": str(work / "cache")}
        cmd = [sys.executable, "-m", "distillctl", "reproduce", "recipe=quickstart", f"distill.teacher_cache={mode}",
               f"distill.teacher_cache_half={str(half).lower()}", f"trainer.threads={args.threads}", f"run_dir={work / 'runs'}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # 1: an expectation missed, still a finished run
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
        results = json.loads((work / "runs/reproduce/results.json").read_text())
        rows[name] = {"seconds": round(seconds, 1), **{k: results["rows"][k] for k in ("student", "baseline", "gain")}}
        print(name, rows[name])
    return {"recipe": "quickstart", "threads": args.threads, "modes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--fill-images", type=int, default=100)
    parser.add_argument("--reproduce", action="store_true", help="time `reproduce recipe=quickstart` per cache mode instead")
    parser.add_argument("--modes", nargs="+", default=["off", "auto", "on"], help="off, auto, on; NAME-fp16 for a float16 cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    figures = reproduce_benchmark(args) if args.reproduce else steps_benchmark(args)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
