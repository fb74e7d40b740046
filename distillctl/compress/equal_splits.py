"""Equal splits of the channels (`x.split(n, 1)`, `x.chunk(k, 1)`) read by torch-pruning as the sized splits they are.

torch-pruning 1.6.1 takes a split's sizes from autograd only where the split's backward node has
`_saved_self_sizes` or `_saved_split_sizes`. Torch 2 renamed the first to `_saved_self_sym_sizes`, so an equal split
(whose node saves `_saved_split_size`, one size for every part) is left to torch-pruning's older guess from the
layers around it. That guess gives no size where the parts meet again in a concatenation, and building the graph
fails: `TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'` on CSPDarkNet's cross-stage blocks.
Showing torch-pruning the node under the name it reads lets it use the size autograd saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _EqualSplitNode:
    """An equal split's backward node, with its input's sizes also under the name torch-pruning 1.6.1 reads."""

    def __init__(self, grad_fn: Any) -> None:
        self._grad_fn = grad_fn
        self._saved_self_sizes = grad_fn._saved_self_sym_sizes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grad_fn, name)


def _unread(grad_fn: Any) -> bool:
    """Whether `grad_fn` is an equal split of the channels whose sizes torch-pruning 1.6.1 would not read.

    Splits of other dimensions are left to torch-pruning's guess, as before: torch hands a dimension counted from the
    end back as 2**64 - 1, which torch-pruning takes for the channels' once it reads the sizes (VainF/Torch-Pruning#532),
    and EfficientViT's attention, whose q, k and v are chunks of the last dimension, then ran away. Read as the last
    dimension, it ran away as well."""
    return (getattr(grad_fn, "_saved_dim", None) == 1 and hasattr(grad_fn, "_saved_split_size")
            and hasattr(grad_fn, "_saved_self_sym_sizes") and not hasattr(grad_fn, "_saved_self_sizes"))


@contextlib.contextmanager
def equal_splits_read() -> Iterator[None]:
    """Within the block, every dependency graph torch-pruning builds reads its equal splits of the channels' sizes
    from autograd."""
    from torch_pruning.dependency import shape_infer

    infer = shape_infer.init_shape_information
    if getattr(infer, "reads_equal_splits", False):  # an enclosing block already did
        yield
        return

    def init_shape_information(graph: Any) -> None:
        for node in graph.module2node.values():
            if _unread(node.grad_fn):
                node.grad_fn = _EqualSplitNode(node.grad_fn)
        infer(graph)

    init_shape_information.reads_equal_splits = True
    shape_infer.init_shape_information = init_shape_information
    try:
        yield
    finally:
        shape_infer.init_shape_information = infer
