"""Building models by name: the CIFAR zoo (registered into timm) and every timm model."""

from __future__ import annotations

from torch import nn

from distillctl.cifar_zoo import ZOO_NAMES, no_timm_weights
from distillctl.errors import UserError, did_you_mean
from distillctl.models import zoo
from distillctl.models.image_size import built_size, size_problem, takes_img_size
from distillctl.models.published_weights import check_published

zoo.register()


def create_model(name: str, num_classes: int, pretrained: bool = False, role: str | None = None,
                 pretrained_file: str | None = None, image_size: int | None = None, **kwargs) -> nn.Module:
    """Build `name` through timm's registry, or say which names come closest; `role` (teacher, student) is the
    config section the model comes from, so that messages name full keys. Pretrained weights come from timm's
    Hub (`pretrained`) or a local file (`pretrained_file`), with the head replaced for `num_classes`. With
    `image_size`, a model that cannot take images of that size (a ViT built for 224) is refused, naming the fix."""
    key = f"{role}." if role else ""
    import timm

    check_model_name(name)
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": local_weights(pretrained_file, name, key), "custom_load": False}
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except TypeError as exc:
        raise UserError(f"model '{name}' does not take these options ({exc}); check {key}kwargs.") from None
    except (OSError, RuntimeError, KeyError) as exc:
        if pretrained_file:
            first = " ".join(str(exc).strip().splitlines()[:2])[:300] or type(exc).__name__
            raise UserError(f"{key}pretrained_file={pretrained_file} does not hold weights for '{name}' ({first}).") from None
        if not pretrained:
            raise
        check_published(name, role or "model")  # names the cause where it can: no weights published, or offline
        raise UserError(
            f"could not fetch pretrained weights for '{name}' ({type(exc).__name__}); offline? Set {key}pretrained=false, "
            f"or {key}pretrained_file=PATH to load timm weights from a local file."
        ) from None
    if image_size is not None and (problem := size_problem(model, image_size)):
        native = built_size(model)
        fixes = [f"build it for {image_size} px with ++{key}kwargs.img_size={image_size}"] if takes_img_size(model) else []
        fixes += [f"set dataset.image_size={native}"] if native and native != image_size else ["pick another model"]
        raise UserError(f"{role or 'model'} '{name}' cannot take {image_size}x{image_size} images ({problem}): {', or '.join(fixes)}.")
    return model


def check_model_name(name: str) -> None:
    """Refuse a name that timm's registry (the CIFAR zoo's included) does not hold, naming the closest ones."""
    import timm

    if not timm.is_model(name):
        # Prefer the CIFAR zoo's names: timm's ImageNet ResNets are rarely what a typo meant.
        hint = did_you_mean(name, ZOO_NAMES) or did_you_mean(name, timm.list_models())
        raise UserError(f"unknown model '{name}'.{hint} CIFAR zoo: {', '.join(ZOO_NAMES)}; any timm model name works too.")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm.is_model looks at the architecture only; the stage would fail on the tag later
        architecture, _, tag = name.partition(".")
        tags = [found.partition(".")[2] for found in timm.list_pretrained(f"{architecture}.*")]
        listed = f"Its tags: {', '.join(tags)}." if tags else "It has none: leave the tag out."
        raise UserError(f"model '{name}': timm has no tag '{tag}' for {architecture}.{did_you_mean(tag, tags)} {listed}") from None


def local_weights(path: str, name: str, key: str) -> str:
    """The checked path of a local pretrained-weights file for a timm architecture."""
    from pathlib import Path

    if name in ZOO_NAMES:
        raise UserError(no_timm_weights(key.rstrip(".") or "model"))
    found = Path(path).expanduser()
    if not found.is_file():
        raise UserError(f"{key}pretrained_file '{found}' does not exist.")
    return str(found.resolve())


def pretrained_normalization(model: nn.Module) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a timm model's pretrained weights expect, when it has them."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (list(cfg["mean"]), list(cfg["std"])) if "mean" in cfg and "std" in cfg else None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take in memory."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def model_metadata(name: str, num_classes: int, kwargs: dict, classes: list[str], mean: list[float], std: list[float],
                   preprocess: dict) -> dict:
    """What is stored beside weights so that evaluate, later stages and `predict` rebuild the model and prepare its
    images without its config (`preprocess`: data.preprocess.recorded)."""
    return {"model": name, "num_classes": num_classes, "kwargs": dict(kwargs), "classes": classes, "mean": list(mean),
            "std": list(std), "preprocess": dict(preprocess)}


ARCHITECTURE_KEYS = ("model", "num_classes", "kwargs", "classes", "mean", "std", "preprocess", "shapes")


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
