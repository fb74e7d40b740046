"""The tool as a user drives it: subprocesses on the embedded sample, artifacts, exit codes, messages."""

from __future__ import annotations

import csv
import json
import os
import re
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_CIFAR, TINY

import distillctl
from distillctl.cli import TOOLS
from distillctl.compress.sparsity import weight_sparsity
from distillctl.models import create_model, load_model


def one_error_line(result) -> str:
    """The run failed the way user errors must: exit 2, one line, no traceback."""
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.err
    return lines[0]


@pytest.mark.slow
def test_pipeline_writes_every_artifact_and_skips_on_rerun(cli, tiny):
    first = cli("pipeline", "recipe=tiny")
    assert first.code == 0, first.text
    runs = tiny / "runs" / "tiny"
    for stage in ("teacher", "student", "pruned"):
        for name in ("model.safetensors", "config.yaml", "metrics.json", "train.log", "history.jsonl", "last_state.pt"):
            assert (runs / stage / name).is_file(), f"{stage}/{name}"
        metrics = json.loads((runs / stage / "metrics.json").read_text())
        assert 0.0 <= metrics["test_top1"] <= 1.0 and metrics["fingerprint"]
        # What produced it: the command that reruns it, the code and the libraries.
        made_by = metrics["environment"]
        assert made_by["command"] == "distillctl pipeline recipe=tiny" and made_by["torch"] == torch.__version__
        assert made_by["distillctl"].startswith(distillctl.__version__) and made_by["cpu"]
        # Training state loads without unpickling code.
        assert "optimizer" in torch.load(runs / stage / "last_state.pt", weights_only=True)
    int8 = json.loads((runs / "int8_static" / "metrics.json").read_text())
    assert int8["source"].endswith("pruned/model.safetensors") and int8["agreement_with_float"] > 0.5
    assert {p.name for p in (runs / "report").iterdir()} == {"metrics.json", "report.md", "per_class.csv", "accuracy_vs_size.png",
                                                              "accuracy_vs_latency.png"}
    report = json.loads((runs / "report" / "metrics.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "pruned", "int8_static"}
    assert report["models"]["pruned"]["macs"] < 0.55 * report["models"]["student"]["macs"]
    assert report["models"]["int8_static"]["size_mb"] < report["models"]["pruned"]["size_mb"] / 2
    assert {"top1", "top5", "agreement", "params", "macs", "size_mb", "latency_ms", "throughput"} <= set(report["models"]["student"])
    assert report["models"]["teacher"]["agreement"] == 1.0 and report["context"]["threads"] >= 1
    assert "| student (resnet8) |" in (md := (runs / "report" / "report.md").read_text()) and "(accuracy_vs_size.png)" in md
    # Every class's top-1 per model; the report's lowest class figure is the CSV's.
    per_class = list(csv.DictReader((runs / "report" / "per_class.csv").open()))
    assert len(per_class) == 10 and sum(int(row["test_images"]) for row in per_class) == report["context"]["test_images"]
    assert min(float(row["student"]) for row in per_class) == pytest.approx(report["models"]["student"]["worst_class_top1"], abs=1e-4)
    assert "## Top-1 per class" in md
    assert "- command: `distillctl pipeline recipe=tiny`" in md and f"torch {torch.__version__}" in md
    assert "the 1 expectation met" in first.out
    assert "expect" in (runs / "student" / "config.yaml").read_text()

    again = cli("pipeline", "recipe=tiny", "trainer.threads=1", "trainer.log_every=5")  # how it runs, not what
    assert again.code == 0 and again.out.count("skip") == 4, again.out
    assert re.search(r"CPU timings on 1 thread *$", again.out, re.M), again.out

    changed = cli("pipeline", "recipe=tiny", "loss.terms.kd.temperature=8")
    assert changed.code == 0 and "skip teacher" in changed.out and "skip student" not in changed.out and "skip int8_static" not in changed.out
    assert "running student again: runs/tiny/student was made with loss.terms.kd.temperature 4.0 -> 8" in changed.out
    assert "running int8_static again: a stage before it is made again in this run" in changed.out
    made = {stage: json.loads((runs / stage / "metrics.json").read_text())["fingerprint"] for stage in ("student", "pruned")}
    assert json.loads((runs / "pruned" / "metrics.json").read_text())["made_from"] == {"student": made["student"]}

    # A dry run names what would be trained, and why, before a GPU hour is spent on it.
    planned = cli("pipeline", "recipe=tiny", "loss.terms.kd.temperature=2", "dry_run=true", env={"COLUMNS": "250"})
    assert planned.code == 0, planned.text
    assert "loss.terms.kd.temperature 8.0 -> 2" in planned.out and "a stage before it is made again in this run" in planned.out
    assert json.loads((runs / "student" / "metrics.json").read_text())["fingerprint"] == made["student"]

    # A stage run alone leaves the models made from its old results; evaluate and runs say which, and why.
    assert cli("distill", "recipe=tiny", "seed=1").code == 0
    stale = cli("evaluate", "recipe=tiny")
    assert stale.code == 0, stale.text
    assert "warning: pruned is outdated: made from an earlier student (student/ was made again since)" in stale.out
    assert "warning: int8_static is outdated: made from pruned, made from an earlier student" in stale.out
    assert "**Warning:** pruned is outdated" in (runs / "report" / "report.md").read_text()
    listed = cli("runs").out
    assert "pruned\toutdated: made from an earlier student" in listed and "student\tfinished" in listed

    forced = cli("pipeline", "recipe=tiny", "force=true")
    assert forced.code == 0 and "skip" not in forced.out and "outdated" not in forced.out


@pytest.mark.slow
def test_a_pipeline_runs_again_after_photos_are_added_but_not_after_they_are_copied(cli, tiny):
    # A stage was up to date with its config whatever happened to the photos: new ones were never trained on.
    import shutil

    from conftest import write_photo_folder

    write_photo_folder(tiny / "shot", {"": 60}, size=(40, 40))
    run = ["pipeline", "recipe=tiny", "dataset=imagefolder", "dataset.path=photos", "dataset.image_size=32", "trainer.threads=1"]
    shutil.copytree(tiny / "shot", tiny / "photos")
    assert cli(*run).code == 0
    shutil.rmtree(tiny / "photos")
    shutil.copytree(tiny / "shot", tiny / "photos", copy_function=shutil.copyfile)  # to another disk: new times
    (tiny / "photos" / ".DS_Store").write_bytes(b"Finder")
    copied = cli(*run, "dry_run=true", env={"COLUMNS": "250"})
    assert copied.code == 0 and copied.out.count("is up to date with this config") == 4, copied.out
    one = next((tiny / "photos").rglob("*.jpg"))
    shutil.copyfile(one, one.with_name("new_photo.jpg"))
    added = cli(*run, "dry_run=true", env={"COLUMNS": "250"})
    assert "the files of dataset.path=photos changed since runs/tiny/teacher was made" in added.out, added.out
    assert added.out.count("a stage before it is made again in this run") == 3


def test_a_dry_run_says_what_pipeline_would_do_and_writes_nothing(cli, tmp_path):
    planned = cli("pipeline", "recipe=quickstart", "dry_run=true", env={"COLUMNS": "250"})
    assert planned.code == 0, planned.text
    rows = {line.split("│")[1].strip(): line for line in planned.out.splitlines() if line.count("│") == 4}
    assert "skip" in rows["train-teacher"] and "is used as it is" in rows["train-teacher"]
    assert all("│ run " in rows[stage] for stage in ("student", "pruned", "int8_static", "evaluate")), rows
    assert "not made yet" in rows["student"]
    assert not (tmp_path / "runs").exists()
    # Only the commands that chain stages plan; a stage command does what it is told.
    assert "dry_run=true is read by pipeline and reproduce only" in one_error_line(cli("distill", "recipe=quickstart", "dry_run=true"))
    seeds = cli("reproduce", "recipe=quickstart", "reproduce.seeds=[0,1]", "dry_run=true", env={"COLUMNS": "250"})
    assert seeds.code == 0, seeds.text
    rows = [line for line in seeds.out.splitlines() if line.count("│") == 5]
    assert [row.split("│")[1].strip() for row in rows] == ["seed 0", "seed 0", "seed 0 baseline (loss=ce)", "seed 1", "seed 1",
                                                         "seed 1 baseline (loss=ce)"]
    assert all("│ run " in row and "not made yet" in row for row in rows if "│ student " in row)
    assert not (tmp_path / "runs").exists()


def test_a_batch_larger_than_the_training_set_is_said(cli, tiny):
    result = cli("train-teacher", "recipe=tiny", "dataset.train_limit=20", "trainer.batch_size=64", "trainer.threads=1")
    assert result.code == 0, result.text
    assert "warning: trainer.batch_size=64 is more than the 20 training images: each epoch is one step on all of them" in result.out


@pytest.mark.slow
def test_a_missed_expectation_exits_1_with_what_fell_short(cli, tiny):
    assert cli("pipeline", "recipe=tiny").code == 0
    missed = cli("evaluate", "recipe=tiny", "expect.student.top1.min=0.99")
    assert missed.code == 1, missed.text
    assert "expectations not met" in missed.out and "student.top1" in missed.out


@pytest.mark.slow
def test_stages_one_by_one_on_the_real_data_set(cli, tmp_path):
    if not SHARED_CIFAR.is_dir():
        pytest.skip("../shared/data/cifar10 is not beside this checkout")
    data = [f"dataset.path={SHARED_CIFAR}", "dataset.train_limit=600", "dataset.val_size=100", "dataset.test_limit=300"]
    small = ["teacher=resnet8", *TINY]
    teacher = cli("train-teacher", "recipe=cifar_resnet", *data, *small)
    assert teacher.code == 0, teacher.text
    student = cli("distill", "recipe=cifar_resnet", *data, *small, "loss.terms.kd.temperature=8")
    assert student.code == 0, student.text
    assert "runs/cifar_resnet/teacher/model.safetensors" in json.loads((tmp_path / "runs/cifar_resnet/student/metrics.json").read_text())["teacher"]
    report = cli("evaluate", "recipe=cifar_resnet", *data, "dataset.test_limit=300", "~expect")  # a few steps: not the full-schedule gate
    assert report.code == 0, report.text
    assert "teacher (resnet8)" in report.out and "student (resnet20)" in report.out


@pytest.mark.slow
def test_resume_through_the_cli(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0
    resumed = cli("train-teacher", "recipe=tiny", "trainer.epochs=2", "resume=true")
    assert resumed.code == 0, resumed.text
    metrics = json.loads((tiny / "runs/tiny/teacher/metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 2
    history = (tiny / "runs/tiny/teacher/history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]


@pytest.mark.slow
def test_multirun_sweep_gives_each_job_its_own_folder(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0
    # Job folders are named after the swept values only, not after every fixed override beside them.
    sweep = cli("distill", "-m", "recipe=tiny", "loss.terms.kd.temperature=2,8", "trainer.log_every=2")
    assert sweep.code == 0, sweep.text
    jobs = sorted(p.parent.parent.name for p in (tiny / "runs/tiny/sweep").glob("*/*/student/metrics.json"))
    assert jobs == ["0_loss.terms.kd.temperature=2", "1_loss.terms.kd.temperature=8"]
    assert "sweep:" in sweep.out and sweep.out.count("resnet8") >= 2  # the closing summary table
    assert "MMACs" not in sweep.out  # distill evaluates nothing beyond the test top-1


@pytest.mark.slow
def test_a_pipeline_sweep_trains_what_its_jobs_share_once(cli, tiny):
    sweep = cli("pipeline", "-m", "recipe=tiny", "loss.terms.kd.temperature=2,8")
    assert sweep.code == 0, sweep.text
    (first, second), = [sorted(job for job in p.iterdir() if job.is_dir()) for p in (tiny / "runs/tiny/sweep").iterdir()]
    # The teacher does not depend on the swept KD temperature: job 1 takes job 0's.
    assert sweep.out.count("another job of this sweep finished it") == 1
    assert (second / "teacher/model.safetensors").stat().st_ino == (first / "teacher/model.safetensors").stat().st_ino
    assert (first / "student/model.safetensors").read_bytes() != (second / "student/model.safetensors").read_bytes()
    # The closing table lists every job's models, the quantized ones too (no validation top-1: "-").
    assert "raised" not in sweep.err, sweep.err
    table = sweep.out[sweep.out.index("sweep: runs/tiny/sweep"):]
    assert table.count("int8_static") == 2 and table.count("teacher") == 2
    assert (first.parent / "summary.md").read_text().count("| int8_static | resnet8 |") == 2
    # With each job's report: MACs, size and latency beside the accuracy (a sweep over compression settings).
    assert "MMACs" in table and "latency b1 (ms)" in table


@pytest.mark.slow
def test_reproduce_sweep_compares_methods_over_seeds_in_one_table(cli, tiny):
    (tiny / "recipes" / "tiny_ce.yaml").write_text("# @package _global_\ndefaults:\n  - tiny\n  - override /loss: ce\n")
    sweep = cli("reproduce", "-m", "recipe=tiny,tiny_ce", "reproduce.seeds=[0,1]")
    assert sweep.code == 0, sweep.text
    (folder,) = (tiny / "runs/sweeps/sweep").iterdir()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0_recipe=tiny", "1_recipe=tiny_ce"]
    for job in ("0_recipe=tiny", "1_recipe=tiny_ce"):
        assert json.loads((folder / job / "reproduce/results.json").read_text())["seeds"] == [0, 1]
    # Each seed's teacher and no-teacher baseline are the same for both recipes: trained once, linked into job 1.
    assert sweep.out.count("another job of this sweep finished it") == 4
    job_1 = folder / "1_recipe=tiny_ce/reproduce"
    assert (job_1 / "seed-1/teacher/model.safetensors").stat().st_ino == (folder / "0_recipe=tiny/reproduce/seed-1/teacher/model.safetensors").stat().st_ino
    gains = {job: json.loads((folder / job / "reproduce/results.json").read_text())["rows"]["gain"]["mean"] for job in ("0_recipe=tiny", "1_recipe=tiny_ce")}
    table = sweep.out[sweep.out.index("mean ± std over seeds"):]
    assert all(f"{gain:+.2%} ±" in table for gain in gains.values()) and "1_recipe=tiny_ce" in table
    # The same table in the sweep's folder, as markdown to paste into a paper or an issue.
    summary = (folder / "summary.md").read_text()
    assert "| 1_recipe=tiny_ce | 0, 1 |" in summary and all(f"{gain:+.2%} ±" in summary for gain in gains.values())


def test_evaluate_before_the_pipeline_says_which_models_are_missing(cli, tmp_path):
    # quickstart's teacher is bundled, so the workspace has a teacher and nothing else to meet student.top1 with.
    result = cli("evaluate", "trainer.threads=1", "dataset.test_limit=100")
    assert result.code == 1, result.text
    assert "missing: no student, int8_static model was evaluated" in " ".join(result.out.split())


def test_a_sweeps_job_folders_are_named_after_the_swept_values_alone():
    from distillctl.composition import with_sweep_dir

    args = with_sweep_dir(["-m", "~expect", "+expect.teacher.top1.min=0.5", "seed=0,1", "recipe=quickstart"])
    assert "hydra.sweep.dir=runs/quickstart/sweep/${now:%Y-%m-%d_%H-%M-%S}" in args
    # Hydra compares bare keys: `+`/`~` overrides are left out like any other fixed one.
    assert "hydra.job.config.override_dirname.exclude_keys=[dry_run,expect,expect.teacher.top1.min,force,recipe,resume,reuse,run_dir,wait]" in args
    # A swept recipe names the jobs, and their folders go under runs/sweeps/.
    compared = with_sweep_dir(["-m", "recipe=cifar_at,cifar_dkd"])
    assert "hydra.sweep.dir=runs/sweeps/sweep/${now:%Y-%m-%d_%H-%M-%S}" in compared
    assert "hydra.job.config.override_dirname.exclude_keys=[dry_run,force,resume,reuse,run_dir,wait]" in compared


def test_a_sweep_runs_every_job_when_one_fails_and_ends_with_its_exit_code(cli, tmp_path):
    gate = ["~expect", "+expect.teacher.top1.min=0.99", "trainer.threads=1"]  # the bundled teacher has 84%
    result = cli("evaluate", "-m", *gate, "dataset.test_limit=50,60")
    assert result.code == 1, result.text
    (sweep,) = (tmp_path / "runs/quickstart/sweep").iterdir()
    for job in ("0_dataset.test_limit=50", "1_dataset.test_limit=60"):  # job 1 ran although job 0 had failed
        assert (sweep / job / "report/metrics.json").is_file()
        # each job's own shortfall, which its output said long before the sweep's end
        assert re.search(rf"{re.escape(job)}: exit 1: expectations not met: teacher\.top1 0\.8\d* \(min 0\.99\)", result.out)
    assert "2 job(s) of the sweep failed" in result.out and "## failed jobs" in (sweep / "summary.md").read_text()
    # The same sweep run again in its folder with a bound the teacher meets: the failures are forgotten.
    again = cli("evaluate", "-m", *gate[:-2], "+expect.teacher.top1.min=0.5", "trainer.threads=1", "dataset.test_limit=50,60",
                f"hydra.sweep.dir={sweep}")
    assert again.code == 0, again.text
    assert "failed" not in again.out and "failed jobs" not in (summary := (sweep / "summary.md").read_text())
    # Evaluate's jobs are tabulated from their reports: the bundled teacher, with its size and latency.
    assert summary.count("| teacher | resnet20 |") == 2 and "latency b1 (ms)" in summary


def test_prune_without_a_student_says_what_to_run(cli, tiny):
    assert "distillctl distill" in one_error_line(cli("prune", "recipe=tiny"))
    assert "distillctl distill" in one_error_line(cli("quantize", "recipe=tiny"))


@pytest.mark.slow
def test_every_quantization_and_export_through_the_cli(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0 and cli("distill", "recipe=tiny").code == 0
    runs = tiny / "runs" / "tiny"
    for method in ("int8_static", "int8_qat", "fp16", "onnx_int8", "executorch_int8"):
        result = cli("quantize", "recipe=tiny", f"quantize={method}", "export.onnx=true")
        assert result.code == 0, result.text
        metrics = json.loads((runs / method / "metrics.json").read_text())
        assert metrics["source"].endswith("student/model.safetensors") and metrics["size_mb"] < metrics["float_size_mb"]
    assert (runs / "onnx_int8" / "model.onnx").is_file() and (runs / "int8_qat" / "train.log").is_file()
    export = json.loads((runs / "export" / "metrics.json").read_text())
    assert export["max_abs_difference_vs_torch"] < 1e-3 and export["same_top1_vs_torch"] == 1.0
    report = cli("evaluate", "recipe=tiny")
    assert report.code == 0, report.text
    rows = json.loads((runs / "report" / "metrics.json").read_text())["models"]
    assert list(rows) == ["teacher", "student", "fp16", "int8_static", "int8_qat", "onnx_int8", "executorch_int8"]
    assert rows["onnx_int8"]["runtime"] == "onnxruntime" and rows["int8_static"]["runtime"] == "torchscript"
    assert rows["executorch_int8"]["runtime"] == "executorch-xnnpack" and rows["executorch_int8"]["latency_ms"] > 0
    assert rows["int8_qat"]["params"] == rows["student"]["params"] and rows["int8_qat"]["macs"] == rows["student"]["macs"]
    # Feature-tapping terms cannot follow fused layers: refused before any training, with the way out.
    fitnet = cli("quantize", "recipe=tiny", "quantize=int8_qat", "loss=fitnet")
    assert "loss=kd" in one_error_line(fitnet)


@pytest.mark.slow
def test_iterative_pruning_fine_tunes_after_each_step(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0 and cli("distill", "recipe=tiny").code == 0
    result = cli("prune", "recipe=tiny", "prune.steps=2")
    assert result.code == 0, result.text
    runs = tiny / "runs" / "tiny"
    assert json.loads((runs / "pruned" / "step1" / "metrics.json").read_text())["step"] == 1
    final = json.loads((runs / "pruned" / "metrics.json").read_text())
    assert final["step"] == 2 and final["macs_ratio"] <= 0.5
    # Unstructured pruning fine-tunes too, and the weights it zeroed are still zero after training.
    result = cli("prune", "recipe=tiny", "prune=unstructured", "prune.sparsity=0.7")
    assert result.code == 0, result.text
    metrics = json.loads((runs / "pruned" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test_top1"] is not None and metrics["sparsity"] == pytest.approx(0.7, abs=0.01)
    tuned, student = load_model(runs / "pruned" / "model.safetensors")[0], load_model(runs / "student" / "model.safetensors")[0]
    assert weight_sparsity(tuned) == pytest.approx(0.7, abs=0.01)
    kept = tuned.layer1[0].conv1.weight != 0
    assert not torch.equal(tuned.layer1[0].conv1.weight[kept], student.layer1[0].conv1.weight[kept])  # trained


@pytest.mark.slow
def test_a_vit_students_attention_heads_are_pruned_through_the_cli_and_the_pruned_file_evaluates(cli, tiny):
    vit = ["student.name=vit_tiny_patch16_224", "++student.kwargs.img_size=32", "++student.kwargs.patch_size=8",
           "++student.kwargs.embed_dim=32", "++student.kwargs.depth=1", "++student.kwargs.num_heads=2", "trainer.threads=1"]
    assert cli("train-teacher", "recipe=tiny", "trainer.threads=1").code == 0
    assert cli("distill", "recipe=tiny", *vit).code == 0
    result = cli("prune", "recipe=tiny", *vit, "prune.head_ratio=0.5")
    assert result.code == 0, result.text
    assert "attention heads 2 -> 1" in result.out
    runs = tiny / "runs" / "tiny"
    assert json.loads((runs / "pruned" / "metrics.json").read_text())["attention_heads"] == 1
    pruned = load_model(runs / "pruned" / "model.safetensors")[0]
    assert pruned.blocks[0].attn.num_heads == 1 and pruned.blocks[0].attn.qkv.out_features == 3 * 16
    assert cli("quantize", "recipe=tiny", *vit, "quantize=onnx_int8").code == 0  # the pruned layout exports too
    report = cli("evaluate", "recipe=tiny", *vit)
    assert report.code == 0, report.text
    rows = json.loads((runs / "report" / "metrics.json").read_text())["models"]
    assert rows["pruned"]["params"] == sum(p.numel() for p in pruned.parameters()) and rows["onnx_int8"]["top1"] is not None
    # A setting only structured pruning reads is refused with another method.
    assert "head_ratio" in one_error_line(cli("prune", "recipe=tiny", *vit, "prune=unstructured", "prune.head_ratio=0.5"))


def test_distill_without_a_teacher_says_how_to_get_one(cli, tiny):
    line = one_error_line(cli("distill", "recipe=tiny"))
    assert "distillctl train-teacher recipe=tiny" in line and "teacher.checkpoint=" in line


def test_inspect_lists_modules_and_shapes(cli):
    result = cli("inspect", "model=resnet8")
    assert result.code == 0 and "layer3.0.conv1" in result.out and "1x64x8x8" in result.out
    vit = cli("inspect", "model=vit_tiny_patch16_224", "image_size=224")  # the head counts prune.head_ratio works on
    assert vit.code == 0 and vit.out.count("Attention (3 heads)") == 12


def test_inspect_shows_what_pruning_left_of_a_model_file(cli, tmp_path):
    from distillctl import artifacts
    from distillctl.compress.channels import prune_structured
    from distillctl.compress.shapes import layer_shapes

    pruned, _, _ = prune_structured(create_model("resnet8", 10).eval(), torch.randn(1, 3, 32, 32), 0.5, None, "l1", False)
    path = tmp_path / "pruned.safetensors"
    artifacts.save_weights(path, pruned, {"model": "resnet8", "num_classes": 10, "shapes": layer_shapes(pruned),
                                          "preprocess": {"image_size": 32, "resize": "square", "crop_pct": 0.875, "interpolation": "bilinear"}})
    result = cli("inspect", "model=pruned.safetensors")  # (in tmp_path)
    assert result.code == 0, result.text
    assert "resnet8 in pruned.safetensors" in result.out
    width = pruned.conv1.out_channels  # fewer than resnet8's 16, as the file's shapes say
    assert width < 16 and f"1x{width}x32x32" in result.out
    assert "leave out num_classes=" in one_error_line(cli("inspect", "model=pruned.safetensors", "num_classes=3"))
    assert "inspect reads the .safetensors files distillctl writes" in one_error_line(cli("inspect", "model=model.onnx"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["distill", "recipe=nope"], "unknown recipe 'nope'"),
        # Hydra said "Error parsing override 'kd' missing EQUAL at '<EOF>'"
        (["distill", "kd"], "'kd' is not a setting: settings are key=value. To pick that option: loss=kd."),
        (["pipeline", "quickstart"], "To run that recipe: recipe=quickstart."),
        (["distill", "nothing_known", "-m"], "A recipe is recipe=NAME, a data set dataset.path=DIR, and `distillctl distill --help`"),
        (["distill", "trainer.epochz=3"], "Did you mean 'epochs'?"),
        (["train-teacher", "recipe=tiny", "teacher.name=resnet21"], "Did you mean 'resnet20'"),
        # a model name is checked before the data set is looked for and loaded
        (["distill", "recipe=tiny", "student=mobilenetv3_smal_050", "dataset.path=./nowhere"], "Did you mean 'mobilenetv3_small_050'"),
        (["distill", "loss=kd,at"], "loss=kd,at gives several values: add -m to run one job for each"),  # Hydra's 5 lines
        (["distill", "--help", "seed=0,1"], "seed=0,1 gives several values"),
        # Hydra stopped at the ce term both options bring, and merged two optimizers into one without a word
        (["distill", "loss=[kd,at]"], "loss takes one option; kd_at is KD with attention transfer"),
        (["distill", "optimizer=[sgd,adamw]"], "optimizer takes one option. To run one job for each, add -m"),
        (["train-teacher", "recipe=tiny", "teacher.name=resnet18.a1_in1"], "no tag 'a1_in1' for resnet18. Did you mean 'a1_in1k'"),
        (["train-teacher", "recipe=tiny", "dataset.path=./nowhere"], "does not exist"),
        (["train-teacher", "recipe=tiny", "dataset.path=uoft-cs/cifar10"], "point dataset.path at local files"),
        (["distill", "recipe=tiny", "teacher.checkpoint=missing.safetensors"], "does not exist"),
        (["distill", "recipe=tiny", "teacher.checkpoint=corrupt.safetensors"], "may be corrupt"),
        (["distill", "recipe=tiny", "teacher.checkpoint=pickled.pt"], "could not read checkpoint"),
        (["inspect", "model=resnet21"], "unknown model"),
        (["inspect", "resnet56"], "inspect takes key=value settings: `distillctl inspect model=resnet56`."),
        (["inspect", "model=resnet8", "image_size=0"], "image_size=0 must be at least 8"),  # these three were tracebacks
        (["inspect", "model=resnet8", "num_classes=1e9"], "num_classes=1e9 is not a whole number"),
        (["inspect", "model=vit_tiny_patch16_224"], "inspect it at image_size=224"),
        (["distill", "recipe=tiny", "loss.terms.kd.temperatur=2"], "Did you mean 'temperature'"),
        (["quantize", "recipe=tiny", "quantize=int4"], "quantize"),
        (["quantize", "recipe=tiny", "quantize.method=int8_statik"], "Did you mean 'int8_static'"),
        (["distill", "--cfg", "job", "trainer.epochz=3"], "Did you mean 'epochs'?"),  # printing the config checks it too
        (["distill", "--shell-completion", "install=bash"], "distillctl completion bash"),  # Hydra's would not see commands
        (["completion", "tcsh"], "Shells: bash, zsh, fish"),
        (["recipes", "--jsn"], "recipes takes --json alone"),
        (["distill", "dataset=null"], "To drop a config group's choice, delete it: ~dataset."),  # was a traceback
        (["distill", "loss=kdd"], "Available options in 'loss': adversarial at"),
        (["distill", "loss=kdd"], "Did you mean 'kd' or"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, tiny, args, expected):
    (tiny / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)

    class Payload:  # unpickling this would run code; weights_only loading must refuse it
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tiny / "pickled.pt").write_bytes(pickle.dumps({"state_dict": Payload()}))
    result = cli(*args)
    line = one_error_line(result)
    assert expected in line
    assert "unpickled!" not in result.out


def test_a_broken_recipe_file_matters_only_to_the_recipes_that_use_it(cli, tiny):
    (tiny / "recipes/draft.yaml").write_text("trainer: [1, 2\n")
    (tiny / "recipes/uses_draft.yaml").write_text("# @package _global_\ndefaults:\n  - draft\n")
    (tiny / "recipes/typo.yaml").write_text("# @package _global_\ndefaults:\n  - cifar_resnett\n")
    assert cli("distill", "recipe=tiny", "--cfg", "job").code == 0
    assert "draft.yaml is not valid YAML" in one_error_line(cli("distill", "recipe=draft"))
    assert one_error_line(cli("distill", "recipe=uses_draft")).startswith("error: in recipe/uses_draft: recipe ")
    assert "Did you mean 'cifar_resnet'" in one_error_line(cli("distill", "recipe=typo"))


def test_a_path_under_the_home_folder_is_written_as_in_a_shell(cli, tmp_path):
    # bash leaves `dataset.path=~/photos` alone (a dot is not allowed in a variable's name) and Hydra's grammar
    # refused the `~` with a lexer error.
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    shown = cli("distill", "dataset.path=~/photos", "teacher.checkpoint=~/t.safetensors", "--cfg", "job", env={"HOME": str(home)})
    assert shown.code == 0, shown.text
    assert f"path: {home}/photos" in shown.out and f"checkpoint: {home}/t.safetensors" in shown.out
    missing = one_error_line(cli("pipeline", "dataset=imagefolder", "dataset.path=~/elsewhere", env={"HOME": str(home)}))
    assert f"'{home}/elsewhere' does not exist" in missing


def test_setting_a_search_space_without_plus_names_the_override_that_adds_to_it(cli):
    # Hydra's own advice (+search.space=...) came first, in a message of three sentences that disagreed.
    line = one_error_line(cli("search", "search.space={optimizer.lr:{low:0.01,high:1}}", "--cfg", "job"))
    assert "key=value cannot add: ++search.space='{optimizer.lr:" in line and "Could not override" not in line
    # An unrelated mistake beside a valid ++search.space keeps its own message.
    other = one_error_line(cli("search", "++search.space={optimizer.lr:{low:0.01,high:1}}", "loss=kdd", "--cfg", "job"))
    assert "Did you mean 'kd'" in other and "search space" not in other


@pytest.mark.slow
def test_every_method_recipe_trains_a_few_steps(cli, tmp_path):
    small = ["dataset=embedded", *TINY, "dataset.test_limit=100", "trainer.threads=1"]
    assert cli("train-teacher", "recipe=cifar_resnet", "teacher=resnet14", *small, "run_dir=runs/t").code == 0
    ckpt = tmp_path / "runs/t/teacher/model.safetensors"
    expected = {"cifar_fitnet": {"ce", "hint"}, "cifar_at": {"ce", "at"}, "cifar_adversarial": {"ce", "kd", "adversarial"}, "cifar_dkd": {"ce", "dkd"},
                # loss presets without a recipe of their own, on cifar_resnet
                "dist": {"ce", "dist"}, "kd_ls": {"ce", "kd"}, "rkd": {"ce", "rkd"}, "pkt": {"ce", "pkt"}, "sp": {"ce", "sp"},
                "crd": {"ce", "crd"}, "nst": {"ce", "nst"}, "vid": {"ce", "vid"}, "cc": {"ce", "cc"}, "ofd": {"ce", "ofd"},
                "reviewkd": {"ce", "reviewkd"}, "kd": {"ce", "kd"}, "kd_at": {"ce", "kd", "at"}, "ce": {"ce"},
                # FT's paraphraser stage is tested in test_baselines; here its factor loss runs from the first step
                "ft": {"ce", "ft"}}
    recipes = [m for m in expected if m.startswith("cifar_")]
    # Like timm's test over every registered model: a loss preset added without a line here fails.
    presets = {f.stem for f in (Path(distillctl.__file__).parent / "configs/loss").glob("*.yaml")}
    tried = {m.removeprefix("cifar_") for m in expected}  # cifar_at trains loss=at, ...
    assert presets == tried, presets ^ tried
    # As a researcher compares methods: one sweep over the losses, one over the method recipes (and one process each).
    teacher = [f"teacher.checkpoint={ckpt}", "teacher.name=resnet14"]
    losses = ",".join(m for m in expected if m not in recipes and m != "ft")
    sweeps = [["-m", "recipe=cifar_resnet", f"loss={losses}", "hydra.sweep.dir=losses"],
              ["-m", f"recipe={','.join(recipes)}", "hydra.sweep.dir=recipes"],
              ["recipe=cifar_resnet", "loss=ft", "loss.terms.ft.paraphraser_epochs=0", "run_dir=runs/ft"]]
    for args in sweeps:
        result = cli("distill", *args, *small, *teacher)
        assert result.code == 0, f"{args}: {result.text[-3000:]}"
    # job folders are named after the value swept: losses/0_loss=dist, recipes/0_recipe=cifar_fitnet
    folders = {job.name.split("=", 1)[1]: job for sweep in ("losses", "recipes") for job in (tmp_path / sweep).iterdir() if "=" in job.name}
    folders["ft"] = tmp_path / "runs/ft"
    assert set(folders) == set(expected), set(folders) ^ set(expected)
    for method, terms in expected.items():
        history = json.loads((folders[method] / "student/history.jsonl").read_text().splitlines()[-1])
        assert {f"loss.{t}" for t in terms} <= set(history), (method, history)
    bad_layer = cli("distill", "recipe=cifar_fitnet", *small, *teacher, "loss.terms.hint.student_layer=layer_2")
    assert "Did you mean 'layer2'" in one_error_line(bad_layer)
    state = torch.load(folders["cifar_adversarial"] / "student/last_state.pt", weights_only=True)
    assert any("discriminator" in k for k in state["objective"])  # the term's own state is checkpointed
    from safetensors import safe_open

    with safe_open(str(folders["cifar_fitnet"] / "student/model.safetensors"), "pt") as f:
        assert not any("regressor" in k for k in f.keys())  # term parameters never reach the exported student


def test_a_teacher_whose_classes_are_in_another_order_is_flagged_before_training(cli, tiny):
    """A plain state dict records no class names: one trained with the classes in another order loads, and only its
    accuracy on the validation split gives it away."""
    from safetensors.torch import load_file

    from distillctl.config import bundled_weights
    from distillctl.console import console
    from distillctl.stages.training import report_teacher

    state = load_file(bundled_weights("resnet20_cifar10.safetensors"))  # 88% on the sample's validation split
    state["fc.weight"], state["fc.bias"] = state["fc.weight"].roll(1, 0), state["fc.bias"].roll(1, 0)
    torch.save(state, tiny / "shuffled.pth")
    result = cli("distill", "recipe=tiny", "teacher=resnet20", "teacher.checkpoint=shuffled.pth", "trainer.threads=1")
    assert result.code == 0, result.text
    top1 = json.loads((tiny / "runs/tiny/student/metrics.json").read_text())["teacher_val_top1"]
    out = " ".join(result.out.split())
    assert top1 < 0.2 and f"teacher: {top1:.2%} top-1 on the validation split" in out
    assert "warning: the teacher is near chance (10.0% for 10 classes)" in out
    assert "in this order (airplane, automobile, bird, cat, ...)" in out

    def reported(*args) -> str:
        with console.capture() as shown:
            report_teacher(*args)
        return " ".join(shown.get().split())

    classes = ["airplane", "automobile"] * 5
    assert reported(0.88, classes) == "teacher: 88.00% top-1 on the validation split"
    # as weak as its file says it was when trained (a smoke run's few steps): noted, not warned about
    assert reported(0.12, classes, 0.14) == "teacher: 12.00% top-1 on the validation split (14.00% when it was trained)"
    assert "warning: the teacher is near chance" in reported(0.12, classes, 0.84)


@pytest.mark.slow
def test_multi_teacher_distillation(cli, tiny):
    assert cli("train-teacher", "recipe=tiny").code == 0
    ckpt = tiny / "runs/tiny/teacher/model.safetensors"
    teachers = f"teachers=[{{name:resnet8,checkpoint:'{ckpt}'}},{{name:resnet8,checkpoint:'{ckpt}',weight:2.0}}]"
    result = cli("distill", "recipe=tiny", teachers, "run_dir=runs/ensemble")
    assert result.code == 0, result.text
    metrics = json.loads((tiny / "runs/ensemble/student/metrics.json").read_text())
    assert metrics["teacher"].count("model.safetensors") == 2
    # The report's teacher is the ensemble the student learned from (this workspace trained no teacher of its own).
    report = cli("evaluate", "recipe=tiny", teachers, "run_dir=runs/ensemble")
    assert report.code == 0, report.text
    teacher = json.loads((tiny / "runs/ensemble/report/metrics.json").read_text())["models"]["teacher"]
    assert teacher["arch"] == "resnet8 + resnet8" and teacher["path"] == f"{ckpt}, {ckpt}", teacher
    assert teacher["size_mb"] == pytest.approx(2 * ckpt.stat().st_size / 1e6)


def test_distill_names_the_teacher_it_learns_from_and_the_model_its_file_holds(cli, tmp_path):
    # The quickstart's bundled file holds a ResNet-20; a teacher.name typed for another model does not change that.
    result = cli("distill", "teacher.name=resnet56", "trainer.epochs=1", "trainer.threads=1", "dataset.train_limit=64",
                 "dataset.val_size=16", "dataset.test_limit=50", "distill.teacher_cache=off", "~expect")
    assert result.code == 0, result.text
    assert ("teacher: resnet20 from " in result.out and "resnet20_cifar10.safetensors (teacher.name says resnet56: "
            "the file's own model is used)" in " ".join(result.out.split())), result.out


@pytest.mark.slow
def test_logs_without_a_terminal_show_progress_within_an_epoch(cli, tiny):
    result = cli("train-teacher", "recipe=tiny")  # the recipe logs every step; a subprocess has no terminal
    assert result.code == 0, result.text
    assert "teacher epoch 1/1 step 1/3  loss" in result.out and "ETA 0:" in result.out
    assert "teacher epoch 1/1  loss" in result.out  # and the epoch's own line


def test_each_command_has_a_help_page_with_this_recipes_values(cli):
    from distillctl.cli import COMMANDS
    from distillctl.command_help import HELP

    assert set(HELP) == set(COMMANDS)
    page = cli("distill", "--help")
    assert page.code == 0
    assert "Trains the student from the frozen teacher" in page.out and "example:" in page.out
    assert "values for recipe=quickstart" in page.out and "resnet8" in page.out  # the quickstart's student
    assert "is powered by Hydra" not in page.out
    # Config groups with their options, the launchers of the installed Hydra plugins too.
    assert "  loss: adversarial, at," in page.out and "hydra/launcher: basic, joblib, slurm" in page.out
    other = cli("search", "recipe=cifar_resnet", "search=kd", "-h")
    assert other.code == 0 and "values for recipe=cifar_resnet" in other.out and "loss.terms.kd.temperature" in other.out
    typo = cli("distill", "trainer.epochz=3", "--help")
    assert typo.code == 2 and "Did you mean 'epochs'" in typo.err
    sweep = cli("distill", "-m", "trainer.epochs=7,9", "--help")  # was Hydra's five-line message: the first job's values
    assert sweep.code == 0 and "values for recipe=quickstart" in sweep.out and "trainer.epochs" in sweep.out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["prune"], "no distilled student in runs/quickstart/student: run `distillctl distill`"),
        (["quantize", "quantize.source=pruned"], "no pruned model"),
        (["distill", "recipe=cifar_resnet", "dataset.path=embedded"], "no trained teacher in runs/cifar_resnet/teacher"),
        (["distill", "teacher.checkpoint=missing.safetensors"], "teacher.checkpoint 'missing.safetensors' does not exist"),
        (["distill", "student.pretrained_file=missing.safetensors"], "student.pretrained_file 'missing.safetensors' does not exist"),
        (["train-teacher", "dataset=imagefolder", "dataset.path=./nowhere"], "dataset.path './nowhere' does not exist"),
        (["train-teacher", "recipe=cifar_resnet"], "not in the local Hugging Face cache"),  # offline, Hub id
        (["distill", "logger=wandb", "logger.wandb.mode=onlin"], "is not one of offline, online, disabled"),
        (["distill", "student.pretrained=true"], "no published pretrained weights exist for the CIFAR model 'resnet8'"),
        (["train-teacher", "teacher.checkpoint=null", "teacher.pretrained=true"], "CIFAR model 'resnet20'"),
        (["distill", "recipe=cifar_resnet", "teacher.checkpoint=pretrained"], "CIFAR model 'resnet56'"),
        # It was a Hydra traceback after the first seed's teacher and student had trained.
        (["reproduce", "reproduce.baseline_loss=kdd"], "is not an option of the loss group"),
    ],
)
def test_mistakes_seen_on_disk_are_refused_before_torch_is_imported(tmp_path, args, expected):
    """The config and the file system are checked first, so these answer in about a second, not after the torch import
    and the data load."""
    import subprocess
    import sys

    code = ("import sys\nfrom distillctl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    print('torch imported:', 'torch' in sys.modules, 'exit', exc.code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert expected in proc.stderr
    assert "torch imported: False exit 2" in proc.stdout


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_answers_help_with_its_usage(cli, tool):
    result = cli(tool, "--help")
    assert result.code == 0 and result.out.startswith(f"usage: distillctl {tool}"), result.text


@pytest.mark.parametrize("args", [["--help"], ["recipes"], ["distill", "--help"]])
def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path, args):
    # `distillctl --help | head -3`: the reader is gone before the tool writes; no traceback about a broken pipe
    proc = subprocess.Popen([sys.executable, "-m", "distillctl", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("command, saved, said", [
    # Told to use resume=true with nothing saved, the user met "holds no checkpoint to resume from".
    ("distill", False, "error: interrupted before a first epoch was saved: run the same command again to start over."),
    ("distill", True, "error: interrupted; the last saved epoch is kept: run the same command with resume=true to continue."),
    ("pipeline", False, "error: interrupted: run the same command again to continue (pipeline resumes what was interrupted by itself)."),
    ("evaluate", False, "error: interrupted; earlier results are as they were."),  # nothing was training: no epoch to speak of
])
def test_ctrl_c_outside_a_training_step_says_what_was_kept_and_what_continues_it(monkeypatch, tmp_path, capsys, command, saved, said):
    from distillctl import cli

    monkeypatch.chdir(tmp_path)
    if saved:
        (tmp_path / "runs/quickstart/student").mkdir(parents=True)
        (tmp_path / "runs/quickstart/student/last_state.pt").write_bytes(b"")

    def interrupted(cfg):  # Ctrl-C while the data loads, after the config and the files were checked
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "stage_runner", lambda module: interrupted)
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "trainer.threads=1"])
    assert exited.value.code == 130 and " ".join(capsys.readouterr().err.split()) == said


def test_a_folder_given_without_its_key_is_pointed_to_the_key_that_takes_it(cli, tmp_path):
    (tmp_path / "photos").mkdir()
    assert "For the folder 'photos', write predict.input=photos." in one_error_line(cli("predict", "photos"))
    assert "write dataset.path=photos." in one_error_line(cli("distill", "photos", "trainer.epochs=1"))
    # The words Hydra's own flags take are no settings.
    shown = cli("distill", "--cfg", "job", "--package", "trainer")
    assert shown.code == 0 and "epochs:" in shown.out and "dataset" not in shown.out, shown.text
