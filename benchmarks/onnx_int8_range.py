"""ONNX Runtime int8 with full 8-bit weights against 7-bit ones (`quantize.reduce_range`), on the bundled ResNet-20.

On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of products in int16, which full-range weights
can overflow; this measures what that costs here (agreement with fp32 and top-1 on CIFAR-10 test images) and
whether 7-bit weights cost speed (batch-1 latency and batch-256 throughput, the variants interleaved).

    python benchmarks/onnx_int8_range.py                                     # the embedded sample's 500 test images
    python benchmarks/onnx_int8_range.py --data ../shared/data/cifar10       # CIFAR-10's 10,000 test images
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from distillctl.compress import onnx_export
from distillctl.config import BUNDLED_WEIGHTS, DatasetConfig
from distillctl.data import eval_batches, load_splits
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.environment import cpu_name
from distillctl.evaluation.measure import speed
from distillctl.models import load_model


def main() -> None:
    """Quantize the bundled teacher both ways, then report accuracy and interleaved speed as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="embedded", help="dataset.path: embedded, or a local copy of CIFAR-10")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="speed rounds, the variants interleaved in each")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"path": args.data})
    data = load_splits(data_cfg)
    norm = (data_cfg.mean, data_cfg.std, torch.device("cpu"))
    calibration = [x for x, _ in eval_batches(data.train.images[:1024], data.train.labels[:1024], 128, *norm)]
    model, meta = load_model(BUNDLED_WEIGHTS / "resnet20_cifar10.safetensors")
    model.eval()
    tests = list(eval_batches(data.test.images, data.test.labels, 500, *norm))

    with tempfile.TemporaryDirectory() as scratch:
        float_path = Path(scratch) / "float.onnx"
        onnx_export.export(model, float_path, 32, 18, meta)
        runtimes = {"fp32": onnx_export.OnnxClassifier(float_path, args.threads)}
        for reduce_range in (False, True):
            path = Path(scratch) / f"int8-reduce_range-{reduce_range}.onnx"
            onnx_export.quantize_int8(float_path, path, calibration, per_channel=True, reduce_range=reduce_range)
            runtimes[f"int8 reduce_range={str(reduce_range).lower()}"] = onnx_export.OnnxClassifier(path, args.threads)

        cpu = torch.device("cpu")
        reference, labels = predict(model, tests, cpu)
        rows = {}
        for name, runtime in runtimes.items():
            logits, _ = predict(runtime, tests, cpu)
            rows[name] = {"top1": topk_accuracy(logits, labels, 1),
                          "agreement_with_torch_fp32": (logits.argmax(1) == reference.argmax(1)).float().mean().item()}
        timings = {name: [] for name in runtimes}
        for _ in range(args.rounds):
            for name, runtime in runtimes.items():
                timings[name].append(speed(runtime, 32, args.threads))

    for name, runs in timings.items():
        for key in ("latency_ms", "throughput"):
            values = [run[key] for run in runs]
            rows[name][key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    result = {"cpu": cpu_name(), "threads": args.threads, "data": args.data, "test_images": len(labels),
              "torch_fp32_top1": topk_accuracy(reference, labels, 1), "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
