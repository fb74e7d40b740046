"""The teacher shipped inside the package: the quickstart distills from it, and it is worth learning from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY
from distillctl import config
from distillctl.data import eval_batches, load_splits
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.models import load_model
from test_config import composed


def test_quickstart_distills_from_the_bundled_teacher_which_knows_cifar10():
    cfg = composed("recipe=quickstart")
    path = Path(cfg.teacher.checkpoint)
    assert path.is_file() and path.parent == config.BUNDLED_WEIGHTS
    model, meta = load_model(path)
    assert meta["model"] == cfg.teacher.name and meta["num_classes"] == 10
    data = load_splits(cfg.dataset)
    cpu = torch.device("cpu")
    logits, labels = predict(model, eval_batches(data.test.images, data.test.labels, 250, meta["mean"], meta["std"], cpu), cpu, "fp32")
    # Trained on the full CIFAR-10 training set (distillctl/weights/README.md); the sample's 500 test images are
    # from CIFAR-10's test split, which it never saw. Far above the ~48% a teacher trained on the sample reaches.
    assert topk_accuracy(logits, labels, 1) >= 0.80


def test_train_teacher_refuses_when_the_recipe_gives_a_teacher(cli):
    result = cli("train-teacher", "recipe=quickstart")
    assert result.code == 2 and "teacher.checkpoint=null" in result.err


@pytest.mark.slow
def test_the_quickstart_can_still_train_its_own_teacher(cli, tmp_path):
    result = cli("pipeline", "recipe=quickstart", "teacher.checkpoint=null", *TINY, "trainer.threads=1", "~expect")
    assert result.code == 0, result.text[-3000:]
    assert (tmp_path / "runs/quickstart/teacher/model.safetensors").is_file()
    assert "runs/quickstart/teacher/model.safetensors" in (tmp_path / "runs/quickstart/student/metrics.json").read_text()
