"""What the CLI checks before it imports torch or loads data: everything that needs only the config and the file
system (weights files, where the data set is, the stage outputs a command builds on), and model names (timm's
registry, and torch with it, for a name outside the CIFAR zoo). Such a mistake then answers in seconds instead of
after the data load."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from distillctl.cifar_zoo import ZOO_NAMES, no_published_weights, no_timm_weights
from distillctl.disk import check_writable
from distillctl.composition import group_choices
from distillctl.config import SEED_MAX
from distillctl.errors import UserError, did_you_mean
from distillctl.hub_access import offline, offline_unless_reachable
from distillctl.teacher_files import PUBLISHED, given_teachers, published_weights, teacher_checkpoints
from distillctl.workspace import Workspace, check_resumable, finished

# The finished stage outputs each command starts from (pipeline, reproduce and search train what is missing).
NEEDS: dict[str, Callable[[DictConfig, Workspace], object]] = {
    "distill": teacher_checkpoints,
    "prune": lambda cfg, ws: ws.require("student", "distilled student", "distill"),
    "quantize": lambda cfg, ws: ws.final_student(str(cfg.quantize.source)),
    "predict": lambda cfg, ws: predict_inputs(cfg, ws),
}
# The folder each command trains in, where resume=true continues; None where it trains nothing (prune without
# fine-tuning, quantize but QAT) or in several folders (prune in steps: pruned/step1, ...).
TRAINS_IN: dict[str, Callable[[DictConfig], "str | None"]] = {
    "train-teacher": lambda cfg: "teacher",
    "distill": lambda cfg: "student",
    "prune": lambda cfg: "pruned" if cfg.prune.finetune_epochs and cfg.prune.steps == 1 else None,
    "quantize": lambda cfg: "int8_qat" if cfg.quantize.method == "int8_qat" else None,
}
# Commands that never read the data set: its path may be unset or elsewhere.
WITHOUT_DATASET = {"predict"}
# Commands that build the student from student.name, those that may train the teacher from teacher.name, and those
# that build the teacher (or each of `teachers`) from its name, to train it or to load its weights.
BUILDS_STUDENT = {"distill", "pipeline", "reproduce", "search"}
TRAINS_TEACHER = {"train-teacher", "pipeline", "reproduce", "search"}
BUILDS_TEACHER = TRAINS_TEACHER | {"distill"}


def check(command: str, cfg: DictConfig) -> None:
    """Raise the UserError a stage would raise later, for every problem visible from the config and the disk."""
    for role in ("teacher", "student"):
        for key in ("checkpoint", "pretrained_file"):
            if (role, key, cfg[role][key]) != ("teacher", "checkpoint", PUBLISHED):
                existing_file(f"{role}.{key}", cfg[role][key])
    for i, entry in enumerate(cfg.teachers):
        existing_file(f"teachers[{i}].checkpoint", entry.checkpoint)
    zoo_weights(command, cfg)
    # Before anything imports the Hub's libraries (timm does), which read their offline mode once, when imported.
    offline_unless_reachable(cfg, reads_data=command not in WITHOUT_DATASET)
    model_names(command, cfg)
    if command not in WITHOUT_DATASET:
        check_dataset(cfg.dataset.path, cfg.dataset.train_split)
    published_weights_at_hand(command, cfg)
    if not str(cfg.run_dir).strip():
        # Path("") is the current folder: the stages would land beside the user's own files.
        raise UserError("run_dir is empty: give the workspace's folder (run_dir=runs/NAME), or leave it out for runs/<recipe>.")
    check_writable(Path(cfg.run_dir), "run_dir")
    if cfg.get("dry_run") and command not in ("pipeline", "reproduce"):
        raise UserError(f"dry_run=true is read by pipeline and reproduce only: `distillctl pipeline ... dry_run=true` shows "
                        f"what it would run; {command} runs what it is asked to.")
    if command == "reproduce":
        baseline_loss(str(cfg.reproduce.baseline_loss))
        reproduce_seeds(list(cfg.reproduce.seeds))
    if command in ("quantize", "pipeline") and cfg.quantize.method == "executorch_int8":
        require_package("executorch", "quantize=executorch_int8", "executorch")
    if need := NEEDS.get(command):
        need(cfg, Workspace.from_config(cfg))
    if cfg.resume and (folder := TRAINS_IN.get(command, lambda _: None)(cfg)):
        resumable(Workspace.from_config(cfg).job_dir / folder)


def resumable(stage_dir: Path) -> None:
    """resume=true has an epoch to continue from, refused before the data and the teacher load rather than after
    (13 s on the embedded sample); a finished folder goes on to say there is nothing to resume."""
    if not finished(stage_dir):
        check_resumable(stage_dir)


def zoo_weights(command: str, cfg: DictConfig) -> None:
    """A CIFAR zoo model that the command builds is not asked for published or timm-format weights, which it has
    none of: refused before the Hub is asked and the data loaded."""
    published = cfg.teacher.checkpoint == PUBLISHED
    teacher_trained = command in TRAINS_TEACHER and given_teachers(cfg) is None
    for role, built in (("teacher", published or teacher_trained), ("student", command in BUILDS_STUDENT)):
        model = cfg[role]
        if not built or model.name not in ZOO_NAMES:
            continue
        if model.pretrained_file:
            raise UserError(no_timm_weights(role))
        if model.pretrained or (role == "teacher" and published):
            raise UserError(no_published_weights(model.name))


def model_names(command: str, cfg: DictConfig) -> None:
    """A model name timm does not know is refused before the data load, which can take minutes on a large folder.
    Only a name outside the CIFAR zoo asks timm's registry, which imports torch: the stage would import it next."""
    names = [str(cfg.student.name)] if command in BUILDS_STUDENT else []
    if command in BUILDS_TEACHER:
        names += [str(entry.name) for entry in cfg.teachers] or [str(cfg.teacher.name)]
    if any(name not in ZOO_NAMES for name in names):
        from distillctl.models import check_model_name

        for name in names:
            check_model_name(name)


def published_weights_at_hand(command: str, cfg: DictConfig) -> None:
    """Weights the command fetches from the Hub exist, and are in the local cache when the Hub is offline: the
    stage would learn otherwise only after the data load."""
    trains_teacher = command in TRAINS_TEACHER and given_teachers(cfg) is None
    problems = []
    for role, built in (("teacher", trains_teacher), ("student", command in BUILDS_STUDENT)):
        model = cfg[role]
        if built and model.pretrained and not model.pretrained_file and model.name not in ZOO_NAMES:
            from distillctl.models.published_weights import check_published  # imports torch, as timm does

            problems += refusals(check_published, str(model.name), role)
    if cfg.teacher.checkpoint == PUBLISHED and not cfg.teachers and command in BUILDS_TEACHER:
        problems += refusals(published_weights, cfg.teacher)
    if problems:  # all at once, so that an offline user fetches the teacher's and the student's in one go
        raise UserError(" ".join(problems))


def refusals(check: Callable[..., object], *args: object) -> list[str]:
    """The message of the UserError that `check(*args)` raises, as a list of one; empty when it passes."""
    try:
        check(*args)
    except UserError as exc:
        return [str(exc)]
    return []


def reproduce_seeds(seeds: list[int]) -> None:
    """reproduce.seeds holds distinct seeds that every random generator takes."""
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= seed <= SEED_MAX for seed in seeds):
        raise UserError(f"reproduce.seeds={seeds}: give one or more distinct seeds from 0 to {SEED_MAX}, e.g. reproduce.seeds=[0,1,2].")


def baseline_loss(name: str) -> None:
    """reproduce.baseline_loss names an option of the loss group: it is composed only after the first seed's
    teacher and student have trained."""
    options = group_choices("loss")
    if name not in options:
        raise UserError(f"reproduce.baseline_loss={name} is not an option of the loss group ({', '.join(options)})."
                        f"{did_you_mean(name, options)}")


def predict_inputs(cfg: DictConfig, ws: Workspace) -> None:
    """`predict` has images to read and a model to run."""
    from distillctl.model_files import chosen_model

    if not cfg.predict.input:
        raise UserError("predict needs images: add predict.input=PATH, an image file or a folder of them.")
    if not Path(cfg.predict.input).expanduser().exists():
        raise UserError(f"predict.input '{cfg.predict.input}' does not exist: give an image file or a folder of images.")
    if cfg.predict.output:  # refused now, not after every image has been run through the model
        out = Path(cfg.predict.output).expanduser()
        if out.is_dir():
            raise UserError(f"predict.output={out} is a folder: give the CSV file's path.")
        check_writable(out.parent, "predict.output")
    chosen_model(str(cfg.predict.model), cfg, ws)


def require_package(module: str, feature: str, extra: str) -> None:
    """Refuse a feature whose optional package is not installed, naming what to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{feature} needs the {module} package: pip install 'distillctl[{extra}]'.")


def existing_file(key: str, value: str | None) -> None:
    """A weights file named in the config must be there."""
    path = Path(value).expanduser() if value else None
    if path is not None and not path.is_file():
        raise UserError(f"{key} '{path}' {'is a folder, not a weights file' if path.is_dir() else 'does not exist'}.")


def check_dataset(spec: str, train_split: str = "train") -> None:
    """dataset.path names a local data set that is there, or a Hub id that can be had (online, or cached offline)."""
    from distillctl.data.sources import locate, offline_message

    source = locate(spec, train_split=train_split)
    if source.local_dir is None and offline() and not hub_cached(source.hub_id):
        raise UserError(offline_message(spec, "offline mode is on and it is not in the local Hugging Face cache"))


def hub_cached(repo_id: str) -> bool:
    """Whether a Hub data set is in the local Hub download cache or in `datasets`' own cache."""
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()
    prepared = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    owner_name = repo_id.replace("/", "--")
    return (hub / f"datasets--{owner_name}").is_dir() or any(prepared.glob(f"{repo_id.replace('/', '___')}*"))
