"""`distillctl pipeline`: every stage in order, skipping those whose config and inputs are unchanged."""

from __future__ import annotations

from omegaconf import DictConfig

from distillctl.engine.progress import console
from distillctl.stages import distill, evaluate, prune, quantize, train_teacher
from distillctl.stages.context import RunContext
from distillctl.workspace import recorded_fingerprint

# Training stages in order; evaluate always runs last (it is the recipe's pass/fail gate).
TRAINING_STAGES = [train_teacher, distill, prune, quantize]


def run(cfg: DictConfig) -> None:
    """Run or skip each training stage, then evaluate."""
    ws = RunContext.open(cfg).workspace
    redo = bool(cfg.force)
    for stage in TRAINING_STAGES:
        folder = quantize.output_name(cfg) if stage is quantize else stage.STAGE  # quantize writes <method>/
        done = ws.find(folder)
        expected = stage.fingerprint(cfg, ws)
        if not redo and done is not None and recorded_fingerprint(done) == expected:
            console.print(f"[green]skip[/] {folder}: {done} is up to date with this config (force=true redoes it)")
            continue
        # Anything after a redone stage depends on it, so it is redone too.
        redo = True
        console.rule(folder)
        stage.run(cfg)
    console.rule("evaluate")
    evaluate.run(cfg)
