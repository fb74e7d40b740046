"""The run workspace under interruptions and concurrent runs: an interrupted stage resumes by itself, a stage's
results are replaced together or not at all, and a stage has one writer at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_config import composed

from distillctl import files, workspace
from distillctl.execution_settings import EXECUTION_ONLY
from distillctl.stages.base import why_outdated


@pytest.mark.slow
def test_pipeline_resumes_an_interrupted_stage_by_itself(cli, tiny):
    assert cli("train-teacher", "recipe=tiny", "trainer.epochs=2").code == 0
    teacher = tiny / "runs/tiny/teacher"
    # What a run killed after its last epoch's checkpoint leaves: no model, no metrics.
    (teacher / "metrics.json").unlink()
    (teacher / "model.safetensors").unlink()
    # Other threads and logging say how it runs, not what it computes: the run is still this one.
    result = cli("pipeline", "recipe=tiny", "trainer.epochs=2", "trainer.threads=1", "trainer.log_every=2")
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


def write_results(folder: Path, tag: str) -> None:
    """A stage's results, each file saying which run wrote it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (workspace.MODEL_FILE, workspace.CONFIG_FILE, workspace.METRICS_FILE):
        (folder / name).write_text(tag)


def results(folder: Path) -> dict[str, str]:
    """The stage's results by name."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}


def test_how_a_run_executes_is_not_part_of_what_it_is(tmp_path):
    sections, inputs = ["dataset", "trainer", "optimizer"], ["0"]
    made = workspace.fingerprint(composed("recipe=quickstart"), sections, inputs)
    executed_otherwise = ["trainer.threads=1", "trainer.device=cpu", "trainer.devices=2", "trainer.compile=false",
                          "trainer.compile_mode=default", "trainer.log_every=7", "trainer.eval_batch_size=64",
                          "trainer.checkpoint_every_steps=5", "trainer.dist_timeout_s=60", "dataset.workers=0",
                          f"dataset.cache_dir={tmp_path}", f"distill.teacher_cache_dir={tmp_path}"]
    assert {key.split("=")[0] for key in executed_otherwise} == set(EXECUTION_ONLY)
    for override in executed_otherwise:
        assert workspace.fingerprint(composed("recipe=quickstart", override), sections, inputs) == made, override
    for override in ("trainer.epochs=3", "trainer.precision=bf16", "dataset.hflip=false", "optimizer.lr=0.2"):
        assert workspace.fingerprint(composed("recipe=quickstart", override), sections, inputs) != made, override
    # The teacher cache's settings count where they change the numbers (float16 logits) and not where it is kept.
    with_cache = [*sections, "distill"]
    assert workspace.fingerprint(composed("recipe=quickstart", f"distill.teacher_cache_dir={tmp_path}"), with_cache, inputs) == made
    assert workspace.fingerprint(composed("recipe=quickstart", "distill.teacher_cache_half=true"), with_cache, inputs) != made
    # A run made with the defaults keeps the fingerprint it had before these keys were left out: not trained again.
    cfg = composed("recipe=quickstart")
    before = {"config": {s: OmegaConf.to_container(cfg[s], resolve=True) for s in sections}, "inputs": inputs}
    assert made == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_stage_made_again_says_what_changed(tmp_path):
    from distillctl.stages import prune

    cfg = composed("recipe=quickstart", "prune.finetune_epochs=1")
    done = tmp_path / "pruned"
    done.mkdir()
    made_with = ("recipe=quickstart", "run_dir=runs/quickstart")  # the run_dir a run resolves through Hydra
    (done / workspace.METRICS_FILE).write_text("{not json")
    assert why_outdated(prune.STAGE, cfg, done) == f"{done}/metrics.json is damaged or records no fingerprint"
    (done / workspace.METRICS_FILE).write_text('{"fingerprint": "made-before"}')
    workspace.save_config(done, composed(*made_with, "seed=3", "trainer.threads=1", "quantize=int8_qat"))
    # Only what the stage depends on is named: the thread count is how it ran, quantize comes after it.
    assert why_outdated(prune.STAGE, cfg, done) == f"{done} was made with prune.finetune_epochs 2 -> 1, seed 3 -> 0"
    workspace.save_config(done, composed(*made_with, "prune.finetune_epochs=1"))
    assert "has changed since (an earlier stage was made again" in why_outdated(prune.STAGE, cfg, done)
    (done / workspace.CONFIG_FILE).write_text("!!python/object:os.system [echo]\n")  # read safely, never run
    assert why_outdated(prune.STAGE, cfg, done) == f"{done} was made with another config (its config.yaml cannot be read)"


def test_results_are_replaced_together_or_not_at_all(tmp_path):
    ws = workspace.Workspace(tmp_path)
    stage = tmp_path / "student"
    write_results(stage, "old")
    # A run killed while writing its results: nothing listed as published, so they are dropped.
    write_results(workspace.staging(stage), "new")
    assert ws.find("student") == stage and results(stage) == dict.fromkeys(results(stage), "old")
    assert not (stage / workspace.STAGING).exists()
    # A run killed half-way through publishing (the list written, the config already moved): finished by the next lookup.
    staged = workspace.staging(stage)
    write_results(staged, "new")
    (staged / workspace.ONNX_FILE).write_text("new")
    (stage / workspace.PTE_FILE).write_text("old")  # an earlier run's result this run does not have
    files.write_json(staged / workspace.PUBLISHED, sorted(p.name for p in staged.iterdir()))
    os.replace(staged / workspace.CONFIG_FILE, stage / workspace.CONFIG_FILE)
    assert ws.find("student") == stage
    assert results(stage) == dict.fromkeys([workspace.CONFIG_FILE, workspace.METRICS_FILE, workspace.MODEL_FILE, workspace.ONNX_FILE], "new")


def finished_stage(folder: Path, fingerprint: str) -> None:
    """A finished stage folder recording `fingerprint`."""
    folder.mkdir(parents=True)
    (folder / workspace.MODEL_FILE).write_text("weights")
    (folder / workspace.CONFIG_FILE).write_text("config")
    files.write_json(folder / workspace.METRICS_FILE, {"fingerprint": fingerprint})


def test_a_sweep_job_takes_a_finished_twin_from_another_job(tmp_path):
    sweep = tmp_path / "sweep"
    finished_stage(sweep / "0_loss=kd" / "reproduce/seed-1/teacher", "abc")
    finished_stage(sweep / "1_loss=at" / "reproduce/seed-0/teacher", "abc")  # another seed's place: not a twin
    ws = workspace.Workspace(sweep / "2_loss=dkd/reproduce/seed-1", sweep_dir=sweep)
    twin = ws.twin("teacher", "abc")
    assert twin == (sweep / "0_loss=kd/reproduce/seed-1/teacher").resolve()
    assert ws.twin("teacher", "other config") is None and ws.twin("student", "abc") is None
    assert workspace.Workspace(sweep / "0_loss=kd/reproduce/seed-1").twin("teacher", "abc") is None  # not in a sweep
    assert workspace.Workspace(sweep / "0_loss=kd/reproduce/seed-1", sweep_dir=sweep).twin("teacher", "abc") is None  # its own
    adopted = ws.adopt("teacher", twin)
    assert ws.find("teacher") == adopted and results(adopted) == results(twin)
    # Linked, not copied; and a later run replacing the twin's files (as publish does) leaves this job's alone.
    assert (adopted / workspace.MODEL_FILE).stat().st_ino == (twin / workspace.MODEL_FILE).stat().st_ino
    write_results(workspace.staging(twin), "retrained")
    workspace.publish(twin)
    assert (adopted / workspace.MODEL_FILE).read_text() == "weights"


def test_a_run_finished_in_a_workspace_beside_this_one_is_found_with_its_data(tmp_path):
    runs = tmp_path / "runs"
    for place, data in (("cifar_resnet/teacher", "stamp"), ("cifar_at/reproduce/seed-0/teacher", "stamp"),
                        ("cifar_fitnet/teacher", "older photos")):
        finished_stage(runs / place, "abc")
        files.write_json(runs / place / workspace.STARTED_FILE, {"fingerprint": "abc", "data": data})
    found = workspace.Workspace(runs / "cifar_dkd").neighbour("teacher", "abc", "stamp")
    assert found == runs / "cifar_at/reproduce/seed-0/teacher"  # the first in name order holding this run
    # A seed reproduce makes looks beside the recipe's workspace, not beside its own seeds alone.
    assert workspace.Workspace(runs / "cifar_dkd/reproduce/seed-0").neighbour("teacher", "abc", "stamp") == found
    # Another config, data set's files or stage is another run; a folder is never its own neighbour.
    assert workspace.Workspace(runs / "cifar_dkd").neighbour("teacher", "other config", "stamp") is None
    assert workspace.Workspace(runs / "cifar_dkd").neighbour("teacher", "abc", "new photos") is None
    assert workspace.Workspace(runs / "cifar_dkd").neighbour("student", "abc", "stamp") is None
    assert workspace.Workspace(runs / "cifar_fitnet").neighbour("teacher", "abc", "older photos") is None
    # A reproduce sweep's seed finds the runs made outside the sweep, under runs/.
    sweep = runs / "sweeps/sweep/2026-12-07_08-00-00"
    in_sweep = workspace.Workspace(sweep / "1_recipe=cifar_dkd/reproduce/seed-0", sweep_dir=sweep)
    assert in_sweep.neighbour("teacher", "abc", "stamp") == found
    # Results being published are not taken half-way.
    workspace.staging(found)
    assert workspace.Workspace(runs / "cifar_dkd").neighbour("teacher", "abc", "stamp") == runs / "cifar_resnet/teacher"
    # The linked folder keeps the data stamp, which a later pipeline compares with the files then.
    ws = workspace.Workspace(runs / "cifar_dkd")
    adopted = ws.adopt("teacher", runs / "cifar_resnet/teacher")
    assert workspace.started(adopted)["data"] == "stamp"


def test_a_pipeline_links_a_teacher_trained_beside_it_and_the_dry_run_says_so(tmp_path, monkeypatch, capsys):
    from distillctl.data.content_stamp import dataset_stamp
    from distillctl.errors import UserError
    from distillctl.stages import distill, pipeline, train_teacher
    from distillctl.stages.base import decide
    from distillctl.teacher_files import teacher_checkpoint, trained_teacher_fingerprint

    monkeypatch.chdir(tmp_path)
    first = composed("recipe=quickstart", "teacher.checkpoint=null", "run_dir=runs/quickstart")
    stamp = dataset_stamp(first.dataset)
    finished_stage(tmp_path / "runs/quickstart/teacher", trained_teacher_fingerprint(first))
    files.write_json(tmp_path / "runs/quickstart/teacher" / workspace.STARTED_FILE, {"data": stamp})
    # Another method, the same teacher: cifar_dkd after cifar_resnet.
    other = composed("recipe=quickstart", "teacher.checkpoint=null", "loss=dkd", "run_dir=runs/dkd")
    plan = decide(train_teacher.STAGE, other, workspace.Workspace.from_config(other), False)
    assert (plan.action, plan.source) == ("link", Path("runs/quickstart/teacher"))
    assert "this very config, inputs and data" in plan.why and "reuse=false" in plan.why
    with pytest.raises(UserError, match=r"runs/quickstart/teacher holds this very teacher .* "
                                        r"teacher\.checkpoint=runs/quickstart/teacher/model\.safetensors"):
        teacher_checkpoint(other, workspace.Workspace.from_config(other))  # `distill` alone names it
    # A dry run plans the student from the teacher it would link: here a DKD student trained beside it too.
    planned = workspace.Workspace.from_config(other)
    planned.planned["teacher"] = Path("runs/quickstart/teacher")
    finished_stage(tmp_path / "runs/quickstart-dkd/student", distill.fingerprint(other, planned))
    files.write_json(tmp_path / "runs/quickstart-dkd/student" / workspace.STARTED_FILE, {"data": stamp})
    capsys.readouterr()
    pipeline.show_plan(other, workspace.Workspace.from_config(other))
    rows = [line.split("│")[1:3] for line in capsys.readouterr().out.splitlines() if line.count("│") > 3]
    assert [[cell.strip() for cell in row] for row in rows[:3]] == [["teacher", "link"], ["student", "link"], ["pruned", "run"]]
    for declined in ("reuse=false", "trainer.epochs=3"):
        cfg = composed("recipe=quickstart", "teacher.checkpoint=null", "loss=dkd", "run_dir=runs/dkd", declined)
        assert decide(train_teacher.STAGE, cfg, workspace.Workspace.from_config(cfg), False).action == "run", declined


def test_a_staging_folder_of_a_live_writer_is_left_alone(tmp_path):
    stage = tmp_path / "student"
    write_results(stage, "old")
    write_results(workspace.staging(stage), "new")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from distillctl.workspace import Workspace; "
         f"Workspace(Path({str(tmp_path)!r})).claim('student'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert workspace.Workspace(tmp_path).find("student") == stage  # the old results, still whole
        assert results(stage / workspace.STAGING) == dict.fromkeys(results(stage), "new")  # the writer's, untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".model.safetensors.{files.HOST}-{dead.pid}-abc{files.PARTIAL}"
    live = tmp_path / f".model.safetensors.{files.HOST}-{os.getppid()}-abc{files.PARTIAL}"
    other_host = tmp_path / f".model.safetensors.elsewhere-{dead.pid}-abc{files.PARTIAL}"
    for path in (leftover, live, other_host):
        path.write_text("partial")
    files.write_text(target, "whole")
    assert target.read_text() == "whole"
    assert not leftover.exists() and live.exists() and other_host.exists()


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_gives_the_same_weights(tmp_path):
    """Every training stage (teacher, student, pruning fine-tune, QAT) killed with SIGKILL at random moments, mid-step
    or mid-write, and the pipeline run again until it finishes: each model is byte-identical to an uninterrupted run's."""
    import random
    import signal
    import time

    from conftest import TINY_RECIPE

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/tiny.yaml").write_text(TINY_RECIPE)
    args = [sys.executable, "-m", "distillctl", "pipeline", "recipe=tiny", "quantize=int8_qat", "trainer.epochs=2",
            "trainer.max_steps_per_epoch=6", "trainer.checkpoint_every_steps=2", "prune.finetune_epochs=2",
            "quantize.qat_epochs=2", "trainer.threads=1"]
    straight = subprocess.run([*args, "run_dir=runs/straight"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    draw, kills, log = random.Random(17), 0, []
    for attempt in range(12):
        # reuse=false: linking the straight run's stages, which have this config, would test nothing.
        proc = subprocess.Popen([*args, "run_dir=runs/killed", "reuse=false"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        delay = draw.uniform(3, 8) if attempt < 8 else 600  # the last tries finish the pipeline
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            log.append(f"killed after {delay:.1f}s")
            time.sleep(0.2)
            continue
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
        break
    assert kills >= 3, log
    for stage in ("teacher", "student", "pruned", "int8_qat"):
        a, b = (tmp_path / f"runs/{run}/{stage}/model.safetensors" for run in ("straight", "killed"))
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), (stage, log)
    assert not list((tmp_path / "runs/killed").rglob(f"*{files.PARTIAL}")), "temporary files left behind"
