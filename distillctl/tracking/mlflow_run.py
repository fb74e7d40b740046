"""MLflow: one run per stage through MlflowClient (no global active run, so nested stages cannot mix runs up)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distillctl.tracking import RunInfo

GROUP_TAG = "distillctl.group"
MAX_PARAM = 6000  # MLflow's longest parameter value
BATCH = 100  # MLflow's most parameters per log_batch call


def tracking_uri(settings: DictConfig, info: RunInfo) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else SQLite beside the recipe workspaces (runs/mlflow.db)."""
    if settings.tracking_uri:
        return str(settings.tracking_uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(info.home / 'mlflow.db').resolve()}"


class MlflowRun:
    """The stage's MLflow run, nested under its group's parent run."""

    def __init__(self, settings: DictConfig, info: RunInfo) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri(settings, info)
        self.client = MlflowClient(self.uri)
        experiment = self.experiment_id(settings.experiment or info.experiment, info)
        previous = info.previous.get("mlflow") or {}
        if previous.get("tracking_uri") == self.uri and previous.get("run_id"):
            self.run_id = previous["run_id"]  # a resumed stage continues its curves
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"mlflow.parentRunId": self.parent(experiment, info.group)} if info.group else {}
        self.run_id = self.client.create_run(experiment, run_name=info.name, tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)[:MAX_PARAM]) for key, value in info.params.items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def experiment_id(self, name: str, info: RunInfo) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the working directory
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def parent(self, experiment: str, group: str) -> str:
        """The group's parent run, created by the first stage of the group (any process finds it by its tag)."""
        quoted = group.replace("'", "\\'")
        found = self.client.search_runs([experiment], f"tags.`{GROUP_TAG}` = '{quoted}'", max_results=1)
        if found:
            return found[0].info.run_id
        run_id = self.client.create_run(experiment, run_name=group, tags={GROUP_TAG: group}).info.run_id
        self.client.set_terminated(run_id)  # a container for its children, not a run of its own
        return run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, outcome: str) -> None:
        # KILLED, MLflow's state for a run stopped from outside: a resumed stage continues this run
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}[outcome])

    def identity(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}


def open_run(settings: DictConfig, info: RunInfo) -> MlflowRun:
    """The stage's MLflow run."""
    return MlflowRun(settings, info)
