"""The one training loop: teacher training, distillation, and later fine-tuning stages all run `fit`."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import distillctl
from distillctl import artifacts, files
from distillctl.console import TrainingProgress
from distillctl.data import Batches
from distillctl.engine import distributed
from distillctl.engine.device import autocast, compile_policy
from distillctl.engine.stop_signal import SignalStop, StopSignal
from distillctl.engine.taps import FeatureTaps
from distillctl.engine.teacher_cache import CachedTeacher, LogitCache
from distillctl.errors import UserError
from distillctl.losses import Objective, StepOutputs
from distillctl.models.ensemble import feature_source
from distillctl.tracking import NO_TRACKER, Tracker
from distillctl.workspace import LAST_STATE, check_resumable

BEST, LAST, HISTORY = "best.safetensors", "last.safetensors", "history.jsonl"

EpochObserver = Callable[[str, dict[str, Any]], None]
# Who else hears of every finished epoch (a search's pruner, say): set around a whole stage by whoever runs it, so
# that the stages between that caller and this loop need not pass it down. An observer may raise to stop the run.
EPOCH_OBSERVERS: ContextVar[tuple[EpochObserver, ...]] = ContextVar("epoch_observers", default=())


@contextmanager
def observing_epochs(observer: EpochObserver) -> Iterator[None]:
    """Call observer(title, history record) after each epoch of every `fit` run inside this block."""
    token = EPOCH_OBSERVERS.set((*EPOCH_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        EPOCH_OBSERVERS.reset(token)


@dataclass
class FitResult:
    """What a finished run of the loop reports."""

    best_val_top1: float
    best_epoch: int
    epochs: int
    seconds: float
    images_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    startup_seconds: float | None = None  # process start to the end of the first training step
    teacher_share: float | None = None  # with a teacher cache: the share of images the teacher still ran on


@dataclass
class Trainee:
    """The model being trained plus what trains it."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    metadata: dict[str, Any]  # stored beside the weights: how to rebuild the model


@dataclass
class EpochTotals:
    """Sums over one epoch's steps, kept on the device until the epoch ends."""

    loss: torch.Tensor
    correct: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    skipped_steps: int = 0  # trainer.on_nan=skip_step: steps whose loss was not finite, left out of the sums

    def across_processes(self) -> "EpochTotals":
        """The sums of every process of a multi-process job: the epoch's record is the whole data set's."""
        names = list(self.parts)
        seen = torch.tensor(float(self.seen), device=self.loss.device)
        loss, correct, seen, *parts = distributed.sum_across([self.loss, self.correct, seen, *(self.parts[k] for k in names)])
        return EpochTotals(loss, correct, dict(zip(names, parts)), int(seen.item()), self.skipped_steps)

    def record(self, epoch: int, val_top1: float, lr: float, seconds: float) -> dict[str, Any]:
        """The epoch's line in history.jsonl."""
        return {
            "epoch": epoch,
            "loss": round((self.loss / self.seen).item(), 5),
            "train_top1": round((self.correct / self.seen).item(), 5),
            "val_top1": round(val_top1, 5),
            "lr": lr,
            "seconds": round(seconds, 3),
            "images_per_s": round(self.seen / seconds, 1),
            **{f"loss.{k}": round((v / self.seen).item(), 5) for k, v in self.parts.items()},
            **({"skipped_steps": self.skipped_steps} if self.skipped_steps else {}),
        }


def fit(
    trainee: Trainee,
    batches: Batches,
    validate: Callable[[nn.Module], float],
    trainer_cfg,
    out_dir: Path,
    title: str,
    teacher: nn.Module | None = None,
    resume: bool = False,
    teacher_cache: LogitCache | None = None,
    tracker: Tracker = NO_TRACKER,
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> FitResult:
    """Train for trainer_cfg.epochs, validating each epoch; best and last checkpoints go to out_dir; running figures
    and each epoch's record go to the tracker, against the training step. A `mixer` (mixup/cutmix) turns each batch
    and its labels into mixed images and class probabilities; training accuracy still counts each image's own label."""
    model = trainee.model
    out_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best_val, best_epoch, history = restore(trainee, batches, out_dir) if resume else (1, -1.0, 0, [])
    student_layers, teacher_layers = trainee.objective.layers()
    mode, note = compile_policy(batches.device, trainer_cfg, bool(student_layers or teacher_layers))
    # Compiled callables wrap the modules; hooks, checkpoints and eval keep using the modules themselves.
    student_fn = torch.compile(model, mode=mode) if mode else model
    teacher_fn = torch.compile(teacher, mode=mode) if mode and teacher is not None else teacher
    cached = CachedTeacher(teacher_cache, batches, teacher_fn, teacher) if teacher_cache is not None else None
    teacher_fn = cached or teacher_fn
    if teacher is not None:
        teacher.eval()
    main = distributed.is_main()  # only rank 0 writes checkpoints and logs
    t_start, images_seen, startup = time.perf_counter(), 0, None
    with (
        (out_dir / "train.log").open("a") if main else open(os.devnull, "w") as log,
        FeatureTaps(model, student_layers, "the student") as student_taps,
        FeatureTaps(feature_source(teacher), teacher_layers, "the teacher") as teacher_taps,
        TrainingProgress(title, trainer_cfg.epochs, len(batches), start_epoch) as progress,
        StopSignal(log) as stop,
    ):
        processes = distributed.world_size()
        batch = trainer_cfg.batch_size
        shares = f"{processes} processes, global batch {batch} ({batch // processes} each)" if processes > 1 else ""
        log.write(f"# {title}: epochs {start_epoch}..{trainer_cfg.epochs}, {len(batches)} steps each, device {batches.device}"
                  + (f", {shares}" if shares else "") + "\n")
        if shares:
            progress.epoch_line(f"{title}: {shares}")
        # The student's forward and the loss as one module: under DDP, the gradients of both are averaged.
        step_fn = distributed.wrap(StudentStep(student_fn, trainee.objective, student_taps), batches.device,
                                   find_unused=bool(trainee.objective.student_parameters()))
        if note:
            progress.epoch_line(note)
            log.write(f"# {note}\n")
        for epoch in range(start_epoch, trainer_cfg.epochs + 1):
            model.train()
            t_epoch = time.perf_counter()

            def step(x: torch.Tensor, y: torch.Tensor):
                nonlocal startup
                if mode:  # CUDA-graph outputs of the previous step may be overwritten from here on
                    torch.compiler.cudagraph_mark_step_begin()
                targets = y
                if mixer is not None:
                    x, targets = mixer(x, y)
                # Both loaders say which of the split's images they yielded (terms with per-image state read it).
                out = train_step(trainee, x, targets, epoch, step_fn, teacher_fn, teacher_taps, trainer_cfg,
                                 batches.positions, batches.split_size)
                if startup is None:
                    startup = time.perf_counter() - distillctl.STARTED
                return out

            def save_mid_epoch(steps_done: int) -> None:
                # Recorded as the last finished epoch plus the batches' position in this one.
                if main:
                    checkpoint(trainee, batches, out_dir, epoch - 1, best_val, best_epoch, history)
                log.write(f"# checkpoint: epoch {epoch}, step {steps_done}\n")
                log.flush()

            every = trainer_cfg.get("checkpoint_every_steps")
            totals = run_epoch(step, batches, epoch, trainer_cfg.log_every, progress, every, save_mid_epoch, tracker, stop)
            totals = totals.across_processes()
            seconds = time.perf_counter() - t_epoch
            images_seen += totals.seen
            val_top1 = validate(model)
            record = totals.record(epoch, val_top1, trainee.optimizer.param_groups[0]["lr"], seconds)
            history.append(record)
            tracker.log({f"epoch/{k}" if k != "epoch" else k: v for k, v in record.items()}, epoch * len(batches))
            if val_top1 > best_val:
                best_val, best_epoch = val_top1, epoch
                if main:
                    artifacts.save_weights(out_dir / BEST, model, {**trainee.metadata, "epoch": epoch, "val_top1": best_val})
            if main:
                checkpoint(trainee, batches, out_dir, epoch, best_val, best_epoch, history)
            line = (
                f"{title} epoch {epoch}/{trainer_cfg.epochs}  loss {record['loss']:.4f}  train {record['train_top1']:.1%}  "
                f"val {val_top1:.1%}{' *' if best_epoch == epoch else ''}  {record['images_per_s']:,.0f} img/s  {seconds:.1f}s"
            )
            progress.epoch_line(line)
            log.write(line + "\n")
            log.flush()
            # After the checkpoint: an observer that stops the run leaves it resumable at this epoch.
            for observer in EPOCH_OBSERVERS.get():
                observer(title, record)
            if epoch < trainer_cfg.epochs and stop.due(batches.device, collective=True):
                raise SignalStop(f"stopped by {stop.cause} after epoch {epoch} of {trainer_cfg.epochs}, with the training state saved",
                                 stop.signum)
    distributed.barrier()  # rank 0's last checkpoint and best weights are on disk for every process to read
    seconds = time.perf_counter() - t_start
    share = None
    if cached:  # the job's share: every process's images
        ran, seen = distributed.sum_across([torch.tensor(float(n), device=batches.device) for n in (cached.teacher_images, cached.images)])
        share = ran.item() / max(seen.item(), 1)
    return FitResult(best_val, best_epoch, trainer_cfg.epochs, seconds, images_seen / max(seconds, 1e-9), history, start_epoch - 1, startup, share)


def run_epoch(step: Callable, batches: Batches, epoch: int, log_every: int, progress: TrainingProgress,
              checkpoint_every: int | None = None, save: Callable[[int], None] | None = None,
              tracker: Tracker = NO_TRACKER, stop: StopSignal | None = None) -> EpochTotals:
    """One pass over the batches; running figures go to the progress display and the tracker every `log_every`
    steps, and `save(step)` runs every `checkpoint_every` steps and before the pass ends on `stop`'s signal
    (SignalStop). A pass resumed mid-epoch reports its remaining steps only."""
    device = batches.device
    totals = EpochTotals(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))
    since_log, t_log = 0, time.perf_counter()
    skipped_in_a_row = 0
    for i, (x, y) in enumerate(batches, batches.first_step + 1):
        taken = step(x, y)
        if taken is None:  # on_nan=skip_step left out a step whose loss was not finite
            totals.skipped_steps += 1
            skipped_in_a_row += 1
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise UserError(f"the loss was not finite for {skipped_in_a_row} steps in a row (epoch {epoch}, step {i}): "
                                "training diverged. Lower the learning rate or the loss weights, or set trainer.grad_clip; "
                                "the last checkpoint is kept.")
        else:
            skipped_in_a_row = 0
            out, loss, parts = taken
            # Accumulate on the device; reading a value every step would stall an accelerator.
            n = len(y)
            totals.loss += loss.detach() * n
            totals.correct += (out.student_logits.detach().argmax(1) == y).sum()
            for name, value in parts.items():
                totals.parts[name] = totals.parts.get(name, 0) + value * n
            totals.seen += n
            since_log += n
        if save is not None and i < len(batches):  # at the epoch's last step its own checkpoint follows
            # On SIGTERM or Ctrl-C as on the clock: save after this step (each process asks at the same steps: StopSignal.due).
            stopping = stop is not None and stop.due(device, collective=i % log_every == 0)
            if stopping or (checkpoint_every and i % checkpoint_every == 0):
                if totals.seen:  # never save a diverged state to resume from
                    finite_loss(totals, epoch, i, "the last checkpoint is kept")
                save(i)
            if stopping:
                distributed.barrier()  # every process waits for rank 0's save before any of them exits
                raise SignalStop(f"stopped by {stop.cause} in epoch {epoch} at step {i} of {len(batches)}, with the training state "
                                 "saved there", stop.signum)
        if not totals.seen:
            continue
        if i % log_every == 0 or i == len(batches):
            now = time.perf_counter()
            done = log_every if i % log_every == 0 else i % log_every
            # Stop before this epoch is checkpointed: the last finished epoch's state stays as it was.
            running_loss = finite_loss(totals, epoch, i, "nothing of this epoch was saved")
            running_top1, images_per_s = (totals.correct / totals.seen).item(), since_log / (now - t_log)
            progress.advance(done, epoch, i, running_loss, running_top1, images_per_s)
            tracker.log({"train/loss": running_loss, "train/top1": running_top1, "train/images_per_s": images_per_s},
                        (epoch - 1) * len(batches) + i)
            since_log, t_log = 0, now
    if not totals.seen:
        raise UserError(f"the loss was not finite at any step of epoch {epoch}: training diverged. Lower the learning rate "
                        "or the loss weights, or set trainer.grad_clip; the last checkpoint is kept.")
    return totals


# trainer.on_nan=skip_step: this many non-finite steps in a row mean the run diverged rather than met a bad batch.
MAX_SKIPPED_IN_A_ROW = 10


def finite_loss(totals: EpochTotals, epoch: int, step: int, kept: str) -> float:
    """The epoch's running loss; a UserError saying what was `kept` once it is no longer finite (training diverged)."""
    running = (totals.loss / totals.seen).item()
    if not math.isfinite(running):
        raise UserError(f"the loss became {running} in epoch {epoch} (by step {step}): training diverged. Lower the learning "
                        f"rate or the loss weights, or set trainer.grad_clip; {kept}.")
    return running


class StudentStep(nn.Module):
    """The student's forward and the objective's loss of one step, as one module so that DDP averages the gradients
    of the student and of the term parameters that train with it (hint regressors), and nothing else."""

    def __init__(self, student_fn: nn.Module, objective: Objective, student_taps: FeatureTaps) -> None:
        super().__init__()
        self.student = student_fn
        self.term_parameters = nn.ParameterList(objective.student_parameters())
        # Not a submodule: a term's own optimizer (a discriminator's) is not DDP's to synchronize.
        self.run_objective, self.taps = objective.__call__, student_taps

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None,
                teacher_features: dict[str, torch.Tensor], epoch: int, indices: torch.Tensor | None,
                num_images: int) -> tuple[StepOutputs, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        out = StepOutputs(logits, y, teacher_logits, self.taps.take(), teacher_features, epoch, indices, num_images)
        loss, parts = self.run_objective(out)
        return out, loss, parts


def train_step(
    trainee: Trainee,
    x: torch.Tensor,
    y: torch.Tensor,
    epoch: int,
    step_fn: Callable[..., tuple[StepOutputs, torch.Tensor, dict[str, torch.Tensor]]],
    teacher_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    teacher_taps: FeatureTaps,
    trainer_cfg,
    indices: torch.Tensor | None = None,
    num_images: int = 0,
) -> tuple[StepOutputs, torch.Tensor, dict[str, torch.Tensor]] | None:
    """One optimisation step of the student (and of terms with their own updates) through `step_fn` (a
    StudentStep, under DDP in a multi-process job); returns what it computed, or None for a step left out under
    trainer.on_nan=skip_step."""
    device = x.device
    teacher_logits, teacher_features = None, {}
    if teacher_fn is not None:
        with torch.inference_mode(), autocast(device, trainer_cfg.precision):
            teacher_logits = teacher_fn(x)
        # Inference tensors cannot be saved for backward; a clone outside the mode can.
        teacher_logits = teacher_logits.clone()
        teacher_features = {k: v.clone() for k, v in teacher_taps.take().items()}
    # The objective runs under the same autocast as the forward: term modules (a hint regressor) receive
    # low-precision features; the terms compute their losses in fp32 themselves.
    with autocast(device, trainer_cfg.precision):
        out, loss, parts = step_fn(x, y, teacher_logits, teacher_features, epoch, indices, num_images)
    trainee.optimizer.zero_grad(set_to_none=True)
    # Every process skips together: one that stepped alone would wait for the others' gradients.
    if trainer_cfg.get("on_nan") == "skip_step" and not distributed.all_agree(bool(torch.isfinite(loss.detach()).item()), device):
        trainee.scheduler.step()  # the schedule keeps its length
        return None
    loss.backward()
    if trainer_cfg.grad_clip:
        nn.utils.clip_grad_norm_(trainee.model.parameters(), trainer_cfg.grad_clip)
    trainee.optimizer.step()
    trainee.scheduler.step()
    trainee.objective.after_step(out)
    return out, loss, parts


def checkpoint(trainee: Trainee, batches: Batches, out_dir: Path, epoch: int, best_val: float, best_epoch: int, history: list) -> None:
    """Save everything resume needs in one file (weights, optimizer, schedule, loss-term state, every RNG, the epochs'
    records), then the weights alone as last.safetensors and the records as history.jsonl for whoever reads them."""
    weights = artifacts.weights_of(trainee.model)  # read off the device once, for both files
    state = {
        # In the state itself: a process killed between two files' writes would otherwise pair one checkpoint's
        # weights with the other's optimizer and position, and the resumed run would end on other weights.
        "model": weights,
        "epoch": epoch,
        "best_val": best_val,
        "best_epoch": best_epoch,
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": trainee.scheduler.state_dict(),
        "objective": trainee.objective.state_dict(),
        "batches": batches.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": json.dumps(random.getstate()),
        "history": json.dumps(history),
    }
    artifacts.save_state(out_dir / LAST_STATE, state)
    artifacts.save_tensors(out_dir / LAST, weights, {**trainee.metadata, "epoch": epoch})
    files.write_text(out_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in history))


def restore(trainee: Trainee, batches: Batches, out_dir: Path) -> tuple[int, float, int, list]:
    """Load the last checkpoint of out_dir into the trainee; returns the epoch to start from and the history."""
    check_resumable(out_dir)
    state = artifacts.load_state(out_dir / LAST_STATE)
    if "model" in state:
        artifacts.fit_state(trainee.model, state["model"], out_dir / LAST_STATE)
    else:  # a checkpoint from before the weights were kept in the state
        artifacts.load_weights(out_dir / LAST, trainee.model)
    trainee.optimizer.load_state_dict(state["optimizer"])
    trainee.scheduler.load_state_dict(state["scheduler"])
    trainee.objective.load_state_dict(state["objective"])
    batches.load_state_dict(state["batches"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    version, internal, gauss = json.loads(state["python_rng"])
    random.setstate((version, tuple(internal), gauss))
    if "history" in state:
        history = json.loads(state["history"])
    else:  # a checkpoint from before the history was kept in the state
        history = [json.loads(line) for line in (out_dir / HISTORY).read_text().splitlines() if line.strip()]
    return state["epoch"] + 1, state["best_val"], state["best_epoch"], history
