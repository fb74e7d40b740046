"""The Optuna study behind a search: stored in a database so that a search killed at any point continues where it
stopped and several processes (or machines sharing the database) can work on it; plus its sampler and pruner."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from distillctl.config import PrunerName, SamplerName
from distillctl.errors import UserError

STUDY_NAME = "distillctl"
DATABASE = "study.db"
# A worker records a heartbeat this often; a trial whose worker has been silent for the grace period (a machine
# that died) is failed and queued again by any worker. A worker on the same machine that was killed is noticed
# at once by its process id (see recover_killed).
HEARTBEAT_S, GRACE_S = 30, 120
WORKER, SETUP, OVER_BUDGET = "worker", "setup", "over_budget"

# The heartbeat and retry helpers are marked experimental; their warnings would only worry a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)  # distillctl reports each trial and its failure itself


def storage_url(root: Path, url: str | None) -> str:
    """The database the trials go to: the one given, else SQLite in the search folder."""
    return url or f"sqlite:///{(root / DATABASE).resolve()}"


def open_storage(url: str) -> RDBStorage:
    """The database, with heartbeats on, so that the trials of a worker that died are run again."""
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True))
    except Exception as exc:  # a bad URL, a missing driver, a database that refuses the connection
        raise UserError(f"cannot open the search database {url}: {' '.join(str(exc).split())[:300]}") from None


def open_study(storage: RDBStorage, directions: list[str], sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, setup: dict[str, Any]) -> optuna.Study:
    """Create the study, or load it when `setup` (the space, objectives and base config) is the one it was made
    with; a different setup in the same database is refused rather than mixed into incomparable trials."""
    url = storage.url
    try:
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=directions, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as exc:  # e.g. one objective stored, two asked for
        raise UserError(f"{url} holds another search ({exc}); give run_dir=... or search.storage=... for a new one.") from None
    stored = study.user_attrs.get(SETUP)
    wanted = json.loads(json.dumps(setup, sort_keys=True, default=str))
    if stored is None:
        study.set_user_attr(SETUP, wanted)
    elif stored != wanted:
        differ = sorted(k for k in {*stored, *wanted} if stored.get(k) != wanted.get(k))
        raise UserError(
            f"{url} holds a search with a different {', '.join(differ)} than this command's. Continue it with the "
            "same recipe and overrides, or start another with run_dir=... (or search.storage=...)."
        )
    return study


def worker_id() -> str:
    """This process, as recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recover_killed(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Fail and queue again every running trial whose worker was a process on this machine that no longer exists
    (killed, crashed, machine rebooted), so it continues now rather than after the heartbeat's grace period.
    Returns the numbers of the trials queued again."""
    host = socket.gethostname()
    queued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        # A finished trial cannot be failed again, so two workers never both queue the same trial.
        # (_trial_id: FrozenTrial's storage key, which Optuna's own callbacks use too.)
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        queue_again(study, storage, trial._trial_id)
        queued.append(trial.number)
    return queued


def queue_again(study: optuna.Study, storage: RDBStorage, trial_id: int) -> None:
    """Queue a copy of the trial (its values, its epochs reported so far, its origin) as the next to run, as the
    heartbeat does for a trial whose worker stopped beating."""
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, storage.get_trial(trial_id))


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The trials that a later trial continues: failed runs whose work went on elsewhere."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def origin(trial: FrozenTrial) -> int:
    """The number of the trial this one continues (itself when it is not a retry): names its folder, so a retry
    resumes the killed run's last epoch."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def make_sampler(name: SamplerName, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler search.sampler names, seeded."""
    if name == SamplerName.random:
        return optuna.samplers.RandomSampler(seed=seed)
    if name == SamplerName.nsga2:
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: PrunerName, warmup_epochs: int, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner search.pruner names: it stops a trial from its per-epoch validation top-1."""
    # Steps are epoch numbers (from 1) and Optuna prunes from step n_warmup_steps on: +1 spares warmup_epochs epochs.
    if name == PrunerName.median:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs + 1)
    if name == PrunerName.hyperband:
        return optuna.pruners.HyperbandPruner(min_resource=warmup_epochs + 1, max_resource=max(epochs, warmup_epochs + 1))
    return optuna.pruners.NopPruner()


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: trained to the end, stopped by the pruner, failed (and not queued again), over budget
    (never trained), queued, and running now."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    found = dict.fromkeys(("complete", "pruned", "failed", "over_budget", "waiting", "running"), 0)
    for trial in trials:
        if trial.user_attrs.get(OVER_BUDGET):
            found["over_budget"] += 1
        elif trial.state == TrialState.COMPLETE:
            found["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            found["pruned"] += 1
        elif trial.state == TrialState.FAIL and trial.number not in retried:
            found["failed"] += 1
        elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
            found[trial.state.name.lower()] += 1
    return found


def trained(found: dict[str, int]) -> int:
    """The trials that count toward search.trials: those that trained, whatever came of it."""
    return found["complete"] + found["pruned"] + found["failed"]
