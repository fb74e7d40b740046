"""The input sizes autograd saved for a split or a reshape, shown to torch-pruning under the name it reads.

torch-pruning 1.6.1 reads a split's or a reshape's input sizes from its backward node's `_saved_self_sizes`, which torch
2 renamed `_saved_self_sym_sizes`. Without them it guesses from the layers around the node:
- an equal split of the channels (`x.split(n, 1)`, `x.chunk(k, 1)`; the node saves one size for every part) got sizes
  like [512, 0, 256] for two halves in CSPDarkNet's cross-stage blocks, and building the graph failed
  (`TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'`);
- a reshape in a model of convolutions is mapped as a flatten of channels without the size check that would tell one
  from a split into heads, and in MaxViT's and EfficientViT-M's attention the index lists then grew without end.
Equal splits of the channels are always shown. Reshapes only within `reshapes_read()`: read, SKNet's and ResNeSt's
attention reshapes fail the check they passed by luck, so the prune stage tries again with the guess there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_reading_reshapes = False


class _SizedNode:
    """A backward node with its input's sizes also under the name torch-pruning 1.6.1 reads."""

    def __init__(self, grad_fn: Any) -> None:
        self._grad_fn = grad_fn
        self._saved_self_sizes = grad_fn._saved_self_sym_sizes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grad_fn, name)


def _shown(node: Any, graph: Any) -> bool:
    """Whether this graph node's saved input sizes are to be shown to torch-pruning.

    Reshapes are, within reshapes_read(), in a model of convolutions (`graph._2d_4d`: no Linear layer on a sequence
    of tokens), where torch-pruning's guess maps every reshape as a flatten of channels and the sizes let it check
    which are. In a transformer it maps no reshape without them, and with them it maps some: LeViT then ran away.

    Splits of other dimensions than the channels are left to torch-pruning's guess: torch hands a dimension counted from
    the end back as 2**64 - 1, which torch-pruning takes for the channels' once it reads the sizes
    (VainF/Torch-Pruning#532), and EfficientViT's attention, whose q, k and v are chunks of the last dimension, then ran
    away. Read as the last dimension, it ran away as well."""
    from torch_pruning.ops import OPTYPE

    grad_fn = node.grad_fn
    if not hasattr(grad_fn, "_saved_self_sym_sizes") or hasattr(grad_fn, "_saved_self_sizes"):
        return False
    if node.type == OPTYPE.RESHAPE:
        return _reading_reshapes and graph._2d_4d
    return node.type == OPTYPE.SPLIT and hasattr(grad_fn, "_saved_split_size") and grad_fn._saved_dim == 1


@contextlib.contextmanager
def sizes_read() -> Iterator[None]:
    """Within the block, every dependency graph torch-pruning builds reads its equal splits of the channels' sizes
    from autograd (and its reshapes', within reshapes_read())."""
    from torch_pruning.dependency import shape_infer

    infer = shape_infer.init_shape_information
    if getattr(infer, "reads_sizes", False):  # an enclosing block already did
        yield
        return

    def init_shape_information(graph: Any) -> None:
        for node in graph.module2node.values():
            if _shown(node, graph):
                node.grad_fn = _SizedNode(node.grad_fn)
        infer(graph)

    init_shape_information.reads_sizes = True
    shape_infer.init_shape_information = init_shape_information
    try:
        yield
    finally:
        shape_infer.init_shape_information = infer


@contextlib.contextmanager
def reshapes_read() -> Iterator[None]:
    """Within the block, the graphs sizes_read() shows torch-pruning carry their reshapes' sizes too."""
    global _reading_reshapes
    was, _reading_reshapes = _reading_reshapes, True
    try:
        yield
    finally:
        _reading_reshapes = was
