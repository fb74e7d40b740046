"""The end of a Hydra multirun: every job's results side by side, printed and written to <sweep>/summary.md, and the
jobs that failed (each job notes its own failure, so that the others still run), named with the sweep's exit code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from distillctl import files


@dataclass(frozen=True)
class Summary:
    """A table of the sweep's jobs: printed with rich, kept as markdown."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    left: int  # how many leading columns are names (left-aligned); the rest are figures

    def table(self) -> Table:
        """The rich table printed at the end of the sweep."""
        table = Table(title=self.title, title_justify="left")
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i < self.left else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        """The same table in summary.md."""
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "---|" * self.left + "---:|" * (len(self.columns) - self.left))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Registered in configs/config.yaml under hydra.callbacks."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from distillctl.console import console

        sweep_dir = Path(config.hydra.sweep.dir)
        summaries = [s for s in (stage_summary(sweep_dir), reproduce_summary(sweep_dir)) if s is not None]
        for summary in summaries:
            console.print(summary.table())
        failed = failures(sweep_dir)
        # Each job's own error: in a sweep of dozens, the line it printed has long scrolled away.
        lines = [f"- {job}: exit {code}" + (f": {error}" if error else f" ({FAILURE_MEANING.get(code, 'failed')})")
                 for job, (code, error) in failed.items()]
        if summaries or failed:
            failed_md = ["## failed jobs", "", *lines, ""] if failed else []
            files.write_text(sweep_dir / "summary.md", "\n".join([*(s.markdown() for s in summaries), *failed_md]))
            console.print(f"summary: {sweep_dir / 'summary.md'}")
        else:  # nothing to tabulate: an earlier run's summary of this folder is out of date
            (sweep_dir / "summary.md").unlink(missing_ok=True)
        if failed:
            console.print(f"[red]{len(failed)} job(s) of the sweep failed[/]:\n" + escape("\n".join(lines)), highlight=False)
            raise SystemExit(max(code for code, _ in failed.values()))


# A failed job's exit code, kept in its folder: the sweep's other jobs still run, and its end says which failed.
FAILED_FILE = "failed.json"
FAILURE_MEANING = {1: "an expectation was not met", 2: "refused: a value or a file to fix"}


def record_failure(job_dir: Path, code: int, error: str | None = None) -> None:
    """Note that the job in job_dir failed with this exit code (and the error it printed, when it printed one)."""
    files.write_json(job_dir / FAILED_FILE, {"exit": code, "error": error})


def clear_failure(job_dir: Path) -> None:
    """Forget an earlier failure of a job that runs again (the same sweep folder, given again)."""
    (job_dir / FAILED_FILE).unlink(missing_ok=True)


def failures(sweep_dir: Path) -> dict[str, tuple[int, str | None]]:
    """{job: (exit code, its error or None)} of the sweep's failed jobs."""
    found = {}
    for path in sorted(sweep_dir.glob(f"*/{FAILED_FILE}")):
        record = files.read_json(path) or {}
        code, error = record.get("exit"), record.get("error")
        found[path.parent.name] = (code if isinstance(code, int) and code > 0 else 1, error if isinstance(error, str) else None)
    return found


# The pipeline's order; quantized models (one folder per method) follow.
STAGE_ORDER = ("teacher", "student", "pruned")


def stage_summary(sweep_dir: Path) -> Summary | None:
    """Each job's models: test and best validation top-1 and training time of the stages it trained; and, for jobs
    that evaluated (`pipeline -m`, `evaluate -m`), every model of the job's report (a teacher given as a file too)
    with its MACs, file size and latency, so that a sweep over compression settings reads as a size/accuracy
    trade-off."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for metrics_file in sorted(sweep_dir.glob("*/*/metrics.json")):
        metrics = files.read_json(metrics_file) or {}
        if "test_top1" in metrics:
            found[metrics_file.parent.parent.name, metrics_file.parent.name] = metrics
    reports = {}
    for report_file in sorted(sweep_dir.glob("*/report/metrics.json")):
        models = (files.read_json(report_file) or {}).get("models")
        if isinstance(models, dict):
            job = report_file.parent.parent.name
            reports[job] = models
            for name, m in models.items():
                if isinstance(m, dict) and isinstance(m.get("top1"), (int, float)):
                    found.setdefault((job, name), {"model": m.get("arch", "-"), "test_top1": m["top1"]})
    if not found:
        return None
    order = sorted(found, key=lambda r: (r[0], STAGE_ORDER.index(r[1]) if r[1] in STAGE_ORDER else len(STAGE_ORDER), r[1]))
    rows = []
    for job, stage in order:
        m = found[job, stage]
        # A quantized model has no validation top-1: it is calibrated, not trained against one.
        best_val = f"{m['best_val_top1']:.2%}" if "best_val_top1" in m else "-"
        seconds = f"{m['seconds']:.1f}" if "seconds" in m else "-"
        row = (job, stage, str(m.get("model", "-")), f"{m['test_top1']:.2%}", best_val)
        if reports:
            report = reports.get(job, {}).get(stage) or {}
            row += (figure(report, "macs", 1e-6, ".1f"), figure(report, "size_mb", 1, ".2f"), figure(report, "latency_ms", 1, ".2f"))
        rows.append((*row, seconds))
    columns = ("job", "stage", "model", "test top-1", "best val top-1",
               *(("MMACs", "file (MB)", "latency b1 (ms)") if reports else ()), "time (s)")
    return Summary(f"sweep: {sweep_dir}", columns, rows, 3)


def figure(report: dict[str, Any], key: str, scale: float, spec: str) -> str:
    """One figure of a model's row in a job's report, or '-' when the report lacks it."""
    value = report.get(key)
    return format(value * scale, spec) if isinstance(value, (int, float)) else "-"


def reproduce_summary(sweep_dir: Path) -> Summary | None:
    """`reproduce -m`: each job's means over seeds side by side, the comparison of methods a researcher reports."""
    from distillctl.evaluation.seed_results import LABELS, Row, pm

    jobs = []
    for results_file in sorted(sweep_dir.glob("*/reproduce/results.json")):
        results = files.read_json(results_file) or {}
        if isinstance(results.get("rows"), dict):
            jobs.append((results_file.parent.parent.name, results))
    if not jobs:
        return None
    rows = []
    for job, results in jobs:
        cells = []
        for name in LABELS:
            values = (results["rows"].get(name) or {}).get("top1")
            cells.append(pm(name, Row(tuple(values))) if values else "-")  # results.md's own "mean ± std"
        checked = results.get("expectations") or []
        met = "none" if not checked else ("met" if all(c.get("ok") for c in checked) else "missed")
        seeds = ", ".join(str(s) for s in results.get("seeds", []))
        rows.append((job, seeds, *cells, met))
    columns = ("job", "seeds", *LABELS.values(), "expectations")
    return Summary(f"sweep: {sweep_dir}: test top-1, mean ± std over seeds", columns, rows, 2)
