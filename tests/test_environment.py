"""What every result records about the command, code and machine that produced it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import distillctl
from distillctl import environment


def git(where: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_code_is_named_by_its_commit_only_in_a_checkout_of_its_own(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "distillctl").mkdir(parents=True)
    (repo / "distillctl" / "__init__.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert environment.code_version(repo) == f"{distillctl.__version__} (git {commit})"
    (repo / "distillctl" / "__init__.py").write_text("x = 2\n")
    environment.code_version.cache_clear()
    assert environment.code_version(repo) == f"{distillctl.__version__} (git {commit} +changes)"
    # Installed into a virtual environment inside someone's project: that project's commit is not ours.
    site = repo / ".venv" / "site-packages"
    site.mkdir(parents=True)
    assert environment.code_version(site) == distillctl.__version__


def test_a_description_names_the_libraries_and_reads_back_as_one_line():
    described = environment.describe()
    assert described["torch"] == torch.__version__ and described["python"] and described["cpu"]
    assert described["command"]
    line = environment.summary(described)
    assert line.startswith(f"distillctl {distillctl.__version__}") and f"torch {torch.__version__}" in line
