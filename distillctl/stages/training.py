"""The part every training stage shares: build the trainee, run `fit`, test the best model, save it all."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distillctl import artifacts, disk, files, ranks, resumption, workspace
from distillctl.console import console, print_summary_table
from distillctl.data import preprocess
from distillctl.data.content_stamp import dataset_stamp
from distillctl.engine import distributed
from distillctl.engine.fit import BEST, LAST, FitResult, Trainee, fit
from distillctl.engine.mixing import batch_mixer
from distillctl.engine.optim import build_optimizer, build_schedule
from distillctl.engine.predict import predict, top5_accuracy, topk_accuracy
from distillctl.engine.stop_signal import Requeued
from distillctl.engine.teacher_cache import CacheSettings, open_cache
from distillctl.errors import UserError
from distillctl.losses import Objective
from distillctl.models import count_parameters, model_metadata
from distillctl.models.metadata import class_preview
from distillctl.models.teachers import Teacher
from distillctl.stages.base import holds_checkpoint_of
from distillctl.stages.context import RunContext
from distillctl.tracking import NO_TRACKER, Tracker, summary_csv, tracked

PROBE_IMAGES = 32  # the batch loss terms size their modules from (objective.setup)


@dataclass
class TrainingJob:
    """One model to train into one workspace folder, and what differs from the run's config for it."""

    folder: str
    model_name: str
    model: nn.Module
    objective: Objective
    lr: float
    fingerprint: str
    teacher: Teacher | None = None
    epochs: int | None = None  # None: trainer.epochs (prune fine-tuning and QAT have their own)
    compile: str | None = None  # None: trainer.compile
    # The (mean, std) the model was trained with; None: the dataset section's (a model trained from scratch).
    normalization: tuple[Sequence[float], Sequence[float]] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    # Turns the trained model into the one saved and tested on the CPU (QAT -> int8) and writes model.safetensors
    # into the folder it is given.
    finalize: Callable[[nn.Module, Path], nn.Module] | None = None
    # False: the results stay staged (workspace.staging) for the caller to add to and publish.
    publish: bool = True
    # Runs after every optimizer step (unstructured pruning zeroes its pruned weights again).
    after_step: Callable[[], None] | None = None


def job_trainer(cfg: DictConfig, job: TrainingJob) -> DictConfig:
    """The trainer section with the job's own epochs and compile setting."""
    changes = {key: value for key, value in (("epochs", job.epochs), ("compile", job.compile)) if value is not None}
    return OmegaConf.merge(cfg.trainer, changes) if changes else cfg.trainer


def cache_settings(cfg: DictConfig, trainer: DictConfig) -> CacheSettings:
    """The teacher-cache options of the run's `distill` section."""
    d = cfg.distill
    return CacheSettings(str(d.teacher_cache), Path(d.teacher_cache_dir), d.teacher_cache_max_gb, d.teacher_cache_half,
                         str(trainer.precision), trainer.eval_batch_size, d.teacher_cache_topk, d.teacher_cache_views or trainer.epochs)


def train_and_save(ctx: RunContext, job: TrainingJob) -> dict:
    """Train the job's model, keep the best-on-validation weights as model.safetensors, return its metrics; the
    run goes to the trackers `logger=` chose. Every process of a multi-process job trains; rank 0 alone writes."""
    out_dir = ctx.workspace.output(job.folder)
    main = distributed.is_main()
    if main:
        # best + last weights, the optimizer's state (about one more copy), the staged result; and some room for logs.
        weights = sum(t.numel() * t.element_size() for t in job.model.state_dict().values())
        disk.check_free_space(out_dir, 5 * weights + 10 * disk.MB, f"training {job.folder}")
    resume = bool(ctx.cfg.resume) or resumes_after_restart(out_dir, job.fingerprint)
    if resume and job.publish and workspace.reusable(out_dir, job.fingerprint):
        # Resuming would run no epoch and overwrite the run's time and throughput with nothing. QAT's job is left to
        # go through (publish=False): its stage makes the int8 results from what this returns.
        console.print(f"nothing to resume: {out_dir} finished every epoch with this config; its results stand "
                      "(leave out resume=true to train it again)")
        return files.read_json(out_dir / workspace.METRICS_FILE) or {}
    settings = OmegaConf.to_container(ctx.cfg, resolve=True)
    if resume:  # before the folder records this run as started: a refused resume leaves the record of the one it found
        workspace.check_resumable(out_dir)
        # Parameters only: a QAT model's observer buffers change shape once they have seen data.
        shapes = {name: tuple(p.shape) for name, p in job.model.named_parameters()}
        resumption.check(out_dir, out_dir / LAST, job.fingerprint, job.model_name, settings, shapes)
    if main:
        workspace.record_start(out_dir, job.fingerprint, settings, dataset_stamp(ctx.cfg.dataset))
    distributed.barrier()  # rank 0 has created and claimed the folder
    try:
        if not main:
            return train_tracked(ctx, job, out_dir, NO_TRACKER, resume)
        with tracked(ctx.cfg, out_dir) as tracker:
            return train_tracked(ctx, job, out_dir, tracker, resume)
    except Requeued:
        if main:  # the scheduler runs this job again, with nobody to add resume=true: it resumes by itself
            workspace.note_requeue(out_dir)
        raise
    except UserError as exc:
        if main:
            workspace.note_failure(out_dir, str(exc))
        raise


def resumes_after_restart(out_dir: Path, fingerprint: str) -> bool:
    """Whether torchrun restarted this job (--max-restarts), or SLURM or submitit requeued it, over a checkpoint of
    this very run: it then goes on from that checkpoint by itself, as nobody can add resume=true to a command run
    again for them. Decided by rank 0, so that every process agrees."""
    if not (who := ranks.restarted_by() or ("requeued by the scheduler" if workspace.requeued(out_dir) else None)):
        return False
    found = holds_checkpoint_of(out_dir, fingerprint)
    if found:
        console.print(f"{who}: resuming from the last checkpoint in {out_dir}")
    return bool(distributed.broadcast(found))


def my_share(split):
    """This process's part of a validation or test split (the whole split for a single process)."""
    return split if distributed.world_size() == 1 else split.subset(distributed.shard_positions(len(split)))


def train_tracked(ctx: RunContext, job: TrainingJob, out_dir: Path, tracker: Tracker, resume: bool) -> dict:
    """train_and_save's work inside the stage's tracked run."""
    cfg, device, data = ctx.cfg, ctx.device, ctx.data
    trainer = job_trainer(cfg, job)
    main, processes = distributed.is_main(), distributed.world_size()
    distributed.split_batch(trainer.batch_size)  # the global batch must divide over the processes
    if processes > 1 and (kept := [name for name, t in job.objective.terms.items() if t.per_image_state]):
        raise UserError(f"loss term {', '.join(kept)} keeps state for every training image, which the {processes} processes "
                        "would each update for their own share only: train it on one process (trainer.devices=1, no torchrun).")
    mean, std = job.normalization or (cfg.dataset.mean, cfg.dataset.std)
    memory = torch.channels_last if trainer.channels_last else torch.contiguous_format
    model = job.model.to(device, memory_format=memory)
    if trainer.sync_bn:
        model = distributed.synced_batchnorm(model, device)
    objective = job.objective.to(device)
    teacher = job.teacher.model if job.teacher is not None else None
    if teacher is not None:
        teacher = teacher.to(device, memory_format=memory).eval().requires_grad_(False)
    batches = data.train.train_batches(
        trainer.batch_size, mean, std, device, cfg.seed, trainer.channels_last, trainer.max_steps_per_epoch,
        shard=(distributed.rank(), processes),
    )
    if main and trainer.batch_size > len(data.train):
        console.print(f"[yellow]warning: trainer.batch_size={trainer.batch_size} is more than the {len(data.train):,} "
                      f"training images: each epoch is one step on all of them[/]")

    def split_batches(split, on: torch.device = device, size: int = trainer.eval_batch_size):
        return split.eval_batches(size, mean, std, on, trainer.channels_last)

    # Layer names are checked and term parameters sized before anything trains.
    # A few dozen images, since OFD measures its per-channel margins on them; still one quick forward pass.
    probe = next(split_batches(data.train.subset(torch.arange(min(PROBE_IMAGES, len(data.train)))), size=PROBE_IMAGES))[0]
    # Per-image state (CRD's memory bank) is sized by the split that the loaders' batch positions count in.
    objective.setup(model, teacher, probe, batches.split_size)
    optimizer = build_optimizer([*model.parameters(), *objective.student_parameters()], cfg.optimizer, job.lr, device)
    scheduler = build_schedule(optimizer, cfg.scheduler, job.lr, len(batches), trainer.epochs)
    if job.after_step is not None:
        optimizer.register_step_post_hook(lambda *_: job.after_step())
    shown = preprocess.recorded(cfg.dataset.image_size, cfg.dataset.crop_pct, cfg.dataset.interpolation, data.loader)
    meta = model_metadata(job.model_name, data.num_classes, job.model_kwargs, data.classes, list(mean), list(std), shown) | job.extra_metadata
    trainee = Trainee(model, objective, optimizer, scheduler, meta)
    val_share, test_share = my_share(data.val), my_share(data.test)

    def validate(m: nn.Module) -> float:
        logits, labels = distributed.gather_cat(*predict(m, split_batches(val_share), device, trainer.precision))
        return topk_accuracy(logits, labels, 1)

    teacher_top1 = None
    if teacher is not None:  # cheap beside training, and the one sign of a teacher whose outputs mean other classes
        teacher_top1 = validate(teacher)
        if main:
            report_teacher(teacher_top1, data.classes, job.teacher.trained_top1)
    mixer = batch_mixer(cfg.dataset.mixup_alpha, cfg.dataset.cutmix_alpha, data.num_classes, objective)
    cache = None
    if mixer is not None and teacher is not None and cache_settings(cfg, trainer).mode != "off":
        console.print("teacher cache: off: mixup/cutmix makes new images every step, so the teacher runs on each batch")
    else:  # in a multi-process job each process keeps its share's logits, and the saves merge them in one file
        cache = open_cache(cache_settings(cfg, trainer), batches, teacher, data.num_classes, objective.layers()[1])
    try:
        result = fit(trainee, batches, validate, trainer, out_dir, job.folder, teacher=teacher, resume=resume,
                     teacher_cache=cache, tracker=tracker, mixer=mixer)
    finally:  # the logits computed so far serve the next run even when this one stops early
        if cache is not None:
            cache.save()
    artifacts.load_weights(out_dir / BEST, model)
    if trainer.sync_bn:
        model = distributed.plain_batchnorm(model)
    params = count_parameters(model)  # before finalize: packed int8 weights are not parameters
    test = None
    if job.finalize is None:  # every process tests its share
        test = distributed.gather_cat(*predict(model, split_batches(test_share), device, trainer.precision))
    skipped = int(distributed.sum_across([torch.tensor(float(data.skipped_images), device=device)])[0].item())
    metrics = None
    if main:
        metrics = save_results(ctx, job, out_dir, tracker, model, test, result, params, skipped, len(batches), trainer, split_batches, cache,
                               teacher_top1)
    return distributed.broadcast(metrics)


def save_results(ctx: RunContext, job: TrainingJob, out_dir: Path, tracker: Tracker, model: nn.Module,
                 test: tuple[torch.Tensor, torch.Tensor] | None, result: FitResult, params: int, skipped: int,
                 steps: int, trainer: DictConfig, split_batches, cache, teacher_top1: float | None = None) -> dict:
    """Stage the config, model, metrics and summary of a finished run (rank 0) and publish them."""
    cfg, data = ctx.cfg, ctx.data
    # The results go to a staging folder and replace the stage's together: a run that fails before the end leaves
    # the previous config, weights and metrics as they were.
    staged = workspace.staging(out_dir)
    workspace.save_config(staged, OmegaConf.merge(cfg, {"trainer": trainer}))
    if job.finalize is None:
        shutil.copyfile(out_dir / BEST, staged / workspace.MODEL_FILE)
        logits, labels = test
    else:
        model = job.finalize(model, staged)
        cpu = torch.device("cpu")
        logits, labels = predict(model, split_batches(data.test, cpu), cpu, "fp32")
    metrics = {
        "stage": job.folder,
        "model": job.model_name,
        "fingerprint": job.fingerprint,
        "params": params,
        "test_top1": topk_accuracy(logits, labels, 1),
        "test_top5": top5_accuracy(logits, labels),
        "best_val_top1": result.best_val_top1,
        "teacher_val_top1": teacher_top1,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "resumed_from_epoch": result.resumed_from,
        "train_images": len(data.train),
        "loader": data.loader,
        "data_commit": data.commit,
        "skipped_images": skipped,
        "processes": distributed.world_size(),
        "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_s, 1),
        "startup_seconds": round(result.startup_seconds, 2) if result.startup_seconds is not None else None,
        "device": str(ctx.device),
        "teacher_cache": None if cache is None else {"file": str(cache.path), "filled": round(cache.share_filled, 4),
                                                     "teacher_ran_on": round(result.teacher_share, 4)},
        **job.extra_metrics,
    }
    files.write_text(staged / workspace.SUMMARY_FILE, summary_csv.render(result.history))
    workspace.write_metrics(staged, metrics)
    tracker.log({"test/top1": metrics["test_top1"], "test/top5": metrics["test_top5"], "best_val_top1": result.best_val_top1,
                 "params": params}, result.epochs * steps)
    tracker.artifacts(staged / name for name in (workspace.METRICS_FILE, workspace.CONFIG_FILE, workspace.SUMMARY_FILE))
    if job.publish:
        workspace.publish(out_dir)
    print_summary(job.folder, metrics, result, out_dir)
    return metrics


def print_summary(stage: str, metrics: dict, result: FitResult, out_dir: Path) -> None:
    """The rich table that closes a training stage."""
    print_summary_table(f"{stage}: {metrics['model']}", [
        ("test top-1", f"{metrics['test_top1']:.2%}"),
        ("test top-5", "-" if metrics["test_top5"] is None else f"{metrics['test_top5']:.2%}"),
        ("best val top-1", f"{result.best_val_top1:.2%} (epoch {result.best_epoch})"),
        *([("teacher val top-1", f"{metrics['teacher_val_top1']:.2%}")] if metrics.get("teacher_val_top1") is not None else []),
        ("parameters", f"{metrics['params'] / 1e6:.3f} M"),
        ("epochs", f"{result.epochs}" + (f" (resumed after {result.resumed_from})" if result.resumed_from else "")),
        ("time", f"{result.seconds:.1f} s"),
        ("throughput", f"{result.images_per_s:,.0f} img/s"),
        *([("teacher ran on", teacher_share(result.teacher_share))] if result.teacher_share is not None else []),
        ("artifacts", str(out_dir)),
    ])


def report_teacher(top1: float, classes: list[str], trained_top1: float | None = None) -> None:
    """Say how the frozen teacher scores on the validation split, and warn when it is near chance although its file
    does not record scoring that low when trained: a plain state dict records no class names, so one trained on
    these classes in another order loads without complaint. A teacher that was that weak when trained (a smoke run's
    few steps) is only noted."""
    chance = 1 / len(classes)
    when_trained = f" ({trained_top1:.2%} when it was trained)" if trained_top1 is not None else ""
    console.print(f"teacher: {top1:.2%} top-1 on the validation split{when_trained}")
    if top1 >= 2 * chance or (trained_top1 is not None and trained_top1 < 2 * chance):
        return
    console.print(f"[yellow]warning:[/] the teacher is near chance ({chance:.1%} for {len(classes)} classes), so the student "
                  "learns little from it. Check that its checkpoint is the one meant, trained on these classes in this "
                  f"order ({class_preview(classes)}) and with this normalization (dataset.mean, dataset.std).", highlight=False)


def teacher_share(share: float) -> str:
    """How much of the teacher's work its logit cache saved, for the summary table."""
    if share >= 1:  # a first run with this teacher: "(the rest from its cache)" with no rest
        return "every image (filling its logit cache)"
    return f"{share:.0%} of images (the rest from its cache)"
