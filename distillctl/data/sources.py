"""Reading a data set through Hugging Face `datasets`: a Hub id, a parquet directory or an image folder."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillctl.errors import UserError

EMBEDDED_DIR = Path(__file__).resolve().parent / "sample" / "cifar10"


@dataclass
class Source:
    """Where a data set lives and how to ask `datasets` for it."""

    spec: str  # what the user wrote in dataset.path
    local_dir: Path | None  # set for local data; None for a Hub id
    builder: str | None  # "imagefolder" for an image folder, else None (parquet dir or Hub)

    def fingerprint(self, extra: str) -> str | None:
        """A key for the decoded cache, computable without loading: local files' names, sizes and mtimes."""
        if self.local_dir is None:
            return None
        digest = hashlib.sha1(extra.encode())
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(self.local_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


def locate(spec: str) -> Source:
    """Decide what kind of source dataset.path names, failing early for a local path that isn't there."""
    if spec == "embedded":
        return Source(spec, EMBEDDED_DIR, None)
    path = Path(spec).expanduser()
    if path.is_dir():
        has_parquet = any(path.rglob("*.parquet"))
        has_class_dirs = (path / "train").is_dir() and any(p.is_dir() for p in (path / "train").iterdir())
        if not has_parquet and not has_class_dirs:
            raise UserError(
                f"dataset.path '{spec}' holds neither parquet files (the Hub's layout) nor an image folder "
                "(train/<class>/*.jpg). Point it at one of those."
            )
        return Source(spec, path.resolve(), None if has_parquet else "imagefolder")
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        raise UserError(f"dataset.path '{spec}' does not exist. Give a local directory or a Hub id such as uoft-cs/cifar10.")
    return Source(spec, None, None)


def load_split_table(source: Source, split: str):
    """One split as a `datasets.Dataset`, with a message that says what to do when it can't be had."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if source.builder == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=str(source.local_dir), split=split)
        return datasets.load_dataset(str(source.local_dir or source.spec), split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise UserError(f"data set '{source.spec}' has no split '{split}': {exc}. Set dataset.train_split / dataset.test_split.") from None
        raise
    except Exception as exc:  # network, missing repo, corrupt file: all the user's to fix
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        reason = "offline mode is on" if offline else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if source.local_dir is not None:
            raise UserError(f"could not read the data set in '{source.local_dir}' ({reason}). Is a file corrupt?") from None
        raise UserError(
            f"could not load '{source.spec}' from the Hugging Face Hub ({reason}). Without network, point "
            "dataset.path at local files: a directory in the Hub's parquet layout (e.g. dataset.path=../shared/data/cifar10) "
            "or an image folder with train/<class>/*.jpg and test/<class>/*.jpg."
        ) from None


def decode(table, image_column: str | None, label_column: str | None, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image once into a uint8 array [N, size, size, 3] plus int64 labels and class names."""
    import datasets
    from PIL import Image

    image_column = pick_column(table, image_column, datasets.Image, "image_column")
    label_column = pick_column(table, label_column, datasets.ClassLabel, "label_column")
    raw = table.cast_column(image_column, datasets.Image(decode=False))
    images = np.empty((len(raw), size, size, 3), dtype=np.uint8)
    bad: list[tuple[int, str]] = []
    for i, item in enumerate(raw[image_column]):
        try:
            img = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]).convert("RGB")
        except Exception as exc:
            bad.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        images[i] = np.asarray(img)
    labels = np.asarray(raw[label_column], dtype=np.int64)
    feature = raw.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else [str(c) for c in sorted(set(labels.tolist()))]
    if bad:
        images, labels = without_undecodable(images, labels, bad)
    return images, labels, names


def without_undecodable(images: np.ndarray, labels: np.ndarray, bad: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Drop images that could not be decoded and say so: one bad file in a million must not stop a long run, but
    many mean the data set itself is broken."""
    from distillctl.console import console

    first, reason = bad[0]
    if len(bad) > max(10, len(labels) // 100):
        raise UserError(f"{len(bad)} of {len(labels)} images could not be decoded (first: image {first}, {reason}); is the data set corrupt?")
    console.print(f"[yellow]warning:[/] skipped {len(bad)} of {len(labels)} images that could not be decoded (first: image {first}, {reason})")
    keep = np.ones(len(labels), dtype=bool)
    keep[[i for i, _ in bad]] = False
    return images[keep], labels[keep]


def pick_column(table, wanted: str | None, kind, option: str) -> str:
    """The configured column, which must exist; when none is configured, the only column of the right type."""
    if wanted is not None:
        if wanted in table.column_names:
            return wanted
        raise UserError(f"dataset.{option}={wanted}: the data set has no such column (columns: {', '.join(table.column_names)}).")
    typed = [name for name, feature in table.features.items() if isinstance(feature, kind)]
    if len(typed) == 1:
        return typed[0]
    raise UserError(f"cannot tell which column holds the {option.split('_')[0]}s (columns: {', '.join(table.column_names)}). Set dataset.{option}.")
