"""summary.csv: one row per epoch of a finished training stage (timm's train.py writes the same), for any spreadsheet."""

from __future__ import annotations

import csv
import io
from typing import Any


def render(history: list[dict[str, Any]]) -> str:
    """The history's records as CSV, columns in the order they first appear."""
    columns = list(dict.fromkeys(key for record in history for key in record))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()
