"""What every stage sets up first: seeds, threads, device, data and the workspace."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch
from omegaconf import DictConfig, OmegaConf

from distillctl.data import DataSplits, load_splits
from distillctl.engine import distributed
from distillctl.engine.device import pick_device
from distillctl.ranks import ranks
from distillctl.workspace import Workspace


@dataclass
class RunContext:
    """A stage's shared inputs."""

    cfg: DictConfig
    device: torch.device
    data: DataSplits
    workspace: Workspace

    @classmethod
    def open(cls, cfg: DictConfig) -> "RunContext":
        """Seed everything, pick the device and load (or reuse) the data set."""
        here = ranks()
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        elif here.local_world > 1:  # the processes of this machine share its cores rather than each taking all
            torch.set_num_threads(max(1, torch.get_num_threads() // here.local_world))
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        device = distributed.setup(pick_device(cfg.trainer.device), cfg.trainer.dist_timeout_s)
        with distributed.main_first():  # rank 0 decodes into the cache; the others read it
            data = cached_splits(OmegaConf.to_yaml(cfg.dataset, resolve=True))
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN pick the fastest kernels once per shape.
            torch.backends.cudnn.benchmark = True
        return cls(cfg, device, data, Workspace.from_config(cfg))


@lru_cache(maxsize=2)
def cached_splits(dataset_yaml: str) -> DataSplits:
    """Load splits once per process: `pipeline` runs several stages on the same data."""
    return load_splits(OmegaConf.create(dataset_yaml))
