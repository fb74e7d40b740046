"""The report's two trade-off plots: top-1 against file size and against CPU latency, one point per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillctl import files

# (metric key, axis label, file name)
PLOTS = [
    ("size_mb", "file size (MB)", "accuracy_vs_size.png"),
    ("latency_ms", "CPU latency at batch 1 (ms)", "accuracy_vs_latency.png"),
]


def draw(report_dir: Path, results: dict[str, dict[str, Any]], title: str) -> list[Path]:
    """Write both PNGs into report_dir and return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.3, not 3x10^-1

    written = []
    for key, label, name in PLOTS:
        points = [(row[key], row["top1"] * 100, stage) for stage, row in results.items() if row.get(key) is not None]
        figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
        for x, y, stage in points:
            axes.scatter(x, y, s=36)
            axes.annotate(stage, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axes.set_xscale("log")  # teacher and int8 student differ by 10x or more
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain)
        axes.tick_params(axis="x", which="minor", labelsize=7)
        axes.set_xlabel(label + " (log scale)")
        axes.set_ylabel("test top-1 (%)")
        axes.set_title(f"{title}: top-1 vs {label.split(' (')[0]}", fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        path = report_dir / name
        files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
        plt.close(figure)
        written.append(path)
    return written
