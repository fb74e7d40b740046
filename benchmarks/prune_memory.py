"""Memory of structured pruning: what `prune_structured` adds to the process on its way to half a model's MACs,
with each try's torch-pruning graph freed at once (as the prune stage does) and left to Python's collector (as it
did before); and how soon a model whose graph torch-pruning cannot follow (EfficientFormerV2) is stopped.

    python benchmarks/prune_memory.py            # writes the table into docs/results.md

Each measurement runs in a process of its own (resident memory read every 20 ms by a thread); the two ways run one
after the other for each model. Untrained timm models at 224 px, ImageNet's 1,000 classes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from datetime import date
from pathlib import Path

from results_doc import replace_block

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = ["resnet18", "resnet50", "convnext_tiny", "efficientnet_b0", "mobilenetv3_large_100", "vit_small_patch16_224"]
RUNAWAY = "efficientformerv2_s0"


def measure_one(name: str, size: int, freed: bool) -> dict:
    """Prune `name` to half its MACs in this process; the extra resident memory at the peak, seconds, outcome."""
    import timm
    import torch

    import distillctl.models  # noqa: F401  (the CIFAR zoo in timm's registry)
    from distillctl.compress import channels
    from distillctl.compress.runaway import resident_bytes
    from distillctl.errors import UserError
    from distillctl.models import weight_bytes

    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    if not freed:  # the code before: each try's graph waits for Python's cyclic collector
        channels.gc = type("NoCollect", (), {"collect": staticmethod(lambda: 0)})
    model = timm.create_model(name, num_classes=1000).eval()
    weights = weight_bytes(model)
    start = resident_bytes()
    peak, done = [start], threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], resident_bytes())

    threading.Thread(target=watch, daemon=True).start()
    began = time.perf_counter()
    try:
        channels.prune_structured(model, torch.zeros(1, 3, size, size), 0.5, None, "l1", False)
        outcome = "pruned"
    except UserError as error:
        outcome = str(error).split(":")[0]
    done.set()
    return {"model": name, "freed": freed, "weights_mb": weights / 2**20, "extra_mb": (peak[0] - start) / 2**20,
            "seconds": time.perf_counter() - began, "outcome": outcome}


def in_subprocess(name: str, size: int, freed: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", name, str(size), str(int(freed))], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "SIZE", "FREED"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--doc", default=str(REPO / "docs/results.md"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), bool(int(args.one[2])))))
        return

    rows = []
    for name in MODELS:
        freed, kept = in_subprocess(name, args.size, True), in_subprocess(name, args.size, False)
        print(name, freed, kept, flush=True)
        rows.append(f"| {name} | {freed['weights_mb']:.0f} | {freed['extra_mb']:.0f} | {kept['extra_mb']:.0f} | "
                    f"{kept['extra_mb'] / freed['extra_mb']:.1f}x | {freed['seconds']:.1f} | {kept['seconds']:.1f} |")
    runaway = in_subprocess(RUNAWAY, args.size, True)
    print(runaway, flush=True)
    command = "python benchmarks/prune_memory.py" + (f" --size {args.size}" if args.size != 224 else "")
    body = "\n".join([
        f"Measured {date.today().isoformat()} with `{command}`: each model (untrained, {args.size} px, 1,000 classes) "
        "pruned to half its MACs by `prune_structured` in a process of its own: the extra resident memory at its peak, "
        "and the seconds it took on 2 threads (freeing each try's graph is a full collection after each try: up to 0.15 s each).",
        "",
        "| model | weights (MB) | extra memory, each try's graph freed (MB) | left to the collector (MB) | ratio | "
        "seconds, freed | seconds, collector |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"{RUNAWAY} at {args.size} px: \"{runaway['outcome']}\" after {runaway['seconds']:.0f} s and "
        f"{runaway['extra_mb'] / 1024:.1f} GB more memory (the bound: 2 GB, or 20x the weights when larger).",
    ])
    print(replace_block(Path(args.doc), "prune-memory", "Memory of structured pruning (CPU)", body))


if __name__ == "__main__":
    main()
