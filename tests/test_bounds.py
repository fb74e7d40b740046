"""Values that make no sense are refused before any work, with one line naming the key, the value and the range."""

from __future__ import annotations

import hashlib

import pytest

from distillctl import recipes
from distillctl.bounds import Bounds, check_config
from distillctl.errors import UserError
from test_cli import one_error_line
from test_config import composed


@pytest.mark.parametrize("name", sorted(recipes.available()))
def test_every_bundled_recipe_is_within_bounds(name):
    check_config(composed(f"recipe={name}"))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.epochs=-1", "trainer.epochs=-1 is out of range: it must be at least 1"),
        ("trainer.epochs=0", "at least 1"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.threads=0", "trainer.threads=0"),
        ("trainer.label_smoothing=1.0", "less than 1"),
        ("trainer.grad_clip=0", "more than 0"),
        ("optimizer.lr=nan", "optimizer.lr=nan"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0"),
        ("optimizer.lr=inf", "optimizer.lr=inf"),
        ("optimizer.momentum=1.5", "optimizer.momentum=1.5"),
        ("optimizer.weight_decay=-0.1", "at least 0"),
        ("teacher.lr=0", "teacher.lr=0.0"),
        ("loss.terms.kd.temperature=0", "loss.terms.kd.temperature=0.0"),
        ("loss.terms.kd.weight=-1", "loss.terms.kd.weight=-1.0"),
        ("loss.terms.ce.label_smoothing=2", "loss.terms.ce.label_smoothing"),
        ("dataset.val_size=0", "dataset.val_size=0.0"),
        ("dataset.train_limit=0", "dataset.train_limit=0"),
        ("dataset.image_size=2", "dataset.image_size=2"),
        ("prune.target_macs_ratio=1.5", "more than 0 and less than 1"),
        ("prune.sparsity=1", "prune.sparsity=1.0"),
        ("prune.steps=0", "prune.steps=0"),
        ("quantize.calibration_batches=0", "quantize.calibration_batches=0"),
        ("quantize.qat_lr=0", "quantize.qat_lr=0.0"),
        ("scheduler.gamma=0", "scheduler.gamma=0.0"),
        ("+student.num_classes=7", "unknown config key 'student.num_classes'"),
        ("+trainer.epohcs=3", "Did you mean 'epochs'?"),
        ("+loss.terms.kd.temprature=2", "Did you mean 'temperature'?"),
    ],
)
def test_a_value_out_of_range_or_unknown_is_refused(override, expected):
    with pytest.raises(UserError) as raised:
        check_config(composed("recipe=quickstart", override))
    assert expected in str(raised.value)


def test_bounds_describe_themselves():
    assert str(Bounds(min=0, below=1)) == "at least 0 and less than 1"
    assert Bounds(above=0).holds(1e-9) and not Bounds(above=0).holds(0)


def test_a_bad_value_fails_in_one_line_before_any_training(cli, tiny):
    line = one_error_line(cli("distill", "recipe=tiny", "loss.terms.kd.temperature=0"))
    assert "loss.terms.kd.temperature=0.0 is out of range" in line
    assert not (tiny / "runs").exists()  # nothing was written


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_leaves_the_last_result_as_it_was(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0
    teacher = tiny / "runs/tiny/teacher"
    kept = ("model.safetensors", "metrics.json", "config.yaml", "last.safetensors", "last_state.pt", "history.jsonl")
    before = {name: hashlib.sha256((teacher / name).read_bytes()).hexdigest() for name in kept}
    line = one_error_line(cli("train-teacher", "recipe=tiny", "optimizer.lr=1e30"))
    assert "the loss became nan" in line and "Lower the learning rate" in line
    assert {name: hashlib.sha256((teacher / name).read_bytes()).hexdigest() for name in kept} == before
