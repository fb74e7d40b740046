"""The models a workspace holds, and each one loaded to run in its own runtime: torch weights (float, pruned, int8,
fp16), ONNX files in ONNX Runtime and ExecuTorch programs. What `evaluate` measures and `predict` runs.

Finding them asks only the file system, so the CLI checks a `predict.model` before torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from distillctl.config import QuantizeMethod
from distillctl.errors import UserError, did_you_mean
from distillctl.teacher_files import teacher_checkpoint
from distillctl.workspace import Workspace, model_file

if TYPE_CHECKING:
    from torch import nn

QUANTIZED = [str(m) for m in QuantizeMethod]
# Stages whose model is evaluated, in table order; the teacher first so agreement can refer to it.
MODEL_STAGES = ["teacher", "student", "pruned", *QUANTIZED]
MODEL_SUFFIXES = (".safetensors", ".onnx", ".pte")
# Checkpoints of torch training scripts: weights without the class names and preprocessing that predict needs.
TORCH_CHECKPOINTS = (".pt", ".pth", ".tar", ".ckpt", ".bin")


def workspace_models(cfg: DictConfig, ws: Workspace) -> dict[str, Path]:
    """Stage name -> model file, for every model the workspace (or teacher.checkpoint) provides."""
    found = {}
    for stage in MODEL_STAGES:
        if stage == "teacher" and cfg.teacher.checkpoint:
            found[stage] = teacher_checkpoint(cfg, ws)
        elif (where := ws.find(stage)) is not None:
            found[stage] = model_file(where)
    return found


def final_model(cfg: DictConfig, ws: Workspace) -> tuple[str, Path] | None:
    """The model a pipeline of this recipe ends with, among those present: its quantized student, else the pruned,
    else the distilled student, else the teacher."""
    return final_of(workspace_models(cfg, ws), str(cfg.quantize.method))


def final_of(found: dict[str, Path], method: str) -> tuple[str, Path] | None:
    """final_model among models already found: the `method` quantized student, else pruned, student, teacher."""
    for stage in (method, "pruned", "student", "teacher"):
        if stage in found:
            return stage, found[stage]
    return None


def chosen_model(choice: str, cfg: DictConfig, ws: Workspace) -> tuple[str, Path]:
    """(name, file) of `choice`: `auto` (final_model), a stage of the workspace, or a model file's path."""
    if choice == "auto":
        if (final := final_model(cfg, ws)) is None:
            raise UserError(f"no model in {ws.root} to predict with: run `distillctl pipeline` with this recipe first, or give "
                            "predict.model=PATH (a .safetensors, .onnx or .pte file).")
        return final
    if choice in MODEL_STAGES:
        found = workspace_models(cfg, ws)
        if choice not in found:
            present = ", ".join(found) or "none"
            raise UserError(f"predict.model={choice}: there is no {choice} model in {ws.root} (present: {present}). Run the stage "
                            "that makes it, or pick one that is there.")
        return choice, found[choice]
    path = Path(choice).expanduser()
    if path.is_file() and path.suffix in MODEL_SUFFIXES:
        return path.stem, path
    if path.is_file() and path.suffix in TORCH_CHECKPOINTS:
        raise UserError(f"predict.model={choice} is a torch checkpoint, which records no class names or preprocessing: predict runs "
                        "the .safetensors files distillctl's stages write and their .onnx and .pte exports. To test these weights, "
                        f"evaluate them as teacher.checkpoint={choice} teacher.name=MODEL.")
    if path.is_file():
        raise UserError(f"predict.model={choice} is not a model file: distillctl runs .safetensors, .onnx and .pte files.")
    raise UserError(f"predict.model={choice} is neither a model of the workspace ({', '.join(['auto', *MODEL_STAGES])}) "
                    f"nor an existing file.{did_you_mean(choice, MODEL_STAGES)}")


def load_runnable(path: Path, fallback_name: str | None, num_classes: int | None, threads: int) -> tuple[nn.Module, dict]:
    """A model file as something to call on image batches, with its metadata; `fallback_name` and `num_classes`
    build a foreign weights file that records neither."""
    from distillctl.models import load_model
    from distillctl.models.metadata import checked

    # An exported file's metadata is checked as a weights file's is: it says how big the images to make are.
    if path.suffix == ".onnx":
        from distillctl.compress import onnx_export

        return onnx_export.OnnxClassifier(path, threads), checked(onnx_export.metadata(path), path)
    if path.suffix == ".pte":
        from distillctl.compress import executorch_export

        return executorch_export.ExecuTorchClassifier(path), checked(executorch_export.metadata(path), path)
    return load_model(path, fallback_name, num_classes)


def file_runtime(model: nn.Module) -> str | None:
    """The runtime an exported file's model runs in (onnxruntime, executorch-xnnpack); None for a torch model."""
    from distillctl.compress.executorch_export import ExecuTorchClassifier
    from distillctl.compress.onnx_export import OnnxClassifier

    if isinstance(model, OnnxClassifier):
        return "onnxruntime"
    if isinstance(model, ExecuTorchClassifier):
        return "executorch-xnnpack"
    return None


def runtime_of(model: nn.Module, image_size: int) -> tuple[nn.Module, str]:
    """What a model is timed as and the runtime's name: files run in their own runtime, torch models as deployed."""
    from distillctl.evaluation import measure

    if (runtime := file_runtime(model)) is not None:
        return model, runtime
    return measure.deployable(model, image_size)


def is_quantized(model: nn.Module, meta: dict) -> bool:
    """Whether a model runs on CPU integer kernels (int8 weights, ONNX Runtime, ExecuTorch) rather than on any device."""
    return file_runtime(model) is not None or "quantization" in meta
