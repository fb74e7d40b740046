"""`distillctl search`: Optuna draws values for the keys in `search.space`, each trial distills the student with them
from the one shared teacher, and the best validation top-1 (optionally against the student's latency or MACs) is
the score. Trials are stored in <run_dir>/search/study.db: a search killed at any point continues where it stopped,
and several processes or machines can work on one study. Ends with a report and best.yaml, a recipe of the winner.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from omegaconf import DictConfig, OmegaConf

from distillctl.bounds import check_config
from distillctl.composition import CONFIG_DIR, explain_composition_error, override, override_key
from distillctl.config import PrunerName
from distillctl.console import console
from distillctl.engine.fit import observing_epochs
from distillctl.environment import cpu_name, threads_phrase
from distillctl.errors import UserError
from distillctl.evaluation import latency_probe, measure
from distillctl.execution_settings import RUN_CONTROL, canonical
from distillctl.losses import build_objective
from distillctl.models import check_model_name, create_model
from distillctl.search import best_recipe, summary
from distillctl.search.space import Param, check_space, current_value, parse_space
from distillctl.search.study import (
    OVER_BUDGET, WORKER, counts, make_pruner, make_sampler, open_storage, open_study, origin, queue_again,
    recover_killed, storage_url, trained, worker_id,
)
from distillctl.stages import distill, train_teacher
from distillctl.stages.base import bring_up_to_date
from distillctl.stages.context import cached_splits
from distillctl.workspace import Workspace, fingerprint, model_file

# The trainer keys a study's identity has left out from the start (how fast a trial runs, not what it learns).
IDENTITY_LEFT_OUT = ("threads", "device", "compile", "compile_mode", "log_every", "eval_batch_size", "checkpoint_every_steps")
# Failed trials in a row (never a good sign) after which the search stops instead of failing every trial.
MAX_FAILED_IN_A_ROW = 3


class TrialFailed(Exception):
    """A trial that could not train (its values made the loss diverge, say): recorded, and the search goes on."""


def command_line() -> tuple[str, list[str]]:
    """The recipe's name and the overrides each trial is composed with."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    kept = [o for o in hydra_cfg.overrides.task if override_key(o) not in RUN_CONTROL]  # trials get their own
    return hydra_cfg.runtime.choices.get("recipe", "recipe"), kept


def compose_run(overrides: list[str]) -> DictConfig:
    """The config for these overrides, a composition error explained in one line."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(explain_composition_error(exc, overrides)) from None


def shared_teacher(cfg: DictConfig) -> list[str]:
    """Train the recipe's teacher once, in the recipe's workspace as `pipeline` would, and point every trial at it."""
    if not build_objective(cfg.loss.terms).needs_teacher or train_teacher.skipped(cfg):
        return []
    ws = Workspace.from_config(cfg)
    bring_up_to_date(train_teacher.STAGE, cfg, ws)
    return [override("teacher.checkpoint", str(model_file(ws.find(train_teacher.FOLDER))))]


def setup_identity(cfg: DictConfig, params: list[Param], epochs: int) -> dict[str, Any]:
    """What makes two runs of `search` the same study: the space, the objectives and what a trial trains."""
    # How trials execute is left out (at its defaults), so a search goes on under other threads or devices. The keys
    # studies made before execution_settings never held stay out altogether, so that those studies are still found.
    trainer = {k: v for k, v in canonical("trainer", OmegaConf.to_container(cfg.trainer, resolve=True)).items()
               if k not in IDENTITY_LEFT_OUT}
    s = cfg.search
    return {
        "space": [str(p) for p in params],
        "objectives": ["val_top1", *([str(s.minimize)] if s.minimize else [])],
        "epochs": epochs,
        "budgets": {"max_latency_ms": s.max_latency_ms, "max_macs": s.max_macs},
        "config": fingerprint(cfg, ["dataset", "student", "loss", "optimizer", "scheduler", "teacher", "teachers"],
                              [str(cfg.seed), str(sorted(trainer.items()))]),
    }


def student_cost(cfg: DictConfig, threads: int) -> dict[str, float]:
    """The trial's student, untrained: its MACs and batch-1 CPU latency, measured as `evaluate` does (latency_probe
    says why in a process of its own)."""
    s = cfg.student
    num_classes = cached_splits(OmegaConf.to_yaml(cfg.dataset, resolve=True)).num_classes
    size, kwargs = cfg.dataset.image_size, OmegaConf.to_container(s.kwargs, resolve=True)
    model = create_model(s.name, num_classes, False, role="student", image_size=size, **kwargs)
    latency = latency_probe.latency_ms(s.name, num_classes, kwargs, size, threads, cfg.evaluate.latency_repeats)
    return {"macs": float(measure.macs(model, size)), "latency_ms": round(latency, 4)}


def over_budget(cost: dict[str, float], search: DictConfig) -> str | None:
    """Why the student breaks the search's budget, or None."""
    if search.max_latency_ms is not None and cost["latency_ms"] > search.max_latency_ms:
        return f"latency {cost['latency_ms']:.3f} ms > budget {search.max_latency_ms:g} ms"
    if search.max_macs is not None and cost["macs"] > search.max_macs:
        return f"{cost['macs'] / 1e6:.1f} MMACs > budget {search.max_macs / 1e6:g} MMACs"
    return None


class Objective:
    """One trial: draw values, check the budget, distill (reporting each epoch to the pruner), score."""

    def __init__(self, cfg: DictConfig, params: list[Param], base: list[str], root: Path, pruning: bool,
                 storage: RDBStorage, epochs: int) -> None:
        self.cfg, self.params, self.base, self.root, self.pruning, self.storage = cfg, params, base, root, pruning, storage
        self.epochs = epochs
        self.threads = cfg.trainer.threads or torch.get_num_threads()
        self.costs: dict[str, dict[str, float]] = {}

    def remember_costs(self, study: optuna.Study) -> None:
        """Take the costs earlier trials measured, so a student keeps one latency for the whole search."""
        for t in study.get_trials(deepcopy=False):
            if "student" in t.user_attrs and "latency_ms" in t.user_attrs:
                self.costs.setdefault(t.user_attrs["student"], {k: t.user_attrs[k] for k in ("macs", "latency_ms")})

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr(WORKER, worker_id())
        values = {p.key: p.suggest(trial) for p in self.params}
        # (_trial_id: the storage's key for a live trial, as Optuna's own callbacks use it.)
        folder = self.root / f"trial-{origin(self.storage.get_trial(trial._trial_id)):04d}"
        cfg = compose_run([*self.base, *(override(k, v) for k, v in values.items()), override("run_dir", str(folder))])
        check_config(cfg)
        student = OmegaConf.to_yaml({"student": cfg.student, "image_size": cfg.dataset.image_size}, resolve=True)
        # Measured once per architecture: a second timing of the same student would differ by noise alone.
        if student not in self.costs:
            self.costs[student] = student_cost(cfg, self.threads)
        cost = self.costs[student]
        trial.set_user_attr("student", student)
        for key, value in cost.items():
            trial.set_user_attr(key, value)
        console.rule(f"[bold]search trial {trial.number} ({folder.name}): {summary.fmt_params(values)}")
        if reason := over_budget(cost, self.cfg.search):
            trial.set_user_attr(OVER_BUDGET, reason)
            console.print(f"[yellow]not trained[/]: {reason}")
            raise optuna.TrialPruned(reason)
        ws = Workspace.from_config(cfg)
        try:
            with observing_epochs(lambda title, record: self.report(trial, record)):
                bring_up_to_date(distill.STAGE, cfg, ws)
        except UserError as exc:  # e.g. these values made the loss diverge: the search learns from it and goes on
            trial.set_user_attr("error", str(exc))
            console.print(f"[red]trial {trial.number} failed[/]: {exc}")
            raise TrialFailed(str(exc)) from None
        except KeyboardInterrupt:  # queue it again, so the next `search` resumes its last epoch
            queue_again(trial.study, self.storage, trial._trial_id)
            raise
        metrics = ws.metrics(distill.FOLDER)
        trial.set_user_attr("epochs", metrics.get("epochs"))
        val = float(metrics["best_val_top1"])
        minimize = self.cfg.search.minimize
        return (val, cost[str(minimize)]) if minimize else val

    def report(self, trial: optuna.Trial, record: dict[str, Any]) -> None:
        """Tell the pruner this epoch's validation top-1; stop the trial when it says so."""
        if not self.pruning:
            return
        epoch, value = record["epoch"], record["val_top1"]
        trial.report(value, epoch)
        # Stopping after the last epoch saves nothing and would cost the trial its place among the complete ones.
        if epoch < self.epochs and trial.should_prune():
            console.print(f"[yellow]pruned[/]: validation top-1 {value:.2%} after epoch {epoch} is below the pruner's cut")
            raise optuna.TrialPruned(f"validation top-1 {value:.2%} after epoch {epoch}")


def enqueue_recipe_values(study: optuna.Study, params: list[Param], cfg: DictConfig) -> bool:
    """Make the recipe's own values the first trial, when they lie in the space: the report then says what the
    search gained over them at the same schedule. Returns whether it did."""
    values = {p.key: current_value(cfg, p.key) for p in params}
    if not all(p.contains(values[p.key]) for p in params):
        return False
    study.enqueue_trial(values, user_attrs={"recipe_default": True})
    return True


def run(cfg: DictConfig) -> dict:
    """Run trials until search.trials have trained, then write <run_dir>/search/results.{json,md}, search.png and
    best.yaml."""
    s = cfg.search
    if cfg.force:
        raise UserError(f"search continues the study in {Path(cfg.run_dir) / 'search'}; to start over, delete that folder or give run_dir=...")
    recipe, base = command_line()
    params = parse_space(s.space, cfg)
    check_space(params, cfg, lambda extra: compose_run([*base, *extra]), check_trial)
    root = Workspace.from_config(cfg).job_dir / "search"  # in a sweep, the job's own study
    root.mkdir(parents=True, exist_ok=True)
    epochs = s.epochs or cfg.trainer.epochs
    multi = s.minimize is not None
    pruning = not multi and s.pruner != PrunerName.none
    if multi and s.pruner != PrunerName.none:
        console.print(f"search.minimize={s.minimize}: two objectives, so no pruner (Optuna prunes single-objective studies only).")
    storage = open_storage(storage_url(root, s.storage))
    study = open_study(storage, ["maximize", *(["minimize"] if multi else [])], make_sampler(s.sampler, cfg.seed),
                       make_pruner(s.pruner if pruning else PrunerName.none, s.pruner_warmup_epochs, epochs),
                       setup_identity(cfg, params, epochs))
    # Seeded per session and process: a restarted search, or a second worker started beside the first, must not
    # draw the values already drawn. What a search found is reproduced from its stored trials and best.yaml.
    study.sampler = make_sampler(s.sampler, hash((cfg.seed, len(study.get_trials(deepcopy=False)), os.getpid())) % 2**31)
    if requeued := recover_killed(study, storage):
        console.print(f"continuing interrupted trial(s) {', '.join(map(str, requeued))} from their last epoch")
    if not study.get_trials(deepcopy=False) and enqueue_recipe_values(study, params, cfg):
        console.print("trial 0 trains the recipe's own values, to compare the search against")
    console.print("search space:\n  " + "\n  ".join(map(str, params)))
    teacher = shared_teacher(cfg)
    trial_base = [*base, *([override("trainer.epochs", epochs)] if s.epochs else []), *teacher]
    objective = Objective(cfg, params, trial_base, root, pruning, storage, epochs)
    objective.remember_costs(study)
    failed_in_a_row = 0
    while True:
        optuna.storages.fail_stale_trials(study)  # trials of workers on other machines that stopped beating
        found = counts(study)
        if trained(found) + found["running"] >= s.trials:
            break
        if found["over_budget"] >= max(20, 5 * s.trials):
            console.print(f"[yellow]stopping[/]: {found['over_budget']} drawn students were over budget; widen the budget or narrow the space.")
            break
        number = len(study.get_trials(deepcopy=False))
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        last = study.get_trials(deepcopy=False)[number:]
        failed_in_a_row = failed_in_a_row + 1 if last and all(t.state == TrialState.FAIL for t in last) else 0
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise UserError(f"{MAX_FAILED_IN_A_ROW} trials in a row failed; the last: {last[-1].user_attrs.get('error')}")
    return write_report(cfg, study, recipe, base, root, teacher, epochs)


def check_trial(candidate: DictConfig) -> None:
    """What every trial's config must pass before the first trains: values in bounds, a student timm can build."""
    check_config(candidate)
    check_model_name(str(candidate.student.name))


def write_report(cfg: DictConfig, study: optuna.Study, recipe: str, base: list[str], root: Path,
                 teacher: list[str], epochs: int) -> dict:
    """results.{json,md}, search.png and best.yaml (plus one recipe per Pareto trial in a two-objective search)."""
    s = cfg.search
    rows = summary.trial_rows(study)
    cost = str(s.minimize) if s.minimize else ("macs" if s.max_macs is not None and s.max_latency_ms is None else "latency_ms")
    front = summary.pareto_front(rows, cost)
    best = summary.best_row(rows)
    found = counts(study)
    context = {
        "recipe": recipe,
        "command": " ".join(["distillctl search", f"recipe={recipe}", *(o for o in base if override_key(o) != "recipe")]),
        "trials": ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in found.items() if n),
        "epochs per trial": epochs,
        "sampler / pruner": f"{s.sampler} / {s.pruner if not s.minimize else 'none'}",
        "objectives": "max validation top-1" + (f", min {s.minimize}" if s.minimize else ""),
        "budgets": ", ".join(f"{k}={v:g}" for k, v in (("max_latency_ms", s.max_latency_ms), ("max_macs", s.max_macs)) if v is not None) or "none",
        # In a process of its own, with the wait policy `evaluate` would have (latency_probe).
        "latency measured on": f"{cpu_name()}, {threads_phrase(cfg.trainer.threads or torch.get_num_threads())}, "
                               f"OMP_WAIT_POLICY={latency_probe.timing_policy()}, torch {torch.__version__}",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    budget = s.max_latency_ms if cost == "latency_ms" else s.max_macs
    written = summary.write(root, rows, front, best, cost, context, budget)
    summary.print_table(rows, f"{recipe}: search trials, best first (validation top-1)")
    if best is None:
        raise UserError(f"no trial trained to the end; see {root / 'results.md'}.")
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    for row, name in [(best, "best.yaml"), *((r, f"pareto/trial-{r.number:04d}.yaml") for r in (front if s.minimize else []))]:
        write_trial_recipe(root / name, row, recipe, base, teacher, groups, epochs)
    console.print(f"report: {written[1]}\nbest trial as a recipe: distillctl pipeline recipe={root / 'best.yaml'}")
    return {"best_val_top1": best.val_top1, "best": best.params, "trials": len(rows)}


def write_trial_recipe(path: Path, row: summary.TrialRow, recipe: str, base: list[str], teacher: list[str],
                       groups: set[str], epochs: int) -> None:
    """One trial as a recipe that trains in a folder named like the file, at the recipe's own schedule."""
    group_choices, body, command_line = best_recipe.recipe_body(groups, [*base, *teacher], row.params)
    body["run_dir"] = str(path.with_suffix(""))
    header = [
        f"Written by `distillctl search` from trial {row.number} ({row.folder}): validation top-1 {row.val_top1:.2%} "
        f"after {epochs} epoch(s) per trial; this recipe trains for the recipe's own trainer.epochs.",
        "Run it: " + " ".join([f"distillctl pipeline recipe={path}", *(f"'{o}'" for o in command_line)]),
    ]
    description = f"{recipe} with searched values: {summary.fmt_params(row.params)}"
    best_recipe.write_recipe(path, recipe, description, header, group_choices, body)
