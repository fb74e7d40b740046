"""A weights file's metadata, checked before anything in it is used: the file may come from anyone (its `kwargs`
go to timm's model constructor: distillctl/model_arguments.py says what they may be)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from distillctl.data import preprocess
from distillctl.errors import UserError
from distillctl.model_arguments import allowed_name, plain_value

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
MAX_CLASSES = 100_000


def checked(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """meta itself when every field that rebuilds the model is sane, else a UserError naming the field."""

    def refuse(what: str) -> UserError:
        return UserError(f"'{path}' has untrustworthy metadata ({what}); refusing to load it. Use a file written by distillctl or timm.")

    name = meta.get("model")
    if name is not None and not (isinstance(name, str) and NAME.match(name)):
        raise refuse(f"model name {str(name)[:40]!r}")
    classes = meta.get("num_classes")
    if classes is not None and not (isinstance(classes, int) and not isinstance(classes, bool) and 1 <= classes <= MAX_CLASSES):
        raise refuse(f"num_classes {str(classes)[:40]!r}")
    names = meta.get("classes")
    if names is not None and not (isinstance(names, list) and len(names) == (classes or len(names)) <= MAX_CLASSES
                                  and all(isinstance(c, str) and len(c) <= 255 for c in names)):
        raise refuse("classes is not one short name per class")
    kwargs = meta.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise refuse("kwargs is not a mapping")
    for key, value in kwargs.items():
        if not allowed_name(key):
            raise refuse(f"model argument {str(key)[:40]!r} is not an architecture argument")
        if not plain_value(value):
            raise refuse(f"model argument {key}={str(value)[:40]} is not a small number, flag or short name")
    for key in ("shapes", "quantization"):  # the shapes' loader checks what is inside them against the model
        if key in meta and not isinstance(meta[key], dict):
            raise refuse(f"{key} is not a mapping")
    if "quantization" in meta and (problem := quantization_problem(meta["quantization"])):
        raise refuse(f"quantization {problem}")
    if "preprocess" in meta and (problem := preprocess.problem(meta["preprocess"])):
        raise refuse(f"preprocess {problem}")
    for key in ("mean", "std"):
        stats = meta.get(key)
        if stats is not None and not (isinstance(stats, list) and 1 <= len(stats) <= 4 and all(finite(v) for v in stats)):
            raise refuse(f"{key} is not 1-4 finite numbers")
    return meta


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


QUANTIZE_METHODS = ("fp16", "bf16", "int8_static", "int8_qat")  # the methods stored as safetensors
INT8_BACKENDS = ("x86", "fbgemm", "qnnpack")
# What an int8 layout entry may name as a dtype (int8_state.decode looks it up on torch).
LAYOUT_DTYPES = ("qint8", "quint8", "qint32", "float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64")


def quantization_problem(q: dict[str, Any]) -> str | None:
    """What is wrong with a weights file's quantization record (it sizes the traced example and names torch
    attributes), or None."""
    if q.get("method") not in QUANTIZE_METHODS:
        return f"method {str(q.get('method'))[:40]!r}"
    if q["method"] in ("fp16", "bf16"):
        return None
    size = q.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096):
        return f"image_size {str(size)[:40]!r}"
    if q.get("backend") not in INT8_BACKENDS:
        return f"backend {str(q.get('backend'))[:40]!r}"
    if not isinstance(q.get("per_channel"), bool):
        return "per_channel is not a flag"
    skip = q.get("skip", [])
    if not (isinstance(skip, list) and len(skip) <= 1000 and all(isinstance(s, str) and len(s) <= 200 for s in skip)):
        return "skip is not a list of layer names"
    layout = q.get("layout")
    if not (isinstance(layout, dict) and isinstance(layout.get("entries"), dict) and isinstance(layout.get("versions"), dict)):
        return "layout is not a mapping of entries and versions"
    return next((f"layout dtype {d[:40]!r}" for d in layout_dtypes(layout["entries"]) if d not in LAYOUT_DTYPES), None)


def layout_dtypes(node: Any) -> list[str]:
    """Every dtype named anywhere in a layout."""
    if isinstance(node, dict):
        own = [str(node["dtype"])] if "dtype" in node else []
        return own + [d for value in node.values() for d in layout_dtypes(value)]
    if isinstance(node, list):
        return [d for value in node for d in layout_dtypes(value)]
    return []


def class_preview(names: list[str]) -> str:
    """The first four class names and '...' for the rest, to show which classes and in which order."""
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def require_classes(meta: dict[str, Any], classes: list[str], what: str, path: Path) -> None:
    """Refuse a model whose recorded classes are not the data set's: its logit i would be scored (or distilled)
    as the data set's class i, and every number after that would be silently wrong."""
    trained = meta.get("classes") or []
    count = meta.get("num_classes", len(trained) or len(classes))
    fix = ("use the data set it was trained on (the dataset overrides of the run that made it), or train one on this "
           "data set")

    if count != len(classes):
        shown = f" ({class_preview(trained)})" if trained else ""
        raise UserError(f"the {what} in {path} predicts {count} classes{shown} but the data set has {len(classes)} "
                        f"({class_preview(classes)}): {fix}.")
    differ = [(mine, theirs) for mine, theirs in zip(trained, classes) if mine != theirs]
    if differ:
        pairs = ", ".join(f"'{mine}' where the data set has '{theirs}'" for mine, theirs in differ[:3])
        raise UserError(f"the {what} in {path} was trained on other classes than the data set's ({pairs}"
                        f"{', ...' if len(differ) > 3 else ''}): {fix}.")
