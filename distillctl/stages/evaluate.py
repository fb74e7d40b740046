"""`distillctl evaluate`: every model in the workspace on the test split, plus its size and CPU speed."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from distillctl import expectations, measure, report
from distillctl.data import eval_batches
from distillctl.compress.prune import weight_sparsity
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.engine.progress import console
from distillctl.errors import UserError
from distillctl.models import count_parameters, load_model
from distillctl.stages.context import RunContext
from distillctl.stages.training import stage_model_key
from distillctl.workspace import MODEL_FILE

# Stages whose model is evaluated, in table order; the teacher first so agreement can refer to it.
MODEL_STAGES = ["teacher", "student", "pruned"]


def artifacts_to_evaluate(cfg: DictConfig, ctx: RunContext) -> dict[str, Path]:
    """Stage name -> weights file, for every model the workspace (or teacher.checkpoint) provides."""
    found = {}
    for stage in MODEL_STAGES:
        if stage == "teacher" and cfg.teacher.checkpoint:
            found[stage] = Path(cfg.teacher.checkpoint).expanduser()
        elif (where := ctx.workspace.find(stage)) is not None:
            found[stage] = where / MODEL_FILE
    return found


def run(cfg: DictConfig) -> dict:
    """Evaluate, write the report, and exit 1 when the recipe's expectations are not met."""
    ctx = RunContext.open(cfg)
    found = artifacts_to_evaluate(cfg, ctx)
    if not found:
        raise UserError(f"nothing to evaluate in {ctx.workspace.root}: run `distillctl pipeline` (or train-teacher and distill) with the same recipe first.")
    threads = cfg.trainer.threads or torch.get_num_threads()
    test_x, test_y = ctx.data.test
    results, teacher_pred = {}, None
    for stage, path in found.items():
        model, meta = load_model(path, cfg[stage_model_key(stage)].name, ctx.data.num_classes)
        model = model.to(ctx.device)
        batches = eval_batches(test_x, test_y, cfg.trainer.eval_batch_size, cfg.dataset.mean, cfg.dataset.std, ctx.device)
        logits, labels = predict(model, batches, ctx.device, cfg.trainer.precision)
        pred = logits.argmax(1)
        if stage == "teacher":
            teacher_pred = pred
        console.print(f"evaluating {stage} ({meta['model']}) from {path}")
        results[stage] = {
            "arch": meta["model"],
            "path": str(path),
            "top1": topk_accuracy(logits, labels, 1),
            "top5": topk_accuracy(logits, labels, 5),
            "agreement": (pred == teacher_pred).float().mean().item() if teacher_pred is not None else None,
            "params": count_parameters(model),
            "macs": measure.macs(model.cpu(), cfg.dataset.image_size),
            "size_mb": path.stat().st_size / 1e6,
            "sparsity": weight_sparsity(model),
            **measure.speed(model, cfg.dataset.image_size, threads),
        }
    context = {
        "recipe": Path(cfg.run_dir).name,
        "dataset": cfg.dataset.path,
        "test_images": len(test_y),
        "cpu": measure.cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
    }
    checked = expectations.check(cfg.expect, results)
    report_dir = ctx.workspace.output("report")
    report.write(report_dir, results, context, checked)
    report.print_table(results, f"{context['recipe']}: {len(test_y)} test images, CPU timings on {threads} threads")
    console.print(f"report: {report_dir / 'report.md'}")
    misses = [row for row in checked if not row["ok"]]
    if misses:
        report.print_misses(misses)
        raise SystemExit(1)
    if checked:
        console.print(f"[green]all {len(checked)} expectations met[/]")
    return results
