"""`distillctl pipeline`: every stage in order, skipping those whose config and inputs are unchanged.

The pipeline is the one module that knows every stage: it composes them through their `STAGE` interface and
borrows nothing else from them.
"""

from __future__ import annotations

from omegaconf import DictConfig

from distillctl.console import console
from distillctl.stages import distill, evaluate, prune, quantize, train_teacher
from distillctl.stages.base import Plan, Stage, bring_up_to_date, decide, on_rank_zero, print_plans
from distillctl.workspace import Workspace

# Training stages in order; evaluate always runs last (it is the recipe's pass/fail gate).
TRAINING_STAGES: list[Stage] = [train_teacher.STAGE, distill.STAGE, prune.STAGE, quantize.STAGE]


def run(cfg: DictConfig) -> dict:
    """Run or skip each training stage, then evaluate; return the distilled student's metrics (what a Hydra
    sweeper over pipelines optimizes)."""
    ws = Workspace.from_config(cfg)
    if cfg.dry_run:
        show_plan(cfg, ws)
        return {}
    redo = bool(cfg.force)
    for stage in TRAINING_STAGES:
        # Anything after a redone stage depends on it, so it is redone too.
        redo = bring_up_to_date(stage, cfg, ws, redo) or redo
    console.rule("evaluate")
    on_rank_zero(evaluate.run, cfg)  # in a multi-process job: rank 0 alone
    return ws.metrics(distill.FOLDER)


def show_plan(cfg: DictConfig, ws: Workspace) -> None:
    """What run would do with each stage, and why, as a table; nothing is trained or written."""
    plans, redo = [], bool(cfg.force)
    for stage in TRAINING_STAGES:
        chosen = decide(stage, cfg, ws, redo)
        redo = redo or chosen.action in ("run", "resume")
        if chosen.action == "link":
            ws.planned[chosen.name] = chosen.source
        plans.append(("", chosen))
    plans.append(("", Plan("run", "evaluate", "always: it is the recipe's pass/fail gate")))
    print_plans(f"pipeline dry run: {ws.job_dir}", plans)
