"""The run workspace: runs/<recipe>/<stage>/ folders through which stages find each other's outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from distillctl import environment, files
from distillctl.errors import UserError
from distillctl.execution_settings import canonical, section_defaults
from distillctl.ranks import is_main

MODEL_FILE, METRICS_FILE, CONFIG_FILE = "model.safetensors", "metrics.json", "config.yaml"
# Written when a training stage starts: which config an unfinished folder's checkpoints belong to.
STARTED_FILE = "started.json"
# A training run's last epoch: weights, optimizer, schedule and RNG, what resume=true continues from.
LAST_STATE = "last_state.pt"
ONNX_FILE = "model.onnx"
PTE_FILE = "model.pte"  # an ExecuTorch program
SUMMARY_FILE = "summary.csv"
# A stage's results, replaced together when a run finishes (metrics.json, written last, marks it finished). The other
# files of a stage folder (best/last checkpoints, history.jsonl, train.log) belong to the latest run, finished or not.
RESULT_FILES = (MODEL_FILE, ONNX_FILE, PTE_FILE, CONFIG_FILE, SUMMARY_FILE, METRICS_FILE)
# Where a run writes its results before they replace the stage's; `published` inside lists them once all are written.
STAGING, PUBLISHED = ".staging", "published.json"
# Sections that joined stages' fingerprints after runs had recorded theirs: hashed only where they differ from their
# defaults, so that those runs are still recognized. `distill` (the teacher cache) changes what a run computes where
# it keeps float16 logits or decides the streaming loader's crops.
HASHED_WHEN_SET = ("distill",)

# Folders of a workspace that hold workspaces of their own: reproduce's seeds, search's trials, a sweep's jobs.
NESTED = ("reproduce", "search", "sweep")

# A sweep job started as several processes (trainer.devices > 1) is no Hydra multirun inside them: they learn the
# job's folder and its sweep's from these, set by the job for its processes.
JOB_DIR_ENV, SWEEP_DIR_ENV = "DISTILLCTL_SWEEP_JOB_DIR", "DISTILLCTL_SWEEP_DIR"

# Lock files this process holds open: the OS releases them when it exits, even on kill -9, so none goes stale.
_HELD_LOCKS: dict[Path, IO[str]] = {}


class Workspace:
    """Where a run reads and writes. In a Hydra sweep each job writes to its own folder under
    runs/<recipe>/sweep/ and still finds inputs (the teacher) in runs/<recipe>/, or takes a run of the same config
    that another job of the sweep finished (twin)."""

    def __init__(self, root: Path, job_dir: Path | None = None, wait: bool = False, sweep_dir: Path | None = None) -> None:
        self.root = root
        self.job_dir = job_dir or root
        self.wait = wait  # for a stage another run writes: wait for it to end instead of refusing
        self.sweep_dir = sweep_dir  # the sweep this job belongs to, whose other jobs may hold the same runs
        # Stage -> the run a dry run would link it from: the stages after it are planned as if it were linked.
        self.planned: dict[str, Path] = {}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Workspace":
        """The workspace of this Hydra job (a sweep job gets its own output folder)."""
        root, wait = Path(cfg.run_dir), bool(cfg.get("wait", False))
        if (job := sweep_job()) is None:
            return cls(root, wait=wait)
        job_dir, sweep_dir = job
        # reproduce and search give each run they make a run_dir inside the job's folder: it writes there.
        if root.resolve().is_relative_to(job_dir.resolve()):
            return cls(root, wait=wait, sweep_dir=sweep_dir)
        return cls(root, job_dir, wait, sweep_dir)

    def output(self, stage: str) -> Path:
        """The folder a stage writes into, created on demand and claimed by this process alone (in a multi-process
        job, by rank 0: the only one that writes)."""
        path = self.job_dir / stage
        if not is_main():
            return path
        self.claim(stage, self.wait)
        path.mkdir(parents=True, exist_ok=True)
        settle(path)
        return path

    def claim(self, stage: str, wait: bool = False) -> None:
        """Hold an exclusive lock on writing `stage` until this process exits, or refuse when another holds it:
        two runs writing one folder would each overwrite the other's results without a word."""
        import fcntl

        path = lock_file(self.job_dir, stage)
        if path in _HELD_LOCKS:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                handle.close()
                raise UserError(
                    f"{self.job_dir / stage} is being written by another distillctl run ({holder}). Add wait=true to "
                    "start when it ends, or give this run its own run_dir=."
                ) from None
            from distillctl.console import console

            console.print(f"waiting for another distillctl run ({holder}) to finish writing {self.job_dir / stage}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        _HELD_LOCKS[path] = handle

    def find(self, stage: str) -> Path | None:
        """The folder holding a finished run of `stage`: this job's own first, then the workspace's."""
        for base in dict.fromkeys([self.job_dir, self.root]):
            with unclaimed(base, stage) as free:
                if free:  # nobody writes it now: finish or drop what a killed run left half-published
                    settle(base / stage)
            if finished(base / stage):
                return base / stage
        return self.planned.get(stage)

    def metrics(self, stage: str) -> dict[str, Any]:
        """The metrics.json of the finished `stage` (see find), or {} when there is none."""
        found = self.find(stage)
        return (files.read_json(found / METRICS_FILE) or {}) if found is not None else {}

    def final_student(self, source: str) -> Path:
        """The float student to compress further (quantize.source): auto prefers the pruned one to the distilled."""
        if source in ("auto", "pruned") and (found := self.find("pruned")) is not None:
            return found
        if source == "pruned":
            raise UserError(f"no pruned model in {self.root / 'pruned'}: run `distillctl prune` with the same recipe first, or set quantize.source=student.")
        return self.require("student", "distilled student", "distill")

    def twin(self, stage: str, wanted: str) -> Path | None:
        """A finished run of `stage` with fingerprint `wanted` in another job of this sweep (at the same place
        inside it): the same config and inputs, so the run this job would make. A sweep over the student's loss trains
        its teacher once, a method comparison its no-teacher baseline once per seed."""
        if self.sweep_dir is None:
            return None
        sweep = self.sweep_dir.resolve()
        try:
            job, *inside = self.job_dir.resolve().relative_to(sweep).parts
        except ValueError:
            return None
        for other in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != job):
            candidate = other.joinpath(*inside, stage)
            if reusable(candidate, wanted):
                return candidate
        return None

    def neighbour(self, stage: str, wanted: str, data: str | None) -> Path | None:
        """A finished run of `stage` with fingerprint `wanted`, trained on data of stamp `data`, in a workspace beside
        this one (runs/<other recipe>/) or a seed `reproduce` made in one, for a sweep's job also beside the sweep's
        workspace: the run this job would make. Methods compared on one teacher train it once, whichever recipe and
        command trains it first."""
        top = self.root.parent.parent if self.root.parent.name in NESTED else self.root
        folders = [top.parent]
        if self.sweep_dir is not None and self.sweep_dir.parent.name == "sweep":
            # A sweep's runs (runs/<recipe>/sweep/<time>/<job>/...) find those made outside it, under runs/.
            folders.append(self.sweep_dir.parent.parent.parent)
        own = (self.job_dir / stage).resolve()
        workspaces = []
        for folder in dict.fromkeys(folders):
            try:
                workspaces += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:  # an unreadable folder holds nothing to take
                continue
        for workspace in workspaces:
            for candidate in (workspace / stage, *sorted(workspace.glob(f"reproduce/*/{stage}"))):
                if candidate.resolve() != own and reusable(candidate, wanted) and started(candidate).get("data") == data:
                    return candidate
        return None

    def adopt(self, stage: str, source: Path) -> Path:
        """Publish the results of a run of the same config elsewhere (twin, neighbour) as this job's `stage`. Hard
        links where the file system allows (a published file is only ever replaced, never changed in place, so the two
        folders cannot drift), else copies."""
        out = self.output(stage)
        staged = staging(out)
        for name in RESULT_FILES:
            if (source / name).is_file():
                try:
                    os.link(source / name, staged / name)
                except OSError:
                    shutil.copy2(source / name, staged / name)
        publish(out)
        if (source / STARTED_FILE).is_file():  # the data stamp a later pipeline compares: a copy, as it is rewritten in place
            shutil.copy2(source / STARTED_FILE, out / STARTED_FILE)
        return out

    def require(self, stage: str, what: str, command: str) -> Path:
        """The finished `stage` folder, or a UserError naming the command that makes it."""
        found = self.find(stage)
        if found is None:
            raise UserError(f"no {what} in {self.root / stage}: run `distillctl {command}` with the same recipe first.")
        return found


def sweep_job() -> tuple[Path, Path] | None:
    """(this job's folder, its sweep's folder) when this process runs a job of a Hydra sweep, or is one of the
    processes such a job started, else None."""
    if os.environ.get(JOB_DIR_ENV) and os.environ.get(SWEEP_DIR_ENV):
        return Path(os.environ[JOB_DIR_ENV]), Path(os.environ[SWEEP_DIR_ENV])
    return hydra_sweep_job()


def hydra_sweep_job() -> tuple[Path, Path] | None:
    """(this job's folder, its sweep's folder) when Hydra runs this process as a job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir), Path(HydraConfig.get().sweep.dir)
    return None


def lock_file(base: Path, stage: str) -> Path:
    """The lock a writer of base/stage holds."""
    return base / ".locks" / f"{stage.replace('/', '--')}.lock"


@contextmanager
def unclaimed(base: Path, stage: str):
    """Yield whether no other process writes base/stage, holding it for the block when so (this process's own
    claims count as free)."""
    import fcntl

    path = lock_file(base, stage)
    if path in _HELD_LOCKS or not (base / stage / STAGING).exists():
        yield path in _HELD_LOCKS  # nothing to settle where no results are staged
        return
    try:
        handle = path.open("a+")
    except OSError:  # a read-only workspace: nobody can be writing it
        yield True
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def staging(stage_dir: Path) -> Path:
    """An empty folder for a run's results, published into stage_dir by publish() once all are written."""
    path = stage_dir / STAGING
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(stage_dir: Path) -> None:
    """Replace the stage's results with the staged ones as one change: once the list of staged files is written,
    an interrupted publish is finished by the next run or lookup (settle), never left half-done."""
    staged = stage_dir / STAGING
    names = sorted(p.name for p in staged.iterdir() if p.is_file() and p.name != PUBLISHED)
    if METRICS_FILE not in names:
        raise RuntimeError(f"{staged} holds no {METRICS_FILE}: nothing marks the results finished")
    files.write_json(staged / PUBLISHED, names)
    settle(stage_dir)


def settle(stage_dir: Path) -> None:
    """Finish an interrupted publish (its file list was written), or drop results a killed run never finished."""
    staged = stage_dir / STAGING
    if not staged.is_dir():
        return
    names = files.read_json_list(staged / PUBLISHED)
    if not isinstance(names, list):
        shutil.rmtree(staged, ignore_errors=True)
        return
    # The folder reads unfinished while its results change, so nobody takes a new model with the old metrics.
    (stage_dir / METRICS_FILE).unlink(missing_ok=True)
    for name in RESULT_FILES:
        if name not in names:
            (stage_dir / name).unlink(missing_ok=True)  # an earlier run's result this one does not have
    for name in sorted(names, key=lambda n: n == METRICS_FILE):  # metrics.json last
        if (staged / name).exists():  # else moved before the interruption
            os.replace(staged / name, stage_dir / name)
    shutil.rmtree(staged, ignore_errors=True)


def model_file(stage_dir: Path) -> Path | None:
    """The model a stage folder holds: safetensors (torch), ONNX or an ExecuTorch program."""
    return next((stage_dir / name for name in (MODEL_FILE, ONNX_FILE, PTE_FILE) if (stage_dir / name).is_file()), None)


def has_checkpoint(stage_dir: Path) -> bool:
    """Whether a training run saved an epoch's checkpoint in stage_dir, to resume from."""
    return (stage_dir / LAST_STATE).is_file()


def check_resumable(stage_dir: Path) -> None:
    """Refuse resume=true where no checkpoint was saved."""
    if not has_checkpoint(stage_dir):
        raise UserError(f"resume=true but {stage_dir} holds no checkpoint to resume from; run without resume=true.")


def finished(stage_dir: Path) -> bool:
    """A stage is finished when its model and its metrics (written last) are both there."""
    return model_file(stage_dir) is not None and (stage_dir / METRICS_FILE).is_file()


def reusable(stage_dir: Path, wanted: str) -> bool:
    """Whether `stage_dir` is a finished run, not being rewritten, of fingerprint `wanted`: one a job may link, or
    take as its own."""
    return finished(stage_dir) and not (stage_dir / STAGING).exists() and recorded_fingerprint(stage_dir) == wanted


def fingerprint(cfg: DictConfig, sections: list[str], inputs: list[str] | tuple[str, ...] = ()) -> str:
    """Hash of the config sections a stage depends on (how it executes left out: execution_settings) and of its
    inputs' fingerprints."""
    chosen = {s: canonical(s, OmegaConf.to_container(cfg[s], resolve=True)) for s in sections}
    for s in HASHED_WHEN_SET:
        if s in chosen and chosen[s] == canonical(s, section_defaults(s)):
            del chosen[s]
    if "dataset" in sections and cfg.dataset.get("train_limit"):
        # train_limit once counted the held-out images too: a run made under that rule trained on other images
        chosen["train_limit_counts"] = "training images"
    blob = json.dumps({"config": chosen, "inputs": list(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recorded_fingerprint(stage_dir: Path) -> str | None:
    """The fingerprint a finished stage recorded in its metrics.json."""
    metrics = files.read_json(stage_dir / METRICS_FILE) or {}
    return metrics.get("fingerprint")


def started(stage_dir: Path) -> dict[str, Any]:
    """What record_start (and note_requeue) noted of the run that last started in stage_dir; {} where nothing did."""
    return files.read_json(stage_dir / STARTED_FILE) or {}


def started_fingerprint(stage_dir: Path) -> str | None:
    """The fingerprint of the run that last started in stage_dir (finished or not)."""
    return started(stage_dir).get("fingerprint")


def record_start(stage_dir: Path, fingerprint: str, settings: dict[str, Any] | None = None, data: str | None = None) -> None:
    """Note which config is training in stage_dir, so an interrupted run is resumed only with the same one, the
    command that started it, which `distillctl runs` gives to continue it, its resolved `settings`, which a
    resume under others is compared with (resumption.check), and the stamp of the data set's files it trains on."""
    files.write_json(stage_dir / STARTED_FILE, {"fingerprint": fingerprint, "command": environment.command(), "settings": settings,
                                                **({"data": data} if data else {})})


def note_requeue(stage_dir: Path) -> None:
    """Note that the scheduler will run the stage's job again (submitit requeued it): its next start resumes."""
    files.write_json(stage_dir / STARTED_FILE, {**started(stage_dir), "requeued": True})


def note_failure(stage_dir: Path, error: str) -> None:
    """Note the error the run that last started in stage_dir stopped on (a diverged loss, a refused layer), for
    `distillctl runs` to say why it ended rather than call it interrupted; the next start forgets it."""
    files.write_json(stage_dir / STARTED_FILE, {**started(stage_dir), "failed": " ".join(error.split())})


def requeued(stage_dir: Path) -> bool:
    """Whether the run that last started in stage_dir was stopped for the scheduler to run it again."""
    return started(stage_dir).get("requeued") is True


def save_config(stage_dir: Path, cfg: DictConfig) -> None:
    """The fully resolved config beside the stage's artifacts."""
    files.write_text(stage_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def write_metrics(stage_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, written last: its presence marks the stage finished. It records what produced the stage (the
    command, versions, machine) beside the figures."""
    files.write_json(stage_dir / METRICS_FILE, {**metrics, "environment": environment.describe()})
