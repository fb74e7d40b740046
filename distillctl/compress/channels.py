"""Structured pruning: whole channels removed with torch-pruning's dependency graph, to a MACs or channel target.

torch-pruning (Fang et al. 2023, DepGraph) groups every layer coupled to a channel -- the BN after a conv, the
next conv's input, residual additions -- so removing a channel keeps the network consistent; tracking that by
hand for arbitrary timm models is exactly the code not to write ourselves.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from distillctl.errors import UserError
from distillctl.evaluation import measure
from distillctl.models import count_parameters


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """MACs for one image and the parameter count, measured as `evaluate` reports them."""
    was_training = model.training
    macs = measure.macs(model, example.shape[-1])
    model.train(was_training)
    return macs, count_parameters(model)


def importance(kind: str):
    """torch-pruning's importance criterion for `prune.importance`."""
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise UserError(f"prune.importance={kind}: use l1, l2 or bn_scale.")


def classifier(model: nn.Module) -> list[nn.Module]:
    """The layers left whole: the final Linear (its outputs are the classes)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def check_prunable(model: nn.Module) -> None:
    """Fail before any work on a layer whose pruned size the saved format (compress/shapes.py) cannot record."""
    from distillctl.compress.shapes import shape_of

    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own and shape_of(module) is None:
            where = f"{name}.{own[0]}" if name else own[0]
            raise UserError(
                f"parameter '{where}' (in a {type(module).__name__}) is one structured pruning cannot resize and save "
                "(supported layers: Conv2d, BatchNorm2d, timm's BatchNormAct2d, Linear). Use prune=unstructured for this model."
            )


def prune_once(model: nn.Module, example: torch.Tensor, ratio: float, importance_kind: str, global_pruning: bool) -> nn.Module:
    """A pruned copy of `model` with `ratio` of the channels of every prunable group removed."""
    import torch_pruning as tp

    trial = copy.deepcopy(model).eval()
    tp.pruner.MetaPruner(
        trial, example, importance=importance(importance_kind), pruning_ratio=ratio,
        global_pruning=global_pruning, ignored_layers=classifier(trial),
    ).step()
    return trial


def prune_structured(
    model: nn.Module,
    example: torch.Tensor,
    target_macs_ratio: float | None,
    channel_ratio: float | None,
    importance_kind: str,
    global_pruning: bool,
    tolerance: float = 0.03,
) -> tuple[nn.Module, float, float]:
    """A channel-pruned copy: at a fixed channel ratio, or with MACs within `tolerance` under the target ratio.
    Returns (model, MACs ratio, parameter ratio)."""
    importance(importance_kind)  # reject a bad name before any work
    check_prunable(model)
    base_macs, base_params = macs_and_params(model, example)
    if channel_ratio is not None:
        pruned = prune_once(model, example, channel_ratio, importance_kind, global_pruning)
    else:
        if not 0 < target_macs_ratio < 1:
            raise UserError(f"prune.target_macs_ratio={target_macs_ratio} must lie between 0 and 1.")
        # Why not step one torch-pruning pruner (iterative_steps) until the target is met: each of its steps removes a
        # fixed share of channels, so landing within the tolerance needs ~50-100 small steps, each re-ranking channels
        # on a network already cut, which changes which channels go (and every recorded pruning figure) against
        # one-shot ranking; bisection prunes one-shot at a ratio and needs about 5 tries on a model of this size.
        # MACs fall roughly with the square of the kept channels: start there, then bisect the channel ratio.
        # Small models move in coarse steps, so the closest result under the target is kept if none lands
        # within the tolerance.
        low, high = 0.0, 0.95
        ratio = 1 - math.sqrt(target_macs_ratio)
        best, best_reached = None, 0.0
        for _ in range(12):
            trial = prune_once(model, example, ratio, importance_kind, global_pruning)
            reached = macs_and_params(trial, example)[0] / base_macs
            if best_reached < reached <= target_macs_ratio:
                best, best_reached = trial, reached
            if target_macs_ratio - tolerance <= reached <= target_macs_ratio:
                break
            low, high = (ratio, high) if reached > target_macs_ratio else (low, ratio)
            ratio = (low + high) / 2
        if best is None:
            raise UserError(f"could not bring the MACs under {target_macs_ratio:.0%} of the model's; set prune.channel_ratio instead.")
        pruned = best
    macs, params = macs_and_params(pruned, example)
    return pruned, macs / base_macs, params / base_params
