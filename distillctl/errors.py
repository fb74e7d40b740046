"""The exception for mistakes a user can fix (UserError: the CLI prints its message and exits 2), the exit that
has said why (Failed), and the suggestions their messages make."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UserError(Exception):
    """A problem with the user's input (config, files, names) rather than a bug: no traceback is shown."""


class Failed(SystemExit):
    """An exit that has printed why: the reason is kept, for a sweep's end to name each failed job's."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(code)
        self.reason = reason


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-n choices that look most like `word`, best first; ties go to the longer shared prefix."""
    import os.path

    near = difflib.get_close_matches(word, list(choices), n=3 * n, cutoff=0.5)
    ranked = sorted(near, key=lambda c: (-round(difflib.SequenceMatcher(None, word, c).ratio(), 3), -len(os.path.commonprefix([word, c]))))
    return ranked[:n]


def first_few(items: Sequence[str], shown: int) -> str:
    """The first `shown` items, comma-separated, and how many more there are: `a, b, c and 4 more`."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' when something close exists, else ''."""
    near = closest(word, choices)
    return f" Did you mean {' or '.join(repr(c) for c in near)}?" if near else ""
