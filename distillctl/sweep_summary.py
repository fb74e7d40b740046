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
        rows = []
        for metrics_file in sorted(sweep_dir.glob("*/*/metrics.json")):
            metrics = files.read_json(metrics_file) or {}
            if "test_top1" in metrics:
                rows.append((metrics_file.parent.parent.name, metrics_file.parent.name, metrics))
        if not rows:
            return
        table = Table(title=f"sweep: {sweep_dir}", title_justify="left")
        for column in ("job", "stage", "model", "test top-1", "best val top-1", "time (s)"):
            table.add_column(column, justify="left" if column in ("job", "stage", "model") else "right")
        for job, stage, m in rows:
            table.add_row(job, stage, m["model"], f"{m['test_top1']:.2%}", f"{m['best_val_top1']:.2%}", f"{m['seconds']:.1f}")
        console.print(table)
