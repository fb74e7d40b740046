"""Building models by name: the CIFAR zoo (registered into timm) and every timm model."""

from __future__ import annotations

from torch import nn

from distillctl.errors import UserError, did_you_mean
from distillctl.models import zoo

zoo.register()


def create_model(name: str, num_classes: int, pretrained: bool = False, role: str | None = None, **kwargs) -> nn.Module:
    """Build `name` through timm's registry, or say which names come closest; `role` (teacher, student) is the
    config section the model comes from, so that messages name full keys."""
    key = f"{role}." if role else ""
    import timm

    if not timm.is_model(name):
        # Prefer the CIFAR zoo's names: timm's ImageNet ResNets are rarely what a typo meant.
        hint = did_you_mean(name, zoo.ZOO_NAMES) or did_you_mean(name, timm.list_models())
        raise UserError(f"unknown model '{name}'.{hint} CIFAR zoo: {', '.join(zoo.ZOO_NAMES)}; any timm model name works too.")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except TypeError as exc:
        raise UserError(f"model '{name}' does not take these options ({exc}); check {key}kwargs.") from None
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise UserError(
            f"could not fetch pretrained weights for '{name}' ({type(exc).__name__}); offline? Set {key}pretrained=false, "
            f"or {key}checkpoint=PATH to load local weights."
        ) from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def model_metadata(name: str, num_classes: int, kwargs: dict, classes: list[str], mean: list[float], std: list[float]) -> dict:
    """What is stored beside weights so that evaluate and later stages rebuild the model without its config."""
    return {"model": name, "num_classes": num_classes, "kwargs": dict(kwargs), "classes": classes, "mean": list(mean), "std": list(std)}


ARCHITECTURE_KEYS = ("model", "num_classes", "kwargs", "classes", "mean", "std", "shapes")


def architecture_metadata(meta: dict) -> dict:
    """The part of a checkpoint's metadata that rebuilds its architecture (training details dropped)."""
    return {k: v for k, v in meta.items() if k in ARCHITECTURE_KEYS}


def load_model(path, fallback_name: str | None = None, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint's metadata (or from the given name for a foreign file) and load it."""
    from pathlib import Path

    from distillctl import artifacts
    from distillctl.models.metadata import checked

    path = Path(path)
    meta = artifacts.read_metadata(path) if path.suffix == ".safetensors" and path.is_file() else {}
    meta = checked(meta, path)
    name = meta.get("model", fallback_name)
    classes = meta.get("num_classes", num_classes)
    if name is None or classes is None:
        raise UserError(f"checkpoint '{path}' does not say which model it holds; set the model name in the config.")
    model = create_model(name, classes, **meta.get("kwargs", {}))
    if "shapes" in meta:  # structurally pruned: resize the layers before loading
        from distillctl.compress.shapes import apply_shapes

        apply_shapes(model, meta["shapes"])
    if "quantization" in meta:  # int8 or fp16/bf16: rebuilt from the float architecture
        from distillctl.compress.int8_fx import load_quantized

        return load_quantized(path, model, meta["quantization"]), {"model": name, "num_classes": classes, **meta}
    artifacts.load_weights(path, model)
    return model, {"model": name, "num_classes": classes, **meta}
