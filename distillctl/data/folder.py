"""An image folder (<root>/<split>/<class>/<image>) read as a table of file paths and labels.

Listed here with os.scandir rather than through `datasets`' imagefolder builder, which resolves and hashes every
file again on each load: 17-20 s for 20,000 photos before the first step, against well under a second here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from distillctl.errors import UserError


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File endings PIL can open (.jpg, .png, .webp, ...); anything else in a class folder is ignored."""
    from PIL import Image

    return frozenset(Image.registered_extensions())


def images_under(folder: Path) -> Iterator[str]:
    """Image files under `folder`, recursively, in walk order; hidden files and other files left out."""
    suffixes = image_suffixes()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield from (os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes)


def has_images(folder: Path) -> bool:
    """Whether `folder` holds at least one image: stops at the first rather than listing them all."""
    return next(images_under(folder), None) is not None


def class_names(root: Path) -> list[str]:
    """Class folders holding at least one image in any split, sorted: one label mapping for every split."""
    names = set()
    for split_dir in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names |= {c.name for c in split_dir.iterdir() if c.is_dir() and not c.name.startswith(".") and has_images(c)}
    return sorted(names)


def table(root: Path, split: str):
    """One split as a `datasets.Dataset` with an (undecoded) image column and a ClassLabel column."""
    import datasets

    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"image folder '{root}' has no split '{split}' (no {split_dir}/<class>/ folders). Set dataset.train_split / dataset.test_split.")
    classes = class_names(root)
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(images_under(split_dir / name)) if (split_dir / name).is_dir() else []
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise UserError(f"no images in {split_dir}/<class>/ (looked for .jpg, .png, .webp and the other formats PIL reads).")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    return datasets.Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": labels}, features=features)
