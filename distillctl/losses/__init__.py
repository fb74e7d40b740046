"""Loss terms, one per file; importing this package registers them all."""

from distillctl.losses import adversarial, attention, ce, dkd, hint, kd  # noqa: F401  (each module registers its term)
from distillctl.losses.base import LossTerm, StepOutputs, TermParams
from distillctl.losses.objective import Objective, build_objective
from distillctl.losses.registry import TERMS, term

__all__ = ["LossTerm", "Objective", "StepOutputs", "TERMS", "TermParams", "build_objective", "term"]
