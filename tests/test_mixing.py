"""Mixup and CutMix: mixed images and labels for every term that reads class probabilities, refused for those
that need each image's one label, and resumable like any run."""

from __future__ import annotations

import json

import torch

from distillctl.engine.mixing import batch_mixer
from distillctl.losses import build_objective


def test_a_mixed_batch_has_mixed_images_and_labels_that_sum_to_one():
    objective = build_objective({"ce": {}, "kd": {}})
    assert batch_mixer(0.0, 0.0, 10, objective) is None
    mixer = batch_mixer(0.4, 0.0, 10, objective)
    x, y = torch.rand(7, 3, 8, 8), torch.arange(7)
    original = x.clone()
    torch.manual_seed(0)
    mixed, targets = mixer(x, y)
    assert targets.shape == (7, 10) and torch.allclose(targets.sum(1), torch.ones(7))
    assert ((targets[:6] > 0).sum(1) == 2).all()  # two classes in each mixed image
    assert not torch.equal(mixed[:6], original[:6])
    assert torch.equal(mixed[6], original[6]) and targets[6, 6] == 1  # an odd last image stays as it is
    torch.manual_seed(0)
    again = mixer(original.clone(), y)  # mixing is a function of torch's RNG state, which checkpoints keep
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)


def test_terms_that_need_each_images_true_class_are_refused(cli):
    result = cli("distill", "loss=dkd", "dataset.cutmix_alpha=1.0", "trainer.epochs=1", "trainer.max_steps_per_epoch=1")
    assert result.code == 2
    assert "separates each image's one true class" in result.text and "Traceback" not in result.text


def test_distillation_with_mixup_and_cutmix_trains_and_runs_the_teacher(cli, tmp_path):
    result = cli("distill", "dataset.mixup_alpha=0.2", "dataset.cutmix_alpha=1.0", "trainer.epochs=1", "trainer.max_steps_per_epoch=3",
                 "trainer.batch_size=31", "trainer.threads=1", "dataset.test_limit=64")
    assert result.code == 0, result.text[-2000:]
    assert "teacher cache: off: mixup/cutmix" in result.out
    metrics = json.loads((tmp_path / "runs/quickstart/student/metrics.json").read_text())
    assert metrics["teacher_cache"] is None and 0 <= metrics["test_top1"] <= 1
