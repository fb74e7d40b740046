"""Weight-standardized convs (timm's StdConv2d and ScaledStdConv2d, with their 'same'-padding kinds: BiT, NF-ResNet,
NFNet, NF-RegNet, ViT hybrids) made prunable by torch-pruning (shapes.py records and rebuilds them at their new size).

Such a conv standardizes its weight in its forward, and the scaled kind multiplies it by a gain of its own per
output channel. torch-pruning takes it for a plain conv and leaves the gain uncut, so the pruned model fails in its
first forward; a pruner of torch-pruning's registered for these convs is left out of its magnitude ranking, so
their channel groups are hardly pruned (NF-ResNet-26: 2% of its MACs at a channel ratio of 0.3). So while a model
is pruned each is a plain conv of its own weight followed, in the scaled kind, by a per-channel scale holding its
gain (a batch norm of mean 0 and variance 1, which torch-pruning cuts with the conv and ranks as it ranks a conv's
batch norm); afterwards each is put back with the tensors that remain. Its weights are kept as they were, not
folded: the model fine-tuned next trains standardized weights, as it was trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from distillctl.compress.layer_cut import resize_conv

STANDARDIZED: tuple[type, ...] = ()
try:
    from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    STANDARDIZED = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)
except ImportError:  # an older timm: none of its models has them
    Conv2dSame = None


def is_one(module: nn.Module) -> bool:
    """Whether `module` is one of timm's weight-standardized convs."""
    return type(module) in STANDARDIZED


def plain(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy of `model` with each standardized conv replaced by its stand-in, with the originals by name (to put
    back with `restored`); `model` itself and no originals when it has none."""
    originals = {name: module for name, module in model.named_modules() if is_one(module)}
    if not originals:
        return model, {}
    copied = copy.deepcopy(model)
    for name in originals:
        replace(copied, name, stand_in(copied.get_submodule(name)))
    return copied, originals


def stand_in(conv: nn.Module) -> nn.Module:
    """The plain conv of `conv`'s own weight (padding as it pads), followed by its gain as a per-channel scale in
    the scaled kind; the tensors are `conv`'s own."""
    kind, padding = (Conv2dSame, 0) if getattr(conv, "same_pad", False) else (nn.Conv2d, conv.padding)
    flat = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation, conv.groups,
                conv.bias is not None)
    flat.weight, flat.bias = conv.weight, conv.bias
    if not hasattr(conv, "gain"):
        return flat
    scale = nn.BatchNorm2d(conv.out_channels, eps=0.0)
    with torch.no_grad():
        scale.weight.copy_(conv.gain.reshape(-1))
        scale.bias.zero_()
    return nn.Sequential(flat, scale.eval())


def restored(pruned: nn.Module, originals: dict[str, nn.Module]) -> nn.Module:
    """`pruned` (a copy made by `plain`, then pruned) with each stand-in replaced by its original conv at the size
    the stand-in was cut to, holding the tensors that remain."""
    for name, original in originals.items():
        stand = pruned.get_submodule(name)
        flat, scale = (stand[0], stand[1]) if isinstance(stand, nn.Sequential) else (stand, None)
        conv = resize_conv(copy.deepcopy(original), flat.in_channels, flat.out_channels, flat.groups)
        conv.weight, conv.bias = flat.weight, flat.bias
        if scale is not None:
            conv.gain = nn.Parameter(scale.weight.detach().reshape(-1, 1, 1, 1).clone())
        replace(pruned, name, conv)
    return pruned


def replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at `name` in `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
