"""Which device to train on and in what precision."""

from __future__ import annotations

import contextlib

import torch

from distillctl.errors import UserError


def pick_device(spec: str) -> torch.device:
    """`auto` takes cuda, else mps, else cpu; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"trainer.device={spec} is not a device distillctl trains on: use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={spec} but no CUDA device is visible. Use trainer.device=auto or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise UserError(f"trainer.device={spec} but this machine shows {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"trainer.device={spec} but this machine has no MPS (Apple GPU) device. Use trainer.device=auto or cpu.")
    return device


def device_name(device: torch.device) -> str | None:
    """The accelerator's model name (e.g. for results tables); None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision: bf16 autocast on CUDA by default; fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise UserError(f"trainer.precision={precision} is not supported for training; use auto, fp32 or bf16.")


def compile_mode(device: torch.device, compile_setting: object, mode: str) -> str | None:
    """The torch.compile mode to train with, or None for eager, from trainer.compile / compile_mode."""
    setting = str(compile_setting).lower()
    if setting not in ("auto", "true", "false", "on", "off"):
        raise UserError(f"trainer.compile={compile_setting} is not one of auto, true, false.")
    enabled = device.type == "cuda" if setting == "auto" else setting in ("true", "on")
    if not enabled:
        return None
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return mode


def compile_policy(device: torch.device, trainer_cfg, taps_features: bool) -> tuple[str | None, str | None]:
    """The torch.compile mode to train with (None: eager) and a note for the log: why `auto` chose eager, or a warning
    that compiling on the CPU takes minutes."""
    mode = compile_mode(device, trainer_cfg.compile, trainer_cfg.compile_mode)
    if mode is not None and taps_features and str(trainer_cfg.compile).lower() == "auto":
        # Measured on an H100: hooks inside CUDA-graphed models re-trace every step (65 img/s against 20,000).
        return None, "compile off: feature-tapping terms and CUDA graphs do not mix yet (trainer.compile=true forces it)"
    if mode is not None and device.type == "cpu":
        # Compiling the quickstart student on this 2-core CPU took more than 7 minutes before the first step.
        return mode, ("warning: trainer.compile=true on the CPU: the first steps wait for a C++ build (minutes on a few "
                      "cores, with no word until it ends) and CPU training gains little; trainer.compile=auto leaves it off")
    return mode, None
