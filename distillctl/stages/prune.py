"""`distillctl prune`: the distilled student made smaller, then fine-tuned with the recipe's loss terms."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from distillctl import artifacts, workspace
from distillctl.compress import channels, sparsity
from distillctl.compress.shapes import layer_shapes
from distillctl.console import console
from distillctl.errors import UserError
from distillctl.losses import Objective, build_objective
from distillctl.models import architecture_metadata, load_model
from distillctl.models.metadata import require_classes
from distillctl.models.normalization import stored_normalization
from distillctl.models.teachers import Teacher, load_teacher
from distillctl.provenance import made_from
from distillctl.stages.base import Stage
from distillctl.stages.context import RunContext
from distillctl.stages.training import TrainingJob, train_and_save
from distillctl.workspace import MODEL_FILE, Workspace, recorded_fingerprint
from distillctl.workspace import fingerprint as config_fingerprint

FOLDER = "pruned"


def student_dir(ws: Workspace) -> Path:
    """The distilled student to prune."""
    return ws.require("student", "distilled student", "distill")


def sections(cfg: DictConfig) -> list[str]:
    """The config sections the pruned model depends on."""
    return ["dataset", "prune", "loss", "trainer", "optimizer", "distill"]


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the pruned model depends on: the prune settings, fine-tuning set-up and the student."""
    try:
        student_id = recorded_fingerprint(student_dir(ws)) or "unknown"
    except UserError:
        student_id = "no-student"
    return config_fingerprint(cfg, sections(cfg), [str(cfg.seed), student_id])


def run(cfg: DictConfig) -> dict:
    """Prune the workspace's student and write runs/<recipe>/pruned/."""
    ctx = RunContext.open(cfg)
    source = student_dir(ctx.workspace) / MODEL_FILE
    model, meta = load_model(source)
    require_classes(meta, ctx.data.classes, "student", source)
    if cfg.prune.method == "structured":
        return prune_structured_steps(cfg, ctx, model, meta, source)
    mask = sparsity.SparsityMask(model, cfg.prune.sparsity)
    reached = sparsity.weight_sparsity(model)
    console.print(f"pruned {meta['model']}: {reached:.1%} of its conv/linear weights are zero")
    extra = {"sparsity": reached, "source": str(source), "made_from": made_from(ctx.workspace, [source])}
    if cfg.prune.finetune_epochs == 0:
        return save_without_training(ctx, model, meta, extra, fingerprint(cfg, ctx.workspace))
    objective, teacher = finetune_objective(cfg, ctx)
    return train_and_save(ctx, TrainingJob(
        FOLDER, meta["model"], model, objective, cfg.prune.finetune_lr, fingerprint(cfg, ctx.workspace), teacher,
        epochs=cfg.prune.finetune_epochs, normalization=stored_normalization(meta, cfg.dataset.mean, cfg.dataset.std),
        model_kwargs=meta.get("kwargs", {}), extra_metrics=extra, extra_metadata={"shapes": layer_shapes(model)},
        after_step=mask.reapply,
    ))


def finetune_objective(cfg: DictConfig, ctx: RunContext) -> tuple[Objective, Teacher | None]:
    """The recipe's loss terms, and its teacher when they read one: what fine-tunes a pruned student."""
    objective = build_objective(cfg.loss.terms)
    return objective, (load_teacher(cfg, ctx.workspace, ctx.data.classes) if objective.needs_teacher else None)


def prune_structured_steps(cfg: DictConfig, ctx: RunContext, model, meta: dict, source: Path) -> dict:
    """Reach the MACs target in prune.steps equal steps, fine-tuning after each; intermediate steps keep their
    own folders (pruned/step1, ...) so that only the last one marks the stage finished."""
    p = cfg.prune
    if p.steps < 1 or (p.steps > 1 and p.channel_ratio is not None):
        raise UserError(f"prune.steps={p.steps}: use 1 or more steps, and more than one only with prune.target_macs_ratio (not channel_ratio).")
    example = torch.zeros(1, 3, cfg.dataset.image_size, cfg.dataset.image_size)
    objective, teacher = finetune_objective(cfg, ctx) if p.finetune_epochs > 0 else (None, None)
    base_macs, base_params = channels.macs_and_params(model, example)
    base_heads = sum(channels.head_counts(model).values())
    fp, made = fingerprint(cfg, ctx.workspace), made_from(ctx.workspace, [source])
    for step in range(1, p.steps + 1):
        target = 1 - (1 - p.target_macs_ratio) * step / p.steps  # of the original student's MACs
        current = channels.macs_and_params(model, example)[0] / base_macs
        model = channels.prune_structured(model.cpu(), example, target / current, p.channel_ratio, p.importance,
                                         p.global_pruning, head_ratio=p.head_ratio if step == 1 else 0.0,
                                         round_to=p.round_to)[0]
        macs, params = channels.macs_and_params(model, example)
        extra = {"macs_ratio": macs / base_macs, "params_ratio": params / base_params, "step": step, "steps": p.steps, "source": str(source),
                 "made_from": made}
        heads = ""
        if base_heads:  # a transformer: how many attention heads are left
            extra["attention_heads"] = sum(channels.head_counts(model).values())
            heads = f", attention heads {base_heads} -> {extra['attention_heads']}"
        console.print(f"pruned {meta['model']} (step {step}/{p.steps}): {macs / base_macs:.1%} of its MACs and {params / base_params:.1%} of its parameters remain{heads}")
        if objective is None:
            return save_without_training(ctx, model, meta, extra, fp)
        job = TrainingJob(
            FOLDER if step == p.steps else f"{FOLDER}/step{step}", meta["model"], model, objective, p.finetune_lr, fp, teacher,
            epochs=p.finetune_epochs, normalization=stored_normalization(meta, cfg.dataset.mean, cfg.dataset.std),
            model_kwargs=meta.get("kwargs", {}), extra_metrics=extra, extra_metadata={"shapes": layer_shapes(model)},
        )
        metrics = train_and_save(ctx, job)
    return metrics


def save_without_training(ctx: RunContext, model, meta: dict, extra: dict, fp: str) -> dict:
    """Write the pruned model as it is (no fine-tuning asked for)."""
    out_dir = ctx.workspace.output(FOLDER)
    staged = workspace.staging(out_dir)
    workspace.save_config(staged, ctx.cfg)
    artifacts.save_weights(staged / MODEL_FILE, model, architecture_metadata(meta) | {"shapes": layer_shapes(model)})
    metrics = {"stage": FOLDER, "model": meta["model"], "fingerprint": fp, "finetune_epochs": 0, **extra}
    workspace.write_metrics(staged, metrics)
    workspace.publish(out_dir)
    return metrics


STAGE = Stage("prune", lambda cfg: FOLDER, sections, fingerprint, run, trains=lambda cfg: cfg.prune.finetune_epochs > 0)
