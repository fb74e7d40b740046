"""Photos handed to `distillctl predict`: one file, or every image under a folder, labelled by the subfolder they sit
in where it is named after one of the model's classes (a test folder laid out like a training one)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from distillctl.data.folder import image_suffixes, images_under
from distillctl.data.photo_formats import left_out_note
from distillctl.errors import UserError


@dataclass
class ImageFiles:
    """The files to predict on, in order, with their labels (-1 where the folders say nothing)."""

    paths: list[str]
    labels: list[int]
    unlabelled_folders: list[str] = field(default_factory=list)  # of a labelled folder: subfolders not named after a class

    @property
    def labelled(self) -> bool:
        """Whether any image sits in a folder named after a class: those are scored."""
        return any(label >= 0 for label in self.labels)

    @property
    def scored(self) -> int:
        """How many images have a label."""
        return sum(label >= 0 for label in self.labels)


class PathCells:
    """The table cells the streaming loader reads ({"image": {"path", "bytes"}}), made when a row is read: a million
    photos cost a list of paths rather than two dicts each."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> dict:
        return {"image": {"path": self.paths[row], "bytes": None}}


def list_images(spec: str, classes: list[str]) -> ImageFiles:
    """The image files `spec` names (a file, or a folder searched recursively), each labelled by its first-level
    subfolder where that is named after one of `classes`."""
    root = Path(spec).expanduser()
    if root.is_file():
        return ImageFiles([str(root)], [-1])
    if not root.is_dir():
        raise UserError(f"predict.input '{spec}' does not exist: give an image file or a folder of images.")
    paths = sorted(images_under(root))
    if not paths:
        left_out = left_out_note(root, image_suffixes())
        raise UserError(f"no images under '{spec}' (looked for .jpg, .png, .webp and the other formats PIL reads)"
                        + (f"; {left_out.removeprefix('note: ')}." if left_out else "."))
    index = {name: i for i, name in enumerate(classes)}
    folders = [Path(os.path.relpath(p, root)).parts for p in paths]
    # A test folder with a class the model never learned (zebra/ beside cat/ and dog/): the others are still scored.
    labels = [index[parts[0]] if len(parts) > 1 and parts[0] in index else -1 for parts in folders]
    if all(label < 0 for label in labels):
        return ImageFiles(paths, labels)
    others = sorted({parts[0] if len(parts) > 1 else "." for parts, label in zip(folders, labels) if label < 0})
    return ImageFiles(paths, labels, others)
