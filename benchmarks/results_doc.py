"""Writing a benchmark's table into a doc between its own markers, so reruns replace it in place."""

from __future__ import annotations

from pathlib import Path


def replace_block(doc: Path, name: str, heading: str, body: str) -> str:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` in `doc` (appended under `heading` the
    first time); returns the block as written."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else "# Results\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text += f"\n## {heading}\n\n{block}\n"
    doc.write_text(text)
    return block


def seed_row(label: str, values: list[float], digits: int, *extra: str) -> str:
    """A table row: each seed's accuracy, their mean and standard deviation, then any extra cells."""
    import statistics

    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    cells = [f"{v:.{digits}%}" for v in values] + [f"{statistics.mean(values):.{digits}%}", f"{spread:.{digits}%}", *extra]
    return f"| {label} | " + " | ".join(cells) + " |"
