"""Rich progress for training: a bar over all steps with epoch, loss, accuracy, images/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Logs captured without a terminal (CI, pipes) would otherwise wrap tables at 80 columns.
console = Console(highlight=False)
if not console.is_terminal:
    console = Console(highlight=False, width=180)  # the evaluation table is 13 columns wide


def print_summary_table(title: str, rows: list[tuple[str, str]]) -> None:
    """The two-column (metric, value) table that closes a stage."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def clock(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(progress: Progress) -> str:
    """Time left on the bar's one task, which counts work and time even with the display off (logs, pipes)."""
    task = progress.tasks[0]
    return clock(task.elapsed / task.completed * task.remaining) if task.completed else "?"


class TrainingProgress:
    """One live bar for a stage on a terminal; elsewhere (CI, `> log`) a plain line every `log_every` steps and one
    per epoch, so a log shows progress long before the first epoch ends."""

    def __init__(self, title: str, epochs: int, steps_per_epoch: int, start_epoch: int = 1) -> None:
        self.title, self.epochs, self.steps_per_epoch = title, epochs, steps_per_epoch
        self.plain = not console.is_terminal
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

    def advance(self, steps: int, epoch: int, step: int, loss: float, acc: float, ips: float) -> None:
        """Move the bar by `steps` (now at `step` of the epoch) and show the running figures."""
        self.progress.update(self.task, advance=steps, description=f"{self.title} {epoch}/{self.epochs}", loss=loss, acc=acc, ips=ips)
        if self.plain and step < self.steps_per_epoch:  # the epoch's own line follows at its end
            console.print(
                f"{self.title} epoch {epoch}/{self.epochs} step {step}/{self.steps_per_epoch}  loss {loss:.4f}  "
                f"train {acc:.1%}  {ips:,.0f} img/s  ETA {eta(self.progress)}"
            )

    def epoch_line(self, text: str) -> None:
        """Print a line above the bar (kept in the scrollback)."""
        self.progress.console.print(text)


class CountProgress:
    """A bar over `total` items of work that is not training (filling a cache); off a terminal, a line per tenth."""

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total, self.next_line = title, total, total / 10
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(title, total=total)

    def __enter__(self) -> "CountProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, n: int) -> None:
        """Count `n` more items done."""
        self.progress.update(self.task, advance=n)
        done = self.progress.tasks[0].completed
        if not console.is_terminal and done >= self.next_line:
            console.print(f"{self.title}: {int(done):,}/{self.total:,}  ETA {eta(self.progress)}")
            self.next_line += self.total / 10
