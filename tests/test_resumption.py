"""resume=true continues the run a stage folder holds: into another model it is refused and the folder's record of
its run is kept; under other settings it goes on and says what changed."""

from __future__ import annotations

import json

import pytest

from distillctl.config_changes import changes

from conftest import TINY


def test_changes_name_what_a_run_computes_and_leave_out_how_it_runs():
    before = {"trainer": {"batch_size": 32, "threads": 1, "epochs": 3}, "optimizer": {"lr": 0.1}, "resume": False,
              "logger": {"mlflow": {"experiment": None}}, "teachers": []}
    after = {"trainer": {"batch_size": 64, "threads": 2, "epochs": 3}, "optimizer": {"lr": 0.05}, "resume": True,
             "logger": {"mlflow": {"experiment": "x"}}, "teachers": [], "seed": 1}
    assert changes(before, after) == "optimizer.lr 0.1 -> 0.05, seed (unset) -> 1, trainer.batch_size 32 -> 64"
    many = {f"k{i}": i for i in range(1, 10)}
    assert changes(many, {k: -v for k, v in many.items()}).endswith("k6 6 -> -6 and 3 more")
    assert changes(None, after) == "" and changes(["not", "a", "config"], after) == ""  # an older or crafted record


@pytest.mark.parametrize("command, overrides, folder", [
    ("train-teacher", ["teacher=resnet8", "teacher.checkpoint=null"], "teacher"),
    ("distill", [], "student"),  # the bundled teacher
])
def test_resume_with_nothing_saved_is_refused_before_the_data_and_the_teacher_load(cli, command, overrides, folder):
    # It was refused after them: 13 s on the embedded sample, and longer the larger the data set.
    run = cli(command, *overrides, "resume=true", "run_dir=runs/new")
    assert run.code == 2 and f"runs/new/{folder} holds no checkpoint to resume from" in run.err, run.text
    assert "data:" not in run.out and "teacher:" not in run.out, run.out


@pytest.mark.slow
def test_a_resume_into_another_model_is_refused_and_one_under_other_settings_says_what_changed(cli, tmp_path):
    run = ["train-teacher", "teacher=resnet8", "teacher.checkpoint=null", *TINY, "trainer.epochs=2", "trainer.threads=1",
           "run_dir=runs/r"]
    assert cli(*run).code == 0
    started = tmp_path / "runs/r/teacher/started.json"
    record = json.loads(started.read_text())
    # A finished run resumed with its own config has nothing to do: it ran no epoch and recorded 0 s and 0 img/s.
    metrics = (tmp_path / "runs/r/teacher/metrics.json").read_bytes()
    again = cli(*run, "resume=true")
    assert again.code == 0 and "nothing to resume: runs/r/teacher finished every epoch with this config" in " ".join(again.out.split())
    assert (tmp_path / "runs/r/teacher/metrics.json").read_bytes() == metrics
    other_model = cli(*run, "teacher=resnet14", "resume=true")
    assert other_model.code == 2
    assert "holds a run of resnet8" in other_model.err and "this command builds resnet14" in other_model.err
    assert "leave out resume=true" in other_model.err
    assert json.loads(started.read_text()) == record  # pipeline still knows the run as its own
    other_batch = cli(*run, "trainer.batch_size=64", "trainer.epochs=3", "resume=true")
    assert other_batch.code == 0, other_batch.text
    said = " ".join(other_batch.out.split())  # as a log has it, however the console wrapped it
    assert "under settings other than those it started with: trainer.batch_size 32 -> 64, trainer.epochs 2 -> 3;" in said


def test_a_resume_into_other_layer_sizes_is_refused_with_what_changed(tmp_path):
    # `prune resume=true prune.target_macs_ratio=0.4` over a run pruned to 0.5 failed loading the state, with torch's
    # size-mismatch text, after recording itself as the folder's run.
    from torch import nn

    from distillctl import artifacts, workspace
    from distillctl.errors import UserError
    from distillctl.resumption import check

    def widths(channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, channels, 3), nn.BatchNorm2d(channels))

    last = tmp_path / "last.safetensors"
    artifacts.save_weights(last, widths(11), {"model": "resnet8"})
    workspace.record_start(tmp_path, "a", {"prune": {"target_macs_ratio": 0.5}})
    record = (tmp_path / "started.json").read_text()
    shapes = {name: tuple(p.shape) for name, p in widths(10).named_parameters()}
    with pytest.raises(UserError, match=r"holds a resnet8 with other layer sizes than this command builds \(0\.weight: "
                                        r"\[11, 3, 3, 3\] there, \[10, 3, 3, 3\] here; changed: prune\.target_macs_ratio 0\.5 -> 0\.4\)"):
        check(tmp_path, last, "b", "resnet8", {"prune": {"target_macs_ratio": 0.4}}, shapes)
    assert (tmp_path / "started.json").read_text() == record
    check(tmp_path, last, "a", "resnet8", {"prune": {"target_macs_ratio": 0.5}},  # the same sizes resume
          {name: tuple(p.shape) for name, p in widths(11).named_parameters()})
