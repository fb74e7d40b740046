"""Forward hooks that capture the outputs of named modules, once per step, for feature-based loss terms.

A name is a module path (`layer2`, `blocks.4`) or a stage counted from the last (`-1`, `-2`, ...): the modules timm's
`feature_info` lists for any timm model, and the CIFAR zoo lists for its own, so a method's default layers fit a
ResNet-50 -> MobileNetV3 pair as they fit ResNet-56 -> ResNet-20 (negative, because no module path is).
A name ending in `:preact` captures the module's output *before its final activation* (OFD distills pre-ReLU
features: the negative responses a ReLU would erase). It is the input of the last activation module called inside
the named module, checked on the first batch to be what the module returns once activated; a module that does not
end with an activation (a MobileNet stage's linear bottleneck) gives its output, which no activation has touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from distillctl.errors import UserError, did_you_mean

PREACT = ":preact"
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)
STAGE = re.compile(r"-[1-9][0-9]*")


def stage_modules(model: nn.Module | None) -> list[str]:
    """The paths of the modules whose outputs are the model's stages, shallow to deep (timm's `feature_info`)."""
    info = getattr(model, "feature_info", None) or []
    if hasattr(info, "get_dicts"):  # a features_only model's FeatureInfo
        info = info.get_dicts()
    return [str(stage["module"]) for stage in info]


def module_path(model: nn.Module | None, name: str, role: str, modules: dict[str, nn.Module]) -> str:
    """The module path a tap name stands for: a stage from the last (`-1`, `-2:preact`) becomes its module's path,
    and a name the model keeps in its classifier head (timm's ConvNeXt: `head.global_pool`) is found there."""
    path, preact = (name.removesuffix(PREACT), PREACT) if name.endswith(PREACT) else (name, "")
    if not STAGE.fullmatch(path):
        return f"head.{name}" if path not in modules and f"head.{path}" in modules else name
    stages = stage_modules(model)
    if not stages:
        raise UserError(f"{role} lists no stages (timm's feature_info), so '{name}' names no layer: give module paths "
                        f"as `distillctl inspect model=...` prints them.")
    if -int(path) > len(stages):
        raise UserError(f"{role} has {len(stages)} stages ({', '.join(stages)}), so '{name}' names none: "
                        f"count from -1 (the last) to -{len(stages)}.")
    return stages[int(path)] + preact


class FeatureTaps:
    """Capture `model`'s outputs at `names` (module paths as `distillctl inspect` prints them, or stages `-1`, `-2`...),
    each kept under the name it was asked by."""

    def __init__(self, model: nn.Module | None, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules()) if model is not None else {}
        paths = {name: module_path(model, name, role, modules) for name in names}
        for name in names:
            path = paths[name].removesuffix(PREACT)
            if path not in modules:
                stages = stage_modules(model)
                listed = f" Its stages, -{len(stages)} to -1: {', '.join(stages)}." if stages else ""
                raise UserError(
                    f"{role} has no module '{path}'.{did_you_mean(path, modules)}{listed} "
                    f"List the names with `distillctl inspect model=...`."
                )
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self.handles: list = []
        for name in names:
            path = paths[name]
            if path.endswith(PREACT):
                self.tap_preactivation(name, modules[path.removesuffix(PREACT)])
            else:
                self.handles.append(modules[path].register_forward_hook(self.keeper(name)))

    def keeper(self, name: str):
        """The hook for one module: keep its output under the name the terms asked for it by."""

        def hook(module: nn.Module, inputs, output) -> None:
            self.features[name] = output

        return hook

    def tap_preactivation(self, name: str, module: nn.Module) -> None:
        """Keep the input of the last activation that runs inside `module`, copied (an in-place ReLU overwrites it). A
        module whose output no activation ends (a MobileNet's linear bottleneck, a BatchNorm) returns its features
        before any activation already: its output is kept."""
        activations = [m for m in module.modules() if isinstance(m, ACTIVATIONS)]
        if not activations:
            self.handles.append(module.register_forward_hook(self.keeper(name)))
            return
        last: dict = {"checked": False}

        def before(activation: nn.Module, inputs) -> None:
            last["activation"], last["input"] = activation, inputs[0].clone()

        def after(container: nn.Module, inputs, output) -> None:
            if "activation" not in last:  # the first batch found that no activation ends the module
                self.features[name] = output
                return
            activation, value = last.pop("activation"), last.pop("input")
            if not last["checked"]:
                # The first batch: is it really the output before the activation? Then watch only that activation.
                for handle in pre_handles[:]:
                    handle.remove()
                if torch.equal(activation(value.clone()), output):
                    pre_handles[:] = [activation.register_forward_pre_hook(before)]
                else:  # an activation runs inside, but something linear follows it
                    pre_handles[:], value = [], output
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
