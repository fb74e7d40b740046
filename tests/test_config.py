"""Composition, overrides, typo rejection and recipe discovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from distillctl import composition, recipes
from distillctl.errors import UserError


def composed(*overrides: str):
    """The config the CLI would run with, composed in-process."""
    from distillctl import config

    config.register()
    overrides = composition.prepare_overrides(list(overrides))
    with initialize_config_dir(str(composition.CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_recipe_sets_groups_and_values():
    cfg = composed("recipe=cifar_resnet")
    assert cfg.teacher.name == "resnet56" and cfg.student.name == "resnet20"
    assert cfg.dataset.path == "uoft-cs/cifar10@0b2714987fa478483af9968de7c934580d0bb9a2"
    assert cfg.trainer.epochs == 240 and list(cfg.scheduler.milestones) == [150, 180, 210]
    assert cfg.optimizer.lr == 0.05 and cfg.teacher.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.loss.terms.kd.temperature == 4.0 and cfg.loss.terms.kd.weight == 0.9


def test_command_line_overrides_win_over_the_recipe():
    cfg = composed("recipe=cifar_resnet", "trainer.epochs=3", "loss.terms.kd.temperature=8", "student=wrn_16_2")
    assert cfg.trainer.epochs == 3 and cfg.loss.terms.kd.temperature == 8 and cfg.student.name == "wrn_16_2"


def test_loss_group_ce_drops_the_teacher_terms():
    cfg = composed("recipe=quickstart", "loss=ce")
    assert list(cfg.loss.terms) == ["ce"]


def test_extra_term_can_be_added_from_the_command_line():
    cfg = composed("recipe=quickstart", "+loss/terms@loss.terms.kd2=kd", "loss.terms.kd2.temperature=2")
    assert cfg.loss.terms.kd2.kind == "kd" and cfg.loss.terms.kd2.temperature == 2


def test_label_smoothing_reaches_the_ce_term():
    cfg = composed("recipe=quickstart", "trainer.label_smoothing=0.1")
    assert cfg.loss.terms.ce.label_smoothing == 0.1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.epochz=3", "Did you mean 'epochs'?"),
        ("optimizer.lrr=0.1", "Did you mean 'lr'?"),
        ("epochs=3", "Valid keys:"),
        ("loss=kdd", "Available options in 'loss'"),
    ],
)
def test_typos_are_rejected_with_a_suggestion(override, expected):
    from distillctl import config

    config.register()  # as the CLI does: it failed when a worker ran this test before any that composes
    with pytest.raises(UserError, match=expected.replace("?", r"\?").replace("(", r"\(")):
        composition.check_composes(composition.resolve_recipe_overrides([override]))


def test_typo_in_a_loss_term_option_is_rejected():
    from distillctl.losses import build_objective

    with pytest.raises(UserError, match="Did you mean 'temperature'"):
        build_objective({"kd": {"temperatur": 2.0}})


def test_bundled_recipes_are_listed_with_descriptions():
    found = recipes.available()
    assert {"quickstart", "cifar_resnet"} <= set(found)
    assert "ResNet-56" in found["cifar_resnet"].description


def test_recipe_in_the_working_directory_is_found_and_shadows(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("# @package _global_\ndescription: my own\ntrainer:\n  epochs: 7\n")
    monkeypatch.chdir(tmp_path)
    assert recipes.resolve("mine").path == tmp_path / "recipes" / "mine.yaml"
    assert composed("recipe=mine").trainer.epochs == 7


def test_recipe_by_path(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere" / "exp.yaml"
    path.parent.mkdir()
    path.write_text("# @package _global_\ndefaults:\n  - override /student: wrn_16_2\ntrainer:\n  epochs: 5\n")
    monkeypatch.chdir(tmp_path)
    cfg = composed("recipe=elsewhere/exp.yaml")
    assert cfg.trainer.epochs == 5 and cfg.student.name == "wrn_16_2"


def test_a_recipe_names_its_models_as_the_command_line_does(tmp_path, monkeypatch):
    (tmp_path / "named.yaml").write_text("# @package _global_\nteacher: resnet20\nstudent: resnet8\n")
    monkeypatch.chdir(tmp_path)
    cfg = composed("recipe=named.yaml")
    assert (cfg.teacher.name, cfg.student.name) == ("resnet20", "resnet8") and cfg.teacher.checkpoint is None


def test_unknown_recipe_names_the_closest():
    with pytest.raises(UserError, match="Did you mean 'quickstart'"):
        recipes.resolve("quickstrat")


def test_help_and_recipes_answer_fast_without_torch():
    import subprocess
    import sys

    # A fresh interpreter, as a user's shell starts one (the `cli` fixture's processes have torch imported already)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "distillctl", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train-teacher" in result.stdout and "quickstart" in result.stdout
    assert time.perf_counter() - start < 3  # the command itself takes ~0.1 s (docs/performance.md)
    probe = "import sys; from distillctl import cli; cli.main(['recipes']); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_unknown_command_names_the_closest(cli):
    result = cli("distil")
    assert result.code == 2 and "Did you mean 'distill'?" in result.err and "Traceback" not in result.err


def test_cfg_job_prints_the_resolved_config(cli):
    result = cli("distill", "recipe=cifar_resnet", "--cfg", "job", "trainer.epochs=3")
    assert result.code == 0 and "epochs: 3" in result.out and "name: resnet56" in result.out


def test_recipes_piped_to_a_file_keep_every_path_whole(cli):
    result = cli("recipes")  # a subprocess: stdout is not a terminal, as in `distillctl recipes | cat`
    assert result.code == 0 and "…" not in result.out
    rows = [line.split("\t") for line in result.out.splitlines()]
    assert {row[0] for row in rows} >= {"quickstart", "cifar_adversarial"}
    assert all(len(row) == 3 and Path(row[2]).is_file() for row in rows)  # whole paths, however long


@pytest.mark.parametrize("command, policy", [("distill --help", "PASSIVE"), ("evaluate --help", None), ("pipeline --help", None)])
def test_openmp_threads_sleep_while_waiting_except_for_latency_timings(command, policy):
    import os
    import subprocess
    import sys

    probe = (
        f"import os\nfrom distillctl import cli\ntry:\n    cli.main({command.split()!r})\nexcept SystemExit:\n    pass\n"
        "print('policy', os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert f"policy {policy}" in out
    # A user's own setting is left alone.
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, check=True).stdout
    assert "policy ACTIVE" in out


def test_a_recipes_thresholds_are_reached_from_the_command_line(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from distillctl.evaluation.expectations import flatten

    # written flat, as recipes do; an included recipe's threshold dropped with null
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "gated.yaml").write_text(
        "# @package _global_\ndefaults:\n  - quickstart\nexpect:\n  student.top5: {min: 0.7}\n  int8_static.top1: null\n")
    monkeypatch.chdir(tmp_path)
    cfg = composed("recipe=gated", "expect.student.top1.min=0.5", "~expect.teacher.top1", "+expect.pruned.top1.max=0.9")
    assert flatten(OmegaConf.to_container(cfg.expect)) == {
        "student.top1": {"min": 0.5}, "student.top5": {"min": 0.7}, "gain.top1": {"min": 0.015}, "pruned.top1": {"max": 0.9}}


def test_a_setting_only_another_method_reads_is_named_with_the_method_that_reads_it():
    from omegaconf import OmegaConf

    from distillctl.method_settings import unread

    cfg = OmegaConf.create({"prune": {"method": "unstructured"}, "quantize": {"method": "onnx_int8"}})
    assert unread("prune", cfg, ["prune.sparsity=0.7", "trainer.epochs=1"]) == []
    assert unread("pipeline", cfg, ["prune.steps=2", "quantize.reduce_range=false", "quantize.qat_lr=0.01"]) == [
        "prune.steps is read by prune=structured only, and this run uses prune=unstructured: add prune=structured, or leave prune.steps out",
        "quantize.qat_lr is read by quantize=int8_qat only, and this run uses quantize=onnx_int8: add quantize=int8_qat, or leave quantize.qat_lr out",
    ]
    assert unread("distill", cfg, ["prune.steps=2"]) == []  # distill does not prune: nothing it would ignore


def test_an_empty_mapping_is_refused_only_where_it_would_merge_into_one():
    assert composition.merged_into("loss.terms") == "mapping" and composition.merged_into("student.kwargs") == "mapping"
    assert composition.merged_into("trainer") == "section"
    # An optional section is switched on by a mapping, and a plain value is no mapping at all.
    assert composition.merged_into("logger.tensorboard") is None and composition.merged_into("trainer.epochs") is None
    assert composition.merged_into("trainer.no_such_key") is None
    assert composition.prepare_overrides(["logger.tensorboard={}"]) == ["logger.tensorboard={}"]
