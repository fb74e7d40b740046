"""Images in, batches out: decoded once into uint8 tensors (resident) or streamed from files by worker processes.

Names are imported on first use, so `distillctl.data.sources` (where dataset.path is located) is read without
torch: the CLI checks the path before importing it.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from distillctl.data.batches import Batches, TensorSplit, eval_batches
    from distillctl.data.splits import DataSplits, Split, load_splits
    from distillctl.data.stream import StreamSplit

_HOMES = {
    "Batches": "batches", "TensorSplit": "batches", "eval_batches": "batches",
    "DataSplits": "splits", "Split": "splits", "load_splits": "splits",
    "StreamSplit": "stream",
}

__all__ = ["Batches", "DataSplits", "Split", "StreamSplit", "TensorSplit", "eval_batches", "load_splits"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"distillctl.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'distillctl.data' has no attribute '{name}'")
