"""`distillctl evaluate`: every model in the workspace on the test split, plus its size and CPU speed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from distillctl import expectations, files, measure, plots, report
from distillctl.compress import executorch_export, onnx_export
from distillctl.compress.executorch_export import ExecuTorchClassifier
from distillctl.compress.onnx_export import OnnxClassifier
from distillctl.compress.sparsity import weight_sparsity
from distillctl.config import QuantizeMethod
from distillctl.console import console
from distillctl.engine.predict import predict, top5_accuracy, topk_accuracy
from distillctl.errors import UserError
from distillctl.models import count_parameters, load_model
from distillctl.models.normalization import stored_normalization
from distillctl.stages.context import RunContext
from distillctl.teacher_files import teacher_checkpoint
from distillctl.tracking import tracked
from distillctl.workspace import METRICS_FILE, model_file

QUANTIZED = [str(m) for m in QuantizeMethod]
# Stages whose model is evaluated, in table order; the teacher first so agreement can refer to it.
MODEL_STAGES = ["teacher", "student", "pruned", *QUANTIZED]


def artifacts_to_evaluate(cfg: DictConfig, ctx: RunContext) -> dict[str, Path]:
    """Stage name -> model file, for every model the workspace (or teacher.checkpoint) provides."""
    found = {}
    for stage in MODEL_STAGES:
        if stage == "teacher" and cfg.teacher.checkpoint:
            found[stage] = teacher_checkpoint(cfg, ctx.workspace)
        elif (where := ctx.workspace.find(stage)) is not None:
            found[stage] = model_file(where)
    return found


def load_artifact(stage: str, path: Path, cfg: DictConfig, num_classes: int, threads: int) -> tuple[nn.Module, dict]:
    """A model file as something to call on image batches, with its metadata."""
    if path.suffix == ".onnx":
        return OnnxClassifier(path, threads), onnx_export.metadata(path)
    if path.suffix == ".pte":
        return ExecuTorchClassifier(path), executorch_export.metadata(path)
    # Foreign files without metadata are named by the config section of the model they stand for.
    return load_model(path, cfg["teacher" if stage == "teacher" else "student"].name, num_classes)


def runtime_of(model: nn.Module, image_size: int) -> tuple[nn.Module, str]:
    """What a model is timed as and the runtime's name: files run in their own runtime, torch models as deployed."""
    if isinstance(model, OnnxClassifier):
        return model, "onnxruntime"
    if isinstance(model, ExecuTorchClassifier):
        return model, "executorch-xnnpack"
    return measure.deployable(model, image_size)


def agreement(pred: torch.Tensor, reference: torch.Tensor | None) -> float | None:
    """Fraction of test images on which two models predict the same class."""
    return None if reference is None else (pred == reference).float().mean().item()


def add_teacher_ratios(results: dict[str, dict]) -> None:
    """How much smaller (file) and faster (batch-1 latency) each model is than the teacher: what the deployment gains."""
    teacher = results.get("teacher")
    for stage, row in results.items():
        if teacher is None or stage == "teacher":
            row["smaller_than_teacher"] = row["faster_than_teacher"] = None
            continue
        row["smaller_than_teacher"] = teacher["size_mb"] / row["size_mb"] if row["size_mb"] else None
        late = row.get("latency_ms")
        row["faster_than_teacher"] = teacher["latency_ms"] / late if late and teacher.get("latency_ms") else None


def run(cfg: DictConfig) -> dict:
    """Evaluate, write the report, and exit 1 when the recipe's expectations are not met."""
    ctx = RunContext.open(cfg)
    found = artifacts_to_evaluate(cfg, ctx)
    if not found:
        raise UserError(f"nothing to evaluate in {ctx.workspace.root}: run `distillctl pipeline` (or train-teacher and distill) with the same recipe first.")
    threads = cfg.trainer.threads or torch.get_num_threads()
    results, predictions = {}, {}
    for stage, path in found.items():
        console.print(f"evaluating {stage} from {path}")
        model, meta = load_artifact(stage, path, cfg, ctx.data.num_classes, threads)
        # Quantized formats run on the CPU kernels they were made for; float models on the run's device.
        quantized = stage in QUANTIZED
        device, precision = (torch.device("cpu"), "fp32") if quantized else (ctx.device, cfg.trainer.precision)
        # Each model sees images normalized as it was trained, whatever this command's dataset section says.
        mean, std = stored_normalization(meta, cfg.dataset.mean, cfg.dataset.std)
        batches = ctx.data.test.eval_batches(cfg.trainer.eval_batch_size, mean, std, device)
        logits, labels = predict(model.to(device), batches, device, precision)
        predictions[stage] = pred = logits.argmax(1)
        # Packed int8 and ONNX weights are not torch parameters: their counts come from the float source.
        recorded = (files.read_json(path.parent / METRICS_FILE) or {}) if quantized else {}
        timed, runtime = runtime_of(model, cfg.dataset.image_size)
        results[stage] = {
            "arch": meta.get("model", "?"),
            "path": str(path),
            "top1": topk_accuracy(logits, labels, 1),
            "top5": top5_accuracy(logits, labels),
            "agreement": agreement(pred, predictions.get("teacher")),
            # Compressed students are judged against the float student they came from, too.
            "agreement_with_student": agreement(pred, predictions.get("student")),
            "params": recorded.get("params") if quantized else count_parameters(model),
            "macs": recorded.get("macs") if quantized else measure.macs(model.cpu(), cfg.dataset.image_size),
            "size_mb": path.stat().st_size / 1e6,
            "sparsity": None if quantized else weight_sparsity(model),
            "runtime": runtime,
            **measure.speed(timed, cfg.dataset.image_size, threads),
        }
    add_teacher_ratios(results)
    context = {
        "recipe": Path(cfg.run_dir).name,
        "dataset": cfg.dataset.path,
        "test_images": len(ctx.data.test),
        "cpu": measure.cpu_name(),
        "threads": threads,
        # Sleeping OpenMP threads (OMP_WAIT_POLICY=PASSIVE, when a user sets it) add wake-up time to batch-1 latencies.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch": torch.__version__,
    }
    # `~expect` drops the gate for a short run; rows measured across seeds are `distillctl reproduce`'s to check.
    checked = expectations.check(cfg.get("expect") or {}, results, skip=expectations.ACROSS_SEEDS)
    report_dir = ctx.workspace.output("report")
    with tracked(cfg, report_dir) as tracker:
        figures = plots.draw(report_dir, results, context["recipe"])
        report.write(report_dir, results, context, checked, figures)
        tracker.log({f"{stage}/{key}": value for stage, row in results.items() for key, value in row.items()}, 0)
        tracker.artifacts([report_dir / METRICS_FILE, report_dir / "report.md", *figures])
    report.print_table(results, f"{context['recipe']}: {len(ctx.data.test)} test images, CPU timings on {threads} threads")
    console.print(f"report: {report_dir / 'report.md'}")
    report.enforce(checked)
    return results
