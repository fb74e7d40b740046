"""The GitHub Actions workflow users copy to reproduce recipes: valid against GitHub's workflow schema, and
driving the same commands the test suite runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "recipes.yml"


def lint(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the GitHub-workflow schema it ships (SchemaStore's, vendored: no network)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_workflow_is_valid_for_github_actions():
    result = lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: 42", 1))
    assert lint(broken).returncode != 0


def test_smoke_matrix_runs_every_recipe_in_its_smoke_profile(cli):
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    smoke_steps = " ".join(step.get("run", "") for step in jobs["smoke"]["steps"])
    assert "profile=smoke" in smoke_steps and "matrix.recipe" in smoke_steps
    assert jobs["reproduce"]["runs-on"] == ["self-hosted", "gpu"]
    listed = cli("recipes", "--json")
    assert listed.code == 0
    from distillctl import recipes

    assert json.loads(listed.out) == list(recipes.available())
