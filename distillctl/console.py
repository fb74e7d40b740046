"""Rich progress for training: a bar over all steps with epoch, loss, accuracy, images/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Logs captured without a terminal (CI, pipes) would otherwise wrap tables at 80 columns.
console = Console(highlight=False)
if not console.is_terminal:
    console = Console(highlight=False, width=140)


def print_summary_table(title: str, rows: list[tuple[str, str]]) -> None:
    """The two-column (metric, value) table that closes a stage."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


class TrainingProgress:
    """One live bar for a stage; a plain line per epoch so logs without a terminal stay readable."""

    def __init__(self, title: str, epochs: int, steps_per_epoch: int, start_epoch: int = 1) -> None:
        self.title, self.epochs = title, epochs
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:6.1%}  {task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        total = (epochs - start_epoch + 1) * steps_per_epoch
        self.task = self.progress.add_task(title, total=total, loss=float("nan"), acc=0.0, ips=0.0)

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, steps: int, epoch: int, loss: float, acc: float, ips: float) -> None:
        """Move the bar by `steps` and show the running figures."""
        self.progress.update(self.task, advance=steps, description=f"{self.title} {epoch}/{self.epochs}", loss=loss, acc=acc, ips=ips)

    def epoch_line(self, text: str) -> None:
        """Print a line above the bar (kept in the scrollback)."""
        self.progress.console.print(text)
