"""`distillctl inspect model=NAME` (or a model file): module paths and output shapes, to choose layers for feature
losses or to see what pruning left."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillctl.bounds import Bounds
from distillctl.config import DatasetConfig
from distillctl.errors import UserError
from distillctl.models.metadata import MAX_CLASSES

# The same ranges a run's config holds these to.
IMAGE_SIZE = next(f for f in dataclasses.fields(DatasetConfig) if f.name == "image_size").metadata["bounds"]
NUM_CLASSES = Bounds(min=1, max=MAX_CLASSES)


def parse(overrides: Sequence[str]) -> dict[str, str]:
    """key=value pairs; inspect takes model=, num_classes= and image_size=."""
    allowed = {"model", "num_classes", "image_size"}
    options = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep and "model" not in options:  # `distillctl inspect resnet56`: the model it is asked about
            raise UserError(f"inspect takes key=value settings: `distillctl inspect model={item}`.")
        if not sep or key not in allowed:
            raise UserError(f"inspect takes {', '.join(sorted(allowed))} (as key=value), got '{item}'.")
        options[key] = value
    if "model" not in options:
        raise UserError("inspect needs model=NAME, e.g. `distillctl inspect model=resnet56`.")
    return options


def is_file(spec: str) -> bool:
    """Whether model= names a weights file rather than an architecture."""
    return spec.endswith((".safetensors", ".onnx", ".pte", ".pt", ".pth")) or Path(spec).is_file()


def from_file(options: dict[str, str]) -> tuple[Any, int, str]:
    """The model a distillctl .safetensors file holds, with its own widths (a pruned student's), the image size it
    was trained at (32 where it records none) and its architecture's name."""
    from distillctl import artifacts
    from distillctl.models import load_model
    from distillctl.models.metadata import checked

    path = Path(options["model"])
    if path.suffix != ".safetensors":
        raise UserError(f"inspect reads the .safetensors files distillctl writes, not {path.name}: inspect the float "
                        "model it was made from, or the architecture by name (model=NAME).")
    if not path.is_file():
        raise UserError(f"inspect: {path} {'is a folder, not a model file' if path.is_dir() else 'does not exist'}.")
    if "num_classes" in options:
        raise UserError(f"inspect: {path} says how many classes its model has; leave out num_classes=.")
    meta = checked(artifacts.read_metadata(path), path)
    if "model" not in meta:
        raise UserError(f"{path} records no architecture (it was not written by distillctl): inspect the model by its "
                        "name, model=NAME.")
    if "quantization" in meta:
        raise UserError(f"{path} is quantized ({meta['quantization'].get('method', 'int8')}); inspect the float model it "
                        "was made from (its pruned or student model.safetensors).")
    model, meta = load_model(path)
    return model.eval(), int(meta.get("preprocess", {}).get("image_size", 32)), str(meta["model"])


def whole_number(options: dict[str, str], key: str, default: int, bounds: Bounds) -> int:
    """options[key] as an int within bounds, or a UserError naming the key and its range."""
    text = options.get(key, str(default))
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"inspect: {key}={text} is not a whole number.") from None
    if not bounds.holds(value):
        raise UserError(f"inspect: {key}={value} must be {bounds}.")
    return value


def run_inspect(overrides: Sequence[str]) -> None:
    """Print every module of the model with its output shape for one image."""
    import torch
    from rich.table import Table

    from distillctl.compress.shapes import head_prunable
    from distillctl.console import console
    from distillctl.engine.taps import stage_modules
    from distillctl.models import count_parameters, create_model
    from distillctl.models.image_size import built_size, size_problem

    options = parse(overrides)
    title = options["model"]
    if is_file(options["model"]):
        model, built_for, architecture = from_file(options)
        size = whole_number(options, "image_size", built_for, IMAGE_SIZE)
        title = f"{architecture} in {options['model']}"
    else:
        size = whole_number(options, "image_size", 32, IMAGE_SIZE)
        model = create_model(options["model"], whole_number(options, "num_classes", 10, NUM_CLASSES)).eval()
    shapes: dict[str, tuple] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)) if torch.is_tensor(o) else None)
        for name, module in model.named_modules()
        if name
    ]
    if problem := size_problem(model, size):  # its one forward pass also fills `shapes` through the hooks
        native = built_size(model)
        fix = f"image_size={native}, the size it was built for" if native and native != size else "a larger image_size="
        raise UserError(f"'{options['model']}' cannot take {size}x{size} images ({problem}): inspect it at {fix}.")
    for hook in hooks:
        hook.remove()
    stages = stage_modules(model)
    # A feature term names a module by its path, or a stage by its place from the last (the default layers do).
    stage_of = {path: str(i - len(stages)) for i, path in enumerate(stages)}
    table = Table(title=f"{title}: {count_parameters(model) / 1e6:.3f} M parameters, input 1x3x{size}x{size}", title_justify="left")
    for column in ("module", "stage", "type", "output shape", "params"):
        table.add_column(column, justify="right" if column in ("params", "stage") else "left")
    for name, module in model.named_modules():
        if name:
            own = sum(p.numel() for p in module.parameters(recurse=False))
            # prune.head_ratio removes whole heads of these layers: say how many there are
            kind = type(module).__name__ + (f" ({module.num_heads} heads)" if head_prunable(module) else "")
            table.add_row(name, stage_of.get(name, ""), kind, "x".join(map(str, shapes.get(name, ()))) or "-", f"{own:,}" if own else "")
    console.print(table)
    if stages:
        console.print(f"stages, as feature terms may name them: {', '.join(f'{stage_of[p]} = {p}' for p in stages)}")
