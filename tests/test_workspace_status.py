"""`distillctl runs`: each stage finished, running or interrupted, read from the files stages leave."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillctl import provenance, workspace_status
from distillctl.errors import UserError
from distillctl.workspace import lock_file


def stage(workspace: Path, name: str, *, finished: str | None = None, started: str | None = None, epoch: str = "",
          command: str = "distillctl distill recipe=tiny", top1: float = 0.5) -> Path:
    """A stage folder as a run leaves it: finished with `finished` as fingerprint, started with `started`."""
    folder = workspace / name
    folder.mkdir(parents=True)
    if finished:
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "metrics.json").write_text(json.dumps({"fingerprint": finished, "model": "resnet8", "test_top1": top1, "epochs": 3}))
    if started:
        (folder / "started.json").write_text(json.dumps({"fingerprint": started, "command": command}))
    if epoch:
        (folder / "train.log").write_text(f"# {name}: epochs 1..3\n{name} epoch {epoch}  loss 2.0  val 40.0% *\n")
    return folder


def by_stage(root: Path) -> dict[str, workspace_status.StageStatus]:
    rows, _ = workspace_status.collect(root)
    return {f"{Path(r.workspace).name}/{r.stage}": r for r in rows}


def test_finished_interrupted_and_newer_runs_are_told_apart(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    stage(ws, "teacher", finished="a", started="a")
    stage(ws, "student", finished="b", started="c", epoch="2/3", command="distillctl pipeline recipe=tiny")
    stage(ws, "pruned", started="d", epoch="1/2", command="distillctl prune recipe=tiny 'loss.terms.kd.weight=0.5'")
    (ws / "report").mkdir()  # a stage folder no run started: not listed
    (ws / "int8_static" / ".staging").mkdir(parents=True)  # results staged by a quantize run that was killed
    rows = by_stage(tmp_path / "runs")
    assert list(rows) == ["tiny/teacher", "tiny/student", "tiny/pruned", "tiny/int8_static"]
    assert rows["tiny/int8_static"].state == "interrupted"
    assert rows["tiny/teacher"].state == "finished" and rows["tiny/teacher"].top1 == 0.5 and rows["tiny/teacher"].resume == ""
    # a pipeline resumes by itself; a stage run alone is told resume=true
    assert rows["tiny/student"].state == "finished; a newer run interrupted at epoch 2/3"
    assert rows["tiny/student"].resume == "distillctl pipeline recipe=tiny"
    assert rows["tiny/pruned"].state == "interrupted at epoch 1/2"
    assert rows["tiny/pruned"].resume == "distillctl prune recipe=tiny 'loss.terms.kd.weight=0.5' resume=true"


def test_a_stage_made_from_an_earlier_run_of_its_source_is_outdated_and_so_is_what_was_made_from_it(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    stage(ws, "teacher", finished="t1")
    stage(ws, "student", finished="s2")  # trained again since pruned read it (as s1)
    for name, source, fingerprint in (("student", "teacher", "t1"), ("pruned", "student", "s1"), ("int8_static", "pruned", "p1"),
                                      ("onnx_int8", "student", "s2")):
        folder = ws / name if (ws / name).is_dir() else stage(ws, name, finished=f"{name}-own")
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "made_from": {source: fingerprint}}))
    assert provenance.outdated(workspace_status.STAGES, provenance.in_folder(ws)) == {"pruned": "student", "int8_static": "pruned"}
    rows = by_stage(tmp_path / "runs")
    assert [rows[f"tiny/{name}"].state for name in ("teacher", "student", "onnx_int8")] == ["finished"] * 3
    assert rows["tiny/pruned"].state == "outdated: made from an earlier student"
    assert rows["tiny/int8_static"].state == "outdated: made from pruned, made from an earlier student"


def test_a_crafted_made_from_names_no_folder_outside_the_stages_before_and_loops_nowhere(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    (tmp_path / "elsewhere" / ".staging").mkdir(parents=True)  # what settling a stage folder would act on
    for name, made_from in (("student", {"pruned": "x"}), ("pruned", {"student": "x", "../../elsewhere": "y"}),
                            ("int8_static", ["student"]), ("onnx_int8", "pruned")):
        folder = stage(ws, name, finished=f"{name}-own")
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "made_from": made_from}))
    looked_up = []

    def find(name):
        looked_up.append(name)
        return provenance.in_folder(ws)(name)

    assert provenance.outdated(workspace_status.STAGES, find) == {"pruned": "student"}
    assert set(looked_up) <= set(workspace_status.STAGES) and (tmp_path / "elsewhere" / ".staging").is_dir()


def test_a_stage_a_live_distillctl_process_holds_is_running(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    stage(ws, "student", started="a", epoch="1/3")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "distillctl"])
    for _ in range(100):  # until the child has exec'd: before, its command line is pytest's
        if b"distillctl" in Path(f"/proc/{holder.pid}/cmdline").read_bytes():
            break
        time.sleep(0.05)
    try:
        lock_file(ws, "student").parent.mkdir()
        lock_file(ws, "student").write_text(f"pid {holder.pid}")
        assert by_stage(tmp_path / "runs")["tiny/student"].state == "running (epoch 1/3)"
    finally:
        holder.kill()
        holder.wait()
    assert by_stage(tmp_path / "runs")["tiny/student"].state == "interrupted at epoch 1/3"  # the pid is gone


def test_nested_workspaces_are_summed_up_then_listed_when_asked(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    stage(ws, "student", finished="a")
    stage(ws / "reproduce" / "seed-0", "student", finished="a")
    stage(ws / "reproduce" / "seed-0-baseline", "student", finished="a")
    job = ws / "sweep" / "2026-12-05_01-00-00" / "0_seed=0"
    stage(job, "student", started="b", epoch="1/3", command="distillctl pipeline seed=0")
    (ws / "sweep" / "2026-12-05_01-00-00" / "1_seed=1").mkdir()
    (ws / "sweep" / "2026-12-05_01-00-00" / "1_seed=1" / "failed.json").write_text("{}")
    rows, notes = workspace_status.collect(tmp_path / "runs")
    assert [r.workspace for r in rows] == [str(ws)]
    assert notes == [f"{ws / 'reproduce'}: 1 seed, no results yet (list them: distillctl runs {ws / 'reproduce'})",
                     f"{ws / 'sweep' / '2026-12-05_01-00-00'}: 2 jobs, 1 failed "
                     f"(list them: distillctl runs {ws / 'sweep' / '2026-12-05_01-00-00'})"]
    assert len(workspace_status.collect(ws / "reproduce")[0]) == 2
    # a workspace where only reproduce ran (no stage of its own) still gets its line
    stage(tmp_path / "runs" / "other" / "reproduce" / "seed-0", "student", finished="a")
    assert f"{tmp_path / 'runs' / 'other' / 'reproduce'}: 1 seed," in " ".join(workspace_status.collect(tmp_path / "runs")[1])
    swept = workspace_status.collect(ws / "sweep" / "2026-12-05_01-00-00")[0]
    # a sweep job is continued by the sweep on its own folder, not by the job's command alone
    assert swept[0].resume == f"the sweep's command again, with hydra.sweep.dir={ws / 'sweep' / '2026-12-05_01-00-00'}"


def test_reproduce_and_search_folders_are_summed_up_with_their_results(tmp_path):
    from distillctl import files

    ws = tmp_path / "runs" / "cifar_dkd"
    for seed in (0, 1, 2):
        stage(ws / "reproduce" / f"seed-{seed}", "student", finished="a")
    rows = {"student": {"mean": 0.7512, "std": 0.004}, "baseline": {"mean": 0.7233, "std": 0.0061},
            "gain": {"mean": 0.0279, "std": 0.0032}}
    expectations = [{"metric": "student.top1", "ok": True}, {"metric": "gain.top1", "ok": False}]
    files.write_json(ws / "reproduce" / "results.json", {"rows": rows, "expectations": expectations})
    notes = workspace_status.collect(tmp_path / "runs")[1]
    assert notes == [f"{ws / 'reproduce'}: 3 seeds, student 75.12% ± 0.40, no teacher 72.33% ± 0.61, gain +2.79 ± 0.32, "
                     f"1 of 2 expectations missed, results.md (list them: distillctl runs {ws / 'reproduce'})"]
    # A results.json edited into something else is read as no results, not as a crash.
    (ws / "reproduce" / "results.json").write_text('{"rows": [1, 2]}')
    assert "3 seeds, no results yet" in workspace_status.collect(tmp_path / "runs")[1][0]
    # A search names its best trial.
    stage(ws / "search" / "trial-0003", "student", finished="a")
    (ws / "search" / "best.yaml").write_text("loss: {}")
    files.write_json(ws / "search" / "results.json", {"best": {"number": 3, "val_top1": 0.8125, "recipe_default": False}})
    assert workspace_status.collect(tmp_path / "runs")[1][1] == (
        f"{ws / 'search'}: 1 trial, best trial 3: 81.25% validation top-1, best.yaml (list them: distillctl runs {ws / 'search'})")


def test_on_a_terminal_a_folder_holding_only_reproduce_runs_is_not_called_empty(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from distillctl import console

    def shown() -> str:
        screen = Console(file=io.StringIO(), force_terminal=True, width=250)
        monkeypatch.setattr(console, "console", screen)
        workspace_status.show([str(tmp_path / "runs")])
        return screen.file.getvalue()

    (tmp_path / "runs").mkdir()
    assert "no runs here yet" in shown()
    stage(tmp_path / "runs" / "cifar_dkd" / "reproduce" / "seed-0", "student", finished="a")
    assert "no runs here yet" not in (said := shown()) and "cifar_dkd/reproduce: 1 seed, no results yet" in said


def test_the_command_prints_lines_when_piped_json_when_asked_and_one_error_for_no_folder(cli, tmp_path):
    nothing_yet = cli("runs")  # no runs/ here: nothing to list is no mistake
    assert nothing_yet.code == 0 and nothing_yet.out == ""
    stage(tmp_path / "runs" / "tiny", "student", finished="a", top1=0.4567)
    piped = cli("runs")
    assert piped.code == 0 and piped.out.startswith("runs/tiny\tstudent\tfinished\tresnet8\t45.67%\t3\t")
    listed = json.loads(cli("runs", "runs", "--json").out)
    assert listed["stages"][0]["stage"] == "student" and listed["nested"] == []
    missing = cli("runs", "elsewhere")
    assert missing.code == 2 and "elsewhere is no folder of runs" in missing.err


def test_a_run_records_the_command_that_continues_it(tmp_path):
    from distillctl import workspace

    workspace.record_start(tmp_path, "abc")
    assert json.loads((tmp_path / "started.json").read_text())["command"].startswith(Path(sys.argv[0]).name)


@pytest.mark.parametrize("args", [["a", "b"], ["--all"]])
def test_runs_refuses_what_it_does_not_take(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="runs takes one folder and --json"):
        workspace_status.show(args)


def test_progress_is_the_last_runs_epoch(tmp_path):
    def read() -> tuple[str, str]:  # (progress, saved step), from one read of the log as `runs` does
        run = workspace_status.last_run(tmp_path)
        return workspace_status.progress(run), workspace_status.saved_step(run)

    (tmp_path / "train.log").write_text("# student: epochs 1..3\nstudent epoch 3/3  loss 1.0\n")
    assert read() == ("3/3", "")
    with (tmp_path / "train.log").open("a") as log:  # a newer run that died before its first epoch ended
        log.write("# student: epochs 1..30, 3 steps each\n")
    assert read() == ("", "")
    with (tmp_path / "train.log").open("a") as log:  # a note and a mid-epoch checkpoint are no new run
        log.write("# torch.compile: off on the CPU\nstudent epoch 1/30  loss 2.0\n# checkpoint: epoch 2, step 2\n")
    assert read() == ("1/30", "2/30 at step 2 (saved)")
    with (tmp_path / "train.log").open("a") as log:
        log.write("student epoch 2/30  loss 1.9\n")  # the epoch ended after it: its own checkpoint is newer
    assert read() == ("2/30", "")
    assert workspace_status.stopped_by(workspace_status.last_run(tmp_path)) == ""


def test_a_run_stopped_by_a_signal_is_listed_with_it(tmp_path):
    ws = tmp_path / "runs" / "tiny"
    folder = stage(ws, "student", started="s", epoch="1/30")
    with (folder / "train.log").open("a") as log:  # as a run whose terminal closed leaves it: nobody saw the message
        log.write("# checkpoint: epoch 2, step 4\n"
                  "# stopped by SIGHUP (the terminal closed) in epoch 2 at step 4 of 6, with the training state saved there\n")
    row = by_stage(tmp_path / "runs")["tiny/student"]
    assert row.state == "interrupted in epoch 2/3 at step 4 (saved) by SIGHUP (the terminal closed)"
    assert row.resume == "distillctl distill recipe=tiny resume=true"


def test_a_run_that_failed_says_why_and_offers_no_resume(tmp_path):
    from distillctl.workspace import note_failure

    ws = tmp_path / "runs" / "tiny"
    for name, finished in (("student", None), ("pruned", "p"), ("teacher", "s")):
        folder = stage(ws, name, finished=finished, started="s", epoch="1/3")
        note_failure(folder, "the loss became nan in epoch 2 (by step 36): training diverged. Lower the\nlearning rate.")
    rows = by_stage(tmp_path / "runs")
    assert rows["tiny/student"].state == "failed: the loss became nan in epoch 2 (by step 36): training diverged"
    # a newer run of other settings, or of the same ones (force=true), failed beside the finished results
    assert rows["tiny/pruned"].state == rows["tiny/teacher"].state == "finished; a newer run failed: the loss became nan in epoch 2 (by step 36): training diverged"
    assert rows["tiny/student"].resume == rows["tiny/pruned"].resume == ""


@pytest.mark.parametrize(("error", "shown"), [
    ("training diverged. Lower the learning rate.", "training diverged"),
    ("cannot decode a.jpg (e.g. a truncated file). Fix or remove it.", "cannot decode a.jpg (e.g. a truncated file)"),
    ("quantize.skip names no layer of this model: fc.1. Did you mean 'fc'?", "quantize.skip names no layer of this model: fc.1"),
    ("no sentence after this one.", "no sentence after this one"),
    (None, ""),
])
def test_a_failure_is_shown_by_its_first_sentence(error, shown):
    assert workspace_status.first_sentence(error) == shown


def test_a_record_that_is_not_a_json_object_reads_as_no_record(tmp_path):
    from distillctl.workspace import recorded_fingerprint, started_fingerprint

    folder = stage(tmp_path / "runs" / "tiny", "student", finished="a", started="a")
    (folder / "metrics.json").write_text("[1, 2]")  # a hostile or mangled edit
    (folder / "started.json").write_text('"text"')
    assert recorded_fingerprint(folder) is None and started_fingerprint(folder) is None
    row = by_stage(tmp_path / "runs")["tiny/student"]
    assert row.state.startswith("damaged: metrics.json") and row.top1 is None


def test_a_stage_whose_metrics_are_cut_short_is_damaged_not_a_newer_interrupted_run(tmp_path):
    folder = stage(tmp_path / "runs" / "tiny", "student", finished="a", started="a", epoch="3/3")
    (folder / "metrics.json").write_text('{"fingerprint": "a", "mod')  # its missing fingerprint read as another run's
    row = by_stage(tmp_path / "runs")["tiny/student"]
    assert row.state == "damaged: metrics.json is unreadable; its command with force=true (or pipeline) makes it again"
    assert row.resume == ""
