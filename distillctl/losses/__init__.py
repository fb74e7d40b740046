"""Loss terms, one per file, their options in params.py.

Names are imported on first use: `distillctl.losses.params` (what the config schema needs) loads without torch, and
asking for a term (build_objective, TERMS) imports every term module, which registers it.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from distillctl.losses.base import LossTerm, StepOutputs
    from distillctl.losses.objective import TERMS, Objective, build_objective
    from distillctl.losses.params import TermParams
    from distillctl.losses.registry import term

_HOMES = {
    "LossTerm": "base", "StepOutputs": "base", "TermParams": "params", "term": "registry",
    # objective imports every term module, so TERMS is complete when read through it
    "Objective": "objective", "build_objective": "objective", "TERMS": "objective",
}

__all__ = ["LossTerm", "Objective", "StepOutputs", "TERMS", "TermParams", "build_objective", "term"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"distillctl.losses.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'distillctl.losses' has no attribute '{name}'")
