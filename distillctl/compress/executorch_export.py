"""ExecuTorch: the student as a .pte program for phones and boards, int8 on the XNNPACK backend, and the file run in
ExecuTorch's own runtime.

Why ExecuTorch rather than LiteRT: it is PyTorch's own on-device runtime and installs beside the pinned torch
(LiteRT's converter needs TensorFlow), and XNNPACK is the kernel library both use on ARM and x86 CPUs. The int8
model comes from the pt2e flow (torch.export, XNNPACKQuantizer: per-channel int8 weights, int8 activations),
calibrated on training images; the same .pte runs from the Android/iOS/C++ runtimes unchanged.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from distillctl import files
from distillctl.compress import standardized_convs
from distillctl.errors import UserError
from distillctl.preflight import require_package

META_SUFFIX = ".json"  # model.pte.json: what the program cannot hold (model name, classes, normalization)


@contextmanager
def quiet() -> Iterator[None]:
    """Hush what the export and the runtime print on every call: torchao's deprecation notices (Python warnings and
    torch's logger) and the runtime's CPU probing, which its C++ writes straight to the stderr file descriptor."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)


def check_installed() -> None:
    """Refuse before any work when ExecuTorch is not installed."""
    require_package("executorch", "quantize=executorch_int8", "executorch")


def export_int8(model: nn.Module, path: Path, image_size: int, batches: Iterable[torch.Tensor], per_channel: bool,
                metadata: dict) -> int:
    """Quantize `model` to int8 for XNNPACK, calibrated on `batches`, and write the batch-1 program to `path`
    (metadata beside it). Returns how many calibration images were seen."""
    check_installed()
    example = (torch.zeros(1, 3, image_size, image_size),)
    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        try:
            graph = torch.export.export(standardized_convs.folded(model.cpu().eval()), example).module()
        except Exception as exc:  # torch.export raises many error types for untraceable code
            raise UserError(f"torch.export could not capture this model for ExecuTorch ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}). Use quantize=onnx_int8 or quantize=int8_static.") from None
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
        prepared = prepare_pt2e(graph, quantizer)
        seen = 0
        with torch.no_grad():
            for batch in batches:
                for image in batch.cpu().float():  # the program is for one image at a time, as on a phone
                    prepared(image[None])
                    seen += 1
        lowered = to_edge_transform_and_lower(torch.export.export(convert_pt2e(prepared), example),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    files.atomic_write(path, lambda tmp: tmp.write_bytes(lowered.buffer))
    files.write_json(metadata_path(path), metadata)
    return seen


def metadata_path(path: Path) -> Path:
    """Where a program's metadata is kept."""
    return path.with_name(path.name + META_SUFFIX)


def metadata(path: Path) -> dict:
    """distillctl's metadata for a .pte program."""
    found = files.read_json(metadata_path(path))
    if found is None:
        raise UserError(f"'{metadata_path(path)}' is missing or unreadable; re-run the quantize stage that wrote '{path}'.")
    return found


class ExecuTorchClassifier(nn.Module):
    """A .pte program run by the ExecuTorch runtime on the CPU, called like the torch model it came from."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        check_installed()
        try:
            with quiet():
                from executorch.runtime import Runtime

                self.method = Runtime.get().load_program(str(path)).load_method("forward")
        except Exception as exc:
            raise UserError(f"ExecuTorch could not load '{path}' ({type(exc).__name__}); it may be corrupt. Re-run the stage that wrote it.") from None
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().float().cpu().contiguous()
        return torch.cat([self.method.execute([image[None]])[0] for image in images])

