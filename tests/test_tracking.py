"""Experiment tracking: what `logger=` writes is read back with each tracker's own reader (TensorBoard's event
reader, the MLflow client, W&B's record format), and a tracker that fails never stops training."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distillctl import composition
from distillctl import config, tracking
from distillctl.errors import UserError


@pytest.fixture(scope="module")
def tracked_pipeline(tmp_path_factory) -> Path:
    """The tiny recipe's whole pipeline with all three trackers at once."""
    import os
    import subprocess
    import sys

    from conftest import TINY_RECIPE

    root = tmp_path_factory.mktemp("tracked")
    (root / "recipes").mkdir()
    (root / "recipes" / "tiny.yaml").write_text(TINY_RECIPE)
    proc = subprocess.run([sys.executable, "-m", "distillctl", "pipeline", "recipe=tiny", "trainer.threads=1",
                           "trainer.epochs=2", "logger=[tensorboard,mlflow,wandb]"],
                          cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def student_metrics(root: Path) -> dict:
    return json.loads((root / "runs/tiny/student/metrics.json").read_text())


@pytest.mark.slow
def test_tensorboard_holds_step_epoch_and_test_scalars(tracked_pipeline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_pipeline / "runs/tiny/student/tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 6  # 2 epochs x 3 steps, log_every=1
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [3, 6]
    assert events.Scalars("test/top1")[0].value == pytest.approx(student_metrics(tracked_pipeline)["test_top1"], abs=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config as text


@pytest.mark.slow
def test_mlflow_runs_nest_under_the_pipeline_with_params_metrics_and_artifacts(tracked_pipeline):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked_pipeline / 'runs/mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs["pipeline runs/tiny"]
    stages = {"runs/tiny/teacher", "runs/tiny/student", "runs/tiny/pruned", "runs/tiny/int8_static", "runs/tiny/report"}
    assert stages <= set(runs)
    assert all(runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id for name in stages)
    student = runs["runs/tiny/student"]
    assert student.info.status == "FINISHED"
    assert student.data.params["trainer.epochs"] == "2" and student.data.params["student.name"] == "resnet8"
    assert student.data.metrics["test/top1"] == pytest.approx(student_metrics(tracked_pipeline)["test_top1"])
    assert [m.step for m in client.get_metric_history(student.info.run_id, "epoch/val_top1")] == [3, 6]
    assert {a.path for a in client.list_artifacts(student.info.run_id)} >= {"metrics.json", "config.yaml", "summary.csv"}
    report = runs["runs/tiny/report"]
    assert {a.path for a in client.list_artifacts(report.info.run_id)} >= {"report.md", "accuracy_vs_size.png"}
    assert report.data.metrics["student/top1"] == pytest.approx(student.data.metrics["test/top1"])


def wandb_records(path: Path):
    """The records of an offline W&B run file: LevelDB's log format (32 KiB blocks of checksummed chunks) holding
    W&B's own protobuf records, after a 7-byte W&B header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_is_grouped_and_holds_the_metrics(tracked_pipeline):
    (run_file,) = (tracked_pipeline / "runs/tiny/student/wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "runs/tiny/student" and run.run_group == "pipeline runs/tiny"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["test/top1"] == pytest.approx(student_metrics(tracked_pipeline)["test_top1"])
    assert json.loads((tracked_pipeline / "runs/tiny/student/tracking.json").read_text())["wandb"] == run.run_id


@pytest.mark.slow
def test_every_training_stage_writes_one_csv_row_per_epoch(tracked_pipeline):
    with (tracked_pipeline / "runs/tiny/student/summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    history = [json.loads(line) for line in (tracked_pipeline / "runs/tiny/student/history.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val_top1"]) for r in rows] == [h["val_top1"] for h in history]


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log(self, metrics, step):
        self.calls.append(("log", metrics, step))

    def artifacts(self, paths):
        self.calls.append(("artifacts", paths))

    def close(self, outcome):
        self.calls.append(("close", outcome))

    def identity(self):
        return None


class Broken(Recording):
    def log(self, metrics, step):
        raise ConnectionError("tracking server unreachable")


def test_a_failing_tracker_is_dropped_with_a_warning_and_the_others_go_on(capsys):
    good = Recording()
    tracker = tracking.Tracker({"mlflow": Broken(), "tensorboard": good})
    tracker.log({"train/loss": 1.5, "note": "text", "flag": True, "missing": None}, 3)
    tracker.log({"train/loss": 1.2}, 4)
    tracker.close("failed")
    assert good.calls == [("log", {"train/loss": 1.5}, 3), ("log", {"train/loss": 1.2}, 4), ("close", "failed")]
    out = capsys.readouterr().out
    assert "logger.mlflow stopped logging" in out and "tracking server unreachable" in out and out.count("warning") == 1


def test_a_tracker_whose_package_is_missing_is_refused_before_training(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    cfg = OmegaConf.create({"tensorboard": {"flush_secs": 30}, "mlflow": None, "wandb": {"mode": "offline"}})
    with pytest.raises(UserError, match=r"logger=wandb needs the wandb package: pip install wandb"):
        tracking.check_installed(cfg)


def test_logger_choices_compose_alone_or_together_and_typos_are_named():
    config.register()
    def compose(*o):
        return composition.compose_config(composition.prepare_overrides(o))

    both = compose("logger=[tensorboard,mlflow]", "logger.mlflow.experiment=kd")
    assert tracking.chosen(both.logger) == ["tensorboard", "mlflow"] and both.logger.mlflow.experiment == "kd"
    assert tracking.chosen(compose().logger) == []
    with pytest.raises(UserError, match="logger.wandb.mode=onlin is not one of offline, online, disabled"):
        composition.check_composes(composition.prepare_overrides(["logger=wandb", "logger.wandb.mode=onlin"]))
    with pytest.raises(UserError, match="Could not find 'logger/tensorbord'.*mlflow tensorboard wandb"):
        composition.check_composes(composition.prepare_overrides(["logger=tensorbord"]))


def test_a_tracker_that_cannot_start_is_one_message_before_training(tmp_path):
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "runs/tiny"), "resume": False, "seed": 0,
                            "logger": {"tensorboard": None, "wandb": None, "mlflow": {"tracking_uri": "bogus://nowhere", "experiment": None}}})
    refused = pytest.raises(UserError, match=r"logger=mlflow could not start a run .*bogus.*Check the logger.mlflow settings")
    with refused, tracking.tracked(cfg, tmp_path):
        pytest.fail("the block must not run")


def test_a_resumed_stage_continues_its_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    out_dir = tmp_path / "runs/tiny/student"
    out_dir.mkdir(parents=True)
    logger = {"tensorboard": None, "wandb": None, "mlflow": {"tracking_uri": None, "experiment": None}}
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "runs/tiny"), "resume": False, "seed": 0, "logger": logger})
    with pytest.raises(KeyboardInterrupt), tracking.tracked(cfg, out_dir) as tracker:
        tracker.log({"epoch/val_top1": 0.2}, 3)
        raise KeyboardInterrupt  # the run stops after its first epoch
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs/mlflow.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert stopped.info.status == "KILLED"  # stopped, not failed: it is to be resumed
    with tracking.tracked(OmegaConf.merge(cfg, {"resume": True}), out_dir) as tracker:
        tracker.log({"epoch/val_top1": 0.3}, 6)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == str(out_dir)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch/val_top1")] == [(3, 0.2), (6, 0.3)]


@pytest.mark.slow
def test_search_trials_are_runs_of_the_recipes_experiment_under_one_parent(cli, tiny):
    """Trials have workspaces of their own (runs/tiny/search/trial-N); their runs still go to the recipe's experiment
    in the one local store, grouped under the search."""
    from mlflow import MlflowClient

    done = cli("search", "recipe=tiny", "search=kd", "search.trials=2", "search.epochs=1", "search.pruner=none",
               "trainer.max_steps_per_epoch=2", "trainer.threads=1", "dataset.test_limit=100", "logger=mlflow")
    assert done.code == 0, done.text
    assert not list((tiny / "runs").rglob("*/mlflow.db"))  # one store, runs/mlflow.db, not one per trial
    client = MlflowClient(f"sqlite:///{tiny / 'runs/mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    parent = runs["search runs/tiny"]
    trials = [name for name in runs if "/search/trial-" in name]
    assert len(trials) == 2 and all(runs[t].data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
