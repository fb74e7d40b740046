"""Forward hooks that capture the outputs of named modules, once per step, for feature-based loss terms.

A name ending in `:preact` captures the module's output *before its final activation* (OFD distills pre-ReLU
features: the negative responses a ReLU would erase). It is the input of the last activation module called inside
the named module, checked on the first batch to be what the module returns once activated; a module that does not
end with an activation is refused by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillctl.errors import UserError, did_you_mean

PREACT = ":preact"
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)


class FeatureTaps:
    """Capture `model`'s outputs at `names` (module paths as `distillctl inspect` prints them)."""

    def __init__(self, model: nn.Module | None, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules()) if model is not None else {}
        for name in names:
            path = name.removesuffix(PREACT)
            if path not in modules:
                raise UserError(
                    f"{role} has no module '{path}'.{did_you_mean(path, modules)} "
                    f"List the names with `distillctl inspect model=...`."
                )
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self.handles: list = []
        for name in names:
            if name.endswith(PREACT):
                self.tap_preactivation(name, modules[name.removesuffix(PREACT)])
            else:
                self.handles.append(modules[name].register_forward_hook(self.keeper(name)))

    def keeper(self, name: str):
        """The hook for one module: keep its output under its path."""

        def hook(module: nn.Module, inputs, output) -> None:
            self.features[name] = output

        return hook

    def tap_preactivation(self, name: str, module: nn.Module) -> None:
        """Keep the input of the last activation that runs inside `module`, copied (an in-place ReLU overwrites it)."""
        path = name.removesuffix(PREACT)
        activations = [m for m in module.modules() if isinstance(m, ACTIVATIONS)]
        if not activations:
            raise UserError(f"{self.role}'s '{path}' holds no activation module, so it has no output before one: tap '{path}'.")
        last: dict = {"checked": False}

        def before(activation: nn.Module, inputs) -> None:
            last["activation"], last["input"] = activation, inputs[0].clone()

        def after(container: nn.Module, inputs, output) -> None:
            activation, value = last.pop("activation"), last.pop("input")
            if not last["checked"]:
                # The first batch: is it really the output before the activation? Then watch only that activation.
                if not torch.equal(activation(value.clone()), output):
                    raise UserError(f"{self.role}'s '{path}' does not end with an activation (its last one is not applied "
                                    f"to what it returns), so '{name}' has no meaning here: tap '{path}'.")
                for handle in pre_handles[:]:
                    handle.remove()
                pre_handles[:] = [activation.register_forward_pre_hook(before)]
                last["checked"] = True
            self.features[name] = value

        pre_handles = [a.register_forward_pre_hook(before) for a in activations]
        self.handles += [pre_handles, module.register_forward_hook(after)]

    def take(self) -> dict[str, torch.Tensor]:
        """This step's features; the taps forget them so they are freed with the step."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self.handles:
            for h in handle if isinstance(handle, list) else [handle]:
                h.remove()
        self.handles.clear()
        self.features.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
