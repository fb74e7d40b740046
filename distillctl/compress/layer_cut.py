"""Keeping some outputs or inputs of a linear, conv or norm layer, in place: what removing attention heads
(bias_attention.py) and rebuilding a pruned model's norms (shapes.py) both do to a layer; and resizing a conv in
place, for the kinds whose constructor does not rebuild them as they were (timm's 'same'-padded and
weight-standardized convs)."""

from __future__ import annotations

import math

import torch
from torch import nn


def size(layer: nn.Module, dim: int) -> int:
    """A linear, conv or batch norm layer's outputs (dim 0) or inputs (dim 1)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features if dim == 0 else layer.in_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels if dim == 0 else layer.in_channels
    return layer.num_features


def cut(layer: nn.Module, dim: int, index: torch.Tensor) -> None:
    """Keeps the `index` outputs (dim 0) or inputs (dim 1) of a linear, conv or norm (batch, layer, group) layer, in
    place."""
    if isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
        for name in ("weight", "bias"):
            if getattr(layer, name, None) is not None:
                setattr(layer, name, nn.Parameter(getattr(layer, name).data[index].clone()))
        for name in ("running_mean", "running_var"):
            if getattr(layer, name, None) is not None:
                setattr(layer, name, getattr(layer, name)[index].clone())
        if isinstance(layer, nn.LayerNorm):
            layer.normalized_shape = (len(index),)
        elif isinstance(layer, nn.GroupNorm):
            layer.num_channels = len(index)
        else:
            layer.num_features = len(index)
        return
    layer.weight = nn.Parameter(layer.weight.data.index_select(dim, index).clone())
    if dim == 0 and layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.data[index].clone())
    attribute = ("out_features", "in_features") if isinstance(layer, nn.Linear) else ("out_channels", "in_channels")
    setattr(layer, attribute[dim], len(index))


def resize_conv(conv: nn.Conv2d, in_channels: int, out_channels: int, groups: int) -> nn.Conv2d:
    """`conv` itself with new channel counts and empty tensors of their sizes (filled afterwards); a weight-standardized
    conv's gain per channel as well, and its scale set for the new fan-in as it was for the old (gamma / sqrt(fan-in),
    which keeps its output's variance as NF-ResNets set it)."""
    fan_in = conv.weight[0].numel()
    conv.in_channels, conv.out_channels, conv.groups = in_channels, out_channels, groups
    like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
    conv.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *conv.kernel_size, **like))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.empty(out_channels, **like))
    if isinstance(getattr(conv, "gain", None), nn.Parameter):
        conv.gain = nn.Parameter(torch.empty(out_channels, 1, 1, 1, **like))
        conv.scale = conv.scale * math.sqrt(fan_in / conv.weight[0].numel())
    return conv
