"""`distillctl evaluate`: every model in the workspace on the test split, plus its size and CPU speed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from distillctl import environment, files, provenance
from distillctl.compress.sparsity import weight_sparsity
from distillctl.console import console
from distillctl.engine.predict import predict, top5_accuracy, topk_accuracy
from distillctl.environment import cpu_name, threads_phrase
from distillctl.errors import UserError
from distillctl.evaluation import expectations, measure, plots, report
from distillctl.evaluation.class_accuracy import ClassAccuracy
from distillctl.model_files import QUANTIZED, final_of, load_runnable, runtime_of, workspace_models
from distillctl.models import count_parameters
from distillctl.models.metadata import require_classes
from distillctl.models.normalization import stored_normalization
from distillctl.models.teachers import load_teacher
from distillctl.stages.context import RunContext
from distillctl.teacher_files import teacher_checkpoints
from distillctl.tracking import tracked
from distillctl.workspace import METRICS_FILE


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


def teacher_ensemble(cfg: DictConfig, ctx: RunContext) -> tuple[torch.nn.Module, dict, list[Path]]:
    """The `teachers` ensemble as one model, as distill ran it (fed the data set's normalization), its metadata and
    its members' files: agreement is measured against what the student learned from."""
    console.print(f"evaluating the teacher ensemble of {len(cfg.teachers)} (teachers)")
    teacher = load_teacher(cfg, ctx.workspace, ctx.data.classes)
    return teacher.model, {"model": " + ".join(teacher.names)}, teacher.paths


def run(cfg: DictConfig) -> dict:
    """Evaluate, write the report, and exit 1 when the recipe's expectations are not met."""
    ctx = RunContext.open(cfg)
    found = workspace_models(cfg, ctx.workspace)
    if cfg.teachers:  # the ensemble the student learned from is its teacher, not teacher.checkpoint's file
        found = {"teacher": teacher_checkpoints(cfg, ctx.workspace)[0][0], **{s: p for s, p in found.items() if s != "teacher"}}
    if not found:
        raise UserError(f"nothing to evaluate in {ctx.workspace.root}: run `distillctl pipeline` (or train-teacher and distill) with the same recipe first.")
    threads = cfg.trainer.threads or torch.get_num_threads()
    results, predictions = {}, {}
    by_class = ClassAccuracy.empty(ctx.data.classes, ctx.data.test.labels)
    for stage, path in found.items():
        if stage == "teacher" and cfg.teachers:
            model, meta, sources = teacher_ensemble(cfg, ctx)
        else:
            console.print(f"evaluating {stage} from {path}")
            # Foreign files without metadata are named by the config section of the model they stand for.
            model, meta = load_runnable(path, cfg["teacher" if stage == "teacher" else "student"].name, ctx.data.num_classes, threads)
            require_classes(meta, ctx.data.classes, stage, path)
            sources = [path]
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
            "path": ", ".join(map(str, sources)),
            "top1": topk_accuracy(logits, labels, 1),
            "top5": top5_accuracy(logits, labels),
            "worst_class_top1": by_class.add(stage, pred, labels),
            "agreement": agreement(pred, predictions.get("teacher")),
            # Compressed students are judged against the float student they came from, too.
            "agreement_with_student": agreement(pred, predictions.get("student")),
            "params": recorded.get("params") if quantized else count_parameters(model),
            "macs": recorded.get("macs") if quantized else measure.macs(model.cpu(), cfg.dataset.image_size),
            "size_mb": sum(source.stat().st_size for source in sources) / 1e6,
            "sparsity": None if quantized else weight_sparsity(model),
            "runtime": runtime,
            **measure.speed(timed, cfg.dataset.image_size, threads, cfg.evaluate.latency_repeats, cfg.evaluate.throughput_batch),
        }
    add_teacher_ratios(results)
    final = final_of(found, str(cfg.quantize.method))[0]
    context = {
        "recipe": Path(cfg.run_dir).name,
        "dataset": cfg.dataset.path,
        "data_commit": ctx.data.commit,
        "test_images": len(ctx.data.test),
        "cpu": cpu_name(),
        "threads": threads,
        "timing": {"latency_repeats": cfg.evaluate.latency_repeats, "latency_warmup": measure.latency_warmup(cfg.evaluate.latency_repeats),
                   "throughput_batch": cfg.evaluate.throughput_batch},
        # Sleeping OpenMP threads (OMP_WAIT_POLICY=PASSIVE, when a user sets it) add wake-up time to batch-1 latencies.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch": torch.__version__,
        "environment": environment.describe(),
        "outdated": provenance.outdated(found, ctx.workspace.find),
    }
    # `~expect` drops the gate for a short run; rows measured across seeds are `distillctl reproduce`'s to check.
    checked = expectations.check(cfg.get("expect") or {}, results, skip=expectations.ACROSS_SEEDS)
    report_dir = ctx.workspace.output("report")
    with tracked(cfg, report_dir) as tracker:
        figures = plots.draw(report_dir, results, context["recipe"])
        report.write(report_dir, results, context, checked, figures, by_class, final)
        tracker.log({f"{stage}/{key}": value for stage, row in results.items() for key, value in row.items()}, 0)
        tracker.artifacts([report_dir / METRICS_FILE, report_dir / "report.md", report_dir / report.PER_CLASS, *figures])
    report.print_table(results, f"{context['recipe']}: {len(ctx.data.test)} test images, CPU timings on {threads_phrase(threads)}",
                       cfg.evaluate.throughput_batch)
    report.print_outdated(context["outdated"])
    report.print_drops(by_class, final)
    console.print(f"report: {report_dir / 'report.md'}")
    report.enforce(checked, quantized_with=str(cfg.quantize.method))
    return results
