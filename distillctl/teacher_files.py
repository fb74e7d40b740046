"""Where a stage's teachers come from: teacher.checkpoint, the workspace's trained teacher, or the `teachers` list.

Only the file system is asked, so the CLI checks it before torch is imported (distillctl.preflight).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from distillctl.errors import UserError
from distillctl.workspace import MODEL_FILE, Workspace, fingerprint


# teacher.checkpoint=pretrained: timm's published weights for teacher.name, used as they are (head included), as a
# published ImageNet teacher is in the ImageNet benchmarks; no train-teacher stage.
PUBLISHED = "pretrained"


def trained_teacher_sections(cfg: DictConfig) -> list[str]:
    """The config sections a teacher that train-teacher trains depends on (beside the seed)."""
    return ["dataset", "teacher", "trainer", "optimizer", "scheduler"]


def trained_teacher_fingerprint(cfg: DictConfig) -> str:
    """What a teacher that train-teacher trains depends on."""
    return fingerprint(cfg, trained_teacher_sections(cfg), [str(cfg.seed)])


def given_teachers(cfg: DictConfig) -> str | None:
    """Why the recipe's own teacher is not trained: a teacher given as a file (teacher.checkpoint, or a `teachers`
    ensemble) is used as it is. None where train-teacher trains it."""
    if cfg.teachers:
        return "the `teachers` list gives trained teachers"
    return f"teacher.checkpoint={cfg.teacher.checkpoint} is used as it is" if cfg.teacher.checkpoint else None


def published_weights(teacher: DictConfig) -> Path:
    """The published weights file of the teacher: teacher.pretrained_file when given (offline), else timm's
    model.safetensors fetched from the Hub once into its cache."""
    if teacher.pretrained_file:
        path = Path(teacher.pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(f"teacher.pretrained_file '{path}' does not exist.")
        return path
    import timm  # only here: it imports torch, which the CLI's checks otherwise avoid

    hub_id = getattr(timm.models.get_pretrained_cfg(teacher.name), "hf_hub_id", None)
    if not hub_id:
        raise UserError(f"teacher.checkpoint=pretrained: timm publishes no weights for '{teacher.name}'. Name a timm model "
                        "with published weights (e.g. resnet34.tv_in1k), or give teacher.checkpoint=PATH.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as exc:  # offline, unreachable, or no such file: all mean "give the file yourself"
        from distillctl.hub_access import offline

        if offline():
            raise UserError(f"teacher.checkpoint=pretrained: {hub_id}'s model.safetensors is not in the local cache, and the "
                            f"Hub is offline. Fetch it once with network (`hf download {hub_id} model.safetensors` fills the "
                            "same cache), or give teacher.pretrained_file=PATH.") from None
        raise UserError(f"teacher.checkpoint=pretrained: could not fetch {hub_id} from the Hub ({type(exc).__name__}); offline? "
                        f"Download its model.safetensors once and set teacher.pretrained_file=PATH.") from None


def teacher_checkpoint(cfg: DictConfig, ws: Workspace) -> Path:
    """teacher.checkpoint when set (`pretrained`: the published weights), else the teacher that train-teacher left
    in the workspace."""
    if cfg.teacher.checkpoint == PUBLISHED:
        return published_weights(cfg.teacher)
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"teacher.checkpoint '{path}' does not exist.")
        return path
    found = ws.find("teacher")
    if found is None:
        from hydra.core.hydra_config import HydraConfig

        recipe = HydraConfig.get().runtime.choices.get("recipe", "NAME") if HydraConfig.initialized() else "NAME"
        if (kin := same_teacher_beside(cfg, ws)) is not None:
            raise UserError(f"no trained teacher in {ws.root / 'teacher'}, but {kin} holds this very teacher (the same config "
                            f"and data): add teacher.checkpoint={kin / MODEL_FILE}, or run `distillctl pipeline "
                            f"recipe={recipe}` (same overrides), which links it into {ws.root}.")
        raise UserError(
            f"no trained teacher in {ws.root / 'teacher'}. Train one with `distillctl train-teacher recipe={recipe}` "
            "(same overrides), or point teacher.checkpoint=PATH at a weights file."
        )
    return found / MODEL_FILE


def same_teacher_beside(cfg: DictConfig, ws: Workspace) -> Path | None:
    """A teacher that another workspace beside this one trained with this config and data (Workspace.neighbour)."""
    if not cfg.get("reuse", True):
        return None
    from distillctl.data.content_stamp import dataset_stamp  # lists the data set's files: only once a teacher is missing

    return ws.neighbour("teacher", trained_teacher_fingerprint(cfg), dataset_stamp(cfg.dataset))


def teacher_checkpoints(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str, float]]:
    """(weights file, model name, weight) of every teacher: the `teachers` list, else the one teacher."""
    if not cfg.teachers:
        return [(teacher_checkpoint(cfg, ws), cfg.teacher.name, 1.0)]
    found = []
    for i, entry in enumerate(cfg.teachers):
        if not entry.checkpoint:
            raise UserError(f"teachers[{i}] ({entry.name}) needs a checkpoint: each teacher of an ensemble is a trained weights file.")
        path = Path(entry.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"teachers[{i}].checkpoint '{path}' does not exist.")
        found.append((path, entry.name, entry.weight))
    return found
