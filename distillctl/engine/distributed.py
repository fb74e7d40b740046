"""Several processes training one model with torch.distributed: who this process is, and the few collectives the
loop needs (the gradients themselves are DistributedDataParallel's job).

A process is one of several when torchrun (or `trainer.devices=N`, which starts torchrun) set RANK and WORLD_SIZE,
or when SLURM's srun started it as one task of several (submitit's launcher). Everything here is a no-op for a
single process, so the loop calls it unconditionally.

`trainer.batch_size` is the global batch: each process takes batch_size / processes images of every step, so the
learning-rate schedule, the steps per epoch and a checkpoint mean the same whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from distillctl.console import console
from distillctl.errors import UserError
from distillctl.ranks import is_main, job_id, ranks  # noqa: F401  (is_main: the loop's name for it)

# Set while rank 0 runs a stage alone (evaluate, post-training quantization): its collectives are no-ops then.
_ALONE: ContextVar[bool] = ContextVar("alone", default=False)


def active() -> bool:
    """Whether this process trains with others: a process group of more than one process is up and rank 0 is not
    running something alone."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not _ALONE.get()


@contextmanager
def alone() -> Iterator[None]:
    """Within the block this process works by itself (collectives are no-ops)."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def setup(device: torch.device, timeout_s: float) -> torch.device:
    """Join the job's process group (once per process) and return this process's device: its own GPU, or the CPU
    with the gloo backend."""
    r = ranks()
    if r.world == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", r.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"trainer.devices / torchrun: several processes train on CUDA GPUs or on the CPU, not on {device.type}.")
    if r.rank > 0:
        console.quiet = True  # rank 0 speaks for the job (also where no CLI started this process: submitit tasks)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # tasks started by srun or submitit, not torchrun: rank 0's host leads
            local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
            os.environ["MASTER_ADDR"] = "127.0.0.1" if local else slurm_first_host()
            os.environ.setdefault("MASTER_PORT", str(job_port(job_id() or "")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=r.rank, world_size=r.world,
                                timeout=timedelta(seconds=timeout_s), store=attempt_store(r.world, timeout_s))
    return device


def attempt_store(world: int, timeout_s: float) -> dist.Store | None:
    """This restart's own view of torchrun's store, or None where init_process_group should make its own.

    torchrun keeps one store for all restarts of a job and init_process_group does not prefix its keys by attempt,
    so after `--max-restarts` a new process can read the address a dead one published and fail to connect.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"distillctl/attempt_{restart}", store)


# A port of each job's own (several jobs of a sweep may share a node), below Linux's ephemeral ports (32768-60999):
# a port the system handed to some connection for the moment would leave rank 0's store unable to listen there.
JOB_PORTS = range(20000, 32768)


def job_port(job: str) -> int:
    """The port rank 0 of the job named `job` listens on."""
    return JOB_PORTS[int(hashlib.blake2b(job.encode(), digest_size=4).hexdigest(), 16) % len(JOB_PORTS)]


def slurm_first_host() -> str:
    """The first host name of SLURM_JOB_NODELIST (node[01-04] -> node01), where rank 0 listens."""
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        raise UserError("several SLURM tasks but no SLURM_JOB_NODELIST: set MASTER_ADDR and MASTER_PORT, or launch with torchrun.")
    first = nodes.split(",")[0]
    if "[" in first:
        stem, numbers = first.split("[", 1)
        first = stem + numbers.rstrip("]").split("-")[0].split(",")[0]
    return first


def world_size() -> int:
    """Processes training together (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def barrier() -> None:
    """Wait for every process."""
    if active():
        dist.barrier()


def broadcast(value):
    """Rank 0's value, on every process: decisions that read the file system (skip, resume) are taken once."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only where every process's flag is true."""
    if not active():
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_across(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over the processes (one collective for all)."""
    if not active() or not tensors:
        return list(tensors)
    flat = torch.stack([t.detach().to(torch.float64).reshape(()) for t in tensors])
    dist.all_reduce(flat)
    return list(flat.unbind())


def gather_cat(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's tensors (CPU, first dimension of any length) concatenated in rank order."""
    if not active():
        return tensors
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensors)
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(tensors)))


def average_gradients(params: Iterator[nn.Parameter]) -> None:
    """Average the gradients of parameters trained outside DDP (a discriminator's own optimizer) over the processes."""
    if not active():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def shard_positions(n: int) -> torch.Tensor:
    """This process's contiguous share of n items (the shares of all processes, in rank order, are 0..n-1)."""
    return torch.tensor_split(torch.arange(n), world_size())[rank()]


def split_batch(batch_size: int) -> int:
    """Images per process in each step of a global `batch_size`."""
    world = world_size()
    if batch_size % world:
        raise UserError(f"trainer.batch_size={batch_size} is the global batch and must divide evenly over the {world} processes; "
                        f"use a multiple of {world}.")
    return batch_size // world


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (decoding a data set into the cache, fetching weights), then the others, which
    find its results on disk."""
    if not active():
        yield
        return
    if rank() != 0:
        dist.barrier()
    yield
    if rank() == 0:
        dist.barrier()


def wrap(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """`module` under DistributedDataParallel in a multi-process job (itself otherwise); `find_unused` where some
    parameters sit out some steps (a term that waits for its epoch)."""
    if not active():
        return module
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # channels_last 1x1 kernels: DDP's bucket and the gradient hold the same memory under two stride layouts, and
    # DDP copies between them with a warning per process that means nothing here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def synced_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """trainer.sync_bn: batch statistics over every process's share of the batch, not each share alone."""
    if not active():
        return model
    if device.type != "cuda":
        raise UserError("trainer.sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only. On the CPU each process "
                        "normalizes its own share of the batch; set trainer.sync_bn=false.")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """The model with every SyncBatchNorm back to a BatchNorm2d holding the same parameters and statistics, for the
    stages after training (pruning, int8) that expect plain layers."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                   device=child.running_mean.device if child.running_mean is not None else None)
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            plain_batchnorm(child)
    return model
