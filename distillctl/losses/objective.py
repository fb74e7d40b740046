"""The training objective: a weighted sum of loss terms built from `loss.terms`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from distillctl.errors import UserError, did_you_mean
from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.registry import TERMS


class Objective(nn.Module):
    """Sum of `weight * term(outputs)`; also reports each term's unweighted value for logging."""

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise UserError("loss.terms is empty: add at least one term, e.g. loss=kd or loss=ce.")
        self.terms = nn.ModuleDict(dict(terms))

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads the teacher's outputs."""
        return any(t.needs_teacher for t in self.terms.values())

    def layers(self) -> tuple[list[str], list[str]]:
        """Student and teacher module paths that the terms need tapped, without repeats."""
        student = dict.fromkeys(name for t in self.terms.values() for name in t.student_layers())
        teacher = dict.fromkeys(name for t in self.terms.values() for name in t.teacher_layers())
        return list(student), list(teacher)

    def forward(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: t(out) for name, t in self.terms.items()}
        total = sum(self.terms[name].weight * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def after_step(self, out: StepOutputs) -> dict[str, float]:
        """Let terms with their own optimisation (a discriminator) take their step."""
        logs: dict[str, float] = {}
        for name, t in self.terms.items():
            logs.update({f"{name}.{k}": v for k, v in t.after_step(out).items()})
        return logs


def build_objective(terms_cfg: Mapping[str, Any]) -> Objective:
    """Validate each entry of loss.terms against its kind's dataclass and build the terms."""
    import distillctl.losses  # noqa: F401  (registers the built-in terms)

    terms: dict[str, LossTerm] = {}
    for name, entry in terms_cfg.items():
        entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else dict(entry or {})
        kind = entry.get("kind") or name
        if kind not in TERMS:
            raise UserError(f"unknown loss term kind '{kind}' (loss.terms.{name}).{did_you_mean(kind, TERMS)} Kinds: {', '.join(sorted(TERMS))}.")
        cls = TERMS[kind]
        schema = OmegaConf.structured(cls.Params)
        try:
            params = OmegaConf.to_object(OmegaConf.merge(schema, {**entry, "kind": kind}))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "key", None) or ""
            valid = sorted(schema.keys())
            raise UserError(
                f"bad option for loss term '{name}' ({kind}): {' '.join(str(exc).split())[:120]}.{did_you_mean(str(key), valid)} "
                f"Options: {', '.join(valid)}."
            ) from None
        terms[name] = cls(params)
    return Objective(terms)
