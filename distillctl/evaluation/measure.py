"""Size and speed of a model on the CPU: parameters, MACs, file size, latency and throughput."""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates for one image (FLOPs / 2 as torch's counter reports them)."""
    model.eval()
    # The counter follows modules through backward hooks on every input that needs a gradient, which fails on a
    # class token handed to a block as its input (CaiT, PiT); counted with the weights frozen, no input needs one.
    needs_grad = [p for p in model.parameters() if p.requires_grad]
    try:
        model.requires_grad_(False)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for p in needs_grad:
            p.requires_grad_(True)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def time_forward(model: nn.Module, batch: int, image_size: int, threads: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per forward pass at a fixed thread count, after warm-up, one figure per repeat."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.randn(batch, 3, image_size, image_size)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        return times
    finally:
        torch.set_num_threads(previous)


def deployable(model: nn.Module, image_size: int) -> tuple[nn.Module, str]:
    """The form a CPU deployment runs a torch model in -- a frozen TorchScript trace -- and its name.
    Every torch row is timed this way so fp32 and int8 compare like for like; untraceable models run eager."""
    model = model.cpu().eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.zeros(1, 3, image_size, image_size))
            return torch.jit.freeze(traced), "torchscript"
    except Exception:  # tracing fails in many ways (data-dependent control flow, odd outputs); eager still works
        return model, "eager"


def latency_warmup(repeats: int) -> int:
    """Untimed batch-1 passes before `repeats` timed ones: a fifth as many, at least one."""
    return max(1, repeats // 5)


def latency_ms(model: nn.Module, image_size: int, threads: int, repeats: int) -> float:
    """Median batch-1 latency on the CPU over `repeats` passes, in milliseconds."""
    return statistics.median(time_forward(model, 1, image_size, threads, latency_warmup(repeats), repeats)) * 1e3


def speed(model: nn.Module, image_size: int, threads: int, latency_repeats: int, batch: int) -> dict[str, float]:
    """Median batch-1 latency (ms) and throughput at `batch` images per pass (images/s) on the CPU."""
    bulk = time_forward(model, batch, image_size, threads, warmup=1, repeats=7)
    return {"latency_ms": latency_ms(model, image_size, threads, latency_repeats), "throughput": batch / statistics.median(bulk)}
