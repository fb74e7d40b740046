"""The settings that say how a run executes, where it keeps caches and what a command does with the runs already
there, never what a run computes.

A finished run made under other values of these is still the run a config asks for: `pipeline` keeps it (a GPU
teacher is not trained again because `trainer.threads=4` was added to the command), `resume=true` continues it
without a warning, and a search goes on under them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# Top-level keys that say where a command writes and what it does with the runs already there: never part of what a
# run computes, a sweep job's folder name, a search trial or a recipe a search writes.
RUN_CONTROL: tuple[str, ...] = ("run_dir", "force", "resume", "wait", "reuse", "dry_run")

EXECUTION_ONLY: tuple[str, ...] = (
    "trainer.threads", "trainer.device", "trainer.devices", "trainer.compile", "trainer.compile_mode",
    "trainer.log_every", "trainer.eval_batch_size", "trainer.checkpoint_every_steps", "trainer.dist_timeout_s",
    "dataset.workers", "dataset.cache_dir", "distill.teacher_cache_dir",
)


def keys_of(section: str) -> tuple[str, ...]:
    """The execution-only keys of one config section, without the section's name."""
    return tuple(key.split(".", 1)[1] for key in EXECUTION_ONLY if key.startswith(f"{section}."))


def canonical(section: str, values: Any) -> Any:
    """A section's resolved values with its execution-only keys at their defaults: a run's identity whatever they
    were. Defaults rather than dropped keys, so that a run made with the defaults keeps the fingerprint it had."""
    if not isinstance(values, dict) or not (keys := keys_of(section)):
        return values
    defaults = section_defaults(section)
    return {k: (defaults[k] if k in keys and k in defaults else v) for k, v in values.items()}


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of a config section, resolved now (dataset.cache_dir's reads $DISTILLCTL_CACHE)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(schema()[section], resolve=True)


@cache
def schema() -> Any:
    """The config schema with its defaults, built once."""
    from omegaconf import OmegaConf

    from distillctl.config import Config

    return OmegaConf.structured(Config)
