"""`distillctl quantize`: the final float student (pruned when there is one) as int8, fp16/bf16 or ONNX int8."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from distillctl import measure, workspace
from distillctl.compress import onnx_export, quantize
from distillctl.data import eval_batches
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.engine.progress import console, print_summary_table
from distillctl.errors import UserError, did_you_mean
from distillctl.losses import build_objective
from distillctl.models import architecture_metadata, count_parameters, load_model
from distillctl.stages import distill, prune
from distillctl.stages.context import RunContext
from distillctl.stages.training import train_and_save
from distillctl.workspace import METRICS_FILE, MODEL_FILE, ONNX_FILE, Workspace, fingerprint as config_fingerprint, recorded_fingerprint

# Each method writes runs/<recipe>/<method>/, so several quantized versions sit side by side for evaluate.
METHODS = ("fp16", "bf16", "int8_static", "int8_qat", "onnx_int8")
SOURCES = ("auto", "student", "pruned")
EXPORT_DIR = "export"


def source_dir(cfg: DictConfig, ws: Workspace) -> Path:
    """The float model to quantize: quantize.source, where auto prefers the pruned student."""
    choice = cfg.quantize.source
    if choice not in SOURCES:
        raise UserError(f"quantize.source={choice}: use one of {', '.join(SOURCES)}.")
    if choice in ("auto", "pruned") and (found := ws.find("pruned")) is not None:
        return found
    if choice == "pruned":
        raise UserError(f"no pruned model in {ws.root / 'pruned'}: run `distillctl prune` with the same recipe first, or set quantize.source=student.")
    return prune.student_dir(ws)


def output_name(cfg: DictConfig) -> str:
    """The folder this run writes: the method's name."""
    method = cfg.quantize.method
    if method not in METHODS:
        raise UserError(f"quantize.method={method}.{did_you_mean(method, METHODS)} Use one of {', '.join(METHODS)}.")
    return method


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the quantized model depends on: the quantize (and export) settings, training set-up for QAT, the source."""
    try:
        source_id = recorded_fingerprint(source_dir(cfg, ws)) or "unknown"
    except UserError:
        source_id = "no-source"
    sections = ["dataset", "quantize", "export"]
    if cfg.quantize.method == "int8_qat":
        sections += ["loss", "trainer", "optimizer"]
    return config_fingerprint(cfg, sections, [str(cfg.seed), source_id])


def calibration_images(cfg: DictConfig, ctx: RunContext) -> Iterator[torch.Tensor]:
    """A seeded random subset of the training images, normalized and unaugmented, on the CPU."""
    images, labels = ctx.data.train
    q = cfg.quantize
    count = min(q.calibration_batches * q.calibration_batch_size, len(labels))
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))[:count]
    for x, _ in eval_batches(images[chosen], labels[chosen], q.calibration_batch_size, cfg.dataset.mean, cfg.dataset.std, torch.device("cpu")):
        yield x


def test_logits(cfg: DictConfig, ctx: RunContext, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the test split, on the CPU where every quantized format runs."""
    cpu = torch.device("cpu")
    batches = eval_batches(*ctx.data.test, cfg.trainer.eval_batch_size, cfg.dataset.mean, cfg.dataset.std, cpu)
    return predict(model, batches, cpu, "fp32")


def check_qat_objective(cfg: DictConfig):
    """The QAT objective: logit terms only, since fusion renames the layers feature terms would tap."""
    objective = build_objective(cfg.loss.terms)
    student_layers, teacher_layers = objective.layers()
    if student_layers or teacher_layers:
        raise UserError(
            f"int8_qat fine-tunes with logit terms only; this recipe's loss taps layers ({', '.join(student_layers or teacher_layers)}). "
            "Add loss=kd to the command."
        )
    return objective


def run(cfg: DictConfig) -> dict:
    """Quantize the workspace's final float model into runs/<recipe>/<method>/ and, with export.onnx, export it."""
    method = output_name(cfg)
    q = cfg.quantize
    ctx = RunContext.open(cfg)
    source = source_dir(cfg, ctx.workspace) / MODEL_FILE
    model, meta = load_model(source)
    model.eval()
    size = cfg.dataset.image_size
    # Everything that can be refused is checked before any file is written.
    if method in ("int8_static", "int8_qat"):
        quantize.check_supported(model, q.skip)
    objective = check_qat_objective(cfg) if method == "int8_qat" else None
    float_logits = test_logits(cfg, ctx, model)[0]
    info = {"source": str(source), "params": count_parameters(model), "macs": measure.macs(model, size)}
    fp = fingerprint(cfg, ctx.workspace)
    quantization = {"method": method, "backend": q.backend, "per_channel": q.per_channel, "skip": list(q.skip), "image_size": size}
    keep = architecture_metadata(meta)
    out_dir = ctx.workspace.output(method)
    # A re-run that stops half-way must not leave the folder looking finished with the old metrics.
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    workspace.save_config(out_dir, cfg)
    start = time.perf_counter()
    console.print(f"quantizing {meta['model']} from {source} ({method})")
    if method == "int8_qat":
        metrics = train_qat(cfg, ctx, model, keep, quantization, objective, info, fp)
        quantized, _ = load_model(out_dir / MODEL_FILE)
    else:
        quantized = quantize_after_training(cfg, ctx, model, keep, quantization, out_dir)
        metrics = {"stage": method, "model": meta["model"], "fingerprint": fp, **info}
    logits, labels = test_logits(cfg, ctx, quantized)
    metrics |= {
        "seconds": round(time.perf_counter() - start, 2),
        "test_top1": topk_accuracy(logits, labels, 1),
        "float_test_top1": topk_accuracy(float_logits, labels, 1),
        "agreement_with_float": (logits.argmax(1) == float_logits.argmax(1)).float().mean().item(),
        "size_mb": workspace.model_file(out_dir).stat().st_size / 1e6,
        "float_size_mb": source.stat().st_size / 1e6,
    }
    if cfg.export.onnx:
        metrics["onnx_export"] = str(export_onnx(cfg, ctx, model, keep))
    workspace.write_metrics(out_dir, metrics)
    print_summary(method, metrics, out_dir)
    return metrics


def quantize_after_training(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict, quantization: dict, out_dir: Path) -> nn.Module:
    """fp16/bf16 casts, int8_static and onnx_int8: no training, a calibration pass at most."""
    q, method, size = cfg.quantize, cfg.quantize.method, cfg.dataset.image_size
    if method in quantize.CAST_DTYPES:
        cast = quantize.Cast(copy.deepcopy(model), quantize.CAST_DTYPES[method])
        quantize.save_quantized(out_dir / MODEL_FILE, cast, keep, quantization)
        return cast
    if method == "int8_static":
        prepared = quantize.prepare(copy.deepcopy(model), torch.zeros(1, 3, size, size), q.backend, q.per_channel, q.skip)
        seen = quantize.calibrate(prepared, calibration_images(cfg, ctx))
        console.print(f"calibrated on {seen} training images")
        int8 = quantize.convert(prepared)
        quantize.save_quantized(out_dir / MODEL_FILE, int8, keep, quantization)
        return int8
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        float_path = Path(scratch) / "float.onnx"
        onnx_export.export(model, float_path, size, cfg.export.opset, keep)
        onnx_export.quantize_int8(float_path, out_dir / ONNX_FILE, calibration_images(cfg, ctx), q.per_channel)
    return onnx_export.OnnxClassifier(out_dir / ONNX_FILE, cfg.trainer.threads)


def train_qat(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict, quantization: dict, objective, info: dict, fp: str) -> dict:
    """Fake-quantized fine-tuning through the one training loop, then conversion to int8."""
    q, size = cfg.quantize, cfg.dataset.image_size
    teacher = distill.load_teacher(cfg, ctx.workspace, ctx.data.num_classes)[0] if objective.needs_teacher else None
    prepared = quantize.prepare(copy.deepcopy(model), torch.zeros(1, 3, size, size), q.backend, q.per_channel, q.skip, qat=True)
    # Start from calibrated ranges rather than fake-quantizing with placeholders during the first steps.
    quantize.calibrate(prepared, calibration_images(cfg, ctx))
    tuned = copy.deepcopy(cfg)
    tuned.trainer.epochs = q.qat_epochs
    tuned.trainer.compile = "false"  # fake-quant observers update Python-side state every step
    tuned_ctx = RunContext(tuned, ctx.device, ctx.data, ctx.workspace)

    def finalize(trained: nn.Module, out_dir: Path) -> nn.Module:
        int8 = quantize.convert(copy.deepcopy(trained).to(memory_format=torch.contiguous_format))
        quantize.save_quantized(out_dir / MODEL_FILE, int8, keep, quantization)
        return int8

    return train_and_save(tuned_ctx, q.method, keep["model"], prepared, objective, q.qat_lr, fp, teacher, info, keep, finalize=finalize)


def export_onnx(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict) -> Path:
    """runs/<recipe>/export/model.onnx, checked against PyTorch on test images."""
    out_dir = ctx.workspace.output(EXPORT_DIR)
    path = out_dir / ONNX_FILE
    onnx_export.export(model, path, cfg.dataset.image_size, cfg.export.opset, keep)
    images = next(eval_batches(*ctx.data.test, 256, cfg.dataset.mean, cfg.dataset.std, torch.device("cpu")))[0]
    with torch.inference_mode():
        difference = (onnx_export.OnnxClassifier(path)(images) - model.cpu().eval()(images)).abs().max().item()
    workspace.write_metrics(out_dir, {"stage": EXPORT_DIR, "model": keep["model"], "max_abs_difference_vs_torch": difference, "opset": cfg.export.opset})
    console.print(f"exported {path} (largest logit difference from PyTorch on 256 test images: {difference:.2e})")
    return path


def print_summary(method: str, metrics: dict, out_dir: Path) -> None:
    """The rich table that closes the stage."""
    print_summary_table(f"quantize: {metrics['model']} -> {method}", [
        ("test top-1", f"{metrics['test_top1']:.2%} (float {metrics['float_test_top1']:.2%})"),
        ("agreement with float", f"{metrics['agreement_with_float']:.2%}"),
        ("file size", f"{metrics['size_mb']:.3f} MB (float {metrics['float_size_mb']:.3f} MB, {metrics['float_size_mb'] / metrics['size_mb']:.2f}x smaller)"),
        ("time", f"{metrics['seconds']:.1f} s"),
        ("artifacts", str(out_dir)),
    ])
