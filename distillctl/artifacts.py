"""Files a run leaves behind, all written atomically and read back without unpickling code."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from distillctl.checkpoint_layouts import SAFE_GLOBALS, weights_entry, without_prefix
from distillctl.errors import UserError
from distillctl.files import atomic_write


def save_weights(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Model weights as safetensors; metadata (JSON-encoded) says how to rebuild the architecture."""
    save_tensors(path, weights_of(model), metadata)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, contiguous, one tensor per name: what save_weights writes."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().contiguous().cpu()
        # One module registered under two names (QAT observers shared by several ops) gives aliased tensors,
        # which safetensors refuses; a copy per name loads back the same.
        if value.numel() and value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        state[key] = value
    return state


# All metadata goes under this one key as sorted JSON: safetensors writes its metadata map in a random order, so
# several keys would make the same weights a different file on every run (comparing runs by hash needs equal bytes).
METADATA_KEY = "distillctl"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Named tensors as safetensors with JSON-encoded metadata; the same inputs give the same bytes."""
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata save_weights stored, decoded (also from files written before it used one key, and from other
    tools' files, whose plain-string values are kept as they are)."""
    try:
        with safe_open(str(path), "pt") as handle:
            raw = handle.metadata() or {}
        if METADATA_KEY in raw:
            decoded = json.loads(raw[METADATA_KEY])
            if not isinstance(decoded, dict):
                raise ValueError("its distillctl metadata is not a JSON object")
            return decoded
        return {k: json_or_text(v) for k, v in raw.items()}
    except (OSError, SafetensorError, ValueError) as exc:
        raise UserError(f"'{path}' is not a readable safetensors checkpoint ({exc}); it may be corrupt. Re-run the stage that wrote it.") from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor a safetensors file holds, read from its header alone."""
    try:
        with safe_open(str(path), "pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise UserError(f"'{path}' is not a readable safetensors checkpoint ({exc}); it may be corrupt. Re-run the stage that wrote it.") from None


def json_or_text(value: str) -> Any:
    """A metadata value decoded from JSON, or the string itself (foreign files store plain strings: format=pt)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a safetensors or a tensors-only torch file into `model`, explaining a mismatch."""
    fit_state(model, read_weights(path), path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or tensors-only torch file, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_GLOBALS):
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing anyway
                state = weights_entry(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError:
        raise UserError(
            f"could not read checkpoint '{path}': it holds pickled Python objects, which are never loaded. "
            "Save weights as safetensors or torch.save(model.state_dict())."
        ) from None
    except Exception as exc:
        raise UserError(f"could not read checkpoint '{path}' ({type(exc).__name__}); it may be corrupt or not a weights file.") from None
    return state


def fit_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """model.load_state_dict(state), from under a wrapper's key prefix if need be, with a mismatch explained in one
    line naming the file."""
    try:
        model.load_state_dict(without_prefix(state, model.state_dict().keys()))
    except RuntimeError as exc:
        first = " ".join(few_keys(line.strip()) for line in str(exc).splitlines()[1:3])
        raise UserError(f"checkpoint '{path}' does not fit this model ({first}). Check the model name.") from None


def few_keys(problem: str, shown: int = 3) -> str:
    """A line of load_state_dict's error with its list of keys cut to the first few: a model of another depth
    misses dozens."""
    head, _, keys = problem.partition(": ")
    names = keys.rstrip(". ").split(", ")
    if not head.endswith("key(s) in state_dict") or len(names) <= shown:  # a size mismatch, or a short list
        return problem
    return f"{head}: {', '.join(names[:shown])} and {len(names) - shown} more."


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer, scheduler, RNG): tensors and plain Python only, for weights_only loading."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read what save_state wrote, refusing anything that would need unpickling code."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"could not read training state '{path}' ({type(exc).__name__}); delete it and start without resume=true.") from None
