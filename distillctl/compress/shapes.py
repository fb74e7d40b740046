"""A pruned model's architecture as plain data: the shapes of its conv, norm and linear layers, and the head count of
its attention layers.

Stored beside the weights, it lets any stage rebuild a pruned model from the unpruned one's name without
unpickling code: build the original, then swap each recorded layer for one of the recorded size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillctl.compress import bias_attention
from distillctl.compress.layer_cut import cut, size
from distillctl.errors import UserError


# Norm layers resized in place (their tensors cut), so a subclass keeps what it adds: timm's BatchNormAct2d its
# activation. BatchNorm1d is the norm of LeViT's linear layers and of some classifier heads (RepViT). Conv and linear
# layers are rebuilt, so only the subclasses that take their constructor's arguments are (not timm's Conv2dSame,
# whose padding is its own).
# timm's Linear only adds a dtype cast for scripting, and is built like nn.Linear.
NORMS: dict[str, type] = {"BatchNorm2d": nn.BatchNorm2d, "BatchNorm1d": nn.BatchNorm1d}
LINEARS: tuple[type, ...] = (nn.Linear,)
ATTENTION: type | None = None  # timm's multi-head self-attention (ViT, DeiT, ...): its heads can be removed whole
try:
    from timm.layers import Attention as ATTENTION, BatchNormAct2d, Linear as TimmLinear

    NORMS["BatchNormAct2d"] = BatchNormAct2d
    LINEARS += (TimmLinear,)
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
    """The shape record of a Conv2d, Linear, batch norm (NORMS) or head-prunable attention; None for any other module."""
    if head_prunable(module):
        return {"type": "Attention", "heads": module.num_heads}
    if type(module) is nn.Conv2d:
        return {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    if NORMS.get(type(module).__name__) is type(module):
        return {"type": type(module).__name__, "features": module.num_features}
    if type(module) in LINEARS:
        return {"type": "Linear", "in": module.in_features, "out": module.out_features}
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every Conv2d, batch norm, Linear and head-prunable attention, keyed by module path."""
    return {name: shape for name, m in model.named_modules() if (shape := shape_of(m)) is not None}


def resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A copy of `module`'s kind and hyper-parameters at the recorded size (weights are loaded afterwards)."""
    if shape["type"] == "Conv2d":
        return nn.Conv2d(shape["in"], shape["out"], module.kernel_size, module.stride, module.padding, module.dilation, shape["groups"], module.bias is not None)
    if shape["type"] in NORMS:
        return norm_cut_to(module, shape["features"])
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
    """The batch norm itself with its first `features` channels (values are loaded afterwards)."""
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
        if original is None or set(shape) != set(original) or not all(
            type(shape[k]) is int and 1 <= shape[k] <= original[k] for k in original if k != "type"
        ):
            raise UserError(f"the checkpoint's layer '{name}' records {shape}, which is not a pruned {original}; refusing to build it.")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, resized(modules[name], shape))
    for name, module in model.named_modules():  # a head count must fit its projections, or the first forward fails
        if head_prunable(module) and not heads_fit(module):
            rows, out = bias_attention.projections(module) if bias_attention.is_one(module) else ([module.qkv], module.proj)
            raise UserError(f"the checkpoint's attention layer '{name}' records {module.num_heads} heads, which its projections "
                            f"({size(rows[0], 0)} qkv outputs, {size(out, 1)} inputs to "
                            "proj) do not fit; refusing to build it.")
    return model


def heads_fit(attention: nn.Module) -> bool:
    """Whether a head-prunable attention layer's head count matches its projections' sizes."""
    if bias_attention.is_one(attention):
        return bias_attention.fits(attention)
    return attention.qkv.out_features == 3 * attention.attn_dim == 3 * attention.proj.in_features

