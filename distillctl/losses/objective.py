"""The training objective: a weighted sum of loss terms built from `loss.terms`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from distillctl.errors import UserError, did_you_mean
from distillctl.losses import (  # noqa: F401  (each registers its term)
    adversarial,
    attention,
    cc,
    ce,
    crd,
    dist,
    dkd,
    ft,
    hint,
    kd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    similarity,
    vid,
)
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

    def setup(self, student: nn.Module, teacher: nn.Module | None, sample: torch.Tensor, num_images: int = 0) -> None:
        """Check every named layer and let terms size their parameters (and per-image state, for `num_images`
        training images) from one probe batch."""
        from distillctl.engine.taps import FeatureTaps
        from distillctl.models.ensemble import feature_source

        student_layers, teacher_layers = self.layers()
        if teacher_layers and teacher is None:
            raise UserError("a loss term reads teacher layers but this stage has no teacher.")
        was_training = student.training
        student.eval()
        with FeatureTaps(student, student_layers, "the student") as s_taps, FeatureTaps(feature_source(teacher), teacher_layers, "the teacher") as t_taps:
            with torch.no_grad():
                student_logits = student(sample)
                teacher_logits = teacher(sample) if teacher is not None else None
            probe = StepOutputs(student_logits, torch.zeros(len(sample), dtype=torch.long, device=sample.device), teacher_logits,
                                s_taps.take(), t_taps.take(), num_images=num_images)
        student.train(was_training)
        for name, t in self.terms.items():
            check_feature_ranks(name, t, probe)
            t.setup(probe)

    def student_parameters(self) -> list[nn.Parameter]:
        """Term parameters that train with the student (not those with optimizers of their own)."""
        return [p for t in self.terms.values() for p in t.student_parameters()]

    def active(self, epoch: int) -> list[str]:
        """Names of the terms that count at `epoch`: the ones training alone, while any is."""
        alone = [name for name, t in self.terms.items() if epoch <= t.alone_until_epoch()]
        return alone or list(self.terms)

    def forward(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: self.terms[name](out) for name in self.active(out.epoch)}
        total = sum(self.terms[name].weight * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def after_step(self, out: StepOutputs) -> dict[str, float]:
        """Let terms with their own optimisation (a discriminator) take their step."""
        logs: dict[str, float] = {}
        for name, t in self.terms.items():
            logs.update({f"{name}.{k}": v for k, v in t.after_step(out).items()})
        return logs


def check_feature_ranks(name: str, term: LossTerm, probe: StepOutputs) -> None:
    """Refuse, naming the layer and its shape, features a term cannot read (a ViT's tokens for a term on maps),
    before they reach a convolution's shape error."""
    if not term.feature_ranks:
        return
    maps = "feature maps [batch, channels, height, width]" + (" or pooled vectors" if 2 in term.feature_ranks else "")
    for role, layers, features in (("student", term.student_layers(), probe.student_features),
                                   ("teacher", term.teacher_layers(), probe.teacher_features)):
        for layer in layers:
            shape = list(features[layer].shape)
            if len(shape) not in term.feature_ranks:
                tokens = " (a transformer's tokens)" if len(shape) == 3 else ""
                raise UserError(
                    f"loss.terms.{name} ({term.params.kind}) compares {maps}, and the {role}'s '{layer}' gives {shape}"
                    f"{tokens}: tap a convolutional stage (`distillctl inspect model=...`), or use a term on embeddings "
                    "(rkd, pkt, cc, crd) or on logits (kd, dkd, dist).")


def build_objective(terms_cfg: Mapping[str, Any]) -> Objective:
    """Validate each entry of loss.terms against its kind's dataclass and build the terms."""
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
