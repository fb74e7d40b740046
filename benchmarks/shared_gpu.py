"""Several small runs on one GPU: total images/s of 1, 2 and 4 concurrent `distillctl distill` jobs (issue 12).

    python benchmarks/shared_gpu.py --concurrency 1 2 4 --steps 200 --rounds 2        # on a GPU machine
    python benchmarks/shared_gpu.py --device cpu --concurrency 1 2 --steps 2 --rounds 1 --train-limit 512   # plumbing

Each point is one Hydra sweep over `--concurrency` seeds of `recipe=cifar_resnet` (ResNet-56 -> ResNet-20, KD) run
side by side by the joblib launcher (`-m hydra/launcher=joblib hydra.launcher.n_jobs=N seed=0,..,N-1`), exactly as
a user would run seeds or a sweep. Two figures per point:
  - total images/s over the sweep's wall time (what finishing N seeds costs, start-up and compilation included);
  - the sum of the jobs' last-epoch images/s (steady state, assuming the jobs' last epochs overlap).
Concurrency levels alternate within each round so that drift of the machine hits all alike. The teacher is
trained for one step once (its speed does not depend on its weights); the teacher-logit cache is off unless
--teacher-cache, so every job runs its teacher as the first of a sequence of seeds would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from cli_runs import SHARED_CIFAR, distillctl, last_epoch_images_per_s


def timed(args: list[str]) -> float:
    """Wall seconds of a distillctl command (which stops the benchmark when it fails)."""
    start = time.perf_counter()
    distillctl(args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-limit", default="null", help="training images (null: all of CIFAR-10's)")
    parser.add_argument("--threads", type=int, default=2, help="trainer.threads of each job")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--teacher-cache", action="store_true", help="leave the teacher-logit cache at its default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillctl-shared-gpu")
    parser.add_argument("--data", default=str(SHARED_CIFAR) if SHARED_CIFAR.is_dir() else None,
                        help="dataset.path (default: the shared CIFAR-10 copy beside the repository, else the recipe's Hub id)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    common = ["recipe=cifar_resnet", "dataset.val_size=1000", "dataset.test_limit=1000", f"dataset.train_limit={args.train_limit}",
              f"trainer.device={args.device}", f"trainer.batch_size={args.batch}", f"trainer.threads={args.threads}"] + ([f"dataset.path={args.data}"] if args.data else [])
    teacher_dir = args.root / "teacher-run"
    teacher = teacher_dir / "teacher" / "model.safetensors"
    if not teacher.is_file():
        distillctl(["train-teacher", *common, "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.compile=false",
             f"run_dir={teacher_dir}"])
    per_job_images = args.epochs * args.steps * args.batch
    results: dict[int, list[dict]] = {c: [] for c in args.concurrency}
    for r in range(args.rounds):
        for c in args.concurrency:
            out = args.root / f"round{r}-x{c}"
            shutil.rmtree(out, ignore_errors=True)  # a sweep's folder is named by its start time: an earlier one would count
            seeds = ",".join(str(s) for s in range(c))
            wall = timed(["distill", "-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={c}", f"seed={seeds}", *common,
                        f"trainer.epochs={args.epochs}", f"trainer.max_steps_per_epoch={args.steps}", f"teacher.checkpoint={teacher}",
                        *([] if args.teacher_cache else ["distill.teacher_cache=off"]), f"run_dir={out}", "force=true"])
            jobs = sorted(h.parent for h in out.glob("sweep/*/*/student/history.jsonl"))
            if len(jobs) != c:
                raise SystemExit(f"expected {c} finished jobs under {out}, found {len(jobs)}")
            steady = sum(last_epoch_images_per_s(job) for job in jobs)
            row = {"round": r + 1, "jobs": c, "wall_s": round(wall, 1), "total_images_per_s": round(c * per_job_images / wall, 1),
                   "steady_images_per_s": round(steady, 1)}
            results[c].append(row)
            print(f"round {r + 1}, {c} job(s) side by side: {row['wall_s']} s wall, {row['total_images_per_s']:,.0f} img/s over "
                  f"the wall time, {row['steady_images_per_s']:,.0f} img/s steady (sum of last epochs)", flush=True)
    base = statistics.median(row["total_images_per_s"] for row in results[args.concurrency[0]])
    print(f"\n| jobs | total img/s (wall) | vs {args.concurrency[0]} | steady img/s (sum) |\n|---:|---:|---:|---:|")
    summary = []
    for c, rows in results.items():
        total = statistics.median(row["total_images_per_s"] for row in rows)
        steady = statistics.median(row["steady_images_per_s"] for row in rows)
        summary.append({"jobs": c, "total_images_per_s": total, "ratio": round(total / base, 3), "steady_images_per_s": steady})
        print(f"| {c} | {total:,.0f} | {total / base:.2f}x | {steady:,.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "rounds": [row for rows in results.values() for row in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
