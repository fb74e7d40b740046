"""How a model's evaluation images are made from a photo: recorded beside its weights, so that `predict` and an
application fed by the exported file prepare images exactly as the model was tested on them.

Two recipes, one per loader: `square` (resident: the centre square of the photo scaled to image_size, bilinear) and
`crop` (stream: the shorter side to image_size / crop_pct with `interpolation`, then a centre crop of image_size).
Read without torch, since a weights file's metadata is checked before anything is imported for it.
"""

from __future__ import annotations

import math
import re
from typing import Any

RESIZES = ("square", "crop")
INTERPOLATION = re.compile(r"^[a-z]{1,20}$")


def recorded(image_size: int, crop_pct: float, interpolation: str, loader: str) -> dict[str, Any]:
    """The preprocessing a model trained on a `loader` ("resident" or "stream") split with these settings was tested with."""
    return {"image_size": int(image_size), "resize": "square" if loader == "resident" else "crop",
            "crop_pct": float(crop_pct), "interpolation": str(interpolation)}


def problem(pre: Any) -> str | None:
    """What is wrong with a recorded preprocessing (it comes from a file anyone may have written), or None."""
    if not isinstance(pre, dict):
        return "is not a mapping"
    size = pre.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096):
        return f"image_size {str(size)[:40]!r}"
    if pre.get("resize") not in RESIZES:
        return f"resize {str(pre.get('resize'))[:40]!r}"
    crop = pre.get("crop_pct")
    if not (isinstance(crop, (int, float)) and not isinstance(crop, bool) and math.isfinite(crop) and 0 < crop <= 1):
        return f"crop_pct {str(crop)[:40]!r}"
    if not (isinstance(pre.get("interpolation"), str) and INTERPOLATION.match(pre["interpolation"])):
        return f"interpolation {str(pre.get('interpolation'))[:40]!r}"
    return None


def describe(pre: dict[str, Any]) -> str:
    """One line for a log: what is done to each photo."""
    size = pre["image_size"]
    if pre["resize"] == "square":
        return f"centre square scaled to {size} px (bilinear)"
    return f"shorter side to {math.floor(size / pre['crop_pct'])} px ({pre['interpolation']}), centre crop {size} px"


class CentreSquare:
    """The resident loader's evaluation image (data.images.fit_square) as a uint8 CHW tensor; a class, so that
    DataLoader workers can be handed it."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image):
        import numpy as np
        import torch

        from distillctl.data.images import fit_square

        return torch.from_numpy(np.asarray(fit_square(image, self.size)).copy()).permute(2, 0, 1)


def eval_transform(pre: dict[str, Any]):
    """PIL image -> uint8 CHW tensor, as the model's test images were made (normalization happens on the device)."""
    if pre["resize"] == "square":
        return CentreSquare(pre["image_size"])
    from timm.data import create_transform

    return create_transform(pre["image_size"], crop_pct=pre["crop_pct"], interpolation=pre["interpolation"], use_prefetcher=True)
