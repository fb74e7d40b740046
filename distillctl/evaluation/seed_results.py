"""A recipe's figures over seeds: mean and spread per row, the student's gain over the no-teacher baseline, written
as results.json and results.md and shown as a table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from distillctl import files
from distillctl.console import console


@dataclass(frozen=True)
class Row:
    """One model's test top-1 over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The row as results.json stores it."""
        return {"top1": list(self.values), "mean": self.mean, "std": self.std}


def rows_with_gain(teacher: list[float], student: list[float], baseline: list[float]) -> dict[str, Row]:
    """Teacher, student and baseline rows, and the gain: student less baseline paired seed by seed, so that
    its spread is that of the difference rather than of either run."""
    gain = [s - b for s, b in zip(student, baseline, strict=True)]
    return {name: Row(tuple(v)) for name, v in (("teacher", teacher), ("student", student), ("baseline", baseline), ("gain", gain))}


def means(rows: dict[str, Row]) -> dict[str, dict[str, float]]:
    """{row: {"top1": mean}}: what a recipe's `expect:` block is checked against."""
    return {name: {"top1": row.mean} for name, row in rows.items()}


def percent(name: str, value: float) -> str:
    """A top-1 as a percentage; the gain, a difference, with its sign."""
    return f"{value:+.2%}" if name == "gain" else f"{value:.2%}"


def pm(name: str, row: Row) -> str:
    """mean +- std, the std in points."""
    return f"{percent(name, row.mean)} ± {row.std * 100:.2f}"


LABELS = {
    "teacher": "teacher",
    "student": "student (recipe's loss)",
    "baseline": "student without a teacher",
    "gain": "gain (student - baseline)",
}


def print_table(rows: dict[str, Row], seeds: list[int], title: str) -> None:
    """The rich table that closes `distillctl reproduce`."""
    table = Table(title=title, title_justify="left")
    table.add_column("test top-1")
    for seed in seeds:
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("mean ± std", justify="right")
    for name, row in rows.items():
        style = "bold" if name == "gain" else None
        table.add_row(LABELS[name], *(percent(name, v) for v in row.values), pm(name, row), style=style)
    console.print(table)


def markdown(rows: dict[str, Row], seeds: list[int], context: dict[str, Any], checked: list[dict[str, Any]]) -> str:
    """results.md: the table, the expectations and how to make it again."""
    lines = [f"# {context['recipe']}: {len(seeds)} seeds", ""]
    lines += [f"- {key}: {value}" for key, value in context.items() if key != "recipe"]
    lines += ["", "| test top-1 | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |"]
    lines += ["|---|" + "---:|" * (len(seeds) + 1)]
    for name, row in rows.items():
        lines.append(f"| {LABELS[name]} | " + " | ".join(percent(name, v) for v in row.values) + f" | {pm(name, row)} |")
    if checked:
        lines += ["", "| expectation | bound | limit | mean | met |", "|---|---|---:|---:|---|"]
        for c in checked:
            value = "missing" if c["value"] is None else f"{c['value']:.4f}"
            lines.append(f"| {c['metric']} | {c['bound']} | {c['limit']:.4f} | {value} | {'yes' if c['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def write(out_dir: Path, rows: dict[str, Row], seeds: list[int], context: dict[str, Any], checked: list[dict[str, Any]]) -> None:
    """results.json and results.md in out_dir."""
    context = {**context, "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    files.write_json(out_dir / "results.json", {
        "seeds": seeds,
        "rows": {name: row.as_dict() for name, row in rows.items()},
        "expectations": checked,
        "context": context,
    })
    files.write_text(out_dir / "results.md", markdown(rows, seeds, context, checked))
