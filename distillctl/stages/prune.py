"""`distillctl prune`: the distilled student made smaller, then fine-tuned with the recipe's loss terms."""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig

from distillctl import artifacts, workspace
from distillctl.compress import prune as pruning
from distillctl.compress.shapes import layer_shapes
from distillctl.engine.progress import console
from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.models import load_model
from distillctl.stages import distill
from distillctl.stages.context import RunContext
from distillctl.stages.training import train_and_save
from distillctl.workspace import MODEL_FILE, Workspace, fingerprint as config_fingerprint, recorded_fingerprint

STAGE = "pruned"


def student_dir(cfg: DictConfig, ws: Workspace):
    """The distilled student to prune."""
    found = ws.find("student")
    if found is None:
        raise UserError(f"no distilled student in {ws.root / 'student'}: run `distillctl distill` with the same recipe first.")
    return found


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the pruned model depends on: the prune settings, fine-tuning set-up and the student."""
    try:
        student_id = recorded_fingerprint(student_dir(cfg, ws)) or "unknown"
    except UserError:
        student_id = "no-student"
    return config_fingerprint(cfg, ["dataset", "prune", "loss", "trainer", "optimizer"], [str(cfg.seed), student_id])


def run(cfg: DictConfig) -> dict:
    """Prune the workspace's student and write runs/<recipe>/pruned/."""
    ctx = RunContext.open(cfg)
    source = student_dir(cfg, ctx.workspace) / MODEL_FILE
    model, meta = load_model(source)
    example = torch.zeros(1, 3, cfg.dataset.image_size, cfg.dataset.image_size)
    p = cfg.prune
    if p.method == "structured":
        model, macs_ratio, params_ratio = pruning.prune_structured(model, example, p.target_macs_ratio, p.channel_ratio, p.importance, p.global_pruning)
        console.print(f"pruned {meta['model']}: {macs_ratio:.1%} of its MACs and {params_ratio:.1%} of its parameters remain")
        extra = {"macs_ratio": macs_ratio, "params_ratio": params_ratio, "source": str(source)}
    elif p.method == "unstructured":
        sparsity = pruning.prune_unstructured(model, p.sparsity)
        console.print(f"pruned {meta['model']}: {sparsity:.1%} of its conv/linear weights are zero")
        extra = {"sparsity": sparsity, "source": str(source)}
    else:
        raise UserError(f"prune.method={p.method}: use structured or unstructured.")
    if p.method == "structured" and p.finetune_epochs > 0:
        objective = build_objective(cfg.loss.terms)
        teacher = distill.load_teacher(cfg, ctx.workspace, ctx.data.num_classes)[0] if objective.needs_teacher else None
        tuned = copy.deepcopy(cfg)
        tuned.trainer.epochs = p.finetune_epochs
        tuned_ctx = RunContext(tuned, ctx.device, ctx.data, ctx.workspace)
        return train_and_save(tuned_ctx, STAGE, meta["model"], model, objective, p.finetune_lr, fingerprint(cfg, ctx.workspace),
                              teacher, extra, {"shapes": layer_shapes(model)})
    return save_without_training(ctx, model, meta, extra, fingerprint(cfg, ctx.workspace))


def save_without_training(ctx: RunContext, model, meta: dict, extra: dict, fp: str) -> dict:
    """Write the pruned model as it is (unstructured pruning, or no fine-tuning asked for)."""
    out_dir = ctx.workspace.output(STAGE)
    workspace.save_config(out_dir, ctx.cfg)
    keep = {k: v for k, v in meta.items() if k in ("model", "num_classes", "kwargs", "classes", "mean", "std")}
    artifacts.save_weights(out_dir / MODEL_FILE, model, keep | {"shapes": layer_shapes(model)})
    metrics = {"stage": STAGE, "model": meta["model"], "fingerprint": fp, "finetune_epochs": 0, **extra}
    workspace.write_metrics(out_dir, metrics)
    return metrics
