"""Every bundled recipe runs end to end in its smoke profile: every stage, every artifact loaded by evaluate.
A recipe added to distillctl/recipes/ is picked up here with no change to this file."""

from __future__ import annotations

import pytest

from distillctl import recipes

BUNDLED = sorted(path.stem for path in recipes.BUNDLED_DIR.glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_recipe_smoke_profile_runs_every_stage(cli, tmp_path, name):
    result = cli("pipeline", f"recipe={name}", "profile=smoke", "trainer.threads=1")
    assert result.code == 0, result.text[-3000:]
    workspace = tmp_path / "runs" / f"{name}-smoke"
    for stage in ("student", "pruned", "report"):
        assert (workspace / stage / "metrics.json").is_file(), f"{stage} missing"
    assert "expectations met" in result.out
