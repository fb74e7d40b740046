"""What every stage offers `pipeline`: the folder it writes, what its result depends on, and how to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from distillctl.workspace import Workspace


@dataclass(frozen=True)
class Stage:
    """A command that leaves one finished folder in the workspace."""

    name: str
    # The workspace folder the stage writes for this config (quantize writes one per method).
    folder: Callable[[DictConfig], str]
    # A digest of the config sections and input artifacts the result depends on; equal digests mean nothing to redo.
    fingerprint: Callable[[DictConfig, Workspace], str]
    run: Callable[[DictConfig], Any]
    # Whether the stage has nothing to do for this config (a teacher given as a file needs no training).
    skipped: Callable[[DictConfig], str | None] = lambda cfg: None
