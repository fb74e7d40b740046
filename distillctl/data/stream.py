"""Images read, decoded and augmented in DataLoader worker processes, so memory stays flat whatever the data size.

Training batches: timm's RandomResizedCrop + flip (+ an optional auto_augment policy); evaluation: resize of the
shorter side to image_size / crop_pct, then a centre crop. Workers hand over uint8 tensors and the training device
normalizes them, which moves a quarter of the bytes a float batch would.

Each image's augmentation is seeded from (seed, epoch, position), not from worker RNG state: the batches are the
same for any worker count and after a resume.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from distillctl.console import console
from distillctl.data import images, preprocess
from distillctl.data.batches import local_part, normalizer, steps_per_pass
from distillctl.errors import UserError


@dataclass(frozen=True)
class StreamSettings:
    """How streamed images are decoded, augmented and fed."""

    size: int
    min_crop_scale: float
    crop_pct: float
    interpolation: str
    auto_augment: str | None
    hflip: bool
    workers: int
    on_bad_image: str
    # Evaluation images: a centre crop after resizing the shorter side (timm's), or, for images a model trained on
    # the resident loader is to be shown (`distillctl predict`), the centre square it was tested on.
    resize: str = "crop"


def default_workers() -> int:
    """One worker per core the process may use, less one for the training loop itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1))


def transform(settings: StreamSettings, training: bool):
    """timm's standard ImageNet transforms, ending in a uint8 CHW tensor (normalization happens on the device)."""
    from timm.data import create_transform

    try:
        if training:
            return create_transform(
                settings.size, is_training=True, scale=(settings.min_crop_scale, 1.0), hflip=0.5 if settings.hflip else 0.0,
                color_jitter=None, auto_augment=settings.auto_augment, interpolation=settings.interpolation, use_prefetcher=True,
            )
        return preprocess.eval_transform({"image_size": settings.size, "resize": settings.resize, "crop_pct": settings.crop_pct,
                                          "interpolation": settings.interpolation})
    except (ValueError, KeyError, AssertionError) as exc:
        raise UserError(f"dataset.auto_augment={settings.auto_augment} / dataset.interpolation={settings.interpolation}: timm refused it ({exc}). "
                        "Use a timm policy string such as rand-m9-mstd0.5 or trivialaugment, and bilinear or bicubic.") from None


class Rows(Dataset):
    """Table rows decoded one at a time; a row that cannot be decoded comes back as its problem, not an exception."""

    def __init__(self, cells, column: str, labels: np.ndarray, pipeline) -> None:
        self.cells, self.column, self.labels, self.pipeline = cells, column, labels, pipeline

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int | None]):
        row, sample_seed = key
        cell = self.cells[row][self.column]
        try:
            image = images.open_rgb(cell)
        except Exception as exc:  # corrupt, truncated or not an image at all: the caller decides what that means
            return None, -1, row, f"{cell.get('path') or f'row {row}'} ({type(exc).__name__}: {exc})"
        with seeded(sample_seed):
            return self.pipeline(image), int(self.labels[row]), row, None


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Python's and torch's RNG seeded for one image's augmentation (None: unseeded, for evaluation). In the
    training process itself (workers=0) the RNG is put back afterwards; a worker's RNG is its own."""
    if seed is None:
        yield
        return
    saved = (random.getstate(), torch.get_rng_state()) if get_worker_info() is None else None
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            torch.set_rng_state(saved[1])


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decoded images with their labels and table rows; report the undecodable ones beside the batch."""
    good = [(x, y, row) for x, y, row, problem in samples if problem is None]
    problems = [problem for *_, problem in samples if problem is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), problems
    return torch.stack([x for x, _, _ in good]), torch.tensor([y for _, y, _ in good]), torch.tensor([r for *_, r in good]), problems


class EpochOrder(Sampler):
    """(row, augmentation seed) pairs in a shuffled order fixed by (seed, epoch); rows in order for evaluation.

    With a `shard` (rank, processes), each global batch of `batch` pairs is drawn as one process would draw it and
    this process keeps its share (data.batches.local_part), so the processes together see one process's epoch."""

    def __init__(self, rows: torch.Tensor, seed: int | None, limit: int | None = None, batch: int = 1,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.rows, self.seed, self.limit, self.epoch, self.batch, self.shard = rows, seed, limit, 0, batch, shard
        self.start = 0  # positions of this epoch already trained on (a resume from a mid-epoch checkpoint)
        # (base, count): augment each image as the teacher cache's view `epoch % count` of it, the same in every run
        # that shares the cache, instead of from this run's seed (see StreamBatches.replay_views).
        self.views: tuple[int, int] | None = None

    def global_length(self) -> int:
        """Pairs one pass yields over all processes."""
        return min(len(self.rows), self.limit or len(self.rows))

    def __len__(self) -> int:
        total, (_, world) = self.global_length(), self.shard
        if world == 1:
            return total
        full, last = divmod(total, self.batch)
        return full * (self.batch // world) + (-(-last // world) if last else 0)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        if self.seed is None:
            yield from ((int(r), None) for r in self.rows[: len(self)])
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.global_length()
        order = self.rows[torch.randperm(len(self.rows), generator=generator)][:total]
        seeds = torch.randint(2**62, (len(order),), generator=generator)
        if self.views is not None:
            seeds = view_seeds(self.views[0], self.epoch % self.views[1], self.rows)[order]
        mine = torch.arange(self.start, total)
        if self.shard[1] > 1:
            mine = torch.cat([chunk[local_part(len(chunk), *self.shard)] for chunk in mine.split(self.batch)]) if len(mine) else mine
        yield from zip(order[mine].tolist(), seeds[mine].tolist())


def view_seeds(base: int, view: int, rows: torch.Tensor) -> torch.Tensor:
    """The augmentation seed of view `view` of every table row up to the largest of `rows` (indexed by row)."""
    generator = torch.Generator().manual_seed((base + 7919 * view) % 2**63)
    return torch.randint(2**62, (int(rows.max()) + 1 if len(rows) else 0,), generator=generator)


# Where a signal's sender can be told (not macOS or Windows: there SIGTERM ends a worker, and with it the run).
SENDER_KNOWN = hasattr(signal, "sigwaitinfo")


def worker_birth_mask() -> set[signal.Signals]:
    """The signals a loader worker is born with blocked: Ctrl-C and SIGHUP for good (a terminal, and a shell whose
    terminal closed, send them to every process of the foreground job, and the training process stops at a step of
    its own, then shuts its workers down), and SIGTERM until a thread that knows its sender reads it
    (leave_sigterm_to_the_trainer)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        return set()
    for_good = {signal.SIGINT, signal.SIGHUP}
    return for_good | {signal.SIGTERM} if SENDER_KNOWN else for_good


class WorkerLoader(DataLoader):
    """A DataLoader whose workers leave Ctrl-C, SIGHUP, and a SIGTERM from anyone but the training process, to that
    process: a terminal and SLURM signal every process of a job, and torch would end the training process for a
    worker ended by a signal before it saves its state (engine/stop_signal.py). The training process's own SIGTERM,
    which shuts its workers down, still ends one."""

    def __iter__(self):
        blocked = worker_birth_mask() if self.num_workers else set()
        if not blocked:
            return super().__iter__()
        # Workers start here and are born with these signals blocked in every thread: a thread a library starts in a
        # worker before its init function runs would otherwise take SIGTERM and its default, death.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """A WorkerLoader worker's init: SIGTERM, blocked since its birth, is read by a thread that knows the sender."""
    threading.Thread(target=exit_on_sigterm_from, args=(os.getppid(),), daemon=True, name="sigterm").start()


def exit_on_sigterm_from(parent: int) -> None:
    """Wait for SIGTERMs, which name their sender, and exit on the first that `parent` sent."""
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


class StreamSplit:
    """Some rows of a `datasets` table whose image cells are decoded only when a batch needs them."""

    def __init__(self, cells, column: str, all_labels: np.ndarray, rows: torch.Tensor, settings: StreamSettings) -> None:
        self.cells, self.column, self.all_labels, self.rows, self.settings = cells, column, all_labels, rows, settings
        self.labels = torch.from_numpy(all_labels[rows.numpy()])
        self.problems: set[str] = set()  # the undecodable images met so far, by any loader of this split
        self._eval_loaders: dict[int, DataLoader] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: torch.Tensor) -> "StreamSplit":
        """The split's images at these positions."""
        return StreamSplit(self.cells, self.column, self.all_labels, self.rows[indices], self.settings)

    def loader(self, order: Iterable[tuple[int, int | None]], batch_size: int, training: bool, device: torch.device) -> DataLoader:
        """A DataLoader over `order` ((row, augmentation seed) pairs) with workers that stay alive from one pass to
        the next."""
        workers = self.settings.workers
        rows = Rows(self.cells, self.column, self.all_labels, transform(self.settings, training))
        return WorkerLoader(
            rows, batch_size=batch_size, sampler=order, collate_fn=collate, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
            generator=torch.Generator(),  # its worker seeds are unused (images are seeded one by one): keep torch's own RNG
            worker_init_fn=leave_sigterm_to_the_trainer if SENDER_KNOWN and workers else None,
        )

    def take(self, batches: Iterator, scale: torch.Tensor, shift: torch.Tensor, device: torch.device, channels_last: bool,
             rows_seen: Callable[[torch.Tensor], None] | None = None):
        """Model-ready (x, y) from collated uint8 batches, with undecodable images reported and skipped; `rows_seen`
        is told each batch's table rows just before the batch is handed on."""
        seen = bad = 0
        for x, y, rows, problems in batches:
            seen, bad = seen + len(y) + len(problems), bad + len(problems)
            if problems:
                self.report(problems, bad, seen)
            if len(y) == 0:
                continue
            x = x.to(device, non_blocking=True).float().mul_(scale).add_(shift)
            if rows_seen is not None:
                rows_seen(rows)
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y.to(device, non_blocking=True)

    def report(self, problems: list[str], bad: int, seen: int) -> None:
        """Skip (and say so) or stop, as dataset.on_bad_image says; many bad images in a pass mean a broken data set."""
        if self.settings.on_bad_image == "error":
            raise UserError(f"cannot decode {problems[0]}. Fix or remove the file, or set dataset.on_bad_image=skip to go past it.")
        if not self.problems:
            console.print(f"[yellow]warning:[/] skipping an image that cannot be decoded: {problems[0]} (all are counted: skipped_images in the results' JSON)")
        self.problems.update(problems)
        if bad > max(10, seen // 100):
            raise UserError(f"{bad} of {seen} images could not be decoded in this pass (first: {problems[0]}); is the data set corrupt?")

    def eval_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                     channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Unaugmented batches in order (resize + centre crop)."""
        if batch_size not in self._eval_loaders:
            self._eval_loaders[batch_size] = self.loader(EpochOrder(self.rows, None), batch_size, False, device)
        scale, shift = normalizer(mean, std, device)
        return self.take(iter(self._eval_loaders[batch_size]), scale, shift, device, channels_last)

    def train_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device, seed: int,
                      channels_last: bool = False, max_steps: int | None = None, shard: tuple[int, int] = (0, 1)) -> "StreamBatches":
        """Shuffled, augmented training batches; `batch_size` is the global batch of which this process takes its
        `shard` (rank, processes)."""
        return StreamBatches(self, batch_size, mean, std, device, seed, channels_last, max_steps, shard)


class StreamBatches:
    """An epoch of augmented batches per pass, with the same interface as the resident `Batches`."""

    def __init__(self, split: StreamSplit, batch_size: int, mean, std, device: torch.device, seed: int,
                 channels_last: bool, max_steps: int | None, shard: tuple[int, int] = (0, 1)) -> None:
        self.steps = steps_per_pass(len(split), batch_size, max_steps, shard[1])
        self.batch_size, self.step, self.resume_step = batch_size, 0, 0
        self.order = EpochOrder(split.rows, seed, limit=self.steps * batch_size, batch=batch_size, shard=shard)
        self.split, self.device, self.channels_last = split, device, channels_last
        self.scale, self.shift = normalizer(mean, std, device)
        # Each process's full steps hold batch_size / processes images (the CLI checks that it divides).
        self.loader = split.loader(self.order, batch_size // shard[1], True, device)
        # Table row -> position in the split, for `positions`.
        self.position_of = torch.full((int(split.rows.max()) + 1 if len(split.rows) else 0,), -1, dtype=torch.int64)
        self.position_of[split.rows] = torch.arange(len(split.rows))
        self.positions: torch.Tensor | None = None  # of the batch last yielded, in the split (CRD's memory bank index)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.order.start, self.step = self.resume_step * self.batch_size, self.resume_step
        yield from self.split.take(self.counted(iter(self.loader)), self.scale, self.shift, self.device, self.channels_last,
                                   self.remember_positions)
        self.order.epoch += 1
        self.step = self.resume_step = self.order.start = 0

    def replay_views(self, base: int, views: int) -> None:
        """Augment image i in epoch e as view e % views of the teacher cache named by `base`: the views a cache of
        the teacher's answers holds, whatever this run's seed (which still orders the batches)."""
        self.order.views = (base, views)

    @property
    def num_views(self) -> int:
        """Distinct views per image that `keys` count in (1 without replay: every epoch's crop is new)."""
        return self.order.views[1] if self.order.views else 1

    @property
    def keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in the split, view numbers) of the batch last yielded: what a teacher cache is keyed by."""
        view = self.order.epoch % self.num_views
        return self.positions, torch.full_like(self.positions, view)

    def view_batches(self, positions: torch.Tensor, view: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(positions, model input) of the images at `positions` in replayed view `view`, in order (undecodable
        images are left out, as in training)."""
        rows = self.split.rows[positions]
        seeds = view_seeds(self.order.views[0], view, self.split.rows)[rows]
        loader = self.split.loader(list(zip(rows.tolist(), seeds.tolist())), batch_size, True, self.device)
        seen: list[torch.Tensor] = []
        for x, _ in self.split.take(iter(loader), self.scale, self.shift, self.device, self.channels_last,
                                    lambda r: seen.append(self.position_of[r].to(self.device))):
            yield seen.pop(), x

    def remember_positions(self, rows: torch.Tensor) -> None:
        """Where this batch's images are in the split."""
        self.positions = self.position_of[rows].to(self.device, non_blocking=True)

    @property
    def split_size(self) -> int:
        """Images in the split that `positions` count in."""
        return len(self.split)

    def counted(self, batches: Iterator) -> Iterator:
        """The loader's batches, counting the steps taken (an all-undecodable batch is a step too)."""
        for batch in batches:
            self.step += 1
            yield batch

    @property
    def first_step(self) -> int:
        """Steps of the coming pass already done before a mid-epoch checkpoint (0 at an epoch's start)."""
        return self.resume_step

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Finished epochs and steps done in the current one: with the seed, they fix every later batch."""
        return {"epochs_done": torch.tensor(self.order.epoch), "step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict saved: the next pass starts where the saved one stopped."""
        self.order.epoch = int(state["epochs_done"])
        self.resume_step = int(state.get("step", 0))
