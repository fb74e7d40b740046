"""The streamed loader at real resolution: memory flat in data size, time to the first step, decode speed per worker.

    python benchmarks/streaming.py --sizes 5000 20000 --workers 1

Builds image folders of 298x224 JPEGs (CIFAR-10 training images upscaled and re-encoded: real photos, not noise),
then runs `distillctl distill` over each (a timm ResNet-18 teacher, MobileNetV3-Small student) with
dataset.loader=stream at 224 px and records:
  - peak memory of the whole process tree (proportional set size, so pages the DataLoader workers share with the
    trainer after fork count once), sampled every 0.2 s;
  - startup_seconds from metrics.json: process start to the end of the first training step;
and, in this process, decode + augment images/s for one worker with timm's transforms (what the loader uses) and
with torchvision.transforms.v2 doing the same crop/flip, interleaved over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from cli_runs import REPO, SHARED_CIFAR

PHOTO_SIZE = (298, 224)  # 4:3, so the loader's aspect handling is exercised


def write_photos(job: tuple[str, int, int, str]) -> None:
    """One slice of a split: CIFAR images upscaled to PHOTO_SIZE and saved as JPEG under <root>/<split>/<class>/."""
    import datasets

    root, start, stop, split = job
    table = datasets.load_dataset(str(SHARED_CIFAR), split=split).select(range(start, stop))
    names = table.features["label"].names
    for i, row in enumerate(table, start):
        folder = Path(root) / split / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["img"].convert("RGB").resize(PHOTO_SIZE, resample=3).save(folder / f"{i:06d}.jpg", quality=90)


def build_folder(root: Path, train: int, test: int) -> Path:
    """An image folder with `train` and `test` photos, built once and reused."""
    done = root / ".complete"
    if done.is_file():
        return root
    jobs = [(str(root), s, min(s + 2500, n), split) for split, n in (("train", train), ("test", test)) for s in range(0, n, 2500)]
    with Pool(os.cpu_count()) as pool:
        pool.map(write_photos, jobs)
    done.touch()
    return root


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of a process and all its descendants, in MB."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(command: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """Exit code, peak tree PSS (MB) and wall seconds of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_pss_mb(proc.pid))
        time.sleep(0.2)
    if proc.returncode:
        print(proc.stderr.read(), file=sys.stderr)
    return proc.returncode, peak, time.perf_counter() - start


def decode_speed(folder: Path, rounds: int, count: int) -> dict[str, float]:
    """Images/s of decode + RandomResizedCrop(224) + flip + uint8 tensor in one process: timm against torchvision v2."""
    import torch
    from torchvision.transforms import v2

    from distillctl.data.images import open_rgb
    from distillctl.data.stream import StreamSettings, transform

    files = sorted((folder / "train").rglob("*.jpg"))[:count]
    settings = StreamSettings(224, 0.08, 0.875, "bilinear", None, True, 0, "skip")
    pipelines = {
        "timm": transform(settings, training=True),
        "torchvision.v2": v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]),
    }
    torch.set_num_threads(1)
    speeds: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            for path in files:
                pipeline(open_rgb({"path": str(path)}))
            speeds[name].append(len(files) / (time.perf_counter() - start))
    return {name: round(statistics.median(values), 1) for name, values in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillctl-photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--decode-only", action="store_true", help="only the per-worker decode speed")
    args = parser.parse_args()
    if args.decode_only:
        print(decode_speed(build_folder(args.root / f"photos-{min(args.sizes)}", min(args.sizes), args.test), args.rounds, 300))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DISTILLCTL_CACHE": str(args.root / "cache")}
    folders = {n: build_folder(args.root / f"photos-{n}", n, args.test) for n in args.sizes}
    common = ["dataset.loader=stream", "dataset.image_size=224", f"dataset.workers={args.workers}", "dataset.val_size=200",
              "dataset.test_limit=200", "trainer.epochs=1", f"trainer.max_steps_per_epoch={args.steps}", "trainer.batch_size=32",
              "trainer.threads=1", "teacher=resnet18", "student=mobilenetv3_small_050"]
    cli = [sys.executable, "-m", "distillctl"]
    teacher_dir = args.root / "runs" / "teacher"
    smallest = folders[min(args.sizes)]
    subprocess.run([*cli, "train-teacher", *common, "teacher.checkpoint=null", f"dataset.path={smallest}", f"run_dir={teacher_dir}",
                    "trainer.max_steps_per_epoch=2"], env=env, check=True, stdout=subprocess.DEVNULL)
    rows = []
    for n, folder in folders.items():
        run_dir = args.root / "runs" / f"distill-{n}"
        code, peak, wall = run_measured([*cli, "distill", *common, f"dataset.path={folder}", f"run_dir={run_dir}", "force=true",
                                         f"teacher.checkpoint={teacher_dir / 'teacher' / 'model.safetensors'}"], env)
        metrics = json.loads((run_dir / "student" / "metrics.json").read_text()) if code == 0 else {}
        rows.append({"train_images": n, "exit": code, "peak_pss_mb": round(peak), "wall_s": round(wall, 1),
                     "startup_s": metrics.get("startup_seconds"), "images_per_s": metrics.get("images_per_s")})
    speed = decode_speed(folders[min(args.sizes)], args.rounds, 300)
    print("| train images | peak memory (PSS, MB) | process start to first step (s) | wall (s) |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['train_images']:,} | {row['peak_pss_mb']:,} | {row['startup_s']} | {row['wall_s']} |")
    print("\ndecode + RandomResizedCrop(224) + flip, one worker, images/s: " + ", ".join(f"{k} {v}" for k, v in speed.items()))
    if args.out:
        args.out.write_text(json.dumps({"runs": rows, "decode_per_worker": speed, "args": vars(args) | {"root": str(args.root), "out": str(args.out)}}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
