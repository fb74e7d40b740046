"""The teacher-logit cache: it gives the teacher's own answers, fills as runs go, and is never read when wrong."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from distillctl.config import DatasetConfig, OptimizerConfig, SchedulerConfig, TrainerConfig
from distillctl.data import Batches, load_splits
from distillctl.engine.fit import Trainee, fit
from distillctl.engine.optim import build_optimizer, build_schedule
from distillctl.engine.teacher_cache import CachedTeacher, CacheSettings, open_cache
from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.losses.kd import kd_loss
from distillctl.models import create_model

DATA = OmegaConf.structured(DatasetConfig)


@pytest.fixture(scope="module")
def images():
    """96 embedded CIFAR-10 training images and their labels."""
    train = load_splits(DATA).train.subset(torch.arange(96))
    return train.images, train.labels


def batches_of(images, padding: int = 2, batch_size: int = 32, max_steps: int | None = None) -> Batches:
    return Batches(*images, batch_size, DATA.mean, DATA.std, torch.device("cpu"), seed=0, padding=padding, max_steps=max_steps)


def settings(tmp_path, mode: str = "auto", half: bool = True, max_gb: float = 4.0) -> CacheSettings:
    return CacheSettings(mode, tmp_path, max_gb, half, "fp32", 64)


def never(x):
    raise AssertionError("the teacher ran although every view was cached")


@pytest.mark.parametrize("half, tolerance", [(False, 1e-6), (True, 1e-3)])
def test_a_full_cache_gives_the_kd_loss_of_the_live_teacher(tmp_path, images, half, tolerance):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10).eval(), create_model("resnet8", 10).eval()
    batches = batches_of(images)
    cache = open_cache(settings(tmp_path, "on", half), batches, teacher, 10, [])
    assert cache.share_filled == 1.0 and cache.path.is_file()
    cached = CachedTeacher(cache, batches, never, never)
    with torch.inference_mode():
        for x, _ in batches:
            live, s = teacher(x), student(x)
            assert kd_loss(s, cached(x), 4.0).item() == pytest.approx(kd_loss(s, live, 4.0).item(), rel=tolerance, abs=1e-7)
    assert cached.teacher_share == 0.0


def make_trainee(seed: int = 0):
    torch.manual_seed(seed)
    student = create_model("resnet8", 10)
    objective = build_objective({"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})
    optimizer = build_optimizer(student.parameters(), OmegaConf.structured(OptimizerConfig), 0.05, torch.device("cpu"))
    scheduler = build_schedule(optimizer, OmegaConf.structured(SchedulerConfig(name="cosine")), 0.05, 3, 2)
    return Trainee(student, objective, optimizer, scheduler, {"model": "resnet8"})


def test_auto_fills_the_cache_as_a_run_goes_and_a_rerun_gets_the_same_weights_without_the_teacher(tmp_path, images):
    torch.manual_seed(1)
    teacher = create_model("resnet8", 10).eval()
    trainer = OmegaConf.structured(TrainerConfig(epochs=2, batch_size=32, log_every=1))

    def run(out):
        trainee, batches = make_trainee(), batches_of(images, max_steps=3)
        cache = open_cache(settings(tmp_path / "cache"), batches, teacher, 10, [])
        result = fit(trainee, batches, lambda m: 0.0, trainer, out, "t", teacher=teacher, teacher_cache=cache)
        cache.save()
        return trainee.model, result, cache

    first, result, cache = run(tmp_path / "a")
    # 192 draws of 96 images x 50 views: nearly all new, the few repeats read from the cache
    assert 0.95 < result.teacher_share < 1.0
    assert cache.share_filled == pytest.approx(192 * result.teacher_share / (96 * 50))
    second, result, cache = run(tmp_path / "b")
    assert result.teacher_share == 0.0  # the same seed draws the same views, all of them cached now
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_the_cache_belongs_to_one_teacher_and_a_torn_file_is_rebuilt(tmp_path, images, capsys):
    torch.manual_seed(0)
    teacher, other = create_model("resnet8", 10).eval(), create_model("resnet8", 10).eval()
    batches = batches_of(images, padding=1)
    first = open_cache(settings(tmp_path, "on"), batches, teacher, 10, [])
    assert open_cache(settings(tmp_path, "auto"), batches, teacher, 10, []).share_filled == 1.0
    assert open_cache(settings(tmp_path, "auto"), batches, other, 10, []).share_filled == 0.0
    assert open_cache(settings(tmp_path, "auto"), batches_of(images, padding=2), teacher, 10, []).share_filled == 0.0
    first.path.write_bytes(first.path.read_bytes()[:200])
    capsys.readouterr()
    assert open_cache(settings(tmp_path, "auto"), batches, teacher, 10, []).share_filled == 0.0
    assert "unreadable; starting it afresh" in capsys.readouterr().out


def test_saving_keeps_what_another_run_wrote_meanwhile(tmp_path, images):
    teacher = create_model("resnet8", 10).eval()
    batches = batches_of(images, padding=1)
    mine, theirs = (open_cache(settings(tmp_path), batches, teacher, 10, []) for _ in range(2))
    idx = torch.arange(4)
    theirs.store(idx, torch.zeros(4, dtype=torch.long), torch.ones(4, 10))
    theirs.save()
    mine.store(idx, torch.ones(4, dtype=torch.long), torch.full((4, 10), 2.0))
    mine.save()
    merged = open_cache(settings(tmp_path), batches, teacher, 10, [])
    assert int(merged.filled.sum()) == 8
    assert torch.equal(merged.lookup(idx, torch.zeros(4, dtype=torch.long)), torch.ones(4, 10))
    assert torch.equal(merged.lookup(idx, torch.ones(4, dtype=torch.long)), torch.full((4, 10), 2.0))


def test_a_cache_folder_that_cannot_be_written_costs_the_speed_up_not_the_run(tmp_path, images, capsys):
    teacher = create_model("resnet8", 10).eval()
    blocker = tmp_path / "a file, not a folder"
    blocker.write_text("")
    cache = open_cache(settings(blocker / "cache"), batches_of(images, padding=1), teacher, 10, [])
    cache.store(torch.arange(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 10))
    cache.save()
    assert "teacher cache not saved (a part of the path is a file, not a folder" in capsys.readouterr().out


def test_logits_past_float16s_range_are_kept_finite(tmp_path, images):
    teacher = create_model("resnet8", 10).eval()
    cache = open_cache(settings(tmp_path), batches_of(images, padding=1), teacher, 10, [])
    cache.store(torch.arange(1), torch.zeros(1, dtype=torch.long), torch.tensor([[1e6] + [0.0] * 8 + [-1e6]]))
    stored = cache.lookup(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))[0]
    assert torch.isfinite(stored).all() and stored[0] == 65504 and stored[-1] == -65504


def test_feature_losses_and_oversized_caches_run_the_teacher_and_say_why(tmp_path, images, capsys):
    teacher = create_model("resnet8", 10).eval()
    batches = batches_of(images)
    assert open_cache(settings(tmp_path), batches, teacher, 10, ["layer3"]) is None
    assert "reads teacher features (layer3)" in capsys.readouterr().out
    assert open_cache(settings(tmp_path, max_gb=1e-6), batches, teacher, 10, []) is None
    assert "more than distill.teacher_cache_max_gb" in capsys.readouterr().out
    with pytest.raises(UserError, match="teacher_cache=on needs .* more than distill.teacher_cache_max_gb"):
        open_cache(settings(tmp_path, "on", max_gb=1e-6), batches, teacher, 10, [])
    assert open_cache(settings(tmp_path, "off"), batches, teacher, 10, []) is None


def test_distill_with_a_filled_cache_never_runs_the_teacher_and_says_so(cli, tiny):
    small = ["recipe=tiny", "trainer.threads=2", "dataset.train_limit=200", "dataset.crop_padding=1"]
    assert cli("train-teacher", *small).code == 0
    first = cli("distill", *small, "distill.teacher_cache=on")
    assert first.code == 0, first.text
    assert "teacher cache: filling" in first.out
    metrics = json.loads((tiny / "runs/tiny/student/metrics.json").read_text())
    assert metrics["teacher_cache"]["filled"] == 1.0 and metrics["teacher_cache"]["teacher_ran_on"] == 0.0
    off = cli("distill", *small, "distill.teacher_cache=off", "force=true")
    assert off.code == 0 and "teacher cache" not in off.out
    assert json.loads((tiny / "runs/tiny/student/metrics.json").read_text())["teacher_cache"] is None


def test_the_summary_says_what_share_the_cache_saved_and_that_a_first_run_fills_it():
    from distillctl.stages.training import teacher_share

    assert teacher_share(0.25) == "25% of images (the rest from its cache)"
    assert teacher_share(1.0) == "every image (filling its logit cache)"  # was "100% of images (the rest from its cache)"
