"""torch-pruning's search for the layers coupled to a layer's output channels (a channel group), bounded in time.

On some models one search does not end. RexNet's residuals add the block's input to a slice of its output
(`x[:, :c] + shortcut`, then a concatenation with the rest); after two such blocks in a row torch-pruning maps
channel indices past the layers' sizes (index 658 on a 128-channel batch norm), and each new index is a new path to
explore (the family of VainF/Torch-Pruning#219). Every other group of such a model is found in well under a
second, so the groups whose search does not end are left whole and the rest pruned: RexNet reaches half its MACs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import CodeType
from typing import Any

from torch import nn

from distillctl.compress.runaway import RanAway, guarded

# The slowest search that ends, measured on one thread of this 2-core CPU: one group of MobileViTv2-1.5 (its unfold
# and fold reshapes), 37 s; ResNeSt's split attention, 8 s. One that goes on for 3 times that is exploring without end.
GROUP_SEARCH_S = 120.0
# Once one search has not ended, each group is searched alone, and one past this is left whole rather than waited for
# (RexNet has 7 such groups; its slowest that ends takes 0.2 s). A slow group of another model is then left whole:
# that model is pruned less, never wrongly.
ROOT_SEARCH_S = 10.0
# More groups than this without end, and the model is refused rather than waited for: FocalNet's focal modulation
# layers alone have 36, and its MLPs would be all that is left to prune.
MOST_UNENDING = 10


def search_code() -> CodeType:
    """The code of torch-pruning's search for one channel group: what the time bounds watch."""
    import torch_pruning as tp

    return tp.DependencyGraph.get_pruning_group.__code__


def searches_bounded(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Raise RanAway where one channel group's search inside the block runs past `seconds`."""
    return guarded(float("inf"), stuck_in=search_code(), stuck_s=seconds)


def groups_by_root(graph, ignored: Sequence[nn.Module], root_types: Sequence[type],
                   seconds: float | None) -> Iterator[tuple[nn.Module, Any]]:
    """Each channel group of `graph` (torch-pruning's Group) that its pruner would prune, with its root (the layer whose
    output channels it starts from), found one search at a time as `get_all_groups` finds them; with `seconds`, a root
    whose search runs past that comes with None for its group, and RanAway is raised past MOST_UNENDING of those."""
    left_whole = {id(m) for m in (*ignored, *getattr(graph, "IGNORED_LAYERS_IN_TRACING", []))}
    found: set[int] = set()  # the layers whose output channels a group already holds: no root of their own
    unending = 0
    for root in list(graph.module2node):
        if not isinstance(root, tuple(root_types)) or id(root) in left_whole or id(root) in found:
            continue
        pruner = graph.get_pruner_of_module(root)
        channels = pruner.get_out_channels(root) if pruner is not None else None
        if channels is None:
            continue
        try:
            with searches_bounded(seconds) if seconds is not None else contextlib.nullcontext():
                group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(channels)))
        except RanAway:
            unending += 1
            if unending > MOST_UNENDING:
                raise RanAway(f"the searches of more than {MOST_UNENDING} channel groups went on past {seconds:g} s "
                              "each, without end") from None
            yield root, None
            continue
        outputs = {id(dep.target.module) for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)}
        found |= outputs
        if not outputs & left_whole:  # the pruner skips a group that holds a layer left whole
            yield root, group
