"""Forward hooks that capture the outputs of named modules, once per step, for feature-based loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillctl.errors import UserError, did_you_mean


class FeatureTaps:
    """Capture `model`'s outputs at `names` (module paths as `distillctl inspect` prints them)."""

    def __init__(self, model: nn.Module | None, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules()) if model is not None else {}
        for name in names:
            if name not in modules:
                raise UserError(
                    f"{role} has no module '{name}'.{did_you_mean(name, modules)} "
                    f"List the names with `distillctl inspect model=...`."
                )
        self.features: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self.keeper(name)) for name in names]

    def keeper(self, name: str):
        """The hook for one module: keep its output under its path."""

        def hook(module: nn.Module, inputs, output) -> None:
            self.features[name] = output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """This step's features; the taps forget them so they are freed with the step."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.features.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
