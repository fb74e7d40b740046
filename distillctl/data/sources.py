"""Reading a data set through Hugging Face `datasets`: a Hub id, a parquet directory or an image folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distillctl.console import console
from distillctl.data import folder, hub_revision, images
from distillctl.errors import UserError
from distillctl.hub_access import offline

EMBEDDED_DIR = Path(__file__).resolve().parent / "sample" / "cifar10"


@dataclass
class Source:
    """Where a data set lives and how to ask `datasets` for it."""

    spec: str  # what the user wrote in dataset.path: a local path, or a Hub id, pinned as id@revision
    local_dir: Path | None  # set for local data; None for a Hub id
    builder: str | None  # an image folder's layout (folder.SPLIT_FOLDERS or CLASS_FOLDERS), else None (parquet dir or Hub)
    test_size: float = 0.2  # class folders alone: the share of each class held out as the test split
    commit: str | None = field(default=None, compare=False)  # a Hub data set's commit, once a split has been read
    # Splits already read: choosing a loader counts the training rows, and the chosen loader then needs the same table.
    tables: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hub_id(self) -> str:
        """The Hub id without its pinned revision."""
        return hub_revision.pinned(self.spec)[0]

    @property
    def revision(self) -> str | None:
        """The branch, tag or commit the Hub id is pinned to, or None for the latest."""
        return hub_revision.pinned(self.spec)[1]

    def fingerprint(self, extra: str) -> str | None:
        """A key for the decoded cache, computable without loading: local files' names, sizes and mtimes."""
        if self.local_dir is None:
            return None
        digest = hashlib.sha1(extra.encode())
        if self.builder == folder.CLASS_FOLDERS:  # the same files split another way are other splits
            digest.update(f"|test_size={self.test_size}".encode())
        digest.update(self.file_stamps)
        return digest.hexdigest()[:16]

    @cached_property
    def file_stamps(self) -> bytes:
        """Every local file's name, size and mtime, gathered once: each split's key needs them all (a million stats)."""
        stamps = []
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            stat = path.stat()
            stamps.append(f"{path.relative_to(self.local_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return b"".join(stamps)


def locate(spec: str, test_size: float = 0.2, train_split: str = "train") -> Source:
    """Decide what kind of source dataset.path names, failing early for a local path that isn't there; `test_size`
    is the share of each class held out for testing from a folder of class folders alone, and an image folder
    with a `train_split` folder of class folders is one of split folders."""
    if spec == "embedded":
        return Source(spec, EMBEDDED_DIR, None)
    if not spec.strip():
        raise UserError("dataset.path is not set: add dataset.path=DIR, a folder of your images as DIR/<class>/*.jpg, or "
                        "DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg.")
    path = Path(spec).expanduser()
    if path.is_dir():
        # Parquet (the Hub's layout) and WebDataset shards (train-00000.tar, ...) are read by `datasets` itself.
        if any(path.rglob("*.parquet")) or any(path.glob("*.tar")):
            return Source(spec, path.resolve(), None)
        kind = folder.layout(path, train_split)
        if kind is None and folder.loose_images(path):
            raise UserError(f"dataset.path '{spec}' holds images but no class folders, so they have no labels: put them in one "
                            "folder per class (DIR/<class>/*.jpg) and point dataset.path at DIR.")
        if kind is None:
            raise UserError(
                f"dataset.path '{spec}' holds no parquet files (the Hub's layout), WebDataset shards (train-00000.tar) "
                "or image folder (<class>/*.jpg, or train/<class>/*.jpg and test/<class>/*.jpg). Point it at one of those."
            )
        return Source(spec, path.resolve(), kind, test_size)
    if path.exists():
        raise UserError(f"dataset.path '{spec}' is a file, not a folder: point it at the folder that holds the data set "
                        "(its parquet files or WebDataset shards, or an image folder's root: <class>/*.jpg).")
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        raise UserError(f"dataset.path '{spec}' does not exist. Give a local directory or a Hub id such as uoft-cs/cifar10.")
    if spec.endswith("@"):
        raise UserError(f"dataset.path '{spec}' names no revision after '@': give a branch, tag or commit "
                        f"({spec}main), or drop the '@' for the latest.")
    return Source(spec, None, None)


def load_split_table(source: Source, split: str):
    """One split as a `datasets.Dataset` (read once per Source), with a message that says what to do when it can't be had."""
    if split not in source.tables:
        source.tables |= read_split_tables(source, split)
        if source.local_dir is None:
            commit = hub_revision.checked(source.hub_id, source.revision, source.tables[split])
            if commit is not None and commit != source.commit:
                source.commit = commit
                console.print(hub_revision.describe(source.hub_id, source.revision, commit), markup=False)
    return source.tables[split]


def read_split_tables(source: Source, split: str) -> dict:
    """Ask `datasets` (or the folder listing) for one split; a folder of class folders gives both of its splits at
    once, since one listing of it makes both."""
    import datasets

    # Errors are reported below in one line; datasets would log them first as well.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    if source.local_dir is None and offline():
        console.print(f"data: '{source.spec}' split '{split}' from the local Hugging Face cache (offline)")
    elif source.local_dir is None:
        # A first download can take hours (ImageNet: about 150 GB): its progress is worth showing. Later runs read
        # the Hugging Face cache memory-mapped, and a large split is then streamed from it by the workers.
        console.print(f"data: '{source.spec}' split '{split}' from the Hugging Face Hub (downloaded once into its cache)")
        datasets.enable_progress_bars()
    try:
        if source.builder == folder.CLASS_FOLDERS:
            return folder.held_out_tables(source.local_dir, split, source.test_size)
        if source.builder is not None:
            return {split: folder.table(source.local_dir, split)}
        if source.local_dir is not None:
            return {split: datasets.load_dataset(str(source.local_dir), split=split)}
        if source.revision is not None and offline():  # `datasets` would ignore the revision: hub_revision says why
            return {split: hub_revision.load_pinned_offline(source.hub_id, split, source.revision)}
        return {split: datasets.load_dataset(source.hub_id, split=split, revision=source.revision)}
    except UserError:
        raise
    except Exception as exc:  # no such split, network, missing repo, corrupt file: all the user's to fix
        if isinstance(exc, ValueError) and "split" in str(exc).lower():
            raise UserError(f"data set '{source.spec}' has no split '{split}': {str(exc).rstrip('.')}. Set dataset.train_split / dataset.test_split "
                            "(dataset.test_split=null holds a test split out of the train split).") from None
        reason = "offline mode is on" if offline() else f"{type(exc).__name__}: {str(exc).splitlines()[0].rstrip('.') if str(exc) else ''}"
        if source.local_dir is not None:
            raise UserError(f"could not read the data set in '{source.local_dir}' ({reason}). Is a file corrupt?") from None
        raise UserError(offline_message(source.spec, reason)) from None


def offline_message(spec: str, reason: str) -> str:
    """What to do when a Hub data set cannot be had."""
    return (
        f"could not load '{spec}' from the Hugging Face Hub ({reason}). Without network, point "
        "dataset.path at local files: a directory in the Hub's parquet layout (e.g. dataset.path=../shared/data/cifar10) "
        "or an image folder (<class>/*.jpg, or train/<class>/*.jpg and test/<class>/*.jpg)."
    )


def columns(table, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label columns: the configured ones, or the only ones of their types."""
    import datasets

    return (pick_column(table, image_column, datasets.Image, "image_column"),
            pick_column(table, label_column, datasets.ClassLabel, "label_column"))


def undecoded(table, image_column: str | None, label_column: str | None):
    """The image column with decoding off (cells of {"bytes", "path"}), int64 labels and the class names."""
    import datasets

    image_column, label_column = columns(table, image_column, label_column)
    labels = np.asarray(table[label_column], dtype=np.int64)
    feature = table.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:  # plain integers (WebDataset's .cls): they index the classifier's outputs directly
        if len(labels) and labels.min() < 0:
            raise UserError(f"dataset.label_column={label_column} holds negative labels ({labels.min()}); labels must be 0, 1, 2, ...")
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    cells = table.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return cells, image_column, labels, names


def decode(table, image_column: str | None, label_column: str | None, size: int, on_bad_image: str = "skip"):
    """Decode every image once into a uint8 array [N, size, size, 3] (centre squares, aspect kept), int64 labels,
    class names and the images that could not be decoded."""
    cells, column, labels, names = undecoded(table, image_column, label_column)
    pixels = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    bad: list[tuple[int, str]] = []
    for i, cell in enumerate(cells[column]):
        try:
            pixels[i] = np.asarray(images.fit_square(images.open_rgb(cell), size))
        except Exception as exc:
            reason = f"{cell.get('path') or f'image {i}'} ({type(exc).__name__}: {exc})"
            if on_bad_image == "error":
                raise undecodable(reason) from None
            bad.append((i, reason))
    problems = {reason for _, reason in bad}
    if bad:
        pixels, labels = without_undecodable(pixels, labels, bad)
    return pixels, labels, names, problems


def undecodable(reason: str) -> UserError:
    """What dataset.on_bad_image=error stops with, naming the file and why it could not be decoded."""
    return UserError(f"cannot decode {reason}. Fix or remove the file, or set dataset.on_bad_image=skip.")


def without_undecodable(pixels: np.ndarray, labels: np.ndarray, bad: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Drop images that could not be decoded and say so: one bad file in a million must not stop a long run, but
    many mean the data set itself is broken."""
    from distillctl.console import console

    _, reason = bad[0]
    if len(bad) > max(10, len(labels) // 100):
        raise UserError(f"{len(bad)} of {len(labels)} images could not be decoded (first: {reason}); is the data set corrupt?")
    console.print(f"[yellow]warning:[/] skipped {len(bad)} of {len(labels)} images that could not be decoded (first: {reason})")
    keep = np.ones(len(labels), dtype=bool)
    keep[[i for i, _ in bad]] = False
    return pixels[keep], labels[keep]


def pick_column(table, wanted: str | None, kind, option: str) -> str:
    """The configured column, which must exist; when none is configured, the only column of the right type."""
    if wanted is not None:
        if wanted in table.column_names:
            return wanted
        raise UserError(f"dataset.{option}={wanted}: the data set has no such column (columns: {', '.join(table.column_names)}).")
    typed = [name for name, feature in table.features.items() if isinstance(feature, kind)]
    if len(typed) == 1:
        return typed[0]
    if option == "label_column" and not typed and "cls" in table.column_names:  # the WebDataset convention
        return "cls"
    if option == "label_column" and len(table.column_names) == 1:  # what `datasets` makes of a single class folder
        raise UserError(f"the data set has no labels (columns: {table.column_names[0]}): an image folder needs one folder per "
                        "class, and a classifier needs at least two classes.")
    raise UserError(f"cannot tell which column holds the {option.split('_')[0]}s (columns: {', '.join(table.column_names)}). Set dataset.{option}.")
