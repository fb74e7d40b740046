"""The CIFAR zoo's model names and shapes. Torch-free, so the CLI checks a zoo name before torch is imported
(distillctl.preflight); distillctl.models.zoo builds the models."""

from __future__ import annotations

# name: (depth, channels of the stem and the three stages)
CIFAR_RESNETS = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}
# name: (depth, widen factor)
WIDE_RESNETS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
ZOO_NAMES = [*CIFAR_RESNETS, *WIDE_RESNETS]


def no_published_weights(name: str) -> str:
    """Why a zoo model cannot be built with pretrained=true, and what to do instead."""
    return (f"no published pretrained weights exist for the CIFAR model '{name}'. Train one with "
            "`distillctl train-teacher`, or load your own with checkpoint=PATH and pretrained=false.")


def no_timm_weights(role: str) -> str:
    """Why a zoo model cannot take `<role>.pretrained_file`, and what to do instead; `role` is teacher or student."""
    return (f"{role}.pretrained_file is for timm architectures; for a CIFAR zoo model trained by distillctl use "
            f"{role}.checkpoint=PATH.")
