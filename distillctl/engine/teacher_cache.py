"""The teacher's logits for every (training image, augmented view), kept on disk and shared by every run that
learns from the same teacher on the same data: logit-only losses read them instead of running the teacher.

The resident loader's augmentation is discrete (crop offset x flip: 162 views of a CIFAR image), so each view's
logits are computed once, by the first run that draws it (`auto`) or for all views up front (`on`), and every later
epoch, seed, sweep job and fine-tuning stage reads them. The streaming loader's crops are continuous
(RandomResizedCrop), so the cache keeps `views` sampled crops per image instead, as FKD does (Shen & Xing 2022):
each crop is fixed by a seed the cache names, the loader replays view e % views in epoch e, and the answers are the
top-k logits for many classes (engine/logit_codes.py). The file is named by a hash of the teacher's weights, the
training images and the view settings, so it can never be stale; it is written atomically and merged with what
other runs wrote meanwhile, and a `filled` mask says which entries hold logits, so a partial cache is never read
where it has none.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distillctl.artifacts import atomic_write
from distillctl.console import CountProgress, console
from distillctl.data.batches import Batches
from distillctl.disk import write_failure
from distillctl.engine import distributed
from distillctl.engine.device import autocast
from distillctl.engine.logit_codes import FullLogits, TopK, code_for
from distillctl.errors import UserError

VERSION = "1"


def tensor_digest(tensors: Iterable[torch.Tensor], *texts: str) -> str:
    """A hash of the tensors' bytes and the texts: what a cache file is named by."""
    digest = hashlib.blake2b(digest_size=16)
    for text in (VERSION, *texts):
        digest.update(text.encode())
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


@dataclass
class LogitCache:
    """The teacher's answers for [images, views] entries, stored as `code` says (every logit, or the top k), with a
    [images, views] mask of the entries that hold one."""

    path: Path
    code: FullLogits | TopK
    tensors: dict[str, torch.Tensor]
    filled: torch.Tensor
    added: int = 0  # entries filled since the file was read
    stamp: tuple[int, int, int] | None = None  # the file as last read or written here: another run's save changes it

    @classmethod
    def open(cls, path: Path, images: int, views: int, code: FullLogits | TopK, device: torch.device) -> "LogitCache":
        """The cache at `path`, or an empty one when it is missing or not what it should be (then it is rebuilt)."""
        stamp = file_stamp(path)
        shapes = {name: ((images, views, *tail), dtype) for name, (tail, dtype) in code.shapes().items()}
        found = read(path, shapes, (images, views))
        if found is None:
            found = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}, torch.zeros(images, views, dtype=torch.bool)
        tensors, filled = found
        return cls(path, code, {name: t.to(device) for name, t in tensors.items()}, filled.to(device), stamp=stamp)

    @property
    def share_filled(self) -> float:
        """The fraction of (image, view) entries that hold logits."""
        return self.filled.float().mean().item()

    @property
    def size_gb(self) -> float:
        """What the cache takes in memory and on disk."""
        return (sum(t.numel() * t.element_size() for t in self.tensors.values()) + self.filled.numel()) / 1e9

    def store(self, idx: torch.Tensor, view: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the logits of images `idx` in views `view` (entries already filled are simply overwritten)."""
        for name, value in self.code.encode(logits).items():
            self.tensors[name][idx, view] = value
        self.filled[idx, view] = True
        self.added += len(idx)

    def lookup(self, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The float logits stored for images `idx` in views `view`."""
        return self.code.decode({name: t[idx, view] for name, t in self.tensors.items()})

    def save(self) -> None:
        """Write what this run added, merged with what other runs (or this job's other processes) wrote since."""
        if not self.added:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(self.path):  # read, merge and replace as one step: a concurrent writer's entries stay
                tensors, filled = self.merged()
                atomic_write(self.path, lambda tmp: save_file({**tensors, "filled": filled}, str(tmp),
                                                              metadata={"version": VERSION, "code": self.code.name}))
                self.adopt(tensors, filled)
        except Exception as exc:  # a full disk or read-only folder costs later runs the speed-up, never this run's work
            if (reason := write_failure(exc)) is None:
                raise
            console.print(f"warning: teacher cache not saved ({reason}: {self.path}); set distill.teacher_cache_dir "
                          "to a folder with room to keep the teacher's logits for later runs")
            return
        self.added = 0

    def reload(self) -> None:
        """Take in the entries others saved to the file since this cache read it."""
        self.adopt(*self.merged())

    def adopt(self, tensors: dict[str, torch.Tensor], filled: torch.Tensor) -> None:
        """Hold these (merged) entries, as the file now is."""
        device = self.filled.device
        self.tensors, self.filled = {name: t.to(device) for name, t in tensors.items()}, filled.to(device)
        self.stamp = file_stamp(self.path)

    def merged(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(tensors, filled) on the CPU: this cache's entries, and the file's where this cache has none."""
        tensors, filled = {name: t.cpu() for name, t in self.tensors.items()}, self.filled.cpu()
        shapes = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
        theirs = read(self.path, shapes, tuple(filled.shape)) if file_stamp(self.path) != self.stamp else None
        if theirs is not None:
            only_theirs = theirs[1] & ~filled
            for name, t in tensors.items():
                tensors[name] = torch.where(only_theirs.reshape(*only_theirs.shape, *[1] * (t.dim() - 2)), theirs[0][name], t)
            filled = filled | theirs[1]
        return tensors, filled


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for writing `path`: on its folder, so that no lock file is left beside the caches."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the file, None when there is none to read: atomic writes replace the inode."""
    try:
        stat = path.stat()
    except OSError:  # missing, or under a path that is not a folder: `read` finds nothing there either
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read(path: Path, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
         filled_shape: tuple[int, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
    """(tensors, filled) from a cache file, or None when it is missing, torn or of another layout."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            if handle.metadata().get("version") != VERSION or set(handle.keys()) != {*shapes, "filled"}:
                return None
            tensors = {name: handle.get_tensor(name) for name in shapes}
            filled = handle.get_tensor("filled")
    except Exception:  # a torn or foreign file: the cache is only an optimisation, so it is rebuilt
        console.print(f"teacher cache: {path} is unreadable; starting it afresh")
        return None
    if any(tuple(tensors[n].shape) != shape or tensors[n].dtype != dtype for n, (shape, dtype) in shapes.items()):
        return None
    return (tensors, filled) if tuple(filled.shape) == filled_shape else None


class CachedTeacher:
    """Stands in for the teacher's forward in the training step: the batch's cached logits, with the teacher run on
    the images whose view has none yet. Every answer passes through the cache's dtype, so a run's losses do not
    depend on which of its views were cached before it started."""

    def __init__(self, cache: LogitCache, batches: Batches, teacher_fn: Callable[[torch.Tensor], torch.Tensor], teacher: nn.Module) -> None:
        self.cache, self.batches, self.teacher_fn, self.teacher = cache, batches, teacher_fn, teacher
        self.images = self.teacher_images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        idx, view = self.batches.keys
        missing = ~self.cache.filled[idx, view]
        n_missing = int(missing.sum())  # one sync per step on an accelerator: the batch's shape depends on it
        if n_missing == len(idx):  # the whole batch: the (possibly compiled) teacher at its usual batch shape
            self.cache.store(idx, view, self.teacher_fn(x))
        elif n_missing:
            self.cache.store(idx[missing], view[missing], self.teacher(x[missing]))
        self.images += len(idx)
        self.teacher_images += n_missing
        return self.cache.lookup(idx, view)

    @property
    def teacher_share(self) -> float:
        """The fraction of training images this run had to run the teacher for."""
        return self.teacher_images / max(self.images, 1)


@dataclass
class CacheSettings:
    """The `distill` section's cache options, and the precision the teacher runs at."""

    mode: str
    directory: Path
    max_gb: float
    half: bool
    precision: str
    eval_batch_size: int
    topk: int | None = None  # streamed views: the k largest logits (null: all)
    views: int = 1  # streamed views kept per image (epoch e reads view e % views)


def open_cache(settings: CacheSettings, batches, teacher: nn.Module | None, num_classes: int,
               teacher_layers: list[str]) -> LogitCache | None:
    """The cache this run's teacher answers from (filled first when the mode is `on`), or None; the log says which
    and why. On the streaming loader the batches are set to replay the cache's views."""
    if teacher is None or settings.mode == "off":
        return None
    if teacher_layers:
        console.print(f"teacher cache: off: the loss reads teacher features ({', '.join(teacher_layers)}), so the teacher runs every step")
        return None
    dtype = torch.float16 if settings.half else torch.float32
    streamed = not isinstance(batches, Batches)
    code = code_for(num_classes, dtype, settings.topk if streamed else None)
    images, views = batches.split_size, settings.views if streamed else batches.num_views
    entry = sum(math.prod(tail) * kind.itemsize for tail, kind in code.shapes().values()) + 1
    size_gb = images * views * entry / 1e9
    kept = f"{code.name} of {num_classes} classes" if isinstance(code, TopK) else f"{num_classes} classes"
    shape = f"{images:,} images x {views} {'streamed ' if streamed else ''}views x {kept} ({str(dtype).split('.')[1]}): {size_gb:.2f} GB"
    if size_gb > settings.max_gb:
        fewer = ", fewer distill.teacher_cache_views" if streamed else ""
        if settings.mode == "on":
            raise UserError(f"distill.teacher_cache=on needs {shape}, more than distill.teacher_cache_max_gb={settings.max_gb:g}: "
                            f"raise the limit{fewer}, set distill.teacher_cache_half=true, or use distill.teacher_cache=off.")
        console.print(f"teacher cache: off: {shape}, more than distill.teacher_cache_max_gb={settings.max_gb:g}")
        return None
    # Parameters and every buffer (non-persistent ones too: ensemble weights, renormalization), each once; the device
    # type too: precision `auto` means bf16 on CUDA and fp32 elsewhere.
    weights = [*teacher.parameters(), *teacher.buffers()]
    run = f"{settings.precision}|{batches.device.type}|{dtype}"
    if streamed:
        split = batches.split
        key = tensor_digest([*weights, split.labels, split.rows, batches.scale, batches.shift], repr(teacher), run, code.name,
                            str(getattr(split.cells, "_fingerprint", "")), view_settings(split.settings))
        path = settings.directory.expanduser() / f"{key}-{views}views.safetensors"
        batches.replay_views(int(key[:15], 16), views)
    else:
        key = tensor_digest([*weights, batches.images, batches.labels, batches.scale, batches.shift],
                            repr(teacher), f"{batches.padding}|{batches.hflip}|{run}")
        path = settings.directory.expanduser() / f"{key}.safetensors"
    cache = LogitCache.open(path, images, views, code, batches.device)
    console.print(f"teacher cache: {shape}, {cache.share_filled:.1%} filled, at {cache.path}")
    if streamed:
        console.print(f"teacher cache: each epoch's crops are the cache's {views} views of every image (epoch e: view e mod {views}), "
                      "the same for every run that learns from this teacher")
    if settings.mode == "on":
        fill(cache, batches, teacher, settings)
    return cache


def view_settings(settings) -> str:
    """What decides a streamed view's pixels: the transform's settings, not the worker count or bad-image policy."""
    return f"{settings.size}|{settings.min_crop_scale}|{settings.interpolation}|{settings.auto_augment}|{settings.hflip}"


def fill(cache: LogitCache, batches, teacher: nn.Module, settings: CacheSettings) -> None:
    """Run the teacher on every (image, view) the cache lacks, in evaluation-sized batches, and save it. The
    processes of a multi-process job each fill a share, then every process reads the whole."""
    rank, world = distributed.rank(), distributed.world_size()
    todo = int((~cache.filled).sum())
    if not todo:
        return
    with CountProgress("teacher cache: filling", -(-todo // world)) as progress, torch.inference_mode(), autocast(batches.device, settings.precision):
        for view in range(cache.filled.shape[1]):
            missing = (~cache.filled[:, view]).nonzero().flatten()[rank::world]
            if isinstance(batches, Batches):
                chunks = ((chunk, batches.view(chunk, view)) for chunk in missing.split(settings.eval_batch_size))
            else:
                chunks = batches.view_batches(missing.cpu(), view, settings.eval_batch_size)
            for idx, x in chunks:
                cache.store(idx, torch.full_like(idx, view), teacher(x))
                progress.advance(len(idx))
    cache.save()
    if world > 1:
        distributed.barrier()  # every share is on disk
        cache.reload()
