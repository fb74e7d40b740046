"""Every bundled recipe runs end to end in its smoke profile: every stage, every artifact loaded by evaluate.
A recipe added to distillctl/recipes/ is picked up here with no change to this file."""

from __future__ import annotations

import re

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
    assert re.search(r"(all \d+ expectations|the 1 expectation) met", result.out), result.out[-2000:]


@pytest.mark.slow
def test_the_smoke_profile_runs_a_recipe_on_your_own_photos(cli, tmp_path):
    """`profile=smoke dataset.path=photos`: the quick look before a long run, on the photos that run will read (the
    profile once named the sample's image column, which an image folder does not have)."""
    import json
    import re

    from conftest import write_photo_folder

    photos = write_photo_folder(tmp_path / "photos", {"": 80}, size=(48, 40))  # photos/<class>/*.jpg
    result = cli("train-teacher", "recipe=edge_mobilenet", "profile=smoke", f"dataset.path={photos}", "trainer.threads=1")
    assert result.code == 0, result.text[-3000:]
    assert "held out as the test split" in result.out
    found = re.search(r"data: (\d+) training, (\d+) validation .*?, (\d+) test images, (\d+) classes", " ".join(result.out.split()))
    trained, validated, tested, classes = map(int, found.groups())
    assert classes == len(list(photos.iterdir())) and trained + validated + tested == 80
    # The smoke profile's train_limit (640) is above the folder's size: a tenth of what there is validates, not all of it.
    assert validated == round(0.1 * (trained + validated))
    metrics = json.loads((tmp_path / "runs" / "edge_mobilenet-smoke" / "teacher" / "metrics.json").read_text())
    assert metrics["train_images"] == trained
