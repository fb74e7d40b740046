"""dataset.path=owner/name@revision: a Hub data set read at the commit a recipe pins, online or offline, and the commit every run read.

No network here: each test writes the local Hugging Face caches that downloads of a Hub data set at two commits
leave behind, from the embedded CIFAR-10 sample's real images, and reads them offline.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distillctl.config import DatasetConfig
from distillctl.data import load_splits
from distillctl.data.sources import EMBEDDED_DIR, locate
from distillctl.errors import UserError

REPO = "someone/tiny-cifar"
OLD, NEW = (hashlib.sha1(name.encode()).hexdigest() for name in ("old", "new"))
# Training images at each commit: the newer one added some.
TRAIN_ROWS = {OLD: 300, NEW: 400}


def prepare(hf_home: Path, commits: dict[str, int], tag: str = "v1") -> dict[str, str]:
    """Caches as `load_dataset(REPO, revision=...)` leaves them: `datasets`' prepared arrow files per commit (the
    first n training images and 100 test images of the sample), and the Hub cache's refs/ naming `tag`'s commit."""
    import datasets
    import pyarrow.parquet as pq

    work = hf_home / "work"
    for i, (commit, rows) in enumerate(commits.items()):
        parts = {}
        for split, n in (("train", rows), ("test", 100)):
            parts[split] = work / commit / f"{split}.parquet"
            parts[split].parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(EMBEDDED_DIR / "plain_text" / f"{split}-00000-of-00001.parquet").slice(0, n), parts[split])
        made = datasets.load_dataset("parquet", data_files={k: str(v) for k, v in parts.items()}, cache_dir=str(work / "prepared"))
        folder = hf_home / "datasets" / "someone___tiny-cifar" / "plain_text" / "0.0.0" / commit
        folder.mkdir(parents=True)
        for split, table in made.items():
            shutil.copy(table.cache_files[0]["filename"], folder / f"tiny-cifar-{split}.arrow")
        info = json.loads((Path(made["train"].cache_files[0]["filename"]).parent / "dataset_info.json").read_text())
        (folder / "dataset_info.json").write_text(json.dumps({**info, "config_name": "plain_text", "dataset_name": "tiny-cifar"}))
        shutil.os.utime(folder, (1_700_000_000 + i, 1_700_000_000 + i))  # the later commit was prepared last
    refs = hf_home / "hub" / "datasets--someone--tiny-cifar" / "refs"
    refs.mkdir(parents=True)
    (refs / tag).write_text(next(iter(commits)))
    shutil.rmtree(work)
    return {"HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets"), "HF_HUB_CACHE": str(hf_home / "hub")}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> dict[str, str]:
    """Both commits in the caches, offline, as this process's Hugging Face libraries see it."""
    import datasets
    import huggingface_hub.constants

    env = prepare(tmp_path / "hf", TRAIN_ROWS)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    return env


def dataset_cfg(tmp_path, revision=None, **overrides):
    path = REPO if revision is None else f"{REPO}@{revision}"
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"path": path, "cache_dir": str(tmp_path / "decoded"), **overrides})


def test_offline_a_pinned_commit_is_read_although_a_newer_one_is_cached(hub, tmp_path, capsys):
    # `datasets` alone ignores the revision offline and reads the commit it prepared last.
    pinned = load_splits(dataset_cfg(tmp_path, OLD, val_size=10))
    assert pinned.commit == OLD and len(pinned.train) + len(pinned.val) == TRAIN_ROWS[OLD]
    assert f"at commit {OLD[:12]} (pinned: @{OLD})" in capsys.readouterr().out
    latest = load_splits(dataset_cfg(tmp_path, val_size=10))
    assert latest.commit == NEW and len(latest.train) + len(latest.val) == TRAIN_ROWS[NEW]
    # Unpinned, the line says how to read the same images again.
    assert f"unpinned: dataset.path={REPO}@{NEW} reads these very images again" in " ".join(capsys.readouterr().out.split())


def test_a_branch_or_tag_is_the_commit_the_hub_cache_last_resolved_it_to(hub, tmp_path):
    assert load_splits(dataset_cfg(tmp_path, "v1", val_size=10)).commit == OLD


@pytest.mark.parametrize("revision, says", [
    ("c" * 40, f"dataset.path={REPO}@{'c' * 40}: that commit is not in the local Hugging Face cache"),
    ("v2", f"dataset.path={REPO}@v2: 'v2' is not a 40-character commit, and the local Hugging Face cache has never seen it"),
    ("..", "'..' is not a 40-character commit"),  # a ref name is looked up in refs/ and nowhere else
])
def test_a_pin_the_cache_cannot_serve_offline_is_refused_naming_what_it_holds(hub, tmp_path, revision, says):
    with pytest.raises(UserError) as refused:
        load_splits(dataset_cfg(tmp_path, revision))
    message = str(refused.value)
    assert says in message and OLD in message and NEW in message and "where the Hub can be reached" in message


def test_the_pin_goes_with_the_hub_id_and_an_empty_one_is_refused():
    source = locate(f"{REPO}@v1")
    assert (source.hub_id, source.revision) == (REPO, "v1") and locate(REPO).revision is None
    with pytest.raises(UserError, match="names no revision after '@'"):
        locate(f"{REPO}@")


def test_a_run_records_and_reports_the_commit_it_read(cli, tmp_path, tiny):
    env = prepare(tmp_path / "hf", TRAIN_ROWS)
    run = cli("train-teacher", "recipe=tiny", f"dataset.path={REPO}@v1", "dataset.val_size=20", env=env)
    assert run.code == 0, run.text
    assert f"at commit {OLD[:12]} (pinned: @v1)" in run.out
    metrics = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "metrics.json").read_text())
    assert metrics["data_commit"] == OLD and metrics["train_images"] == TRAIN_ROWS[OLD] - 20


def test_every_bundled_hub_data_set_is_pinned_to_a_commit():
    from distillctl.composition import CONFIG_DIR
    from distillctl.data.hub_revision import COMMIT

    paths = {f.name: OmegaConf.load(f).get("path") for f in (CONFIG_DIR / "dataset").glob("*.yaml")}
    hub = {name: path for name, path in paths.items() if path and "/" in path and not path.startswith((".", "/", "$"))}
    assert hub, paths  # cifar10 and cifar100 come from the Hub
    for name, path in hub.items():
        assert COMMIT.fullmatch(locate(path).revision or ""), f"{name}: {path} reads whatever the Hub holds that day"
