"""The test suite's forked CLI processes (tests/preloaded_cli.py) behave as fresh ones would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RECIPE
from preloaded_cli import forkable, shared

SERVER = {"HOME": "/root", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DISTILLCTL_CACHE": "/c"}


@pytest.mark.parametrize(("change", "forked"), [
    ({}, True),
    ({"COLUMNS": "250"}, True),
    ({"DISTILLCTL_CACHE": "/elsewhere"}, True),
    ({"SLURM_RESTART_COUNT": "1"}, True),
    ({"HF_HOME": "/hf"}, False),  # huggingface_hub reads it when imported: the server's would stay
    ({"HOME": "/home/u"}, False),
    ({"OMP_NUM_THREADS": "2"}, False),  # OpenMP reads it when torch loads it
    ({"PYTHONHASHSEED": "3"}, False),
])
def test_a_call_is_forked_only_when_the_preloaded_modules_saw_its_environment(change, forked):
    assert forkable({**SERVER, **change}, SERVER) is forked
    assert forkable({k: v for k, v in SERVER.items() if k != "HF_HUB_OFFLINE"}, SERVER) is False


def test_a_forked_call_answers_as_a_fresh_process_does(tmp_path: Path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(TINY_RECIPE)
    args = ["distill", "recipe=tiny", "trainer.epochz=1"]  # its own recipe from ./recipes, a typo'd key, exit 2
    env = {**os.environ, "COLUMNS": "250"}
    fresh = subprocess.run([sys.executable, "-m", "distillctl", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    forked = shared().run(args, cwd=tmp_path, env=env, timeout=120)
    assert forked.returncode == fresh.returncode == 2
    assert forked.stdout == fresh.stdout and forked.stderr == fresh.stderr and "epochz" in forked.stderr
    listed = shared().run(["recipes"], cwd=tmp_path, env=env, timeout=120)
    assert listed.returncode == 0 and f"tiny\ta few steps of everything, for tests\t{tmp_path}" in listed.stdout
