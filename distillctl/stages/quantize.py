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

from distillctl import workspace
from distillctl.compress import executorch_export, int8_fx, onnx_export
from distillctl.console import console, print_summary_table
from distillctl.engine import distributed
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.errors import UserError
from distillctl.evaluation import measure
from distillctl.losses import build_objective
from distillctl.models import architecture_metadata, count_parameters, load_model
from distillctl.models.metadata import require_classes
from distillctl.models.normalization import stored_normalization
from distillctl.models.teachers import load_teacher
from distillctl.provenance import made_from
from distillctl.stages.base import Stage
from distillctl.stages.context import RunContext
from distillctl.stages.training import TrainingJob, train_and_save
from distillctl.tracking import tracked
from distillctl.workspace import (
    METRICS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PTE_FILE,
    Workspace,
    recorded_fingerprint,
)
from distillctl.workspace import fingerprint as config_fingerprint

EXPORT_DIR = "export"
Normalization = tuple[list[float], list[float]]


def folder(cfg: DictConfig) -> str:
    """The folder this run writes: the method's name."""
    return str(cfg.quantize.method)


def sections(cfg: DictConfig) -> list[str]:
    """The config sections the quantized model depends on (QAT trains, so its training set-up too)."""
    return ["dataset", "quantize", "export", *(["loss", "trainer", "optimizer", "distill"] if cfg.quantize.method == "int8_qat" else [])]


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the quantized model depends on: the quantize (and export) settings, training set-up for QAT, the source."""
    try:
        source_id = recorded_fingerprint(ws.final_student(str(cfg.quantize.source))) or "unknown"
    except UserError:
        source_id = "no-source"
    return config_fingerprint(cfg, sections(cfg), [str(cfg.seed), source_id])


def calibration_images(cfg: DictConfig, ctx: RunContext, norm: Normalization) -> Iterator[torch.Tensor]:
    """A seeded random subset of the training images, normalized as the model was trained and unaugmented, on the CPU."""
    train = ctx.data.train
    q = cfg.quantize
    count = min(q.calibration_batches * q.calibration_batch_size, len(train))
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:count]
    for x, _ in train.subset(chosen).eval_batches(q.calibration_batch_size, *norm, torch.device("cpu")):
        yield x


def test_logits(cfg: DictConfig, ctx: RunContext, model: nn.Module, norm: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the test split, on the CPU where every quantized format runs."""
    cpu = torch.device("cpu")
    batches = ctx.data.test.eval_batches(cfg.trainer.eval_batch_size, *norm, cpu)
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
    method, q = folder(cfg), cfg.quantize
    ctx = RunContext.open(cfg)
    source = ctx.workspace.final_student(str(cfg.quantize.source)) / MODEL_FILE
    model, meta = load_model(source)
    require_classes(meta, ctx.data.classes, "model", source)
    model.eval()
    norm = stored_normalization(meta, cfg.dataset.mean, cfg.dataset.std)
    size = cfg.dataset.image_size
    # Everything that can be refused is checked before any file is written.
    if method in ("int8_static", "int8_qat"):
        int8_fx.check_supported(model, q.skip)
    objective = check_qat_objective(cfg) if method == "int8_qat" else None
    float_logits = test_logits(cfg, ctx, model, norm)[0]
    info = {"source": str(source), "made_from": made_from(ctx.workspace, [source]), "params": count_parameters(model),
            "macs": measure.macs(model, size)}
    fp = fingerprint(cfg, ctx.workspace)
    backend = int8_fx.resolve_backend(str(q.backend))
    quantization = {"method": method, "backend": backend, "per_channel": q.per_channel, "skip": list(q.skip), "image_size": size}
    keep = architecture_metadata(meta)
    out_dir = ctx.workspace.output(method)
    start = time.perf_counter()
    console.print(f"quantizing {meta['model']} from {source} ({method})")
    # The results are staged and replace the folder's together at the end (workspace.publish).
    if method == "int8_qat":
        metrics = train_qat(cfg, ctx, model, keep, quantization, objective, info, fp, norm)
        if not distributed.is_main():  # the other processes of a multi-process job only trained
            return metrics
        staged = out_dir / workspace.STAGING
        quantized, _ = load_model(staged / MODEL_FILE)
    else:
        staged = workspace.staging(out_dir)
        workspace.save_config(staged, cfg)
        quantized = quantize_after_training(cfg, ctx, model, keep, quantization, staged, norm)
        metrics = {"stage": method, "model": meta["model"], "fingerprint": fp, **info}
    logits, labels = test_logits(cfg, ctx, quantized, norm)
    metrics |= {
        "seconds": round(time.perf_counter() - start, 2),
        "test_top1": topk_accuracy(logits, labels, 1),
        "float_test_top1": topk_accuracy(float_logits, labels, 1),
        "agreement_with_float": (logits.argmax(1) == float_logits.argmax(1)).float().mean().item(),
        "size_mb": workspace.model_file(staged).stat().st_size / 1e6,
        "float_size_mb": source.stat().st_size / 1e6,
    }
    if cfg.export.onnx:
        metrics["onnx_export"] = str(export_onnx(cfg, ctx, model, keep, norm, info["made_from"]))
    workspace.write_metrics(staged, metrics)
    if method != "int8_qat":  # QAT's run was tracked while it trained
        with tracked(cfg, out_dir) as tracker:
            tracker.log(metrics, 0)
            tracker.artifacts([staged / METRICS_FILE, staged / workspace.CONFIG_FILE])
    workspace.publish(out_dir)
    print_summary(method, metrics, out_dir)
    return metrics


def quantize_after_training(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict, quantization: dict, into: Path, norm: Normalization) -> nn.Module:
    """fp16/bf16 casts, int8_static, onnx_int8 and executorch_int8 written into `into`: no training, a calibration
    pass at most."""
    q, method, size = cfg.quantize, cfg.quantize.method, cfg.dataset.image_size
    if method in int8_fx.CAST_DTYPES:
        cast = int8_fx.Cast(copy.deepcopy(model), int8_fx.CAST_DTYPES[method])
        int8_fx.save_quantized(into / MODEL_FILE, cast, keep, quantization)
        return cast
    if method == "int8_static":
        prepared = int8_fx.prepare(copy.deepcopy(model), torch.zeros(1, 3, size, size), quantization["backend"], q.per_channel, q.skip)
        seen = int8_fx.calibrate(prepared, calibration_images(cfg, ctx, norm))
        console.print(f"calibrated on {seen} training images")
        int8 = int8_fx.convert(prepared)
        int8_fx.save_quantized(into / MODEL_FILE, int8, keep, quantization)
        return int8
    if method == "executorch_int8":
        seen = executorch_export.export_int8(model, into / PTE_FILE, size, calibration_images(cfg, ctx, norm), q.per_channel, keep)
        console.print(f"calibrated on {seen} training images")
        return executorch_export.ExecuTorchClassifier(into / PTE_FILE)
    with tempfile.TemporaryDirectory(dir=into) as scratch:  # `into` is a staging folder: gone with it if killed
        float_path = Path(scratch) / "float.onnx"
        onnx_export.export(model, float_path, size, cfg.export.opset, keep)
        onnx_export.quantize_int8(float_path, into / ONNX_FILE, calibration_images(cfg, ctx, norm), q.per_channel, q.reduce_range)
    return onnx_export.OnnxClassifier(into / ONNX_FILE, cfg.trainer.threads)


def train_qat(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict, quantization: dict, objective, info: dict, fp: str, norm: Normalization) -> dict:
    """Fake-quantized fine-tuning through the one training loop, then conversion to int8."""
    q, size = cfg.quantize, cfg.dataset.image_size
    teacher = load_teacher(cfg, ctx.workspace, ctx.data.classes) if objective.needs_teacher else None
    prepared = int8_fx.prepare(copy.deepcopy(model), torch.zeros(1, 3, size, size), quantization["backend"], q.per_channel, q.skip, qat=True)
    # Start from calibrated ranges rather than fake-quantizing with placeholders during the first steps.
    int8_fx.calibrate(prepared, calibration_images(cfg, ctx, norm))

    def finalize(trained: nn.Module, out_dir: Path) -> nn.Module:
        int8 = int8_fx.convert(copy.deepcopy(trained).to(memory_format=torch.contiguous_format))
        int8_fx.save_quantized(out_dir / MODEL_FILE, int8, keep, quantization)
        return int8

    job = TrainingJob(
        folder(cfg), keep["model"], prepared, objective, q.qat_lr, fp, teacher,
        epochs=q.qat_epochs, compile="false",  # fake-quant observers update Python-side state every step
        normalization=norm, model_kwargs=keep.get("kwargs", {}), extra_metrics=info, extra_metadata=keep, finalize=finalize,
        publish=False,  # run() adds the comparison with the float model first
    )
    return train_and_save(ctx, job)


def export_onnx(cfg: DictConfig, ctx: RunContext, model: nn.Module, keep: dict, norm: Normalization, made: dict[str, str]) -> Path:
    """runs/<recipe>/export/model.onnx, checked against PyTorch on test images; `made`: provenance.made_from."""
    out_dir = ctx.workspace.output(EXPORT_DIR)
    staged = workspace.staging(out_dir)
    onnx_export.export(model, staged / ONNX_FILE, cfg.dataset.image_size, cfg.export.opset, keep)
    images = next(ctx.data.test.eval_batches(256, *norm, torch.device("cpu")))[0]
    with torch.inference_mode():
        exported, reference = onnx_export.OnnxClassifier(staged / ONNX_FILE)(images), model.cpu().eval()(images)
    difference = (exported - reference).abs().max().item()
    # Relative to the logits' own size: an untrained model's logits run into the thousands, where float rounding
    # alone differs by more than 1.
    scale = reference.abs().max().item()
    same_class = (exported.argmax(1) == reference.argmax(1)).float().mean().item()
    workspace.write_metrics(staged, {"stage": EXPORT_DIR, "model": keep["model"], "max_abs_difference_vs_torch": difference,
                                     "max_abs_logit": scale, "same_top1_vs_torch": same_class, "opset": cfg.export.opset,
                                     "made_from": made})
    workspace.publish(out_dir)
    path = out_dir / ONNX_FILE
    console.print(f"exported {path}: on {len(images)} test images it gives PyTorch's top class for {same_class:.1%}, "
                  f"logits at most {difference:.2e} apart (largest logit {scale:.2e})")
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


STAGE = Stage("quantize", folder, sections, fingerprint, run, trains=lambda cfg: folder(cfg) == "int8_qat")
