"""The seams issue 14 put in place: stages share services through models/ and the workspace, not each other;
every default is stated once; models see the normalization they were trained with."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from distillctl.losses import TERMS
from distillctl.models import create_model
from distillctl.models.normalization import Renormalize, renormalized
from test_config import composed

STAGES_DIR = Path(__file__).resolve().parent.parent / "distillctl" / "stages"
SHARED = {"base", "context", "training", "__init__"}
# Commands that chain stages through their STAGE interface (bring_up_to_date), as the pipeline does.
ORCHESTRATORS = {"pipeline", "reproduce", "search"}


@pytest.mark.parametrize("module", sorted(p.stem for p in STAGES_DIR.glob("*.py") if p.stem not in SHARED | ORCHESTRATORS))
def test_no_stage_imports_another_stage(module):
    tree = ast.parse((STAGES_DIR / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "distillctl.stages":
                imported |= {alias.name for alias in node.names}
            elif node.module.startswith("distillctl.stages."):
                imported.add(node.module.rsplit(".", 1)[1])
    assert imported <= SHARED, f"stages/{module}.py imports {imported - SHARED}"


def test_method_recipes_state_only_their_difference_from_cifar_resnet():
    base = composed("recipe=cifar_resnet")
    for name, term in [("cifar_at", "at"), ("cifar_dkd", "dkd"), ("cifar_fitnet", "hint"), ("cifar_adversarial", "adversarial")]:
        cfg = composed(f"recipe={name}")
        assert term in cfg.loss.terms
        for section in ("dataset", "teacher", "student", "trainer", "optimizer", "scheduler"):
            assert cfg[section] == base[section], f"{name}.{section} differs from cifar_resnet"
        recipe_text = (STAGES_DIR.parent / "recipes" / f"{name}.yaml").read_text()
        assert "cifar_resnet" in recipe_text and "trainer" not in recipe_text


@pytest.mark.parametrize("kind", sorted(TERMS))
def test_a_terms_config_defaults_are_its_dataclass_defaults(kind):
    cfg = composed("recipe=quickstart", f"+loss/terms@loss.terms.extra={kind}")
    node = cfg.loss.terms.extra
    for f in fields(TERMS[kind].Params):
        if f.name in TERMS[kind].Params.follows:
            continue
        default = kind if f.name == "kind" else f.default_factory() if callable(f.default_factory) else f.default
        value = node[f.name]
        if isinstance(default, (list, tuple)):
            value, default = list(value), list(default)
        assert value == default, f"loss.terms.extra.{f.name}"


def test_ce_label_smoothing_follows_the_trainer_unless_set():
    assert composed("recipe=quickstart", "trainer.label_smoothing=0.1").loss.terms.ce.label_smoothing == 0.1
    assert composed("recipe=quickstart", "loss.terms.ce.label_smoothing=0.2").loss.terms.ce.label_smoothing == 0.2


def test_a_teacher_trained_under_other_statistics_sees_its_own_normalization():
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval()
    run_mean, run_std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    own = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    images = torch.rand(4, 3, 32, 32)

    def normalize(mean, std):
        return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    wrapped = renormalized(teacher, own, run_mean, run_std)
    assert isinstance(wrapped, Renormalize)
    with torch.inference_mode():
        assert torch.allclose(wrapped(normalize(run_mean, run_std)), teacher(normalize(own["mean"], own["std"])), atol=1e-5)
    assert renormalized(teacher, {"mean": run_mean, "std": run_std}, run_mean, run_std) is teacher
