"""Tab completion: what `distillctl __complete` offers, and the bash script that asks it, run in bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillctl import completion


def complete(*words: str) -> list[str]:
    """The candidates for the last word, the others typed before it."""
    return completion.candidates(list(words))


def test_commands_then_flags_and_their_values():
    assert complete("di") == ["distill"]
    assert "completion" in complete("") and "--version" in complete("")
    assert complete("completion", "") == ["bash", "zsh", "fish"]
    assert complete("distill", "--c") == ["--cfg"]
    assert complete("distill", "--cfg", "") == ["job", "hydra", "all"]
    assert complete("recipes", "--") == ["--json"]
    assert complete("runs", "--") == ["--json"]
    assert complete("nonsense", "tr") == []


def test_keys_one_level_at_a_time_from_the_composed_recipe():
    assert complete("distill", "trai") == ["trainer."]
    assert complete("distill", "trainer.ep") == ["trainer.epochs="]
    # groups and models are chosen by name or changed key by key; recipe and profile are groups of their own
    assert complete("distill", "da") == ["dataset.", "dataset="]
    assert {"profile=", "prune=", "prune."} <= set(complete("distill", "pr")) and complete("distill", "rec") == ["recipe="]
    assert complete("distill", "hydra") == ["hydra/launcher="]
    # the terms a recipe's loss group defines, and a half-typed or wrong earlier override still completes
    assert complete("distill", "recipe=cifar_dkd", "loss.terms.") == ["loss.terms.ce.", "loss.terms.dkd."]
    assert complete("distill", "recipe=cifar_dkd", "trainer.epochz=3", "loss.terms.dkd.te") == ["loss.terms.dkd.temperature="]
    assert complete("distill", "recipe=cifar_dkd,cifar_at", "loss.terms.d") == ["loss.terms.dkd."]  # a sweep: its first value
    # a deletion names the entry itself; an expect key written `student.top1` is reached as expect.student.top1
    assert complete("distill", "~loss.terms.k") == ["~loss.terms.kd", "~loss.terms.kd."]
    assert complete("distill", "expect.st") == ["expect.student."]


def test_values_from_groups_the_schema_and_the_current_config():
    assert complete("distill", "loss=k") == ["loss=kd", "loss=kd_at", "loss=kd_ls"]
    assert complete("distill", "recipe=cifar_r") == ["recipe=cifar_resnet"]
    assert "hydra/launcher=joblib" in complete("distill", "hydra/launcher=")
    assert complete("distill", "quantize.method=int8") == ["quantize.method=int8_static", "quantize.method=int8_qat"]
    assert complete("distill", "dataset.on_bad_image=") == ["dataset.on_bad_image=skip", "dataset.on_bad_image=error"]
    assert complete("distill", "force=") == ["force=true", "force=false"]
    assert complete("distill", "recipe=cifar_resnet", "trainer.epochs=") == ["trainer.epochs=240"]  # the value to edit
    assert complete("distill", "++trainer.epochs=") == ["++trainer.epochs=15"]
    assert complete("predict", "predict.model=int8") == ["predict.model=int8_static", "predict.model=int8_qat"]


def test_paths_for_keys_that_take_files(tmp_path, monkeypatch):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos.txt").write_text("")
    (tmp_path / "mine.yaml").write_text("# @package _global_\n")
    (tmp_path / ".hidden").mkdir()
    monkeypatch.chdir(tmp_path)
    assert complete("distill", "dataset.path=ph") == ["dataset.path=photos/", "dataset.path=photos.txt"]
    assert complete("distill", "dataset.path=photos/") == ["dataset.path=photos/cat/"]
    assert complete("distill", "dataset.path=") == ["dataset.path=embedded", "dataset.path=mine.yaml",
                                                    "dataset.path=photos/", "dataset.path=photos.txt"]
    assert complete("distill", "teacher.checkpoint=p") == ["teacher.checkpoint=pretrained", "teacher.checkpoint=photos/",
                                                           "teacher.checkpoint=photos.txt"]
    assert complete("distill", "recipe=./") == ["recipe=./mine.yaml", "recipe=./photos/"]  # folders and YAML files only


def test_model_names_are_listed_once_then_read_from_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path))
    assert complete("distill", "teacher=wrn_40") == ["teacher=wrn_40_1", "teacher=wrn_40_2"]
    cached = list(tmp_path.glob("model-names-*.txt"))
    assert len(cached) == 1 and {"resnet56", "mobilenetv3_large_100"} <= set(cached[0].read_text().split())
    cached[0].write_text("resnet8\nresnet20\n")  # read back from here now, not listed again
    assert complete("distill", "student=resnet") == ["student=resnet8", "student=resnet20"]
    assert complete("inspect", "model=resnet2") == ["model=resnet20"]
    assert complete("inspect", "n") == ["num_classes="]


def test_a_completion_that_fails_prints_nothing(capsys, monkeypatch):
    def broken(words):
        raise RuntimeError("a bug")

    monkeypatch.setattr(completion, "candidates", broken)
    completion.main(["distill", "tr"])
    assert capsys.readouterr().out.strip() == ""


@pytest.mark.parametrize(
    ("line", "reply", "nospace"),
    [
        ("distill trainer.ep", ["trainer.epochs="], True),  # bash replaces only the text after its last '='
        ("distill loss=kd_", ["kd_at", "kd_ls"], False),
        ("distill dataset.path=pho", ["photos/"], True),
        ("pipe", ["pipeline"], False),
    ],
)
def test_the_bash_script_completes_a_command_line(tmp_path, line, reply, nospace):
    (tmp_path / "photos").mkdir()
    tool = tmp_path / "distillctl"  # what the user typed: the script asks that same program
    tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m distillctl "$@"\n')
    tool.chmod(0o755)
    script = tmp_path / "completion.bash"
    script.write_text(completion.script("bash"))
    shell = (f'source "{script}"; compopt() {{ echo "compopt $1 $2"; }}; '
             f'COMP_LINE="{tool} {line}"; COMP_POINT=${{#COMP_LINE}}; _distillctl; printf "[%s]\\n" "${{COMPREPLY[@]}}"')
    root = str(Path(completion.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60).stdout
    assert [word[1:-1] for word in out.splitlines() if word.startswith("[")] == reply
    assert ("compopt -o nospace" in out) == nospace
