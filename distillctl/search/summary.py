"""What a search found: every trial with its validation top-1 and the student's cost, the Pareto front of accuracy
against cost, the best trials, written as results.json, results.md and search.png and shown as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.table import Table

from distillctl import files
from distillctl.console import console
from distillctl.search.study import OVER_BUDGET, origin, retried_numbers

COST_LABELS = {"latency_ms": "CPU latency at batch 1 (ms)", "macs": "MACs per image"}


@dataclass(frozen=True)
class TrialRow:
    """One trial as the report shows it."""

    number: int
    folder: str
    state: str  # complete, pruned, over budget, failed, running, waiting
    params: dict[str, Any]
    val_top1: float | None  # best validation top-1 (for a pruned trial: its last reported one)
    epochs: int
    latency_ms: float | None
    macs: float | None
    note: str
    recipe_default: bool


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial, except failed ones that a retry replaced (killed runs that went on in another trial)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = []
    for t in trials:
        if t.state == TrialState.FAIL and t.number in retried:
            continue
        steps = t.intermediate_values
        if t.state == TrialState.COMPLETE:
            val = t.values[0]
        else:
            val = steps[max(steps)] if steps else None
        over = t.user_attrs.get(OVER_BUDGET)
        state = "over budget" if over else t.state.name.lower().replace("fail", "failed")
        note = over or t.user_attrs.get("error") or (f"stopped after epoch {max(steps)}" if t.state == TrialState.PRUNED and steps else "")
        rows.append(TrialRow(t.number, f"trial-{origin(t):04d}", state, dict(t.params), val, len(steps) or int(t.user_attrs.get("epochs", 0)),
                             t.user_attrs.get("latency_ms"), t.user_attrs.get("macs"), note, bool(t.user_attrs.get("recipe_default"))))
    return rows


def pareto_front(rows: list[TrialRow], cost: str) -> list[TrialRow]:
    """Complete trials that no other complete trial beats on both validation top-1 and cost, cheapest first."""
    done = [r for r in rows if r.state == "complete" and r.val_top1 is not None and getattr(r, cost) is not None]
    front = [
        r for r in done
        if not any(o.val_top1 >= r.val_top1 and getattr(o, cost) <= getattr(r, cost)
                   and (o.val_top1 > r.val_top1 or getattr(o, cost) < getattr(r, cost)) for o in done)
    ]
    return sorted(front, key=lambda r: getattr(r, cost))


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The complete trial with the highest validation top-1 (the earliest of equals)."""
    done = [r for r in rows if r.state == "complete" and r.val_top1 is not None]
    return max(done, key=lambda r: (r.val_top1, -r.number), default=None)


def ranked(rows: list[TrialRow]) -> list[TrialRow]:
    """Trials by validation top-1, complete ones first."""
    return sorted(rows, key=lambda r: (r.state != "complete", -(r.val_top1 or 0.0), r.number))


def fmt_params(params: dict[str, Any]) -> str:
    """key=value pairs, numbers to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def fmt_pct(value: float | None) -> str:
    """A share as a percentage, or '-'."""
    return "-" if value is None else f"{value:.2%}"


def fmt_cost(row: TrialRow) -> tuple[str, str]:
    """Latency and MACs columns."""
    return ("-" if row.latency_ms is None else f"{row.latency_ms:.3f}", "-" if row.macs is None else f"{row.macs / 1e6:.1f}")


def write(root: Path, rows: list[TrialRow], front: list[TrialRow], best: TrialRow | None, cost: str,
          context: dict[str, Any], budget: float | None) -> list[Path]:
    """results.json, results.md and search.png in root; returns their paths."""
    default = next((r for r in rows if r.recipe_default and r.state == "complete"), None)
    data = {"context": context, "best": asdict(best) if best else None, "recipe_default": asdict(default) if default else None,
            "pareto_front": [r.number for r in front], "trials": [asdict(r) for r in rows]}
    files.write_json(root / "results.json", data)
    lines = [f"# Search: {context['recipe']}", ""]
    lines += [f"- **{key}**: {value}" for key, value in context.items()]
    lines += ["", "Scored by the best validation top-1 of each trial (held out of the training split); the test split is never used to choose (each trial's distill stage reports it, as every distill does).", ""]
    if best is not None:
        lines.append(f"**Best**: trial {best.number} ({best.folder}), validation top-1 {fmt_pct(best.val_top1)}: {fmt_params(best.params)}.")
        if default is not None and default is not best:
            lines.append(f"The recipe's own values (trial {default.number}) reached {fmt_pct(default.val_top1)}: "
                         f"{(best.val_top1 - default.val_top1) * 100:+.2f} points for the best, one run each at the search's schedule.")
        lines += ["", "Run it at the recipe's full schedule: `distillctl pipeline recipe=" + str(root / "best.yaml") + "`", ""]
    lines += ["## Trials, best first", "", "| trial | state | val top-1 | epochs | latency ms | MMACs | values | note |", "|---|---|---|---|---|---|---|---|"]
    for r in ranked(rows):
        late, macs = fmt_cost(r)
        mark = " (recipe's values)" if r.recipe_default else ""
        lines.append(f"| {r.number}{mark} | {r.state} | {fmt_pct(r.val_top1)} | {r.epochs} | {late} | {macs} | {fmt_params(r.params)} | {r.note} |")
    lines += ["", f"## Pareto front: validation top-1 against {COST_LABELS[cost]}", ""]
    lines += [f"- trial {r.number}: {fmt_pct(r.val_top1)} at {getattr(r, cost):.4g}: {fmt_params(r.params)}" for r in front] or ["(no complete trial)"]
    lines += ["", "![validation top-1 of every trial](search.png)", ""]
    files.write_text(root / "results.md", "\n".join(lines))
    plot = draw(root / "search.png", rows, front, cost, str(context["recipe"]), budget)
    return [root / "results.json", root / "results.md", plot]


def draw(path: Path, rows: list[TrialRow], front: list[TrialRow], cost: str, title: str, budget: float | None) -> Path:
    """Validation top-1 against the student's cost for every trial that trained, the front joined by a line; when
    every trial has the same student (one cost), against the trial number instead: the search's progress."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.val_top1 is not None and getattr(r, cost)]
    by_cost = len({getattr(r, cost) for r in scored}) > 1

    def x(row: TrialRow) -> float:
        return getattr(row, cost) if by_cost else row.number

    figure, axes = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for state, marker, color in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:gray")):
        points = [(x(r), r.val_top1 * 100) for r in scored if r.state == state]
        if points:
            label = f"{state} ({len(points)})" + (", at its last epoch" if state == "pruned" else "")
            axes.scatter(*zip(*points), marker=marker, color=color, s=30, label=label)
    if front and by_cost:
        axes.plot([x(r) for r in front], [r.val_top1 * 100 for r in front], "-", color="tab:orange", lw=1.5,
                  marker="o", mfc="none", ms=10, label="Pareto front")
    default = [r for r in scored if r.recipe_default and r.state == "complete"]
    if default:
        axes.scatter([x(default[0])], [default[0].val_top1 * 100], marker="*", s=160, color="tab:green",
                     label="recipe's own values", zorder=3)
    if budget is not None and by_cost:
        axes.axvline(budget, ls="--", color="tab:red", lw=1, label="budget")
    axes.set_xlabel(COST_LABELS[cost] if by_cost else "trial")
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title(f"{title}: {len(rows)} trials", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def print_table(rows: list[TrialRow], title: str, shown: int = 10) -> None:
    """The best trials as a rich table."""
    table = Table(title=title, title_justify="left")
    for column in ("trial", "state", "val top-1", "epochs", "latency ms", "MMACs", "values"):
        table.add_column(column, justify="left" if column in ("state", "values") else "right")
    for r in ranked(rows)[:shown]:
        table.add_row(str(r.number) + (" *" if r.recipe_default else ""), r.state, fmt_pct(r.val_top1), str(r.epochs),
                      *fmt_cost(r), fmt_params(r.params))
    console.print(table)
    if any(r.recipe_default for r in rows):
        console.print("* the recipe's own values")
