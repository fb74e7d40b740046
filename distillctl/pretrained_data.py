"""`${pretrained:KEY}`: a dataset setting taken from the pretrained model's own data config (timm's), so that a
fine-tuned teacher sees images sized, interpolated, cropped and normalized as its weights were trained on.

The image-folder group uses it for image_size, interpolation, crop_pct, mean and std; a value set on the command
line or in a recipe (dataset.image_size=256) replaces it. The model asked is the teacher when it starts from
published weights, else the student when it does, else none, and timm's defaults apply (224 px, bicubic, crop
0.875, ImageNet statistics). timm is imported only when such a setting is read.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from omegaconf import DictConfig

from distillctl.errors import UserError
from distillctl.teacher_files import PUBLISHED

KEYS = ("image_size", "interpolation", "crop_pct", "mean", "std")


def pretrained_setting(key: str, *, _root_: DictConfig) -> Any:
    """The dataset setting `key` as the run's pretrained model expects it (the resolver behind `${pretrained:KEY}`)."""
    if key not in KEYS:
        raise UserError(f"${{pretrained:{key}}}: the pretrained data config gives {', '.join(KEYS)}.")
    config = data_config(pretrained_model(_root_))
    if key == "image_size":
        return int(config["input_size"][-1])
    return list(config[key]) if key in ("mean", "std") else config[key]


def pretrained_model(root: DictConfig) -> str | None:
    """The name of the model whose published weights the run starts from: the teacher first, then the student."""
    for role in ("teacher", "student"):
        model = root.get(role)
        if model is None:
            continue
        if model.get("pretrained") or model.get("pretrained_file") or (role == "teacher" and model.get("checkpoint") == PUBLISHED):
            return str(model.name)
    return None


@lru_cache(maxsize=None)
def data_config(name: str | None) -> dict[str, Any]:
    """timm's resolved data config for a model name's default pretrained tag (timm's defaults when it has none)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    found = get_pretrained_cfg(name) if name else None
    # A config with no data keys makes timm fill in its defaults (an empty one is refused).
    pretrained_cfg = found.to_dict() if found is not None else {"architecture": name or "none"}
    return resolve_data_config(pretrained_cfg=pretrained_cfg)
