"""Top-1 per class and the most frequent mistakes: which classes distillation and compression cost most, and what
they are taken for, for the evaluation report and `expect`.

A mean top-1 hides a class the student gave up on (a rare class of a user's own photos, say), which is what an
engineer shipping the model needs to see; `<model>.worst_class_top1` lets a recipe refuse it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import torch

# Up to this many classes report.md lists every class; beyond, the classes with the largest drops.
FULL_TABLE_MAX = 20
DROPS_SHOWN = 10
CONFUSIONS_SHOWN = 10


@dataclass
class ClassAccuracy:
    """Each model's top-1 on each class of the test split (None for a class without test images)."""

    classes: list[str]
    images: list[int]  # test images per class
    top1: dict[str, list[float | None]]  # model -> per-class top-1
    # model -> its most frequent mistakes: (true class, predicted class, images), most frequent first
    confusions: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    @classmethod
    def empty(cls, classes: list[str], labels: torch.Tensor) -> "ClassAccuracy":
        """No model yet; the counts of `labels` per class."""
        return cls(list(classes), torch.bincount(labels, minlength=len(classes)).tolist(), {}, {})

    def add(self, model: str, pred: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Record one model's predictions; returns its lowest class top-1 (None without labelled images)."""
        n = len(self.classes)
        hits = torch.bincount(labels[pred == labels], minlength=n).tolist()
        self.top1[model] = [h / c if c else None for h, c in zip(hits, self.images)]
        wrong = pred != labels
        # Pairs counted as true * n + predicted: no n x n matrix is kept (a million cells at 1,000 classes).
        pairs, counts = torch.unique(labels[wrong] * n + pred[wrong], return_counts=True)
        ranked = sorted(zip(counts.tolist(), pairs.tolist()), key=lambda c: (-c[0], c[1]))[:CONFUSIONS_SHOWN]
        self.confusions[model] = [(pair // n, pair % n, count) for count, pair in ranked]
        scored = [v for v in self.top1[model] if v is not None]
        return min(scored) if scored else None

    def drops(self, model: str, reference: str = "teacher", count: int = DROPS_SHOWN) -> list[tuple[str, int, float, float]]:
        """The classes where `model` falls furthest below `reference`: (class, images, reference top-1, top-1)."""
        if model not in self.top1 or reference not in self.top1 or model == reference:
            return []
        rows = [(name, n, ref, own) for name, n, ref, own in zip(self.classes, self.images, self.top1[reference], self.top1[model])
                if n and own < ref]
        return sorted(rows, key=lambda row: row[3] - row[2])[:count]

    def csv_text(self) -> str:
        """per_class.csv: class, test images, then each model's top-1 on that class."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["class", "test_images", *self.top1])
        for i, (name, n) in enumerate(zip(self.classes, self.images)):
            writer.writerow([name, n, *("" if v[i] is None else f"{v[i]:.4f}" for v in self.top1.values())])
        return out.getvalue()

    def markdown(self, final: str) -> list[str]:
        """report.md's section: every class when there are few, else `final`'s largest drops against the teacher; then
        `final`'s most frequent mistakes."""
        lines = ["## Top-1 per class", ""]
        if len(self.classes) <= FULL_TABLE_MAX:
            lines.append("| class | test images | " + " | ".join(self.top1) + " |")
            lines.append("|---|---:|" + "---:|" * len(self.top1))
            for i, (name, n) in enumerate(zip(self.classes, self.images)):
                lines.append(f"| {name} | {n} | " + " | ".join(percent(v[i]) for v in self.top1.values()) + " |")
        else:
            drops = self.drops(final)
            if drops:
                lines += [f"The {len(drops)} classes where {final} falls furthest below the teacher (every class: per_class.csv):", "",
                          f"| class | test images | teacher | {final} |", "|---|---:|---:|---:|"]
                lines += [f"| {name} | {n} | {percent(ref)} | {percent(own)} |" for name, n, ref, own in drops]
            else:
                lines.append("Every class: per_class.csv.")
        if self.confusions.get(final):
            lines += ["", f"### The most frequent mistakes of {final}", "", "| class | taken for | images | share of the class |",
                      "|---|---|---:|---:|"]
            lines += [f"| {self.classes[true]} | {self.classes[taken]} | {count} | {count / self.images[true]:.1%} |"
                      for true, taken, count in self.confusions[final]]
        return lines + [""]


def percent(value: float | None) -> str:
    """A top-1 as report.md shows it; '-' for a class without test images."""
    return "-" if value is None else f"{value:.1%}"
