"""One table at the end of a Hydra multirun: every job's overrides and results side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from distillctl import files


class SweepSummary(Callback):
    """Registered in configs/config.yaml under hydra.callbacks."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from distillctl.console import console

        sweep_dir = Path(config.hydra.sweep.dir)
        for table in (stage_table(sweep_dir), reproduce_table(sweep_dir)):
            if table is not None:
                console.print(table)


# The pipeline's order; quantized models (one folder per method) follow.
STAGE_ORDER = ("teacher", "student", "pruned")


def stage_table(sweep_dir: Path) -> Table | None:
    """Each job's trained models: test and best validation top-1, training time."""
    rows = []
    for metrics_file in sorted(sweep_dir.glob("*/*/metrics.json")):
        metrics = files.read_json(metrics_file) or {}
        if "test_top1" in metrics:
            rows.append((metrics_file.parent.parent.name, metrics_file.parent.name, metrics))
    if not rows:
        return None
    rows.sort(key=lambda r: (r[0], STAGE_ORDER.index(r[1]) if r[1] in STAGE_ORDER else len(STAGE_ORDER), r[1]))
    table = Table(title=f"sweep: {sweep_dir}", title_justify="left")
    for column in ("job", "stage", "model", "test top-1", "best val top-1", "time (s)"):
        table.add_column(column, justify="left" if column in ("job", "stage", "model") else "right")
    for job, stage, m in rows:
        # A quantized model has no validation top-1: it is calibrated, not trained against one.
        best_val = f"{m['best_val_top1']:.2%}" if "best_val_top1" in m else "-"
        seconds = f"{m['seconds']:.1f}" if "seconds" in m else "-"
        table.add_row(job, stage, str(m.get("model", "-")), f"{m['test_top1']:.2%}", best_val, seconds)
    return table


def reproduce_table(sweep_dir: Path) -> Table | None:
    """`reproduce -m`: each job's means over seeds side by side, the comparison of methods a researcher reports."""
    from distillctl.evaluation.seed_results import LABELS

    jobs = []
    for results_file in sorted(sweep_dir.glob("*/reproduce/results.json")):
        results = files.read_json(results_file) or {}
        if isinstance(results.get("rows"), dict):
            jobs.append((results_file.parent.parent.name, results))
    if not jobs:
        return None
    seeds = ", ".join(str(s) for s in jobs[0][1].get("seeds", []))
    table = Table(title=f"sweep: {sweep_dir}: test top-1, mean ± std over seeds {seeds}", title_justify="left")
    table.add_column("job")
    for name in LABELS:
        table.add_column(LABELS[name], justify="right")
    table.add_column("expectations")
    for job, results in jobs:
        cells = []
        for name in LABELS:
            row = results["rows"].get(name) or {}
            sign = "+" if name == "gain" else ""
            cells.append(f"{row['mean']:{sign}.2%} ± {row['std'] * 100:.2f}" if "mean" in row else "-")
        checked = results.get("expectations") or []
        met = "none" if not checked else ("met" if all(c.get("ok") for c in checked) else "[red]missed[/]")
        table.add_row(job, *cells, met)
    return table
