"""The teacher cache on the streaming loader: distillation images/s reading the cached answers for the replayed
crops against running the teacher, on real photos.

    python benchmarks/teacher_cache_stream.py --rounds 3 --json docs/figures/teacher_cache_stream_cpu.json

Builds a folder of 96x72 JPEGs (shared CIFAR-10 training images upscaled and re-encoded; reuses benchmarks/
streaming.py's writer), streams it at 32 px with one decode worker, and distills a ResNet-56 teacher into a
ResNet-20 (0.1 CE + 0.9 KD) with `distillctl distill`. One run of seed 0 fills the cache (2 views per image, one
per epoch); then each round runs seed 1 twice, alternating: with the cache (every answer read) and with
distill.teacher_cache=off (the teacher runs). The figure is the last epoch's images/s from history.jsonl.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import streaming  # noqa: E402
from cli_runs import last_epoch_images_per_s  # noqa: E402

streaming.PHOTO_SIZE = (96, 72)


def teacher_file(folder: Path) -> Path:
    """A ResNet-56 saved as distillctl saves a trained teacher (its accuracy does not matter for speed)."""
    import torch

    from distillctl import artifacts
    from distillctl.data import preprocess
    from distillctl.models import create_model, model_metadata

    torch.manual_seed(0)
    path = folder / "resnet56.safetensors"
    meta = model_metadata("resnet56", 10, {}, [str(i) for i in range(10)], [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261],
                          preprocess.recorded(32, 0.875, "bilinear", "stream"))
    artifacts.save_weights(path, create_model("resnet56", 10), meta)
    return path


def run(photos: Path, teacher: Path, seed: int, mode: str, work: Path, batch: int) -> tuple[float, float | None]:
    """(last epoch's images/s, share of images the teacher ran on) of one distill run."""
    run_dir = work / f"runs/{mode}-{seed}-{len(list(work.glob('runs/*')))}"
    subprocess.run([sys.executable, "-m", "distillctl", "distill", f"dataset.path={photos}", "dataset.loader=stream",
                    "dataset.workers=1", "dataset.image_size=32", "dataset.test_limit=200", "dataset.val_size=200",
                    f"teacher.checkpoint={teacher}", "teacher.name=resnet56", "student=resnet20", "trainer.epochs=2",
                    f"trainer.batch_size={batch}", "trainer.threads=1", f"distill.teacher_cache={mode}", f"seed={seed}",
                    f"run_dir={run_dir}"], check=True, capture_output=True, env={**os.environ, "DISTILLCTL_CACHE": str(work / "cache")})
    cache = json.loads((run_dir / "student/metrics.json").read_text())["teacher_cache"]
    return last_epoch_images_per_s(run_dir / "student"), cache and cache["teacher_ran_on"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = streaming.build_folder(work / "photos", args.images, 200)
        teacher = teacher_file(work)
        fill_ips, fill_share = run(photos, teacher, 0, "auto", work, args.batch)
        print(f"fill run (seed 0): {fill_ips:,.0f} img/s, teacher ran on {fill_share:.0%}", flush=True)
        rows = []
        for r in range(args.rounds):
            cached, share = run(photos, teacher, 1, "auto", work, args.batch)
            live, _ = run(photos, teacher, 1, "off", work, args.batch)
            rows.append({"round": r + 1, "cached": cached, "teacher": live, "ratio": round(cached / live, 3), "teacher_ran_on": share})
            print(f"round {r + 1}: cached {cached:,.0f} img/s (teacher ran on {share:.0%}), teacher {live:,.0f} img/s: "
                  f"{cached / live:.2f}x", flush=True)
    summary = {"images": args.images, "batch": args.batch, "fill_images_per_s": fill_ips, "rounds": rows,
               "ratio_median": round(statistics.median(r["ratio"] for r in rows), 3)}
    print(f"cached / teacher: median {summary['ratio_median']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
