"""Does the streamed loader keep a GPU fed? The same distillation step (ResNet-50 teacher -> ResNet-18 student at
224 px, KD) fed by `dataset.loader=stream` (JPEGs decoded and augmented by DataLoader workers) against
`dataset.loader=resident` (the decoded split already in the training device's memory, cropped and flipped there).
Issue 9's target: stream reaches at least 0.9x the resident images/s.

    python benchmarks/gpu_feed.py --images 20000 --workers 12 --rounds 3          # on a GPU machine
    python benchmarks/gpu_feed.py --images 300 --device cpu --steps 3 --rounds 1   # the plumbing, on a CPU

Each run is `distillctl distill` as a user types it, for 2 epochs of `--steps` steps; the figure is the second
epoch's training images/s (history.jsonl), so compilation, CUDA-graph capture and worker start-up stay out of it.
Runs alternate stream / resident so that drift of the machine hits both alike. The teacher is an untrained
ResNet-50 written to a local file (its speed does not depend on its weights) and the teacher-logit cache is off,
so both loaders run the same teacher forward every step. The photos are CIFAR-10 training images upscaled to
298x224 and re-encoded as JPEG (benchmarks/streaming.py builds and reuses them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from cli_runs import distillctl, last_epoch_images_per_s
from streaming import build_folder

LOADERS = ("stream", "resident")


def teacher_file(root: Path, name: str) -> Path:
    """An untrained timm model of `name` with a 10-class head, saved once as safetensors."""
    path = root / f"{name}-10classes.safetensors"
    if not path.is_file():
        import timm
        from safetensors.torch import save_file

        save_file(timm.create_model(name, num_classes=10).state_dict(), str(path))
    return path


def second_epoch_speed(args: argparse.Namespace, folder: Path, teacher: Path, loader: str, run_dir: Path) -> float:
    """Training images/s of the second epoch of one `distillctl distill` run."""
    distillctl([
        "distill", "dataset=imagefolder", f"dataset.path={folder}", f"dataset.loader={loader}",
        "dataset.image_size=224", f"dataset.resident_max_gb={args.resident_max_gb}",
        *([f"dataset.workers={args.workers}"] if args.workers is not None else []),
        "dataset.val_size=256", "dataset.test_limit=256", f"teacher.name={args.teacher}", f"teacher.checkpoint={teacher}",
        f"student.name={args.student}", "loss=kd", "distill.teacher_cache=off", f"trainer.device={args.device}",
        "trainer.epochs=2", f"trainer.max_steps_per_epoch={args.steps}", f"trainer.batch_size={args.batch}",
        f"trainer.eval_batch_size={args.batch}", f"trainer.threads={args.threads}", f"run_dir={run_dir}", "force=true",
    ])
    return last_epoch_images_per_s(run_dir / "student")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="training photos in the folder")
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="stream's DataLoader workers (default: the tool's own)")
    parser.add_argument("--threads", type=int, default=4, help="trainer.threads of the training process")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--resident-max-gb", type=float, default=64.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillctl-photos")
    parser.add_argument("--json", type=Path, default=None, help="write the rounds and the median ratio here")
    args = parser.parse_args()

    folder = build_folder(args.root / f"photos-{args.images}", args.images, 500)
    teacher = teacher_file(args.root, args.teacher)
    rows, ratios = [], []
    for r in range(args.rounds):
        speed = {loader: second_epoch_speed(args, folder, teacher, loader, args.root / "runs" / f"feed-{loader}") for loader in LOADERS}
        ratios.append(speed["stream"] / speed["resident"])
        rows.append({"round": r + 1, **speed, "ratio": round(ratios[-1], 3)})
        print(f"round {r + 1}: stream {speed['stream']:,.0f} img/s, resident {speed['resident']:,.0f} img/s: {ratios[-1]:.2f}x", flush=True)
    summary = {"device": args.device, "images": args.images, "batch": args.batch, "workers": args.workers, "teacher": args.teacher,
               "student": args.student, "rounds": rows, "ratio_median": round(statistics.median(ratios), 3)}
    print(f"stream / resident: median {summary['ratio_median']:.2f}x over {args.rounds} rounds (target >= 0.9x on a GPU)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
