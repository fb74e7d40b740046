"""Attention with a learned position bias per head (LeViT, TinyViT): whole heads removed by hand.

These layers lay each head's query, key and value side by side in one projection, and add a table of position
biases with a row per head. torch-pruning's head pruning follows timm's Attention, whose queries, keys and values
are each one block of all heads, so these are cut here: a head is a run of rows of the qkv projection (and of its
batch norm, in LeViT), a run of input columns of the output projection, and a row of the bias table.
"""

from __future__ import annotations

import torch
from torch import nn

from distillctl.compress.layer_cut import cut, size

CLASSES: tuple[type, ...] = ()
try:
    from timm.models.levit import Attention as LevitAttention
    from timm.models.tiny_vit import Attention as TinyVitAttention

    CLASSES = (LevitAttention, TinyVitAttention)
except ImportError:  # an older timm: these layers keep their heads
    pass


def is_one(module: nn.Module) -> bool:
    """Whether `module` is LeViT's or TinyViT's attention (not LeViT's downsampling attention, whose queries come from
    a projection of their own)."""
    return type(module) in CLASSES


def projections(attention: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """The layers whose outputs are laid out head by head (the qkv projection, and its batch norm in LeViT), and the
    output projection, whose inputs are."""
    if isinstance(attention.qkv, nn.Linear):  # TinyViT
        return [attention.qkv], attention.proj
    return [attention.qkv.linear, attention.qkv.bn], attention.proj.ln.linear  # LeViT: Linear or Conv2d, then a norm


def widths(attention: nn.Module) -> tuple[int, int]:
    """One head's qkv outputs (its query, key and value) and output-projection inputs (its value)."""
    return 2 * attention.key_dim + attention.val_dim, attention.val_dim


def fits(attention: nn.Module) -> bool:
    """Whether the layer's head count matches its projections' sizes."""
    rows, out = projections(attention)
    qkv_width, value_width = widths(attention)
    return (size(rows[0], 0) == attention.num_heads * qkv_width and size(out, 1) == attention.num_heads * value_width
            and attention.attention_biases.shape[0] == attention.num_heads)


def with_heads(attention: nn.Module, heads: int) -> nn.Module:
    """The layer itself, set to `heads` heads with the first `heads` rows of its bias table (the values are loaded
    afterwards; its projections are resized as layers of their own)."""
    attention.attention_biases = nn.Parameter(attention.attention_biases.data[:heads].clone())
    return counted(attention, heads)


def remove_heads(attention: nn.Module, count: int, p: int) -> None:
    """Removes the `count` heads of the layer whose weights have the smallest p-norm, in place."""
    rows, out = projections(attention)
    qkv_width, value_width = widths(attention)
    heads = attention.num_heads
    weight = torch.cat([rows[0].weight.detach().reshape(heads, -1),
                        out.weight.detach().transpose(0, 1).reshape(heads, -1)], dim=1)
    keep = weight.norm(p=p, dim=1).argsort(descending=True)[: heads - count].sort().values
    row_index = (keep[:, None] * qkv_width + torch.arange(qkv_width)).flatten()
    for layer in rows:
        cut(layer, 0, row_index)
    cut(out, 1, (keep[:, None] * value_width + torch.arange(value_width)).flatten())
    attention.attention_biases = nn.Parameter(attention.attention_biases.data[keep].clone())
    counted(attention, len(keep))


def counted(attention: nn.Module, heads: int) -> nn.Module:
    """The layer with its head count and the sizes its forward reshapes by set to `heads` heads."""
    attention.num_heads = heads
    attention.attention_bias_cache = {}  # biases cached at the old head count
    if hasattr(attention, "val_attn_dim"):  # LeViT
        attention.key_attn_dim = attention.key_dim * heads
        attention.val_attn_dim = attention.val_dim * heads
    else:  # TinyViT
        attention.out_dim = attention.val_dim * heads
    return attention
