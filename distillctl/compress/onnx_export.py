"""ONNX export (torch.export based), ONNX Runtime static int8 quantization, and an ONNX model usable like a module.

ONNX Runtime is the CPU deployment target: the same file runs from C++, C#, Java or a phone, and its
quantizer writes QDQ graphs that its own int8 kernels execute. Weights stay plain tensors in a protobuf;
nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillctl import files
from distillctl.compress import standardized_convs
from distillctl.errors import UserError

INPUT, OUTPUT = "images", "logits"


def export(model: nn.Module, path: Path, image_size: int, opset: int, metadata: dict) -> None:
    """Write `model` (float, eval mode) as ONNX with a dynamic batch size and distillctl's metadata."""
    import onnx

    model = standardized_convs.folded(model.cpu().eval())
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings():
            # timm's attention with position biases (LeViT, TinyViT, EfficientViT) caches them in a dict on its first
            # forward, and torch.export warns about every layer's cache, a screenful; the exported graph computes
            # the biases from the parameters (the quantize stage checks its outputs against PyTorch's).
            warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=[{0: batch}], verbose=False,
            )
    except Exception as exc:  # torch.export raises many error types for untraceable code
        raise UserError(f"torch.onnx.export could not export this model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from None
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    files.atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def metadata(path: Path) -> dict:
    """distillctl's metadata stored in an ONNX file."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); re-run the stage that wrote it.") from None
    meta = {}
    for prop in proto.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    return meta


class CalibrationImages:
    """ONNX Runtime's calibration reader over batches of normalized images."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {INPUT: x.cpu().contiguous().numpy()}


def quantize_int8(float_path: Path, out_path: Path, batches: Iterable[torch.Tensor], per_channel: bool, reduce_range: bool) -> None:
    """Static int8 QDQ model from a float ONNX file, activations calibrated (min-max) on `batches`; `reduce_range`
    keeps weights to 7 bits, which x86 CPUs without VNNI need (config.QuantizeConfig.reduce_range says why)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    class Reader(CalibrationImages, CalibrationDataReader):
        pass

    source, prepared = float_path.resolve(), out_path.with_name(out_path.stem + ".prepared.onnx").resolve()
    try:
        # Shape inference and graph clean-up first, as ONNX Runtime's quantizer recommends. In a folder of its own:
        # when its symbolic shape inference cannot finish, it saves the unfinished model (~13 MB for
        # EfficientFormerV2) into the working directory, which is the user's.
        with tempfile.TemporaryDirectory(prefix="distillctl-onnx-") as scratch, contextlib.chdir(scratch):
            source = unshared(source, Path(scratch) / "unshared.onnx")
            try:
                quant_pre_process(str(source), str(prepared))
            except Exception:
                # That inference (meant for transformers' dynamic sizes) fails on some graphs: an Expand in EdgeNeXt,
                # EfficientFormerV2's attention. ONNX's own shape inference knows every size of an image
                # classifier's graph, which is all the quantizer needs.
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        try:
            files.atomic_write(out_path, lambda tmp: quantize_static(
                str(prepared), str(tmp), Reader(batches), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
            ))
        except (ValueError, RuntimeError, KeyError, AssertionError, NotImplementedError) as exc:
            # What ONNX Runtime's quantizer raises on a graph it does not handle, after the export itself worked.
            raise UserError(f"ONNX Runtime's quantizer could not quantize this model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no message'}). Use quantize=int8_static, "
                            "quantize=executorch_int8 or quantize=fp16.") from None
    finally:
        prepared.unlink(missing_ok=True)


def unshared(source: Path, scratch: Path) -> Path:
    """`source`, or a copy at `scratch` in which each constant tensor feeds one node: torch's exporter writes equal
    constants once (the unit scale of every GroupNorm of a width, in BiT), and ONNX Runtime's quantizer refuses a
    weight that several nodes share ("shared mode is not supported for weight")."""
    import onnx

    proto = onnx.load(str(source))
    constants = {tensor.name: tensor for tensor in proto.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in proto.graph.node:
        for position, name in enumerate(node.input):
            if name not in constants:
                continue
            if name in seen:
                copies += 1
                duplicate = proto.graph.initializer.add()
                duplicate.CopyFrom(constants[name])
                duplicate.name = node.input[position] = f"{name}__use{copies}"
            seen.add(name)
    if not copies:
        return source
    onnx.save(proto, str(scratch))
    return scratch


class OnnxClassifier(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, called like the torch model it came from."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UserError(f"ONNX Runtime could not load '{path}' ({type(exc).__name__}); it may be corrupt. Re-run the stage that wrote it.") from None
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT], {INPUT: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(logits)

