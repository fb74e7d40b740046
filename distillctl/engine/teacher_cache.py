"""The teacher's logits for every (training image, augmented view), kept on disk and shared by every run that
learns from the same teacher on the same data: logit-only losses read them instead of running the teacher.

The resident loader's augmentation is discrete (crop offset x flip: 162 views of a CIFAR image), so each view's
logits are computed once, by the first run that draws it (`auto`) or for all views up front (`on`), and every later
epoch, seed, sweep job and fine-tuning stage reads them. The file is named by a hash of the teacher's weights, the
training images and the view settings, so it can never be stale; it is written atomically and merged with what
other runs wrote meanwhile, and a `filled` mask says which entries hold logits, so a partial cache is never read
where it has none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
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
from distillctl.engine.device import autocast
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
    """Logits [images, views, classes] with a [images, views] mask of the entries that hold them."""

    path: Path
    logits: torch.Tensor
    filled: torch.Tensor
    added: int = 0  # entries filled since the file was read
    stamp: tuple[int, int, int] | None = None  # the file as last read or written here: another run's save changes it

    @classmethod
    def open(cls, path: Path, images: int, views: int, classes: int, dtype: torch.dtype, device: torch.device) -> "LogitCache":
        """The cache at `path`, or an empty one when it is missing or not what it should be (then it is rebuilt)."""
        stamp = file_stamp(path)
        found = read(path, (images, views, classes), dtype)
        if found is None:
            found = torch.zeros(images, views, classes, dtype=dtype), torch.zeros(images, views, dtype=torch.bool)
        return cls(path, found[0].to(device), found[1].to(device), stamp=stamp)

    @property
    def share_filled(self) -> float:
        """The fraction of (image, view) entries that hold logits."""
        return self.filled.float().mean().item()

    def store(self, idx: torch.Tensor, view: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep the logits of images `idx` in views `view` (entries already filled are simply overwritten)."""
        # A barely trained teacher can have logits past float16's range: clamped they stay finite (as the uncached
        # run's are) rather than turning the loss into inf - inf.
        limit = torch.finfo(self.logits.dtype).max
        self.logits[idx, view] = logits.float().clamp(-limit, limit).to(self.logits.dtype)
        self.filled[idx, view] = True
        self.added += len(idx)

    def save(self) -> None:
        """Write what this run added, merged with what other runs wrote to the same file since it was read."""
        if not self.added:
            return
        logits, filled = self.logits.cpu(), self.filled.cpu()
        theirs = read(self.path, tuple(logits.shape), logits.dtype) if file_stamp(self.path) != self.stamp else None
        if theirs is not None:
            only_theirs = theirs[1] & ~filled
            logits = torch.where(only_theirs[..., None], theirs[0], logits)
            filled = filled | theirs[1]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda tmp: save_file({"logits": logits, "filled": filled}, str(tmp), metadata={"version": VERSION}))
        except Exception as exc:  # a full disk or read-only folder costs later runs the speed-up, never this run's work
            if (reason := write_failure(exc)) is None:
                raise
            console.print(f"warning: teacher cache not saved ({reason}: {self.path}); set distill.teacher_cache_dir "
                          "to a folder with room to keep the teacher's logits for later runs")
            return
        self.added, self.stamp = 0, file_stamp(self.path)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the file, None when there is none to read: atomic writes replace the inode."""
    try:
        stat = path.stat()
    except OSError:  # missing, or under a path that is not a folder: `read` finds nothing there either
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(logits, filled) from a cache file, or None when it is missing, torn or of another shape."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            if handle.metadata().get("version") != VERSION:
                return None
            logits, filled = handle.get_tensor("logits"), handle.get_tensor("filled")
    except Exception:  # a torn or foreign file: the cache is only an optimisation, so it is rebuilt
        console.print(f"teacher cache: {path} is unreadable; starting it afresh")
        return None
    if tuple(logits.shape) != shape or logits.dtype != dtype or tuple(filled.shape) != shape[:2]:
        return None
    return logits, filled


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
        return self.cache.logits[idx, view].float()

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


def open_cache(settings: CacheSettings, batches, teacher: nn.Module | None, num_classes: int,
               teacher_layers: list[str]) -> LogitCache | None:
    """The cache this run's teacher answers from (filled first when the mode is `on`), or None; the log says which
    and why."""
    if teacher is None or settings.mode == "off":
        return None
    if teacher_layers:
        console.print(f"teacher cache: off: the loss reads teacher features ({', '.join(teacher_layers)}), so the teacher runs every step")
        return None
    if not isinstance(batches, Batches):
        console.print("teacher cache: off: the streaming loader's crops are continuous, so the teacher runs every step")
        return None
    dtype = torch.float16 if settings.half else torch.float32
    images, views = len(batches.labels), batches.num_views
    size_gb = images * views * (num_classes * dtype.itemsize + 1) / 1e9
    shape = f"{images:,} images x {views} views x {num_classes} classes ({'float16' if settings.half else 'float32'}): {size_gb:.2f} GB"
    if size_gb > settings.max_gb:
        if settings.mode == "on":
            raise UserError(f"distill.teacher_cache=on needs {shape}, more than distill.teacher_cache_max_gb={settings.max_gb:g}: "
                            "raise the limit, set distill.teacher_cache_half=true, or use distill.teacher_cache=off.")
        console.print(f"teacher cache: off: {shape}, more than distill.teacher_cache_max_gb={settings.max_gb:g}")
        return None
    key = tensor_digest(
        # Parameters and every buffer (non-persistent ones too: ensemble weights, renormalization), each once.
        [*teacher.parameters(), *teacher.buffers(), batches.images, batches.labels, batches.scale, batches.shift],
        # The device type too: precision `auto` means bf16 on CUDA and fp32 elsewhere.
        repr(teacher), f"{batches.padding}|{batches.hflip}|{settings.precision}|{batches.device.type}|{dtype}",
    )
    cache = LogitCache.open(settings.directory.expanduser() / f"{key}.safetensors", images, views, num_classes, dtype, batches.device)
    console.print(f"teacher cache: {shape}, {cache.share_filled:.1%} filled, at {cache.path}")
    if settings.mode == "on":
        fill(cache, batches, teacher, settings)
    return cache


def fill(cache: LogitCache, batches: Batches, teacher: nn.Module, settings: CacheSettings) -> None:
    """Run the teacher on every (image, view) the cache lacks, in evaluation-sized batches, and save it."""
    todo = int((~cache.filled).sum())
    if not todo:
        return
    with CountProgress("teacher cache: filling", todo) as progress, torch.inference_mode(), autocast(batches.device, settings.precision):
        for view in range(batches.num_views):
            idx = (~cache.filled[:, view]).nonzero().flatten()
            for chunk in idx.split(settings.eval_batch_size):
                cache.store(chunk, torch.full_like(chunk, view), teacher(batches.view(chunk, view)))
                progress.advance(len(chunk))
    cache.save()
