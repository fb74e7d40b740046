"""`distillctl reproduce`: every seed's teacher, student and no-teacher baseline, the statistics over seeds, and the
gate on their means."""

from __future__ import annotations

import json
import statistics

import pytest

from distillctl.evaluation.seed_results import rows_with_gain

SEEDS = "reproduce.seeds=[0,1]"


def test_gain_is_paired_seed_by_seed():
    rows = rows_with_gain([0.9, 0.9, 0.9], student=[0.50, 0.60, 0.55], baseline=[0.45, 0.57, 0.50])
    assert rows["gain"].values == pytest.approx((0.05, 0.03, 0.05))
    # The spread of the paired difference, not of either run: the seeds' shared luck cancels.
    assert rows["gain"].std == pytest.approx(statistics.stdev([0.05, 0.03, 0.05]))
    assert rows["gain"].std < rows["student"].std
    assert rows["teacher"].std == 0.0 and rows["student"].mean == pytest.approx(0.55)


@pytest.mark.slow
def test_reproduce_runs_every_seed_writes_results_and_skips_on_rerun(cli, tiny):
    first = cli("reproduce", "recipe=tiny", SEEDS)
    assert first.code == 0, first.text[-3000:]
    out = tiny / "runs/tiny/reproduce"
    for seed in (0, 1):
        for folder in (f"seed-{seed}/teacher", f"seed-{seed}/student", f"seed-{seed}-baseline/student"):
            assert (out / folder / "metrics.json").is_file(), folder
        baseline_cfg = (out / f"seed-{seed}-baseline/student/config.yaml").read_text()
        assert f"seed: {seed}" in baseline_cfg and "kind: kd" not in baseline_cfg
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for seed_index, seed in enumerate((0, 1)):
        recorded = json.loads((out / f"seed-{seed}/student/metrics.json").read_text())["test_top1"]
        assert results["rows"]["student"]["top1"][seed_index] == recorded
    rows = results["rows"]
    assert rows["gain"]["mean"] == pytest.approx(rows["student"]["mean"] - rows["baseline"]["mean"])
    assert [e["metric"] for e in results["expectations"]] == ["student.top1"]
    md = (out / "results.md").read_text()
    assert "| gain (student - baseline) |" in md and "distillctl reproduce recipe=tiny" in md
    assert "test top-1 over 2 seeds" in first.out and "the 1 expectation met (on the means over seeds)" in first.out

    again = cli("reproduce", "recipe=tiny", SEEDS)
    assert again.code == 0 and again.out.count("is up to date") == 6, again.out
    assert json.loads((out / "results.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_runs_finished_in_another_workspace_are_linked_not_trained_again(cli, tiny):
    assert cli("pipeline", "recipe=tiny").code == 0
    runs = tiny / "runs"
    # reproduce's seed 0 is the pipeline's run: its teacher and student are taken, only the baseline is trained.
    seeds = cli("reproduce", "recipe=tiny", "reproduce.seeds=[0]")
    assert seeds.code == 0, seeds.text[-3000:]
    assert seeds.out.count("runs/tiny/teacher was made with this very config") == 1, seeds.out
    for stage in ("teacher", "student"):
        linked = runs / f"tiny/reproduce/seed-0/{stage}/model.safetensors"
        assert linked.stat().st_ino == (runs / f"tiny/{stage}/model.safetensors").stat().st_ino, stage
    assert (runs / "tiny/reproduce/seed-0-baseline/student/train.log").is_file()
    # Another method in its own workspace: the teacher is shared, the student is its own.
    hot = cli("pipeline", "recipe=tiny", "loss.terms.kd.temperature=8", "run_dir=runs/hot")
    assert hot.code == 0, hot.text[-3000:]
    assert (runs / "hot/teacher/model.safetensors").stat().st_ino == (runs / "tiny/teacher/model.safetensors").stat().st_ino
    assert (runs / "hot/student/model.safetensors").read_bytes() != (runs / "tiny/student/model.safetensors").read_bytes()
    # reuse=false trains it here.
    own = cli("pipeline", "recipe=tiny", "run_dir=runs/own", "reuse=false")
    assert own.code == 0 and "linked" not in own.out, own.text[-3000:]
    assert (runs / "own/teacher/model.safetensors").stat().st_ino != (runs / "tiny/teacher/model.safetensors").stat().st_ino


@pytest.mark.slow
def test_reproduce_exits_1_when_the_gain_falls_short(cli, tiny):
    missed = cli("reproduce", "recipe=tiny", "reproduce.seeds=[0]", "+expect.gain.top1.min=0.5")
    assert missed.code == 1, missed.text[-3000:]
    assert "expectations not met" in missed.out and "gain.top1" in missed.out
    # evaluate leaves the across-seeds rows to reproduce instead of failing them as missing
    assert cli("pipeline", "recipe=tiny", "+expect.gain.top1.min=0.5").code == 0


def test_reproduce_refuses_a_single_seed_override(cli, tiny):
    result = cli("reproduce", "recipe=tiny", "seed=3")
    assert result.code == 2 and "reproduce.seeds" in result.err


@pytest.mark.slow
def test_the_baseline_leaves_out_teacher_terms_a_recipe_sets_itself(cli, tiny):
    # As search's best.yaml does: the KD values found, in the recipe's body rather than in a loss group.
    (tiny / "recipes/tiny_t2.yaml").write_text("# @package _global_\ndefaults:\n  - tiny\nloss:\n  terms:\n    kd: {temperature: 2.0}\n")
    done = cli("reproduce", "recipe=tiny_t2", "reproduce.seeds=[0]")
    assert done.code == 0, done.text[-3000:]
    out = tiny / "runs/tiny_t2/reproduce"
    assert "temperature: 2.0" in (out / "seed-0/student/config.yaml").read_text()
    baseline = (out / "seed-0-baseline/student/config.yaml").read_text()
    assert "kind: kd" not in baseline and "kind: ce" in baseline
