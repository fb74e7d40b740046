"""Structured pruning: whole channels removed with torch-pruning's dependency graph, to a MACs or channel target.

torch-pruning (Fang et al. 2023, DepGraph) groups every layer coupled to a channel -- the BN after a conv, the
next conv's input, residual additions -- so removing a channel keeps the network consistent; tracking that by
hand for arbitrary timm models is exactly the code not to write ourselves.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from distillctl.compress import group_search, standardized_convs
from distillctl.compress.group_search import groups_by_root, searches_bounded
from distillctl.compress.runaway import RanAway, bounded
from distillctl.compress.saved_sizes import reshapes_read, sizes_read
from distillctl.console import console
from distillctl.errors import UserError
from distillctl.evaluation import measure
from distillctl.models import count_parameters, weight_bytes


RUNAWAY = ("structured pruning of this {model} ran away inside torch-pruning ({{measured}}): its dependency graph cannot "
           "follow some of this model's layers (attention reshapes: VainF/Torch-Pruning#525; sliced residuals). Use "
           "prune=unstructured for this model, or a student it follows (README: Structured pruning on timm models).")


class GraphMismatch(Exception):
    """torch-pruning's step failed, or left a model that no longer runs: its graph did not follow some layer."""


@contextlib.contextmanager
def torch_pruning_work() -> Iterator[None]:
    """Runs torch-pruning's graph work with its warnings silenced (one per bare parameter it finds) and the sizes
    autograd saved shown to it (compress/saved_sizes.py); any failure inside is its graph missing a layer of this
    model, raised as GraphMismatch (memory running out, or a search past its bound, is not)."""
    try:
        with warnings.catch_warnings(), sizes_read():
            warnings.simplefilter("ignore")
            yield
    except (MemoryError, RanAway):
        raise
    except Exception as exc:  # noqa: BLE001
        said = str(exc).strip().splitlines()
        raise GraphMismatch(f"{type(exc).__name__}: {said[0][:200]}" if said else type(exc).__name__) from exc


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
    """The layers left whole, as their outputs are the classes: the conv or linear layers of a timm model's
    classifier (ResNetV2's and DLA's are 1x1 convs, a distilled DeiT's are two), or else the final Linear."""
    heads = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    heads = [h for h in (heads if isinstance(heads, tuple) else (heads,)) if isinstance(h, nn.Module)]
    layers = [m for head in heads for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers or [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def head_counts(model: nn.Module) -> dict[str, int]:
    """Every attention layer whose heads can be removed whole, by name, with its head count."""
    from distillctl.compress.shapes import head_prunable

    return {name: m.num_heads for name, m in model.named_modules() if head_prunable(m)}


def prune_heads(model: nn.Module, example: torch.Tensor, ratio: float, importance_kind: str) -> nn.Module:
    """A copy of `model` with `ratio` of each attention layer's heads removed (the nearest whole number, one head kept
    at least), the least important first. Refused in one line for a model without such layers."""
    import torch_pruning as tp

    from distillctl.compress import bias_attention
    from distillctl.compress.shapes import timm_attention, with_heads

    counts = head_counts(model)
    if not counts:
        raise UserError(f"prune.head_ratio={ratio} but this {type(model).__name__} has no attention layer whose heads can be "
                        "removed (timm's Attention, as in ViT and DeiT, or LeViT's and TinyViT's); leave prune.head_ratio at 0.")
    trial = copy.deepcopy(model).eval()
    layers = dict(trial.named_modules())
    # The nearest whole number of heads, a tie keeping the head (half of 3 heads removes 1).
    removed = {name: min(count - 1, math.ceil(count * ratio - 0.5)) for name, count in counts.items()}
    for name in [name for name in removed if bias_attention.is_one(layers[name])]:
        # Ranked as torch-pruning ranks timm's heads: by weight magnitude (LeViT's and TinyViT's heads have no batch
        # norm scale of their own, so bn_scale ranks them by their L2 norm).
        bias_attention.remove_heads(layers[name], removed.pop(name), p=1 if importance_kind == "l1" else 2)
    # torch-pruning removes ceil(ratio x heads) heads of a layer: half a head under the count asked for is exact.
    ratios = {layers[name].qkv: (k - 0.5) / counts[name] for name, k in removed.items() if k > 0}
    if ratios:
        with warnings.catch_warnings(), sizes_read():
            warnings.simplefilter("ignore")
            tp.pruner.MetaPruner(
                # A channel ratio of 0 makes torch-pruning skip every group, heads included; one this small removes
                # no channel (and every layer but the qkv projections is left out anyway).
                trial, example, importance=importance(importance_kind), pruning_ratio=1e-6,
                ignored_layers=[m for m in trial.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in ratios],
                num_heads={layers[name].qkv: counts[name] for name in removed}, prune_num_heads=True,
                prune_head_dims=False, head_pruning_ratio_dict=ratios,
            ).step()
    for module in trial.modules():  # the layer splits its projections by its head count: tell it how many remain
        if timm_attention(module):
            with_heads(module, module.qkv.out_features // (3 * module.head_dim))
    return trial


def unsaveable(member: object, owners: dict[int, nn.Module], strict: bool = False) -> bool:
    """Whether a member of a channel group is left whole: one the saved format (compress/shapes.py) cannot record at
    a new size (a layer of a kind it does not know, or a bare parameter of one; `owners`: each bare parameter's
    module), or a split of channels into attention heads (whole heads go in prune_heads instead). With `strict`, a
    layer or group norm and a bare parameter as well: the residual stream of a transformer, which torch-pruning's
    graph does not follow through every layer (Swin's patch merging)."""
    import torch_pruning as tp

    from distillctl.compress.shapes import shape_of

    if isinstance(member, nn.Parameter):
        member = owners.get(id(member))  # a bare parameter is recorded with the module that holds it
        if member is None or strict:
            return True
    if isinstance(member, (tp.ops._UnbindOp, tp.ops._SplitOp, tp.ops._SliceOp)):
        return True
    if strict and isinstance(member, (nn.LayerNorm, nn.GroupNorm)):
        return True
    # An attention layer's own parameter (LeViT's bias table) follows its heads, never its channels.
    return isinstance(member, nn.Module) and any(True for _ in member.parameters(recurse=False)) and (
        (shape := shape_of(member)) is None or shape["type"] == "Attention" or (strict and "params" in shape))


def splits_heads(model: nn.Module) -> bool:
    """Whether a layer of `model` splits channels into attention heads by a head count of its own (`num_heads`,
    `heads`): the sizes it splits by live in its code, so the channel groups coupled to it are left whole."""
    return any(getattr(module, "num_heads", None) or getattr(module, "heads", None) for module in model.modules())


def whole_layers(model: nn.Module, example: torch.Tensor, splits: bool = False, strict: bool = False) -> list[str]:
    """The names of the layers left whole: the classifier, and, in a model with layers left whole (unsaveable, with
    `strict`) or attention heads, or with `splits` in any model, every layer whose channels are coupled to one of
    them or to a split, slice or unbind of channels, so that what remains (a ViT's width and MLP hidden channels) is
    pruned. Refused in one line when nothing remains."""
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    owners = {id(p): module for module in model.modules() for p in module.parameters(recurse=False)}
    kept = classifier(model)
    blocked = next(((name, module) for name, module in model.named_modules() if unsaveable(module, owners, strict)), None)
    if blocked is None and not splits and not splits_heads(model):
        return [names[m] for m in kept]  # a CNN of conv, norm and linear layers: every channel group can be pruned and saved
    was_training = model.training
    prunable, unending = 0, []
    with torch_pruning_work():
        graph = tp.DependencyGraph().build_dependency(model.eval(), example)
        model.train(was_training)
        # With `splits`, torch-pruning already failed, perhaps in a search without end: each search gets a bound of its
        # own, and one past it leaves its group whole. Without, the caller's bound on every search applies.
        seconds = group_search.ROOT_SEARCH_S if splits else None
        for root, group in groups_by_root(graph, list(kept), [nn.Conv2d, nn.Linear], seconds):
            if group is None:
                unending.append(root)
            elif any(unsaveable(dep.target.module, owners, strict) for dep, _ in group):
                kept.append(root)  # a group with one member left whole is not pruned
            else:
                prunable += 1
    if unending:
        shown = ", ".join(names[m] for m in unending[:3]) + (", ..." if len(unending) > 3 else "")
        console.print(f"note: {len(unending)} channel groups left whole: torch-pruning's search of each went on past "
                      f"{seconds:g} s without end ({shown})")
        kept += unending
    if not prunable and blocked is None:
        raise UserError(f"every channel group of this {type(model).__name__} reaches a split of its channels (into attention "
                        "heads, or into parts its code sizes), which structured pruning leaves whole. Use prune=unstructured "
                        "for this model.")
    if not prunable:
        name, module = blocked
        own = next(n for n, _ in module.named_parameters(recurse=False))
        where = f"{name}.{own}" if name else own
        raise UserError(
            f"parameter '{where}' (in a {type(module).__name__}) is one structured pruning cannot resize and save "
            "(supported: Conv2d and timm's 'same'-padded and weight-standardized convs, Linear, batch, layer and group "
            "norms, other layers' bare parameters), and every channel group reaches such a layer. Use "
            "prune=unstructured for this model."
        )
    return [names[m] for m in kept]


def prune_once(model: nn.Module, example: torch.Tensor, ratio: float, importance_kind: str, global_pruning: bool,
               whole: list[str], round_to: int | None = None) -> tuple[nn.Module, int]:
    """A pruned copy of `model` with `ratio` of the channels of every prunable group removed (`whole`: the names of
    the layers to leave as they are; `round_to`: each group keeps a multiple of that many channels), and its MACs."""
    import torch_pruning as tp

    trial = copy.deepcopy(model).eval()
    layers = dict(trial.named_modules())
    try:
        with torch_pruning_work():
            tp.pruner.MetaPruner(
                trial, example, importance=importance(importance_kind), pruning_ratio=ratio,
                global_pruning=global_pruning, ignored_layers=[layers[name] for name in whole], round_to=round_to,
            ).step()
            # Counting its MACs runs it: a split whose sizes live in the layer's code fails here.
            macs = measure.macs(trial, example.shape[-1])
    finally:
        # The pruner's graph is full of reference cycles that hold a traced forward: freed now, the ~10 tries of a
        # MACs target peak at a quarter to a half of the memory (benchmarks/prune_memory.py), for ~0.15 s a try.
        gc.collect()
    return trial, macs


def prune_structured(
    model: nn.Module,
    example: torch.Tensor,
    target_macs_ratio: float | None,
    channel_ratio: float | None,
    importance_kind: str,
    global_pruning: bool,
    tolerance: float = 0.03,
    head_ratio: float = 0.0,
    round_to: int | None = None,
) -> tuple[nn.Module, float, float]:
    """A channel-pruned copy: at a fixed channel ratio, or with MACs within `tolerance` under the target ratio; with
    `head_ratio`, that share of each attention layer's heads goes first, whole (prune_heads); with `round_to`, every
    pruned group keeps a multiple of that many channels. Returns (model, MACs ratio, parameter ratio), both against
    `model`."""
    importance(importance_kind)  # reject a bad name before any work
    flat, standardized = standardized_convs.plain(model)
    # The graph work needs a few copies of the model; torch-pruning running away needs everything there is.
    with bounded(max(2 * 2**30, 20 * weight_bytes(model)), RUNAWAY.format(model=type(model).__name__)):
        pruned, macs_ratio, params_ratio = prune_to_target(flat, example, target_macs_ratio, channel_ratio, importance_kind,
                                                           global_pruning, tolerance, head_ratio, round_to)
    if standardized:
        pruned = standardized_convs.restored(pruned, standardized)
        (macs, params), (base_macs, base_params) = macs_and_params(pruned, example), macs_and_params(model, example)
        macs_ratio, params_ratio = macs / base_macs, params / base_params
    if (before := output_shape(model, example)) != (after := output_shape(pruned, example)):
        # A classifier not found (classifier()) is pruned like any layer: its classes would be cut without a word.
        raise UserError(f"structured pruning changed this {type(model).__name__}'s output from {list(before)} to "
                        f"{list(after)}: its classifier is neither timm's get_classifier() nor a final Linear, so it was "
                        "pruned too. Use prune=unstructured for this model.")
    return pruned, macs_ratio, params_ratio


def output_shape(model: nn.Module, example: torch.Tensor) -> torch.Size:
    """The shape of `model`'s output for `example` in eval mode (its mode is left as it was)."""
    was_training = model.training
    with torch.inference_mode():
        shape = model.eval()(example).shape
    model.train(was_training)
    return shape


def prune_to_target(model: nn.Module, example: torch.Tensor, target_macs_ratio: float | None, channel_ratio: float | None,
                    importance_kind: str, global_pruning: bool, tolerance: float, head_ratio: float,
                    round_to: int | None) -> tuple[nn.Module, float, float]:
    """prune_structured's work, its channel-group searches bounded in time (its memory is bounded by the caller)."""
    refusal = RUNAWAY.format(model=type(model).__name__)
    base_macs, base_params = macs_and_params(model, example)
    settings = (target_macs_ratio, channel_ratio, importance_kind, global_pruning, tolerance, head_ratio, round_to)
    if head_ratio:
        with searches_refused(refusal):
            model = prune_heads(model, example, head_ratio, importance_kind)
    try:
        with searches_bounded(group_search.GROUP_SEARCH_S):
            try:
                with reshapes_read():
                    pruned, macs = reach(model, example, base_macs, whole_layers(model, example), *settings)
            except GraphMismatch:
                # Reshapes read by their sizes fail where torch-pruning's guess passed (SKNet's and ResNeSt's attention,
                # compress/saved_sizes.py), within seconds: the graph as it guesses it, then.
                pruned, macs = reach(model, example, base_macs, whole_layers(model, example), *settings)
    except RanAway as ran:
        pruned, macs = reach_carefully(model, example, base_macs, settings, refusal,
                                       f"searched one channel group of this {type(model).__name__} without end ({ran.measured})")
    except GraphMismatch as failure:
        # torch-pruning resizes a split of channels in its graph, but not the sizes the layer's code splits by (MixNet's
        # mixed convolutions, Res2Net, CSPNet, selective kernels): those layers stay whole, the rest is pruned.
        pruned, macs = reach_carefully(model, example, base_macs, settings, refusal,
                                       f"could not resize every layer of this {type(model).__name__} ({failure})")
    return pruned, macs / base_macs, count_parameters(pruned) / base_params


def searches_refused(refusal: str) -> contextlib.AbstractContextManager[None]:
    """Refuse with UserError(refusal) where torch-pruning's searches inside the block go on without end: one past
    GROUP_SEARCH_S, or more than MOST_UNENDING past ROOT_SEARCH_S (compress/group_search.py)."""
    return bounded(float("inf"), refusal, stuck_in=group_search.search_code(), stuck_s=group_search.GROUP_SEARCH_S)


def reach_carefully(model: nn.Module, example: torch.Tensor, base_macs: int, settings: tuple, refusal: str,
                    why: str) -> tuple[nn.Module, int]:
    """`reach` once more after torch-pruning failed (`why`: what it did), with the layers coupled to a split of
    channels and the channel groups whose search does not end left whole; refused in one line where that fails too."""
    console.print(f"note: torch-pruning {why}; the layers coupled to a split of channels, and channel groups whose search "
                  "does not end, are left whole and the rest pruned")
    try:
        with searches_refused(refusal):
            try:
                return reach(model, example, base_macs, whole_layers(model, example, splits=True), *settings, careful=True)
            except GraphMismatch as failure:
                # A transformer's residual stream pruned where torch-pruning misfollows it (Swin's patch merging):
                # left whole, its MLP hidden channels are pruned.
                console.print(f"note: that failed too ({failure}); the channels through layer and group norms and bare "
                              "parameters (a transformer's residual stream) are left whole as well")
                whole = whole_layers(model, example, splits=True, strict=True)
                return reach(model, example, base_macs, whole, *settings, careful=True)
    except GraphMismatch as again:
        raise UserError(f"structured pruning of this {type(model).__name__} failed inside torch-pruning ({again}): its "
                        "dependency graph does not follow some of this model's layers, even with those that split "
                        "channels left whole. Use prune=unstructured for this model, or a student it follows (README: "
                        "Structured pruning on timm models).") from again


def reach(model: nn.Module, example: torch.Tensor, base_macs: int, whole: list[str], target_macs_ratio: float | None,
          channel_ratio: float | None, importance_kind: str, global_pruning: bool, tolerance: float, head_ratio: float,
          round_to: int | None, careful: bool = False) -> tuple[nn.Module, int]:
    """A copy of `model` pruned at `channel_ratio`, or to the MACs target (against `base_macs`), leaving `whole` as it
    is, and its MACs; `careful` says that the layers coupled to splits were left whole as well, for the refusal to name."""
    if channel_ratio is not None:
        return prune_once(model, example, channel_ratio, importance_kind, global_pruning, whole, round_to)
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
    best, best_macs, lowest = None, 0, 1.0
    for _ in range(12):
        trial, macs = prune_once(model, example, ratio, importance_kind, global_pruning, whole, round_to)
        reached = macs / base_macs
        lowest = min(lowest, reached)
        if best_macs < macs and reached <= target_macs_ratio:
            best, best_macs = trial, macs
        if target_macs_ratio - tolerance <= reached <= target_macs_ratio:
            break
        low, high = (ratio, high) if reached > target_macs_ratio else (low, ratio)
        ratio = (low + high) / 2
    if best is None:
        # What stays whole (a ViT's attention heads, a split of channels) sets a floor no channel ratio goes under.
        further = (" Removing whole attention heads as well goes further: prune.head_ratio=0.34 (a third of each "
                   "layer's), 0.67 (two thirds)." if not head_ratio and head_counts(model) else "")
        if careful:
            further += " The layers coupled to a split of channels stayed whole (see the note above)."
        if lowest >= 1.0 and round_to:  # (asking for a ratio of 1 or more, as below, would be no answer)
            raise UserError(f"structured pruning could not remove a single channel with prune.round_to={round_to}: every "
                            f"pruned layer keeps a multiple of {round_to} channels, and this {type(model).__name__}'s "
                            f"layers are too narrow for that; lower prune.round_to or leave it out.{further}")
        raise UserError(f"could not bring the MACs under {target_macs_ratio:.0%} of the model's: the least structured pruning "
                        f"reached is {lowest:.1%}, so ask for prune.target_macs_ratio={math.ceil(lowest * 100) / 100:.2f} or more.{further}")
    return best, best_macs
