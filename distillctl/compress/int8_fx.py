"""Int8 quantization for the CPU with torch's FX graph mode, and plain fp16/bf16 casts.

Why FX graph mode (torch.ao.quantization.quantize_fx): in the torch we pin it is the path that quantizes a
traceable model without edits (residual additions become quantized add_relu, conv-bn-relu fuse on their own)
and runs on fbgemm/x86 int8 kernels straight away, with no compile step (speed-ups in docs/results.md). It is deprecated in favour of torchao's pt2e flow, whose converted graphs are q/dq
patterns that become int8 kernels only once lowered (torch.compile's inductor, or torchao's x86 lowering) and
which needs torchao beside torch. The migration is prepare_pt2e/convert_pt2e with X86InductorQuantizer;
torch's deprecation warning is silenced here and the choice is recorded in the README.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distillctl.errors import UserError, first_few

BACKENDS = ("x86", "fbgemm", "qnnpack")
ARM = ("arm64", "aarch64")


def resolve_backend(backend: str) -> str:
    """quantize.backend with `auto` made concrete: qnnpack (torch's ARM int8 kernels) on ARM CPUs, x86 elsewhere."""
    if backend != "auto":
        return backend
    import platform

    return "qnnpack" if platform.machine().lower() in ARM else "x86"

# Leaf layers that run on int8 tensors as they are (no weights to quantize) or that FX leaves in place.
PASSTHROUGH = (
    nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
    nn.Flatten, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
)


@contextmanager
def quiet() -> Iterator[None]:
    """torch.ao warns on every call (deprecation, observer defaults); the README records the migration once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quant.*")
        yield


def quantizable_types() -> tuple[type, ...]:
    """Layer types the FX flow converts to int8 kernels."""
    from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

    return tuple(t for t in get_default_static_quant_module_mappings() if isinstance(t, type))


def check_supported(model: nn.Module, skip: Iterable[str]) -> None:
    """Fail before any work when a layer has no int8 kernel or the model cannot be traced, naming the way out."""
    skip = set(skip)
    known = {name for name, _ in model.named_modules()}
    if unknown := sorted(skip - known):
        from distillctl.errors import did_you_mean

        raise UserError(f"quantize.skip names no layer of this model: {unknown[0]}.{did_you_mean(unknown[0], known)}")
    supported = quantizable_types() + PASSTHROUGH
    unsupported = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        # An empty Sequential (timm's identity shortcut) passes its input on as it is.
        empty = isinstance(module, nn.Sequential) and not len(module)
        if not list(module.children()) and not empty and not isinstance(module, supported):
            unsupported.append((name, type(module).__name__))
    if unsupported:
        # All of them at once: a ViT has a GELU per block, and one name per run would take a run per block.
        shown = first_few([f"'{name}' ({kind})" for name, kind in unsupported], 3)
        names = ",".join(name for name, _ in unsupported)
        raise UserError(
            f"{len(unsupported)} layer{'s' if len(unsupported) > 1 else ''} {shown} ha{'ve' if len(unsupported) > 1 else 's'} "
            f"no int8 kernel in torch's x86 backend. Use quantize=onnx_int8 (ONNX Runtime has int8 kernels around them) or "
            f"quantize=fp16, or keep them in float with quantize.skip=[{names}]."
        )
    try:
        with quiet():
            torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types for data-dependent Python control flow
        raise UserError(
            f"torch.fx cannot trace this model for int8 quantization ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Use quantize=onnx_int8 (traced by torch.export) or quantize=fp16."
        ) from None


def qconfig_mapping(backend: str, per_channel: bool, skip: Iterable[str], qat: bool = False):
    """Observers for `backend`: per-channel int8 weights (or per-tensor), uint8 activations; skipped layers stay float."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping

    if backend not in BACKENDS:
        raise UserError(f"quantize.backend={backend}: use one of {', '.join(BACKENDS)}.")
    with quiet():
        mapping = get_default_qat_qconfig_mapping(backend) if qat else get_default_qconfig_mapping(backend)
        if not per_channel:
            from torch.ao.quantization import QConfig, default_weight_fake_quant, default_weight_observer

            weight = default_weight_fake_quant if qat else default_weight_observer
            mapping = mapping.set_global(QConfig(activation=mapping.global_qconfig.activation, weight=weight))
    for name in skip:
        mapping = mapping.set_module_name(name, None)
    return mapping


def split_norm_act(model: nn.Module) -> nn.Module:
    """Replace timm's BatchNormAct2d (batch norm, dropout and activation in one module) by a Sequential of
    BatchNorm2d, dropout and activation under the same names (bn1.act stays bn1.act), in place.

    FX traces BatchNormAct2d's forward rather than keeping it whole, which bakes the mode it was traced in into
    the graph: a QAT model (traced in training mode) kept normalizing with batch statistics after conversion.
    Split, the batch norm is a layer FX fuses into the conv before it (one int8 conv instead of a float
    batch norm between dequantize and quantize)."""
    from timm.layers import BatchNormAct2d

    for name, module in list(model.named_modules()):
        if type(module) is not BatchNormAct2d:
            continue
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        split = nn.Sequential(OrderedDict(bn=bn.train(module.training), drop=module.drop, act=module.act))
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, split)
    return model


def prepare(model: nn.Module, example: torch.Tensor, backend: str, per_channel: bool, skip: Iterable[str], qat: bool = False) -> nn.Module:
    """The model with observers (static) or fake-quant modules (QAT) inserted and conv-bn-relu fused."""
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    split_norm_act(model)
    torch.backends.quantized.engine = backend
    mapping = qconfig_mapping(backend, per_channel, list(skip), qat)
    with quiet():
        if qat:
            return prepare_qat_fx(model.train(), mapping, (example,))
        return prepare_fx(model.eval(), mapping, (example,))


@torch.inference_mode()
def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run images through the observers; returns how many were seen."""
    prepared.eval()
    seen = 0
    with quiet():
        for x in batches:
            prepared(x.cpu().contiguous())
            seen += len(x)
    return seen


def convert(prepared: nn.Module) -> nn.Module:
    """Observed (or fake-quantized) model -> int8 model on fbgemm/x86 kernels."""
    from torch.ao.quantization.quantize_fx import convert_fx

    try:
        with quiet():
            return convert_fx(prepared.cpu().eval())
    except RuntimeError as exc:  # e.g. a fake-quantized functional weight (timm's ghostnet) with invalid ranges
        raise UserError(f"torch's int8 conversion failed for this model ({str(exc).splitlines()[0][:200]}). "
                        "Use quantize=int8_static, quantize=onnx_int8 or quantize=fp16.") from None


def rebuild(model: nn.Module, image_size: int, backend: str, per_channel: bool, skip: Iterable[str]) -> nn.Module:
    """The int8 graph of a float architecture, with placeholder scales, ready for a saved int8 state."""
    example = torch.zeros(1, 3, image_size, image_size)
    prepared = prepare(model, example, backend, per_channel, skip)
    calibrate(prepared, [example])  # observers need one pass to produce (placeholder) scales
    return convert(prepared)


class Cast(nn.Module):
    """A model run in fp16 or bf16 on float32 images, returning float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def save_quantized(path, model: nn.Module, metadata: dict, quantization: dict) -> None:
    """Write a cast or int8 model as safetensors; `quantization` (method, backend, ...) says how to rebuild it."""
    from distillctl import artifacts
    from distillctl.compress import int8_state

    if isinstance(model, Cast):
        artifacts.save_weights(path, model.model, metadata | {"quantization": quantization})
        return
    tensors, layout = int8_state.encode(model.state_dict())
    artifacts.save_tensors(path, tensors, metadata | {"quantization": quantization | {"layout": layout}})


def load_quantized(path, model: nn.Module, quantization: dict) -> nn.Module:
    """The saved cast or int8 model, rebuilt on the float architecture `model` (weights not yet loaded)."""
    from distillctl import artifacts
    from distillctl.compress import int8_state

    method = quantization["method"]
    if method in CAST_DTYPES:
        model = model.to(CAST_DTYPES[method])
        artifacts.load_weights(path, model)
        return Cast(model, CAST_DTYPES[method])
    int8 = rebuild(model, quantization["image_size"], quantization["backend"], quantization["per_channel"], quantization["skip"])
    try:
        state = int8_state.decode(artifacts.read_weights(path), quantization["layout"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:  # a layout that does not match its tensors
        raise UserError(f"'{path}' holds an int8 layout that does not match its tensors ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); re-run the quantize stage that wrote it.") from None
    # FX keeps a functional linear's packed weights (timm's Linear head) as graph attributes: its state_dict lists
    # them, but load_state_dict does not set them.
    for key in [k for k, v in state.items() if isinstance(v, torch.ScriptObject)]:
        owner, _, attr = key.rpartition(".")
        setattr(int8.get_submodule(owner), attr, state.pop(key))
    artifacts.fit_state(int8, state, path)
    return int8
