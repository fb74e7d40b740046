"""What produced a result: the command, distillctl's version and commit, the libraries and the machine.

Recorded in every stage's metrics.json, the evaluation report and reproduce's results, because the first question
when a recipe does not reproduce on another machine is what differs between the two.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import distillctl

# The libraries whose versions can move a figure.
LIBRARIES = ("torch", "torchvision", "timm", "datasets", "torch-pruning", "onnxruntime", "executorch")


def describe() -> dict[str, Any]:
    """The command, the code, the libraries and the machine of this process."""
    return {"command": command(), "distillctl": code_version(), **library_versions(), **machine()}


def command() -> str:
    """The command line that ran, as a shell would take it back: for a job of a sweep, that job's own values."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:  # not inside a Hydra job (a script calling a stage directly)
        task = sys.argv[1:]
    return " ".join([sys.argv[0].split("/")[-1], *map(shlex.quote, task)])


# The folder holding the distillctl package: a git checkout's root when it runs from one.
PACKAGE_PARENT = Path(distillctl.__file__).resolve().parent.parent


@lru_cache(maxsize=4)
def code_version(root: Path = PACKAGE_PARENT) -> str:
    """distillctl's version, and its commit with `+changes` when it runs from a git checkout of its own at root."""
    version = distillctl.__version__

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # An installed package may sit inside someone else's repository (a venv in a project): not our commit.
    if git("rev-parse", "--show-toplevel") != str(root):
        return version
    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return version
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "distillctl")
    return f"{version} (git {commit}{' +changes' if changed else ''})"


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """The installed versions of LIBRARIES (those installed), and Python's."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if "torch" in sys.modules:  # its own string keeps the build (2.14.1+cu130), which the package metadata drops
        found["torch"] = sys.modules["torch"].__version__
    return found


def machine() -> dict[str, Any]:
    """The operating system, the CPU and, where CUDA is there, the GPU and CUDA's version."""
    import torch

    found: dict[str, Any] = {"os": f"{platform.system()} {platform.release()}", "cpu": cpu_name()}
    if torch.cuda.is_available():
        found |= {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return found


def cpu_name() -> str:
    """The processor's model name, recorded beside every timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threads_phrase(threads: int) -> str:
    """'1 thread' or 'N threads', for the line beside a timing."""
    return f"{threads} thread{'' if threads == 1 else 's'}"


def summary(environment: dict[str, Any]) -> str:
    """One line for report.md: the code and the libraries."""
    libraries = ", ".join(f"{name} {environment[name]}" for name in ("torch", "timm", "python") if name in environment)
    gpu = f"; {environment['gpu']} (CUDA {environment['cuda']})" if environment.get("gpu") else ""
    return f"distillctl {environment.get('distillctl', '?')}, {libraries}{gpu}"
