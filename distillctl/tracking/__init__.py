"""Experiment tracking: each stage's run in the trackers that `logger=` chooses (TensorBoard, MLflow, W&B).

A stage opens one run with `tracked(...)` and logs metrics against the training step; a tracker that fails while
logging is dropped with a warning rather than stopping the training it reports on. The command around the stages
sets the `session(...)`: the recipe (the experiment), where local stores go, and the group that sweeps, searches,
reproduce runs and pipelines put their stages' runs in (an MLflow parent run, a W&B group).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from distillctl import files
from distillctl.engine.stop_signal import Requeued
from distillctl.errors import UserError

# logger key -> (module under distillctl.tracking, the package it needs, what to install).
BACKENDS = {
    "tensorboard": ("tensorboard_run", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow_run", "mlflow", "mlflow-skinny"),
    "wandb": ("wandb_run", "wandb", "wandb"),
}
IDENTITY_FILE = "tracking.json"  # each tracker's run id, so a resumed stage continues its runs



@dataclass(frozen=True)
class Session:
    """What every stage run of one command shares: search trials and reproduce seeds have workspaces of their own
    (runs/<recipe>/search/trial-3), yet belong to the recipe's experiment, local store and group."""

    recipe: str
    home: Path  # where local stores go: the folder holding the recipe workspaces (runs/)
    group: str | None = None


SESSION: ContextVar[Session | None] = ContextVar("tracking_session", default=None)


@contextmanager
def session(recipe: str, home: Path, group: str | None) -> Iterator[None]:
    """The session of every stage run inside this block."""
    token = SESSION.set(Session(recipe, home, group))
    try:
        yield
    finally:
        SESSION.reset(token)


@dataclass
class RunInfo:
    """What every tracker needs to open a stage's run."""

    name: str  # the stage folder's path (runs/quickstart/distill): unique, and says where the artifacts are
    experiment: str  # the recipe
    group: str | None
    out_dir: Path
    params: dict[str, Any]  # the resolved config, flattened (trainer.epochs: 30)
    config_yaml: str
    home: Path  # where local stores go (runs/)
    previous: dict[str, Any] = field(default_factory=dict)  # tracking.json of the run this one resumes


class Backend(Protocol):
    """One tracker's run."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def artifacts(self, paths: list[Path]) -> None: ...

    def close(self, outcome: str) -> None: ...  # finished | failed | stopped (Ctrl-C, SIGTERM: it will resume)

    def identity(self) -> Any: ...


class Tracker:
    """The runs of one stage in every chosen tracker; each call goes to all of them."""

    def __init__(self, backends: dict[str, Backend] | None = None) -> None:
        self.backends = dict(backends or {})

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Numeric metrics at a training step (None values are left out)."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.each("log", numbers, step)

    def artifacts(self, paths: Iterable[Path]) -> None:
        """Files that exist among `paths`, uploaded or recorded as the run's artifacts."""
        present = [Path(p) for p in paths if Path(p).is_file()]
        if present:
            self.each("artifacts", present)

    def close(self, outcome: str = "finished") -> None:
        """End every run: `finished`, `failed` (the stage raised) or `stopped` (Ctrl-C or SIGTERM, to be resumed)."""
        self.each("close", outcome)
        self.backends.clear()

    def each(self, method: str, *args: Any) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # a tracker that fails never stops the training it reports on
                from rich.markup import escape

                from distillctl.console import console

                console.print(f"[yellow]warning:[/] logger.{name} stopped logging this run "
                              f"({escape(type(exc).__name__)}: {escape(str(exc)[:200])}); the stage goes on without it.")
                del self.backends[name]


NO_TRACKER = Tracker()


def chosen(logger_cfg: DictConfig | None) -> list[str]:
    """The trackers `logger=` selected."""
    return [name for name in BACKENDS if logger_cfg is not None and logger_cfg.get(name) is not None]


def check_installed(logger_cfg: DictConfig | None) -> None:
    """Refuse a chosen tracker whose package is missing, before anything trains."""
    for name in chosen(logger_cfg):
        _, package, install = BACKENDS[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"logger={name} needs the {package} package: pip install {install} "
                            f"(or pip install 'distillctl[tracking]' for every tracker).")


@contextmanager
def tracked(cfg: DictConfig, out_dir: Path) -> Iterator[Tracker]:
    """A run for the stage writing `out_dir` in every tracker cfg.logger chooses, with the resolved config as its
    parameters; ended as finished, or as failed when the block raises."""
    names = chosen(cfg.get("logger"))
    if not names:
        yield NO_TRACKER
        return
    check_installed(cfg.logger)
    info = run_info(cfg, out_dir)
    backends: dict[str, Backend] = {}
    for name in names:
        module = importlib.import_module(f"distillctl.tracking.{BACKENDS[name][0]}")
        try:
            backends[name] = module.open_run(cfg.logger[name], info)
        except Exception as exc:  # an unreachable server, a bad URI: said before anything trains
            Tracker(backends).close("failed")
            raise UserError(f"logger={name} could not start a run ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
                            f"Check the logger.{name} settings, or run without logger={name}.") from None
    tracker = Tracker(backends)
    identities = {name: backend.identity() for name, backend in backends.items()}
    files.write_json(out_dir / IDENTITY_FILE, identities)
    try:
        yield tracker
    except (KeyboardInterrupt, Requeued):
        tracker.close("stopped")
        raise
    except BaseException:
        tracker.close("failed")
        raise
    tracker.close()


def run_info(cfg: DictConfig, out_dir: Path) -> RunInfo:
    """The run's name, grouping and parameters from the config and the folder the stage writes."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    previous = {}
    if cfg.get("resume") and (out_dir / IDENTITY_FILE).is_file():
        try:
            previous = json.loads((out_dir / IDENTITY_FILE).read_text())
        except ValueError:  # a damaged file costs only the continuity of the curves
            previous = {}
    # Outside a command (a stage called from Python): the workspace names the recipe, its parent holds the stores.
    here = SESSION.get() or Session(Path(cfg.run_dir).name, Path(cfg.run_dir).parent)
    return RunInfo(name=str(out_dir), experiment=here.recipe, group=here.group, out_dir=out_dir, params=flatten(plain),
                   config_yaml=OmegaConf.to_yaml(plain), home=here.home, previous=previous)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars as values (what trackers show as parameters)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat
