"""An image folder read as a table of file paths and labels, in one of two layouts:

- split folders, <root>/<split>/<class>/<image> (train/ and test/; a val/ folder stands in for a missing test/);
- class folders alone, <root>/<class>/<image>: a share of each class (dataset.test_size) is held out as the test
  split, chosen by a hash of each file's name, so every run and machine tests on the same photos.

Listed here with os.scandir rather than through `datasets`' imagefolder builder, which resolves and hashes every
file again on each load: 17-20 s for 20,000 photos before the first step, against well under a second here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from distillctl.errors import UserError, first_few

SPLIT_FOLDERS, CLASS_FOLDERS = "imagefolder", "classfolders"
# Folders that hold a test split under another name (ImageNet's layout is train/ and val/).
TEST_STAND_INS = ("val", "validation", "valid", "testing")
# Names that say a folder is a split, not a class: such a folder of class folders is never taken for a class.
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "eval", "evaluation", "dev"})


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File endings PIL can open (.jpg, .png, .webp, ..., .heic with pillow-heif); anything else in a class folder
    is ignored."""
    from PIL import Image

    from distillctl.data.photo_formats import register_plugins

    register_plugins()
    return frozenset(Image.registered_extensions())


def is_image_name(name: str) -> bool:
    """Whether a file name is a visible image file's: a suffix PIL reads, not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_suffixes()


def images_under(folder: Path) -> Iterator[str]:
    """Image files under `folder`, recursively, in walk order; hidden files and other files left out."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield from (os.path.join(dirpath, f) for f in filenames if is_image_name(f))


def has_images(folder: Path) -> bool:
    """Whether `folder` holds at least one image: stops at the first rather than listing them all."""
    return next(images_under(folder), None) is not None


def layout(root: Path, train_split: str = "train") -> str | None:
    """SPLIT_FOLDERS when root holds <train_split>/<class>/ folders, CLASS_FOLDERS when it holds only <class>/
    folders of images, else None."""
    train = root / train_split
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        return SPLIT_FOLDERS
    holding = [p for p in subfolders(root) if has_images(p)]
    splits = [p.name for p in holding if p.name.lower() in SPLIT_NAMES and any(has_images(c) for c in subfolders(p))]
    if splits:  # training/ and testing/, say: splits under other names, which would train a classifier of splits
        train_guess = next((s for s in splits if s.lower().startswith("train")), splits[0])
        test_guess = next((s for s in splits if s != train_guess), "...")
        raise UserError(f"'{root}' holds split folders ({', '.join(f'{s}/' for s in splits)}) but no {train_split}/: name them with "
                        f"dataset.train_split={train_guess} dataset.test_split={test_guess}, or rename them train/ and test/.")
    return CLASS_FOLDERS if holding else None


def loose_images(folder: Path) -> bool:
    """Whether `folder` holds image files itself (not in subfolders): photos that name no class."""
    return any(is_image_name(p.name) and p.is_file() for p in folder.iterdir())


def subfolders(folder: Path) -> list[Path]:
    """The folder's visible subfolders, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_names(root: Path, kind: str = SPLIT_FOLDERS) -> list[str]:
    """Class folders holding at least one image (in any split), sorted: one label mapping for every split."""
    if kind == CLASS_FOLDERS:
        return [c.name for c in subfolders(root) if has_images(c)]
    return sorted({c.name for split_dir in subfolders(root) for c in subfolders(split_dir) if has_images(c)})


def table(root: Path, split: str):
    """One split of a folder of split folders as a `datasets.Dataset` with an (undecoded) image column and a
    ClassLabel column."""
    classes = class_names(root)
    return as_table(split_files(root, classes, split), classes, root / split)


def held_out_tables(root: Path, split: str, test_size: float) -> dict:
    """Both splits, "train" and "test", of a folder of class folders, made from one listing of it; `split` is the one
    asked for, refused unless it is one of those."""
    if split not in ("train", "test"):
        raise UserError(f"'{root}' holds class folders without train/ and test/ folders, so it has no split '{split}': "
                        "leave dataset.train_split and dataset.test_split at train and test (dataset.test_size sets the "
                        "share of each class held out for testing).")
    classes = class_names(root, CLASS_FOLDERS)
    return {part: as_table(files, classes, root) for part, files in held_out_parts(root, classes, test_size).items()}


def as_table(files: list[list[str]], classes: list[str], where: Path):
    """Each class's image files (in class order) as a `datasets.Dataset`; refused when there are none."""
    import datasets

    paths = [p for found in files for p in found]
    labels = [label for label, found in enumerate(files) for _ in found]
    if not paths:
        raise UserError(f"no images in {where}/<class>/ (looked for .jpg, .png, .webp and the other formats PIL reads).")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    return datasets.Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": labels}, features=features)


def test_stand_in(root: Path, split: str | None) -> str | None:
    """The folder that holds the test split when root has no test/ (val/, ...), else None."""
    if split != "test" or (root / split).is_dir():
        return None
    return next((name for name in TEST_STAND_INS if (root / name).is_dir()), None)


def layout_note(root: Path, kind: str, test_split: str | None, test_size: float) -> str | None:
    """A line for the log when the test split is not root/test/: held out of class folders, or a stand-in folder."""
    if kind == CLASS_FOLDERS:
        return (f"data: '{root}' has no train/ and test/ folders: {test_size:.0%} of each class's photos are held out as the "
                "test split (dataset.test_size), chosen by their names: the same ones on every run")
    stand_in = test_stand_in(root, test_split)
    return f"data: '{root}' has no test/ folder: testing on {stand_in}/ (dataset.test_split={stand_in})" if stand_in else None


def empty_classes_note(root: Path, kind: str) -> str | None:
    """A line for the log naming class folders that hold no image: left out of the classes, which a user who made
    a folder per class and has yet to fill one would otherwise learn only from the model's class count."""
    if kind == CLASS_FOLDERS:
        empty = [c.name for c in subfolders(root) if not has_images(c)]
    else:
        empty = [f"{s.name}/{c.name}" for s in subfolders(root) for c in subfolders(s) if not has_images(c)]
    if not empty:
        return None
    shown = first_few(empty, 5)
    return f"note: class folders without images are left out: {shown}"


def split_files(root: Path, classes: list[str], split: str) -> list[list[str]]:
    """Each class's images in root/<split>/, sorted; a val/ folder stands in for a missing test/ (layout_note says so)."""
    split_dir = root / (test_stand_in(root, split) or split)
    if not split_dir.is_dir():
        raise UserError(f"image folder '{root}' has no split '{split}' (no {split_dir}/<class>/ folders). Set dataset.train_split / "
                        "dataset.test_split (dataset.test_split=null holds a test split out of the train split).")
    return [sorted(images_under(split_dir / name)) if (split_dir / name).is_dir() else [] for name in classes]


def held_out_parts(root: Path, classes: list[str], test_size: float) -> dict[str, list[list[str]]]:
    """Each class's images of the training part ("train") and of the held-out test part ("test") of a folder of
    class folders: the `test_size` share of each class whose names hash lowest, rounded, and at least one photo for
    each part in a class of two or more. Exact shares per class, since own data sets are often small; a file's hash
    depends on its name alone, so the same files always split the same way."""
    parts: dict[str, list[list[str]]] = {"train": [], "test": []}
    for name in classes:
        class_dir = root / name
        ranked = sorted((name_hash(os.path.relpath(p, class_dir)), p) for p in images_under(class_dir))
        n_test = min(len(ranked) - 1, max(1, round(len(ranked) * test_size))) if len(ranked) > 1 else 0
        parts["test"].append(sorted(p for _, p in ranked[:n_test]))
        parts["train"].append(sorted(p for _, p in ranked[n_test:]))
    return parts


def name_hash(name: str) -> bytes:
    """A file name's rank key: sha1, not hash(), which is salted per process."""
    return hashlib.sha1(name.encode()).digest()
