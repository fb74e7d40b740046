"""Which commit of a Hub data set a run reads, so that a recipe pinned to one reads the same images tomorrow.

`dataset.path=owner/name@revision` pins a branch, tag or commit (with the id, so that another data set or local files
in dataset.path drop the pin with it). `datasets` honours it when the Hub can be reached; offline
(HF_HUB_OFFLINE=1, or a compute node where distillctl turned offline mode on) it ignores the revision and loads
whichever commit it prepared last, so a pinned recipe would read other images without a word. Offline, the pinned
commit is looked up in `datasets`' cache and loaded from there, or the run stops naming the commits the cache holds.
Every Hub load says which commit it read, and the stages record it (`data_commit` in metrics.json).
"""

from __future__ import annotations

import re
from pathlib import Path

from distillctl.errors import UserError

COMMIT = re.compile(r"[0-9a-f]{40}")


def pinned(spec: str) -> tuple[str, str | None]:
    """The Hub id dataset.path names and the revision `id@revision` pins it to (None: the latest)."""
    hub_id, _, revision = spec.partition("@")
    return hub_id, revision or None


def data_label(path: str, commit: str | None) -> str:
    """dataset.path as reports name it: a Hub id with the commit read (which says what a pin said), else as given."""
    return f"{pinned(path)[0]} at commit {commit}" if commit else path


def loaded_commit(table) -> str | None:
    """The commit a table read from the Hub was prepared from: the name of its folder in `datasets`' cache
    (<cache>/<owner>___<name>/<config>/<version>/<commit>/<name>-<split>.arrow)."""
    for entry in table.cache_files:
        if COMMIT.fullmatch(name := Path(entry["filename"]).parent.name):
            return name
    return None


def commit_of(repo_id: str, revision: str) -> str | None:
    """The commit `revision` names, found without the Hub: itself when it is one, else the commit the local Hub cache
    last resolved that branch or tag to (huggingface_hub's refs/ files), or None when it never did."""
    if COMMIT.fullmatch(revision):
        return revision
    if revision.startswith("/") or ".." in Path(revision).parts:  # a ref name, never a way out of the cache
        return None
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def prepared_commits(repo_id: str) -> dict[str, Path]:
    """Commit -> its prepared folder in `datasets`' cache, for one Hub data set."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    *owner, name = repo_id.split("/")
    root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join([*owner, camelcase_to_snakecase(name)])
    # Newest last, so that it wins where two configurations of the data set were prepared from one commit, as
    # `datasets` itself picks the newest.
    folders = sorted((p for p in root.glob("*/*/*") if p.is_dir() and COMMIT.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
    return {folder.name: folder for folder in folders}


def load_pinned_offline(repo_id: str, split: str, revision: str):
    """One split of the commit `revision` names, from `datasets`' cache, as `load_dataset` gives it online."""
    # `datasets`' own reader of its cache, the one load_dataset falls back to offline; only it is told the commit.
    from datasets.packaged_modules.cache.cache import Cache

    commit, cached = commit_of(repo_id, revision), prepared_commits(repo_id)
    if commit is None or commit not in cached:
        raise UserError(not_cached(repo_id, revision, commit, list(cached)))
    folder = cached[commit]
    builder = Cache(repo_id=repo_id, dataset_name=repo_id.split("/")[-1], config_name=folder.parts[-3],
                    version=folder.parts[-2], hash=commit)
    return builder.as_dataset(split=split)


def not_cached(repo_id: str, revision: str, commit: str | None, cached: list[str]) -> str:
    """Why a pinned revision cannot be read offline, and what to do."""
    holds = f"it holds commit(s) {', '.join(cached)}" if cached else "it holds no commit of it"
    if commit is None and not COMMIT.fullmatch(revision):
        what = (f"'{revision}' is not a 40-character commit, and the local Hugging Face cache has never seen it as a branch "
                "or tag of")
    else:
        what = "that commit is not in the local Hugging Face cache of"
    return (f"dataset.path={repo_id}@{revision}: {what} '{repo_id}' ({holds}), and the Hub cannot be reached (offline mode "
            "is on). Run it once where the Hub can be reached, which downloads it, or pin a commit the cache holds.")


def checked(repo_id: str, revision: str | None, table) -> str | None:
    """The commit `table` was read from, refused when it is not the one `revision` pins."""
    commit = loaded_commit(table)
    wanted = commit_of(repo_id, revision) if revision else None
    if wanted is not None and commit is not None and commit != wanted:
        raise UserError(f"dataset.path={repo_id}@{revision} pins commit {wanted}, but `datasets` read commit {commit}. Clear "
                        "that data set from the Hugging Face datasets cache and run again.")
    return commit


def describe(repo_id: str, revision: str | None, commit: str) -> str:
    """The line a run prints about the commit it reads."""
    if revision:
        return f"data: '{repo_id}' at commit {commit[:12]} (pinned: @{revision})"
    return f"data: '{repo_id}' at commit {commit[:12]}, unpinned: dataset.path={repo_id}@{commit} reads these very images again"
