"""A pruned model's architecture as plain data: the shapes of its conv, norm and linear layers.

Stored beside the weights, it lets any stage rebuild a pruned model from the unpruned one's name without
unpickling code: build the original, then swap each recorded layer for one of the recorded size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distillctl.errors import UserError


def shape_of(module: nn.Module) -> dict[str, Any] | None:
    """The shape record of a Conv2d, BatchNorm2d or Linear; None for any other module, subclasses included
    (timm's BatchNormAct2d or Conv2dSame carry more than a size, and a plain layer would replace them)."""
    if type(module) is nn.Conv2d:
        return {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    if type(module) is nn.BatchNorm2d:
        return {"type": "BatchNorm2d", "features": module.num_features}
    if type(module) is nn.Linear:
        return {"type": "Linear", "in": module.in_features, "out": module.out_features}
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every Conv2d, BatchNorm2d and Linear, keyed by module path."""
    return {name: shape for name, m in model.named_modules() if (shape := shape_of(m)) is not None}


def resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A copy of `module`'s kind and hyper-parameters at the recorded size (weights are loaded afterwards)."""
    if shape["type"] == "Conv2d":
        return nn.Conv2d(shape["in"], shape["out"], module.kernel_size, module.stride, module.padding, module.dilation, shape["groups"], module.bias is not None)
    if shape["type"] == "BatchNorm2d":
        return nn.BatchNorm2d(shape["features"], module.eps, module.momentum, module.affine, module.track_running_stats)
    return nn.Linear(shape["in"], shape["out"], module.bias is not None)


def apply_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize `model`'s layers in place to the recorded shapes."""
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        if not isinstance(shape, dict) or name not in modules or type(modules[name]).__name__ != shape.get("type"):
            raise UserError(f"the checkpoint's layer '{name}' ({str(shape)[:60]}) is not in this model; was it pruned from another architecture?")
        original = shape_of(modules[name])
        if original == shape:
            continue
        # Pruning only removes channels: a recorded size above the architecture's is a crafted file, and would
        # allocate whatever it asks for.
        if original is None or set(shape) != set(original) or not all(
            type(shape[k]) is int and 1 <= shape[k] <= original[k] for k in original if k != "type"
        ):
            raise UserError(f"the checkpoint's layer '{name}' records {shape}, which is not a pruned {original}; refusing to build it.")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, resized(modules[name], shape))
    return model

