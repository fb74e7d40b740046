"""Images in, batches out: load a data set once, cache it as uint8 tensors, augment whole batches."""

from distillctl.data.batches import Batches, eval_batches
from distillctl.data.splits import DataSplits, load_splits

__all__ = ["Batches", "DataSplits", "eval_batches", "load_splits"]
