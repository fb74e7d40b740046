"""`distillctl <command> --help`: what the command does, its main options with this recipe's values, an example."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandHelp:
    """The page of one command."""

    does: str
    options: tuple[str, ...]  # config keys shown with their values for the recipe (and overrides) given
    example: str


HELP: dict[str, CommandHelp] = {
    "train-teacher": CommandHelp(
        "Trains the recipe's teacher on labels (cross-entropy) into runs/<recipe>/teacher/. Skipped by pipeline when "
        "teacher.checkpoint names weights.",
        ("teacher.name", "teacher.pretrained", "teacher.checkpoint", "dataset.path", "trainer.epochs", "trainer.batch_size", "optimizer.lr"),
        "distillctl train-teacher recipe=cifar_resnet dataset.path=../shared/data/cifar10 trainer.epochs=2"),
    "distill": CommandHelp(
        "Trains the student from the frozen teacher with the recipe's loss terms into runs/<recipe>/student/. The "
        "teacher is teacher.checkpoint or the workspace's train-teacher result.",
        ("student.name", "teacher.name", "teacher.checkpoint", "loss.terms", "trainer.epochs", "optimizer.lr", "distill.teacher_cache",
         "trainer.devices"),
        "distillctl distill recipe=quickstart loss.terms.kd.temperature=8 trainer.epochs=3"),
    "prune": CommandHelp(
        "Shrinks the distilled student: structured channel pruning to a MACs target then KD fine-tuning, or "
        "unstructured sparsity; writes runs/<recipe>/pruned/.",
        ("prune.method", "prune.target_macs_ratio", "prune.steps", "prune.finetune_epochs", "prune.sparsity"),
        "distillctl prune recipe=quickstart prune.target_macs_ratio=0.3 prune.steps=2"),
    "quantize": CommandHelp(
        "Quantizes the final float student (the pruned one when there is one) into runs/<recipe>/<method>/: int8 "
        "(static or QAT, torch x86 kernels), fp16/bf16, or ONNX Runtime int8.",
        ("quantize.method", "quantize.source", "quantize.calibration_batches", "quantize.skip", "quantize.qat_epochs", "export.onnx"),
        "distillctl quantize recipe=quickstart quantize=onnx_int8"),
    "evaluate": CommandHelp(
        "Measures every model in the workspace on the test split (top-1/5, top-1 per class, agreement, size, MACs, CPU "
        "latency) and writes runs/<recipe>/report/; exits 1 when the recipe's expect: block is not met.",
        ("dataset.path", "dataset.test_limit", "trainer.threads", "evaluate.latency_repeats", "evaluate.throughput_batch", "expect"),
        "distillctl evaluate recipe=quickstart"),
    "predict": CommandHelp(
        "Runs a model of the workspace (by default the one the pipeline ends with) or any model file on your own images: "
        "each image's top classes go to runs/<recipe>/predict/<model>.csv, with the accuracy when the images sit in "
        "folders named after the classes. Images are prepared as the model's test images were.",
        ("predict.input", "predict.model", "predict.topk", "predict.output", "trainer.eval_batch_size", "trainer.threads"),
        "distillctl predict recipe=quickstart predict.input=photos/ predict.model=int8_static"),
    "pipeline": CommandHelp(
        "Runs train-teacher, distill, prune, quantize and evaluate in order; a stage whose config and inputs are "
        "unchanged is skipped (dry_run=true lists what would run, and why), one another workspace finished with the "
        "same config and data is linked from it (reuse=false trains it here), an interrupted one resumes.",
        ("teacher.name", "student.name", "loss.terms", "trainer.epochs", "prune.method", "quantize.method", "force", "dry_run",
         "reuse", "logger", "trainer.devices"),
        "distillctl pipeline recipe=quickstart"),
    "reproduce": CommandHelp(
        "Trains the teacher, the student and the same student without a teacher for each seed; reports mean ± std "
        "and the gain, and exits 1 when the recipe's expect: fails on the means. Methods side by side: "
        "`reproduce -m recipe=cifar_resnet,cifar_at,cifar_dkd` ends with one table; each seed's teacher and baseline "
        "train once, in a sweep or not (reuse=false trains them again).",
        ("reproduce.seeds", "reproduce.baseline_loss", "trainer.epochs", "expect", "dry_run", "reuse"),
        "distillctl reproduce recipe=quickstart 'reproduce.seeds=[0,1]'"),
    "search": CommandHelp(
        "Optuna search over search.space: each trial distills with drawn values from one shared teacher, scored on "
        "validation top-1; writes runs/<recipe>/search/ with results and best.yaml, a recipe to run.",
        ("search.space", "search.trials", "search.epochs", "search.sampler", "search.pruner", "search.max_latency_ms", "search.minimize"),
        "distillctl search recipe=quickstart search=kd search.trials=8 search.epochs=2"),
}


def render(command: str, overrides: Sequence[str]) -> str:
    """The help page of `command`, its option values composed from `overrides` (the recipe and any key=value)."""
    import textwrap

    import yaml
    from omegaconf import OmegaConf

    from distillctl.composition import CONFIG_DIR, DEFAULT_RECIPE, check_composes, compose_config, first_job, prepare_overrides
    from distillctl.config import register

    page = HELP[command]
    register()
    given = prepare_overrides([o for o in overrides if "=" in o and not o.startswith("-")])
    sweeping = any(o in ("-m", "--multirun") for o in overrides)
    check_composes(given, sweeping)  # a typo in the overrides is one line naming the fix, as without --help
    cfg = compose_config(first_job(given))  # a sweep's help shows its first job's values
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), DEFAULT_RECIPE)
    width = max(map(len, page.options))
    values = []
    for key in page.options:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if OmegaConf.is_config(value):  # a section on one line, as it would be written in an override
            value = yaml.safe_dump(OmegaConf.to_container(value), default_flow_style=True, width=10**6).strip()
        values.append(f"  {key:<{width}}  {textwrap.shorten(str(value), 110, placeholder=' ...')}")
    groups = [f"  {name}: {', '.join(options)}" for name, options in group_options(CONFIG_DIR).items()]
    return "\n".join([
        f"usage: distillctl {command} [recipe=NAME] [key=value ...] [-m]",
        "",
        textwrap.fill(page.does, 110),
        "",
        f"main options (values for recipe={recipe}):",
        *values,
        "",
        "example:",
        f"  {page.example}",
        "",
        "config groups (group=option):",
        *groups,
        "",
        f"`distillctl {command} --cfg job` prints the whole resolved config; `--hydra-help` shows Hydra's own flags;",
        "README.md lists every option.",
    ])


def group_options(config_dir) -> dict[str, list[str]]:
    """Each config group's options as Hydra finds them, the launchers of installed plugins included."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    names = [g.name for g in sorted(config_dir.iterdir()) if g.is_dir() and g.name != "hydra"] + ["hydra/launcher"]
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {name: loader.get_group_options(name) for name in names}
