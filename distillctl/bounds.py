"""Allowed ranges, stated beside each config default, and the check of a composed config against them and against
the schema's keys, run before any stage loads torch or data.

A value outside its range (`trainer.epochs=-1`, `optimizer.lr=nan`, a KD temperature of 0) would otherwise train to
NaN or save a meaningless model; a `+key` the schema does not know would be ignored in silence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from distillctl.errors import UserError, did_you_mean
from distillctl.model_arguments import allowed_name, plain_value


@dataclass(frozen=True)
class Bounds:
    """An interval; `above`/`below` are strict, `min`/`max` inclusive."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def holds(self, value: float) -> bool:
        """Whether value lies in the interval."""
        return not (
            (self.min is not None and value < self.min)
            or (self.max is not None and value > self.max)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def __str__(self) -> str:
        parts = [f"at least {shown(self.min)}" if self.min is not None else None,
                 f"more than {shown(self.above)}" if self.above is not None else None,
                 f"at most {shown(self.max)}" if self.max is not None else None,
                 f"less than {shown(self.below)}" if self.below is not None else None]
        return " and ".join(p for p in parts if p)


def shown(limit: float) -> str:
    """A bound as a user types it: integers in full (a seed's 4294967295, not 4.29497e+09)."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def bounded(default: Any, *, min: float | None = None, max: float | None = None,
            above: float | None = None, below: float | None = None) -> Any:
    """A dataclass field with its default and the range a value must lie in (None always passes)."""
    return field(default=default, metadata={"bounds": Bounds(min, max, above, below)})


def check_config(cfg: DictConfig) -> None:
    """Raise a UserError naming the first key whose value is out of range, non-finite, or unknown to the schema."""
    for problem in problems(cfg, ""):
        raise UserError(problem)
    for problem in model_argument_problems(cfg):
        raise UserError(problem)


# Constructor arguments distillctl sets itself, and the key that sets each.
OWN_ARGUMENTS = {"num_classes": "the data set's classes", "pretrained": "{role}.pretrained"}


def model_argument_problems(cfg: DictConfig) -> Iterator[str]:
    """A message for every model constructor argument (teacher/student/teachers kwargs) that distillctl sets itself
    or that a weights file written with it could not be loaded with (paths, URLs, big numbers)."""
    roles = [("teacher", cfg.get("teacher")), ("student", cfg.get("student"))]
    roles += [(f"teachers[{i}]", entry) for i, entry in enumerate(cfg.get("teachers") or [])]
    for role, model in roles:
        for key, value in ((model or {}).get("kwargs") or {}).items():
            where = f"{role}.kwargs.{key}"
            if key in OWN_ARGUMENTS:
                yield f"{where} is set by distillctl from {OWN_ARGUMENTS[key].format(role=role)}; remove it."
            elif not allowed_name(key):
                yield (f"{where}: constructor arguments shape the architecture; weights come from {role}.checkpoint, "
                       f"{role}.pretrained_file or {role}.pretrained.")
            elif not plain_value(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value):
                yield f"{where}={value}: a constructor argument must be a flag, a number up to 4096 or a short name."


def from_pretrained_config(node: DictConfig, key: Any) -> bool:
    """Whether the value is `${pretrained:...}`: timm's own data config gives it, and reading it would import torch
    before the quick checks are done."""
    return OmegaConf.is_interpolation(node, key) and str(OmegaConf.to_container(node, resolve=False)[key]).startswith("${pretrained:")


def problems(node: Any, path: str) -> Iterator[str]:
    """A message for every bad value under node."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from problems(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        if isinstance(node, float) and not math.isfinite(node):
            yield f"{path}={node} is not a finite number."
        return
    schema = OmegaConf.get_type(node)
    declared = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        child_path = f"{path}.{key}" if path else str(key)
        if declared is not None and key not in declared:
            valid = sorted(declared)
            where = f" under '{path}'" if path else ""
            # A model's constructor arguments have their own free-form place.
            also = f" A model's constructor arguments (drop_rate, ...) go in {path}.kwargs." if "kwargs" in declared else ""
            yield f"unknown config key '{child_path}'.{did_you_mean(str(key), valid)} Valid keys{where}: {', '.join(valid)}.{also}"
            continue
        if OmegaConf.is_missing(node, key) or from_pretrained_config(node, key):
            continue
        try:
            value = node[key]
        except InterpolationResolutionError:  # e.g. ${hydra:...} outside a Hydra run: a path, never a number to check
            continue
        spec = declared[key].metadata.get("bounds") if declared is not None else None
        if spec is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or not spec.holds(value):
                # A value taken from another key (${trainer.label_smoothing}) is named by that key too: the user set it.
                source = OmegaConf.to_container(node, resolve=False)[key] if OmegaConf.is_interpolation(node, key) else None
                taken = f" (from {source})" if source else ""
                yield f"{child_path}={value}{taken} is out of range: it must be {spec}."
                continue
        yield from problems(value, child_path)
