"""What identifies a local data set's content, so that `pipeline` runs a stage again after photos were added,
removed, relabelled (moved to another class folder) or edited, rather than skipping it as up to date with its config.

Names and sizes, not modification times: copying a data set to another machine or cluster node (without keeping
times) must not retrain anything. Hidden files and non-images in an image folder are left out: Finder's .DS_Store
changes whenever someone looks at the folder.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from distillctl.data import folder, sources


@lru_cache(maxsize=8)  # one listing per process: a pipeline asks once per stage, and a million files take seconds
def content_stamp(spec: str, test_size: float, train_split: str) -> str | None:
    """A hash of the data set's files (relative names and sizes); None for a Hub data set, whose revision names it."""
    source = sources.locate(spec, test_size, train_split)
    if source.local_dir is None:
        return None
    root = source.local_dir
    if source.builder is None:  # parquet files or WebDataset shards
        paths = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    else:
        paths = [Path(p) for p in folder.images_under(root)]
    digest = hashlib.sha256(f"test_size={test_size}|".encode())
    for path in sorted(paths):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def dataset_stamp(dataset) -> str | None:
    """content_stamp of the `dataset` config section's data set."""
    return content_stamp(str(dataset.path), float(dataset.test_size), str(dataset.train_split))
