"""Images in, batches out: decoded once into uint8 tensors (resident) or streamed from files by worker processes."""

from distillctl.data.batches import Batches, TensorSplit, eval_batches
from distillctl.data.splits import DataSplits, Split, load_splits
from distillctl.data.stream import StreamSplit

__all__ = ["Batches", "DataSplits", "Split", "StreamSplit", "TensorSplit", "eval_batches", "load_splits"]
