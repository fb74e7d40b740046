"""Train / validation / test splits as uint8 tensors, decoded once and cached on disk."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distillctl.artifacts import atomic_write
from distillctl.data import sources
from distillctl.errors import UserError

# The validation split is drawn with its own fixed seed so that teacher, student and every seed of a
# sweep select checkpoints on the same images.
SPLIT_SEED = 1234


@dataclass
class DataSplits:
    """Images as uint8 [N, H, W, 3] and int64 labels for each split, plus the class names."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """How many classes the classifier head needs."""
        return len(self.classes)


def load_splits(cfg) -> DataSplits:
    """Load (from the cache when possible) and split the data set that `cfg` (the `dataset` section) names."""
    source = sources.locate(cfg.path)
    train_x, train_y, classes = cached_split(source, cfg, cfg.train_split)
    test_x, test_y, _ = cached_split(source, cfg, cfg.test_split)
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    if cfg.train_limit:
        order = order[: cfg.train_limit]
    n_val = int(cfg.val_size if cfg.val_size >= 1 else round(cfg.val_size * len(order)))
    if n_val >= len(order):
        raise UserError(f"dataset.val_size={cfg.val_size} leaves no training images out of {len(order)}; lower it.")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.test_limit:
        test_x, test_y = test_x[: cfg.test_limit], test_y[: cfg.test_limit]
    return DataSplits(
        train=(train_x[train_idx], train_y[train_idx]),
        val=(train_x[val_idx], train_y[val_idx]),
        test=(test_x, test_y),
        classes=classes,
    )


def cached_split(source: sources.Source, cfg, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split's decoded images: read from the cache, or decode through `datasets` and write the cache."""
    settings = f"{cfg.image_column}|{cfg.label_column}|{cfg.image_size}|{split}"
    cache_dir = Path(cfg.cache_dir).expanduser()
    key = source.fingerprint(settings)
    if key is not None and (hit := read_cache(cache_dir / f"{key}.safetensors")) is not None:
        return hit
    table = sources.load_split_table(source, split)
    if key is None:  # a Hub data set: its own fingerprint identifies the content
        key = hub_cache_key(table._fingerprint, settings)
        if (hit := read_cache(cache_dir / f"{key}.safetensors")) is not None:
            return hit
    images, labels, classes = sources.decode(table, cfg.image_column, cfg.label_column, cfg.image_size)
    result = torch.from_numpy(images), torch.from_numpy(labels), classes
    write_cache(cache_dir / f"{key}.safetensors", *result)
    return result


def hub_cache_key(table_fingerprint: str, settings: str) -> str:
    """The cache key of a Hub split: its `datasets` fingerprint plus the decode settings. hashlib, not hash():
    str hashes are salted per process, which would miss the cache on every run."""
    return f"{table_fingerprint}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"


def read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """The cached split, or None when it is missing or unreadable (then it is simply rebuilt)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            classes = json.loads(handle.metadata()["classes"])
        tensors = load_file(str(path))
        return tensors["images"], tensors["labels"], classes
    except Exception:
        return None


def write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Write atomically so that two runs decoding at once never leave a torn file."""
    tensors = {"images": images.contiguous(), "labels": labels}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"classes": json.dumps(classes)}))
