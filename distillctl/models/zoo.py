"""Registers the CIFAR zoo in timm's registry, so `timm.create_model("resnet56")` builds it."""

from __future__ import annotations

from collections.abc import Callable

from timm.models import register_model
from torch import nn

from distillctl.cifar_zoo import CIFAR_RESNETS, WIDE_RESNETS, no_published_weights
from distillctl.errors import UserError
from distillctl.models.cifar_resnet import CifarResNet
from distillctl.models.wide_resnet import WideResNet


def entrypoint(name: str, build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A timm-style model function: `fn(pretrained=False, num_classes=..., **kwargs)`."""

    def create(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
        if pretrained:
            raise UserError(no_published_weights(name))
        # timm passes its pretrained-config plumbing to every entrypoint; these models have none.
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return build(num_classes=num_classes, in_chans=in_chans, **kwargs)

    create.__name__ = name
    create.__qualname__ = name
    create.__doc__ = f"CIFAR {name} (distillctl zoo)."
    create.__module__ = __name__
    return create


def register() -> None:
    """Add every zoo model to timm's registry; a second call is a no-op."""
    import timm

    if timm.is_model("resnet56"):
        return
    for name, (depth, widths) in CIFAR_RESNETS.items():
        register_model(entrypoint(name, lambda depth=depth, widths=widths, **kw: CifarResNet(depth, widths, **kw)))
    for name, (depth, widen) in WIDE_RESNETS.items():
        register_model(entrypoint(name, lambda depth=depth, widen=widen, **kw: WideResNet(depth, widen, **kw)))

