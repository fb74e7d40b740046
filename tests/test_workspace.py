"""The run workspace under interruptions and concurrent runs: an interrupted stage resumes by itself, and a stage
has one writer at a time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_pipeline_resumes_an_interrupted_stage_by_itself(cli, tiny):
    assert cli("train-teacher", "recipe=tiny", "trainer.epochs=2").code == 0
    teacher = tiny / "runs/tiny/teacher"
    # What a run killed after its last epoch's checkpoint leaves: no model, no metrics.
    (teacher / "metrics.json").unlink()
    (teacher / "model.safetensors").unlink()
    result = cli("pipeline", "recipe=tiny", "trainer.epochs=2")
    assert result.code == 0, result.text[-3000:]
    assert "resuming the interrupted run" in result.out
    assert json.loads((teacher / "metrics.json").read_text())["resumed_from_epoch"] == 2
    # A different config starts over rather than resuming a checkpoint that is not its own.
    (teacher / "metrics.json").unlink()
    other = cli("pipeline", "recipe=tiny", "trainer.epochs=1")
    assert other.code == 0 and "resuming" not in other.out
    assert json.loads((teacher / "metrics.json").read_text())["resumed_from_epoch"] == 0


@pytest.mark.slow
def test_a_second_writer_of_a_stage_is_refused_until_the_first_is_gone(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from distillctl.workspace import Workspace; "
         "Workspace(Path('runs/tiny')).claim('student'); print('held', flush=True); time.sleep(120)"],
        cwd=tiny, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = cli("distill", "recipe=tiny")
        assert refused.code == 2 and f"another distillctl run (pid {holder.pid})" in refused.err, refused.text[-2000:]
        assert not (tiny / "runs/tiny/student/metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS released the killed holder's lock: no stale lock blocks the next run.
    assert cli("distill", "recipe=tiny").code == 0


@pytest.mark.slow
def test_the_same_run_twice_gives_byte_identical_weights(cli, tiny):
    # Users and CI compare runs by hash: the same inputs and seed must give the same bytes, metadata included.
    for run_dir in ("runs/a", "runs/b"):
        assert cli("train-teacher", "recipe=tiny", f"run_dir={run_dir}").code == 0
    digests = {hashlib.sha256((tiny / run_dir / "teacher/model.safetensors").read_bytes()).hexdigest() for run_dir in ("runs/a", "runs/b")}
    assert len(digests) == 1
