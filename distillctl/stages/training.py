"""The part train-teacher and distill share: build the trainee, run `fit`, test the best model, save it all."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from distillctl import artifacts, workspace
from distillctl.data import Batches, eval_batches
from distillctl.engine.fit import BEST, FitResult, Trainee, fit
from distillctl.engine.optim import build_optimizer, build_schedule
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.engine.progress import print_summary_table
from distillctl.losses import Objective
from distillctl.models import count_parameters, model_metadata
from distillctl.stages.context import RunContext


def train_and_save(
    ctx: RunContext,
    stage: str,
    model_name: str,
    model: nn.Module,
    objective: Objective,
    lr: float,
    fingerprint: str,
    teacher: nn.Module | None = None,
    extra_metrics: dict | None = None,
    extra_metadata: dict | None = None,
    finalize: Callable[[nn.Module, Path], nn.Module] | None = None,
) -> dict:
    """Train `model` with `objective`, keep the best-on-validation weights as model.safetensors, return metrics.
    `finalize(model, out_dir)`, when given, turns the trained model into the one saved and tested (on the CPU)
    and writes model.safetensors itself."""
    cfg, device, data = ctx.cfg, ctx.device, ctx.data
    out_dir = ctx.workspace.output(stage)
    workspace.save_config(out_dir, cfg)
    memory = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory)
    objective = objective.to(device)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=memory).eval().requires_grad_(False)
    batches = Batches(
        *data.train, cfg.trainer.batch_size, cfg.dataset.mean, cfg.dataset.std, device, cfg.seed,
        cfg.dataset.crop_padding, cfg.dataset.hflip, cfg.trainer.channels_last, cfg.trainer.max_steps_per_epoch,
    )
    # Layer names are checked and term parameters sized before anything trains.
    probe = next(eval_batches(data.train[0][:2], data.train[1][:2], 2, cfg.dataset.mean, cfg.dataset.std, device, cfg.trainer.channels_last))[0]
    objective.setup(model, teacher, probe)
    optimizer = build_optimizer([*model.parameters(), *objective.student_parameters()], cfg.optimizer, lr, device)
    scheduler = build_schedule(optimizer, cfg.scheduler, lr, len(batches), cfg.trainer.epochs)
    meta = model_metadata(
        model_name, data.num_classes, OmegaConf.to_container(cfg[stage_model_key(stage)].kwargs), data.classes,
        list(cfg.dataset.mean), list(cfg.dataset.std),
    ) | (extra_metadata or {})
    trainee = Trainee(model, objective, optimizer, scheduler, meta)

    def split_batches(split, on: torch.device = device):
        return eval_batches(*split, cfg.trainer.eval_batch_size, cfg.dataset.mean, cfg.dataset.std, on, cfg.trainer.channels_last)

    def validate(m: nn.Module) -> float:
        logits, labels = predict(m, split_batches(data.val), device, cfg.trainer.precision)
        return topk_accuracy(logits, labels, 1)

    result = fit(trainee, batches, validate, cfg.trainer, out_dir, stage, teacher=teacher, resume=cfg.resume)
    artifacts.load_weights(out_dir / BEST, model)
    params = count_parameters(model)  # before finalize: packed int8 weights are not parameters
    if finalize is None:
        artifacts.atomic_write(out_dir / workspace.MODEL_FILE, lambda tmp: shutil.copyfile(out_dir / BEST, tmp))
        logits, labels = predict(model, split_batches(data.test), device, cfg.trainer.precision)
    else:
        model = finalize(model, out_dir)
        cpu = torch.device("cpu")
        logits, labels = predict(model, split_batches(data.test, cpu), cpu, "fp32")
    metrics = {
        "stage": stage,
        "model": model_name,
        "fingerprint": fingerprint,
        "params": params,
        "test_top1": topk_accuracy(logits, labels, 1),
        "test_top5": topk_accuracy(logits, labels, 5),
        "best_val_top1": result.best_val_top1,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "resumed_from_epoch": result.resumed_from,
        "train_images": len(data.train[1]),
        "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_s, 1),
        "startup_seconds": round(result.startup_seconds, 2) if result.startup_seconds is not None else None,
        "device": str(device),
        **(extra_metrics or {}),
    }
    workspace.write_metrics(out_dir, metrics)
    print_summary(stage, metrics, result, out_dir)
    return metrics


def stage_model_key(stage: str) -> str:
    """The config section describing the model a stage trains (a pruned model is the student, smaller)."""
    return "teacher" if stage == "teacher" else "student"


def print_summary(stage: str, metrics: dict, result: FitResult, out_dir: Path) -> None:
    """The rich table that closes a training stage."""
    print_summary_table(f"{stage}: {metrics['model']}", [
        ("test top-1", f"{metrics['test_top1']:.2%}"),
        ("test top-5", f"{metrics['test_top5']:.2%}"),
        ("best val top-1", f"{result.best_val_top1:.2%} (epoch {result.best_epoch})"),
        ("parameters", f"{metrics['params'] / 1e6:.3f} M"),
        ("epochs", f"{result.epochs}" + (f" (resumed after {result.resumed_from})" if result.resumed_from else "")),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.images_per_s:,.0f} img/s"),
        ("artifacts", str(out_dir)),
    ])
