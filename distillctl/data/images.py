"""One image file, however it was saved, as the upright 8-bit RGB picture a person would see."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from distillctl.data.photo_formats import register_plugins


def open_rgb(item: dict) -> Image.Image:
    """Decode a `datasets` image cell ({"bytes": ..., "path": ...}); raises on a corrupt or truncated file."""
    register_plugins()  # in each process that decodes: loader workers start without the parent's plugins
    data = item.get("bytes")
    image = Image.open(io.BytesIO(data) if data else item["path"])
    image.load()  # decode now, so a truncated file fails here rather than inside a transform
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF rotation applied; 16-bit scaled (not clipped) to 8; transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's own conversion clips 16-bit values at 255, which turns most of the picture white.
        wide = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or wide.max() > 255 else 255.0
        image = Image.fromarray(np.round(wide * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette's transparent entry would otherwise keep its arbitrary colour
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """The centre square of the image, scaled to size x size: the aspect ratio is kept, the long side's margins cut."""
    if image.size == (size, size):
        return image
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))
