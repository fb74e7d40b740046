"""An int8 model's state as plain tensors plus JSON, so it is stored as safetensors and read without pickle.

safetensors holds no quantized dtypes, so each quantized tensor becomes its integer values, its scales
(float32: the observers computed them in float32, so nothing is lost) and zero points, and the recipe to
reassemble it. Packed linear parameters (a tuple), dtype entries and absent biases (None) are recorded the same way,
and so are the packed weights FX keeps for a functional linear (timm's Linear head calls F.linear): unpacked to
(weight, bias) here and packed again on load.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from distillctl.errors import UserError

PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


def encode(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, layout): the tensors for safetensors and the JSON layout that decode() needs."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}

    def put(key: str, value: Any) -> Any:
        if isinstance(value, tuple):
            return {"tuple": [put(f"{key}.{i}", v) for i, v in enumerate(value)]}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if value is None:  # a quantized conv with no bias (no BN folded into it: pre-activation blocks)
            return {"none": True}
        if isinstance(value, torch.ScriptObject):
            if "LinearPackedParams" not in value._type().qualified_name():
                layer = key.rsplit("_packed", 1)[0]
                raise UserError(f"int8 state '{key}' ({value._type().qualified_name()}) cannot be stored. Keep that layer "
                                f"in float with quantize.skip=[{layer}], or use quantize=onnx_int8.")
            return {"linear_packed": put(key, tuple(torch.ops.quantized.linear_unpack(value)))}
        value = value.detach()
        if not value.is_quantized:
            tensors[key] = value.contiguous().cpu()
            return None  # a plain tensor needs no layout entry
        tensors[key] = value.int_repr().contiguous()
        entry: dict[str, Any] = {"quantized": True}
        if value.qscheme() in PER_CHANNEL:
            tensors[key + ".scales"] = value.q_per_channel_scales().float()
            zero_points = value.q_per_channel_zero_points()
            if zero_points.any():  # symmetric int8 weights: all zero, not worth storing
                tensors[key + ".zero_points"] = zero_points.int()
            entry["axis"] = value.q_per_channel_axis()
        else:
            entry |= {"scale": value.q_scale(), "zero_point": value.q_zero_point()}
        return entry

    for key, value in state.items():
        if (entry := put(key, value)) is not None:
            layout[key] = entry
    # Quantized modules read their state by version (old versions expect other keys); keep the versions.
    versions = {prefix: dict(meta) for prefix, meta in getattr(state, "_metadata", {}).items()}
    return tensors, {"entries": layout, "versions": versions}


def decode(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, Any]:
    """The state_dict encode() was given, quantized tensors and all."""

    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return tensors[key]

    def get(key: str, entry: dict[str, Any] | None) -> Any:
        if entry is None:
            return take(key)
        if "tuple" in entry:
            return tuple(get(f"{key}.{i}", e) for i, e in enumerate(entry["tuple"]))
        if "linear_packed" in entry:
            return torch.ops.quantized.linear_prepack(*get(key, entry["linear_packed"]))
        if "dtype" in entry:
            return getattr(torch, entry["dtype"])
        if entry.get("none"):
            return None
        # The integer dtype (int8 / uint8) of the stored values picks qint8 / quint8.
        values = take(key)
        if "axis" in entry:
            scales = take(key + ".scales").double()
            zero_points = take(key + ".zero_points") if key + ".zero_points" in tensors else torch.zeros(len(scales), dtype=torch.int32)
            return torch._make_per_channel_quantized_tensor(values, scales, zero_points.long(), entry["axis"])
        return torch._make_per_tensor_quantized_tensor(values, entry["scale"], entry["zero_point"])

    entries = layout["entries"]
    decoded = {key: get(key, entry) for key, entry in entries.items()}
    # What no entry consumed is a plain tensor stored as it is.
    plain = {key: value for key, value in tensors.items() if key not in used}
    state = OrderedDict([*decoded.items(), *plain.items()])
    state._metadata = OrderedDict(layout["versions"].items())  # type: ignore[attr-defined]
    return state

