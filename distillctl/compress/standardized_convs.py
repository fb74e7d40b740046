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
import torch.nn.functional as F
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
        copied.set_submodule(name, stand_in(copied.get_submodule(name)))
    return copied, originals


def folded(model: nn.Module) -> nn.Module:
    """A copy of `model` with each standardized conv replaced by the plain conv of the weight it computes: the same
    outputs, without standardizing the weights again at every forward (what an exported model should run). `model`
    itself when it has none."""
    names = [name for name, module in model.named_modules() if is_one(module)]
    if not names:
        return model
    copied = copy.deepcopy(model)
    for name in names:
        conv = copied.get_submodule(name)
        with torch.no_grad():
            copied.set_submodule(name, plain_conv(conv, nn.Parameter(standardized_weight(conv))))
    return copied


def standardized_weight(conv: nn.Module) -> torch.Tensor:
    """The weight `conv` convolves with, as its forward computes it (timm's std_conv.py)."""
    gain = (conv.gain * conv.scale).reshape(-1) if hasattr(conv, "gain") else None
    return F.batch_norm(conv.weight.reshape(1, conv.out_channels, -1), None, None, weight=gain, training=True,
                        momentum=0.0, eps=conv.eps).reshape_as(conv.weight)


def plain_conv(conv: nn.Module, weight: nn.Parameter) -> nn.Conv2d:
    """A plain conv of `conv`'s sizes, strides and padding (timm's 'same' kind for a 'same'-padded one), with
    `weight` and `conv`'s bias."""
    kind, padding = (Conv2dSame, 0) if getattr(conv, "same_pad", False) else (nn.Conv2d, conv.padding)
    flat = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation, conv.groups,
                conv.bias is not None)
    flat.weight, flat.bias = weight, conv.bias
    return flat


def stand_in(conv: nn.Module) -> nn.Module:
    """The plain conv of `conv`'s own weight, followed by its gain as a per-channel scale in the scaled kind; the
    tensors are `conv`'s own."""
    flat = plain_conv(conv, conv.weight)
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
        pruned.set_submodule(name, conv)
    return pruned

