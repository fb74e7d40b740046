"""`distillctl reproduce`: the recipe's teacher and student, and the same student without a teacher, once per seed;
then mean +- std per row and the student's gain, checked against the recipe's `expect:` block.

Each seed is a workspace of its own under runs/<recipe>/reproduce/, so finished runs are skipped by fingerprint
and interrupted ones resume, exactly as in `pipeline`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from distillctl import environment, files
from distillctl.composition import override, override_key
from distillctl.console import console
from distillctl.data.hub_revision import data_label
from distillctl.engine.device import device_name, pick_device
from distillctl.engine.predict import predict, topk_accuracy
from distillctl.environment import cpu_name, threads_phrase
from distillctl.errors import UserError
from distillctl.evaluation import expectations, report, seed_results
from distillctl.models.teachers import load_teacher
from distillctl.stages import distill, train_teacher
from distillctl.stages.base import Plan, bring_up_to_date, decide, on_rank_zero, print_plans
from distillctl.stages.context import RunContext
from distillctl.workspace import METRICS_FILE, Workspace

ROWS = ("teacher", "student", "baseline", "gain")


def command_line() -> tuple[str, list[str]]:
    """The recipe's name and the command line's overrides, which every seed's runs are composed with."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if any(override_key(o) == "seed" for o in overrides):
        raise UserError("reproduce runs every seed in reproduce.seeds: set reproduce.seeds=[0,1,2] rather than seed=.")
    return hydra_cfg.runtime.choices.get("recipe", "recipe"), overrides


def compose_run(overrides: list[str], seed: int, run_dir: Path, loss: str | None = None) -> DictConfig:
    """One seed's config: the user's recipe and overrides with this seed and workspace; for the baseline, `loss`
    replaces the recipe's loss and every override of it (a KD temperature means nothing without a teacher)."""
    from hydra import compose

    kept = [
        o for o in overrides
        if override_key(o) != "run_dir" and not (loss is not None and override_key(o).startswith("loss"))
    ]
    extra = [f"seed={seed}", override("run_dir", str(run_dir))] + ([f"loss={loss}"] if loss is not None else [])
    cfg = compose("config", overrides=[*kept, *extra])
    if loss is None:
        return cfg
    # A recipe that sets its terms' values itself (search's best.yaml: the KD temperature found) keeps those terms
    # under loss=ce; the baseline is the student without them, so only the baseline group's own terms stay.
    own = set(compose("config", overrides=[f"loss={loss}"]).loss.terms)
    if foreign := sorted(set(cfg.loss.terms) - own):
        cfg = compose("config", overrides=[*kept, *extra, *(f"~loss.terms.{term}" for term in foreign)])
    return cfg


def recorded_top1(ws: Workspace, folder: str) -> float:
    """The test top-1 a finished training stage recorded."""
    metrics = files.read_json(ws.root / folder / METRICS_FILE) or {}
    if "test_top1" not in metrics:
        raise UserError(f"{ws.root / folder} has no test accuracy in {METRICS_FILE}; rerun with force=true.")
    return float(metrics["test_top1"])


def given_teacher_top1(cfg: DictConfig) -> float:
    """Test top-1 of a teacher given as a file (teacher.checkpoint or a `teachers` ensemble)."""
    ctx = RunContext.open(cfg)
    teacher = load_teacher(cfg, ctx.workspace, ctx.data.classes).model
    batches = ctx.data.test.eval_batches(cfg.trainer.eval_batch_size, cfg.dataset.mean, cfg.dataset.std, ctx.device)
    logits, labels = predict(teacher.to(ctx.device), batches, ctx.device, cfg.trainer.precision)
    return topk_accuracy(logits, labels, 1)


def run_seed(overrides: list[str], root: Path, seed: int, baseline_loss: str) -> tuple[DictConfig, Workspace, Workspace]:
    """Teacher and student in seed-<n>/, the baseline in seed-<n>-baseline/ (every process of a multi-process job
    trains them); the seed's config and both workspaces."""
    cfg = compose_run(overrides, seed, root / f"seed-{seed}")
    ws = Workspace.from_config(cfg)
    console.rule(f"[bold]seed {seed}: the recipe's teacher and student")
    redo = bring_up_to_date(train_teacher.STAGE, cfg, ws, bool(cfg.force)) or bool(cfg.force)
    bring_up_to_date(distill.STAGE, cfg, ws, redo)
    baseline_cfg = compose_run(overrides, seed, root / f"seed-{seed}-baseline", loss=baseline_loss)
    baseline_ws = Workspace.from_config(baseline_cfg)
    console.rule(f"[bold]seed {seed}: the same student without a teacher (loss={baseline_loss})")
    bring_up_to_date(distill.STAGE, baseline_cfg, baseline_ws, bool(baseline_cfg.force))
    return cfg, ws, baseline_ws


def seed_plans(overrides: list[str], root: Path, seed: int, baseline_loss: str) -> list[tuple[str, Plan]]:
    """What run_seed would do with the seed's teacher, student and baseline, and why, with nothing changed."""
    cfg = compose_run(overrides, seed, root / f"seed-{seed}")
    ws = Workspace.from_config(cfg)
    teacher = decide(train_teacher.STAGE, cfg, ws, bool(cfg.force))
    if teacher.action == "link":
        ws.planned[teacher.name] = teacher.source
    student = decide(distill.STAGE, cfg, ws, bool(cfg.force) or teacher.action in ("run", "resume"))
    baseline_cfg = compose_run(overrides, seed, root / f"seed-{seed}-baseline", loss=baseline_loss)
    baseline = decide(distill.STAGE, baseline_cfg, Workspace.from_config(baseline_cfg), bool(baseline_cfg.force))
    return [(f"seed {seed}", teacher), (f"seed {seed}", student), (f"seed {seed} baseline (loss={baseline_loss})", baseline)]


def run(cfg: DictConfig) -> dict:
    """Run every seed, write runs/<recipe>/reproduce/results.{json,md}, exit 1 when an expectation fails."""
    seeds = list(cfg.reproduce.seeds)  # checked by preflight.reproduce_seeds
    recipe, overrides = command_line()
    # In a sweep (`reproduce -m recipe=cifar_at,cifar_dkd`) each job's seeds go in the job's own folder.
    root = Workspace.from_config(cfg).job_dir / "reproduce"
    if cfg.dry_run:
        plans = [row for seed in seeds for row in seed_plans(overrides, root, seed, cfg.reproduce.baseline_loss)]
        print_plans(f"reproduce dry run: {root}", plans, "run")
        return {}
    runs = [run_seed(overrides, root, seed, cfg.reproduce.baseline_loss) for seed in seeds]
    rows, checked = on_rank_zero(lambda _: summarize(cfg, recipe, overrides, root, seeds, runs), cfg)
    report.enforce(checked, " (on the means over seeds)")
    return {name: row.as_dict() for name, row in rows.items()}


def summarize(cfg: DictConfig, recipe: str, overrides: list[str], root: Path, seeds: list[int],
              runs: list[tuple[DictConfig, Workspace, Workspace]]) -> tuple[dict, list]:
    """The rows over seeds from what each run recorded, written to results.{json,md} and printed; and the recipe's
    expectations checked on their means."""
    teacher = [None if train_teacher.skipped(c) else recorded_top1(ws, train_teacher.FOLDER) for c, ws, _ in runs]
    student = [recorded_top1(ws, distill.FOLDER) for _, ws, _ in runs]
    baseline = [recorded_top1(ws, distill.FOLDER) for _, _, ws in runs]
    if None in teacher:  # the same given teacher for every seed: measure it once
        teacher = [given_teacher_top1(runs[-1][0])] * len(seeds)
    rows = seed_results.rows_with_gain(teacher, student, baseline)
    checked = expectations.check(cfg.get("expect") or {}, seed_results.means(rows), only=ROWS)
    device = pick_device(cfg.trainer.device)
    commit = runs[-1][1].metrics(distill.FOLDER).get("data_commit")  # a Hub data set's: the same for every seed
    context = {
        "recipe": recipe,
        "command": " ".join(["distillctl reproduce", *overrides]),
        "data": data_label(str(cfg.dataset.path), commit),
        "seeds": ", ".join(map(str, seeds)),
        "teacher": f"{cfg.teacher.name}" + (f" ({cfg.teacher.checkpoint})" if cfg.teacher.checkpoint else ", trained per seed"),
        "student": f"{cfg.student.name}, loss terms {', '.join(sorted(cfg.loss.terms))}; baseline loss={cfg.reproduce.baseline_loss}",
        "torch": torch.__version__,
        "device": device_name(device) or f"cpu ({cpu_name()}, {threads_phrase(torch.get_num_threads())})",
        "software": environment.summary(environment.describe()),
    }
    seed_results.write(root, rows, seeds, context, checked)
    seed_results.print_table(rows, seeds, f"{recipe}: test top-1 over {len(seeds)} seeds")
    console.print(f"results: {root / 'results.md'}")
    return rows, checked
