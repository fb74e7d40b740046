"""The evaluation report: a rich table on the terminal, metrics.json and report.md in runs/<recipe>/report/."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from distillctl import files, provenance
from distillctl.console import console
from distillctl.data.hub_revision import data_label
from distillctl.environment import summary, threads_phrase
from distillctl.errors import Failed
from distillctl.evaluation.class_accuracy import ClassAccuracy
from distillctl.model_files import QUANTIZED

PER_CLASS = "per_class.csv"

def times(value: float) -> str:
    """A ratio to the teacher: one decimal, or two significant digits under 1 (a student larger than its teacher),
    where one decimal would print 0.0x."""
    return f"{value:.1f}x" if value >= 1 else f"{value:.2g}x"


# (key, header, format) for each column of the table and of report.md.
COLUMNS = [
    ("top1", "top-1", "{:.2%}"),
    ("top5", "top-5", "{:.2%}"),
    ("agreement", "agree w/ teacher", "{:.2%}"),
    ("params", "params (M)", "{:.3f}"),
    ("macs", "MMACs", "{:.1f}"),
    ("size_mb", "file (MB)", "{:.2f}"),
    ("sparsity", "zeros", "{:.0%}"),
    ("latency_ms", "latency b1 (ms)", "{:.2f}"),
    ("throughput", "b{batch} (img/s)", "{:,.0f}"),  # the batch evaluate.throughput_batch times
    ("smaller_than_teacher", "x smaller", times),
    ("faster_than_teacher", "x faster b1", times),
    ("runtime", "runtime", "{}"),
]
SCALE = {"params": 1e-6, "macs": 1e-6}
MEANT_SPARSITY = 0.01


def cell(key: str, value: Any) -> str:
    """One formatted table cell; '-' where a metric does not apply."""
    if value is None:
        return "-"
    fmt = dict((k, f) for k, _, f in COLUMNS)[key]
    value = value * SCALE[key] if key in SCALE else value
    return fmt(value) if callable(fmt) else fmt.format(value)


def columns(results: dict[str, dict[str, Any]], batch: int) -> list[tuple[str, str, str]]:
    """The columns worth showing, headed for a throughput batch of `batch`: sparsity only when some model has zeroed
    weights on purpose (1% or more: training leaves a few weights of a large model at exactly zero, which made a
    column of 0%)."""
    return [(key, header.format(batch=batch), fmt) for key, header, fmt in COLUMNS
            if key != "sparsity" or any((row.get("sparsity") or 0) >= MEANT_SPARSITY for row in results.values())]


def print_table(results: dict[str, dict[str, Any]], title: str, batch: int) -> None:
    """The rich table of every evaluated model, its throughput measured at `batch` images per pass."""
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    shown = columns(results, batch)
    for _, header, _ in shown:
        table.add_column(header, justify="right")
    for name, row in results.items():
        table.add_row(f"{name} ({row['arch']})", *(cell(k, row.get(k)) for k, _, _ in shown))
    console.print(table)


def markdown(results: dict[str, dict[str, Any]], context: dict[str, Any], figures: list[Path] = (),
             by_class: ClassAccuracy | None = None, final: str = "") -> str:
    """report.md: the same table, the conditions of the measurement, top-1 per class, and the figures."""
    lines = [f"# Evaluation: {context['recipe']}", ""]
    timing = context["timing"]
    shown = columns(results, timing["throughput_batch"])
    lines.append("| model | " + " | ".join(h for _, h, _ in shown) + " |")
    lines.append("|---|" + "---:|" * len(shown))
    for name, row in results.items():
        lines.append(f"| {name} ({row['arch']}) | " + " | ".join(cell(k, row.get(k)) for k, _, _ in shown) + " |")
    lines += [
        "",
        f"- test images: {context['test_images']} ({data_label(context['dataset'], context.get('data_commit'))})",
        f"- latency: median of {timing['latency_repeats']} batch-1 forwards after {timing['latency_warmup']} warm-up; "
        f"throughput: median of 7 batch-{timing['throughput_batch']} forwards;",
        "  torch models run as frozen TorchScript traces, ONNX models in ONNX Runtime, all on the CPU",
        f"- CPU: {context['cpu']}, {threads_phrase(context['threads'])} (OpenMP wait policy: {context.get('omp_wait_policy', 'default')}); torch {context['torch']}",
        f"- measured {context['date']}",
    ]
    if "environment" in context:
        lines += [f"- software: {summary(context['environment'])}", f"- command: `{context['environment']['command']}`"]
    lines.append("")
    if outdated := provenance.describe(context.get("outdated") or {}).values():
        lines += [f"**Warning:** {line}." for line in outdated] + [""]
    if by_class is not None:
        lines += by_class.markdown(final)
    lines += [f"![{figure.stem.replace('_', ' ')}]({figure.name})" for figure in figures]
    return "\n".join(lines) + ("\n" if figures else "")


def write(report_dir: Path, results: dict[str, dict[str, Any]], context: dict[str, Any], expectations: list[dict],
          figures: list[Path] = (), by_class: ClassAccuracy | None = None, final: str = "") -> None:
    """metrics.json, report.md (referencing `figures`, PNGs in report_dir) and per_class.csv, atomically."""
    context = {**context, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    files.write_json(report_dir / "metrics.json", {"models": results, "context": context, "expect": expectations})
    if by_class is not None:
        files.write_text(report_dir / PER_CLASS, by_class.csv_text())
    files.write_text(report_dir / "report.md", markdown(results, context, figures, by_class, final))


def print_outdated(outdated: dict[str, str]) -> None:
    """The models made from a stage made again since, under the table where the eye lands after reading it: their
    rows no longer follow from the rows above them."""
    for line in provenance.describe(outdated).values():
        console.print(f"[yellow]warning:[/] {line}")


def print_drops(by_class: ClassAccuracy, final: str, shown: int = 3) -> None:
    """One line under the table: the classes `final` loses most against the teacher, when it loses any."""
    drops = by_class.drops(final, count=shown)
    if drops:
        listed = ", ".join(f"{name} {ref:.0%} -> {own:.0%} ({n} image{'s' if n != 1 else ''})" for name, n, ref, own in drops)
        console.print(f"largest per-class drops, {final} against the teacher: {listed} (report: {PER_CLASS})")


def print_misses(rows: list[dict[str, Any]], quantized_with: str | None = None) -> None:
    """What fell short of the recipe's expect: block; a gate on another quantization than this run's (the recipe
    gates int8_static, the command line chose quantize=onnx_int8) comes with the overrides that move it."""
    table = Table(title="expectations not met", title_justify="left", style="red")
    for column in ("metric", "bound", "limit", "value"):
        table.add_column(column)
    for row in rows:
        value = "missing" if row["value"] is None else f"{row['value']:.4g}"
        table.add_row(row["metric"], row["bound"], f"{row['limit']:.4g}", value)
    console.print(table)
    missing = list(dict.fromkeys(row["metric"].split(".")[0] for row in rows if row["value"] is None))
    elsewhere = [m for m in missing if quantized_with and m != quantized_with and m in QUANTIZED]
    for model in elsewhere:
        moved = " ".join(f"'+expect.{quantized_with}.{row['metric'].partition('.')[2]}.{row['bound']}={row['limit']:g}'"
                         for row in rows if row["metric"].split(".")[0] == model)
        console.print(f"missing: this run quantizes with {quantized_with} and the recipe gates {model}: move the gate with "
                      f"'~expect.{model}' {moved}, or make {model} too (`distillctl quantize quantize={model}`, same recipe and overrides)")
    if rest := [m for m in missing if m not in elsewhere]:
        console.print(f"missing: no {', '.join(rest)} model was evaluated; make it first (`distillctl pipeline` with the "
                      "same recipe and overrides), or leave the gate out with '~expect'")


def enforce(checked: list[dict[str, Any]], basis: str = "", quantized_with: str | None = None) -> None:
    """The recipe's gate: print what fell short and exit 1, or say that every expectation held (on `basis`)."""
    misses = [row for row in checked if not row["ok"]]
    if misses:
        print_misses(misses, quantized_with)
        shortfalls = ", ".join(f"{row['metric']} {'missing' if row['value'] is None else format(row['value'], '.4g')} "
                               f"({row['bound']} {row['limit']:.4g})" for row in misses)
        raise Failed(f"expectations not met: {shortfalls}", 1)
    if checked:
        met = "the 1 expectation met" if len(checked) == 1 else f"all {len(checked)} expectations met"
        console.print(f"[green]{met}{basis}[/]")
