"""A pruned model's architecture as plain data: the shapes of its conv, norm and linear layers and of other layers' bare
parameters (a ViT's class token), and the head count of its attention layers.

Stored beside the weights, it lets any stage rebuild a pruned model from the unpruned one's name without
unpickling code: build the original, then swap each recorded layer for one of the recorded size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillctl.compress import bias_attention, standardized_convs
from distillctl.compress.layer_cut import cut, resize_conv, size
from distillctl.errors import UserError


# Norm layers resized in place (their tensors cut), so a subclass keeps what it adds: timm's BatchNormAct2d its
# activation. BatchNorm1d is the norm of LeViT's linear layers and of some classifier heads (RepViT). Conv and linear
# layers are rebuilt, so only the subclasses that take their constructor's arguments are; timm's 'same'-padded convs
# (whose padding is their own) and weight-standardized convs (compress/standardized_convs.py) are resized in place.
# timm's Linear only adds a dtype cast for scripting, and is built like nn.Linear.
NORMS: dict[str, type] = {"BatchNorm2d": nn.BatchNorm2d, "BatchNorm1d": nn.BatchNorm1d}
LINEARS: tuple[type, ...] = (nn.Linear,)
CONVS_IN_PLACE: tuple[type, ...] = standardized_convs.STANDARDIZED
ATTENTION: type | None = None  # timm's multi-head self-attention (ViT, DeiT, ...): its heads can be removed whole
try:
    from timm.layers import Attention as ATTENTION, BatchNormAct2d, Conv2dSame, Linear as TimmLinear

    NORMS["BatchNormAct2d"] = BatchNormAct2d
    LINEARS += (TimmLinear,)
    CONVS_IN_PLACE += (Conv2dSame,)
except ImportError:  # an older timm: its models simply cannot be pruned structurally
    pass


def head_prunable(module: nn.Module) -> bool:
    """Whether `module` is an attention layer whose heads can be removed whole and its head count recorded: timm's
    Attention with one qkv projection and nothing sized by the heads' total width (no scale norm, no gate), or
    LeViT's and TinyViT's (compress/bias_attention.py)."""
    return timm_attention(module) or bias_attention.is_one(module)


def timm_attention(module: nn.Module) -> bool:
    """Whether `module` is timm's Attention whose heads torch-pruning removes (the first kind of head_prunable)."""
    return (ATTENTION is not None and type(module) is ATTENTION and isinstance(getattr(module, "qkv", None), nn.Linear)
            and isinstance(getattr(module, "norm", None), nn.Identity) and getattr(module, "gate", None) is None)


def shape_of(module: nn.Module) -> dict[str, Any] | None:
    """The shape record of a Conv2d, Linear, norm (NORMS, channel_norm) or head-prunable attention, or of the bare
    parameters of any other module (params_of); None for a module none of these describe."""
    if head_prunable(module):
        return {"type": "Attention", "heads": module.num_heads}
    if type(module) is nn.Conv2d or type(module) in CONVS_IN_PLACE:
        return {"type": type(module).__name__, "in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    if NORMS.get(type(module).__name__) is type(module):
        return {"type": type(module).__name__, "features": module.num_features}
    if type(module) in LINEARS:
        return {"type": "Linear", "in": module.in_features, "out": module.out_features}
    if (features := channel_norm(module)) is not None:
        return {"type": type(module).__name__, "features": features}
    if (params := params_of(module)) is not None:
        return {"type": type(module).__name__, "params": params}
    return None


def channel_norm(module: nn.Module) -> int | None:
    """The channels of a layer norm over one dimension or a group norm whose only tensors are a weight and a bias
    per channel, so that cutting them resizes it whatever its subclass adds (timm's LayerNorm2d, GroupNorm1); None
    for any other module."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        features = module.normalized_shape[0]
    elif isinstance(module, nn.GroupNorm):
        features = module.num_channels
    else:
        return None
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return features if all(t.shape == (features,) for t in tensors) else None


def params_of(module: nn.Module) -> dict[str, list[int]] | None:
    """The shapes of a module's bare parameters (a ViT's class token and position embedding, a layer scale), for a
    module whose code reads its sizes from them alone; None for a layer that keeps sizes of its own (a conv, linear,
    norm or attention layer of another kind), or one without parameters."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm,
                           nn.GroupNorm, nn.MultiheadAttention, nn.Embedding)) or head_prunable(module):
        return None
    params = {name: list(p.shape) for name, p in module.named_parameters(recurse=False)}
    return params or None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every shape record shape_of makes of `model`'s modules, keyed by module path."""
    return {name: shape for name, m in model.named_modules() if (shape := shape_of(m)) is not None}


def resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A copy of `module`'s kind and hyper-parameters at the recorded size (weights are loaded afterwards)."""
    if type(module) in CONVS_IN_PLACE:
        return resize_conv(module, shape["in"], shape["out"], shape["groups"])
    if shape["type"] == "Conv2d":
        return nn.Conv2d(shape["in"], shape["out"], module.kernel_size, module.stride, module.padding, module.dilation, shape["groups"], module.bias is not None)
    if "features" in shape:
        return norm_cut_to(module, shape["features"])
    if "params" in shape:
        for name, dims in shape["params"].items():
            setattr(module, name, nn.Parameter(torch.empty(dims, dtype=getattr(module, name).dtype)))
        return module
    if shape["type"] == "Attention":
        return with_heads(module, shape["heads"])
    return type(module)(shape["in"], shape["out"], module.bias is not None)


def with_heads(attention: nn.Module, heads: int) -> nn.Module:
    """The attention layer itself, splitting its projections into `heads` heads of its head size (its qkv and output
    projections are resized as layers of their own)."""
    if bias_attention.is_one(attention):
        return bias_attention.with_heads(attention, heads)
    attention.num_heads = heads
    attention.attn_dim = heads * attention.head_dim
    return attention


def norm_cut_to(norm: nn.Module, features: int) -> nn.Module:
    """The norm itself with its first `features` channels (values are loaded afterwards)."""
    cut(norm, 0, torch.arange(features))
    return norm


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
        if original is None or not within(shape, original):
            raise UserError(f"the checkpoint's layer '{name}' records {shape}, which is not a pruned {original}; refusing to build it.")
        replacement = resized(modules[name], shape)
        if replacement is not modules[name]:  # a conv or linear layer built anew (the rest are resized in place)
            model.set_submodule(name, replacement)
    for name, module in model.named_modules():  # heads and groups must fit the channels, or the first forward fails
        if head_prunable(module) and not heads_fit(module):
            rows, out = bias_attention.projections(module) if bias_attention.is_one(module) else ([module.qkv], module.proj)
            raise UserError(f"the checkpoint's attention layer '{name}' records {module.num_heads} heads, which its projections "
                            f"({size(rows[0], 0)} qkv outputs, {size(out, 1)} inputs to "
                            "proj) do not fit; refusing to build it.")
        if isinstance(module, nn.GroupNorm) and module.num_channels % module.num_groups:
            raise UserError(f"the checkpoint's group norm '{name}' records {module.num_channels} channels, which its "
                            f"{module.num_groups} groups do not divide; refusing to build it.")
    return model


def within(shape: dict[str, Any], original: dict[str, Any]) -> bool:
    """Whether a recorded shape is a pruned `original`: the same fields, and no size above the original's."""
    if set(shape) != set(original):
        return False
    if "params" in original:
        recorded = shape["params"]
        return isinstance(recorded, dict) and set(recorded) == set(original["params"]) and all(
            isinstance(recorded[name], list) and len(recorded[name]) == len(dims)
            and all(type(n) is int and 1 <= n <= m for n, m in zip(recorded[name], dims))
            for name, dims in original["params"].items())
    return all(type(shape[k]) is int and 1 <= shape[k] <= original[k] for k in original if k != "type")


def heads_fit(attention: nn.Module) -> bool:
    """Whether a head-prunable attention layer's head count matches its projections' sizes."""
    if bias_attention.is_one(attention):
        return bias_attention.fits(attention)
    return attention.qkv.out_features == 3 * attention.attn_dim == 3 * attention.proj.in_features

