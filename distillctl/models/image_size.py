"""Whether a model takes the run's image size: a ViT's patch embedding is built for one size, LeViT's attention
biases and MaxViT's windows for a grid, Inception for 75 px or more. timm says so only at the first forward, as an
assertion or a shape error deep in the model; one batch-1 forward at model build says it in the user's terms."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def size_problem(model: nn.Module, size: int) -> str | None:
    """What goes wrong when `model` is fed size x size images (the error's first line), or None when nothing does."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    finally:
        model.train(was_training)
    return None


def built_size(model: nn.Module) -> int | None:
    """The image size a model was built or pretrained for, when it says."""
    embed_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if embed_size is not None:
        return int(embed_size[0])
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return int(input_size[-1]) if input_size else None


def takes_img_size(model: nn.Module) -> bool:
    """Whether the model's class is built for a given image size by an `img_size` argument (ViTs, Swin, LeViT...)."""
    for cls in type(model).__mro__[:-1]:
        parameters = inspect.signature(cls.__init__).parameters
        if "img_size" in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False  # a subclass passing **kwargs on (LeViT's distilled variant) leaves it to its parent
    return False
