"""Train / validation / test splits: decoded once and cached on disk (resident), or streamed from their files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from distillctl.console import console
from distillctl.data import folder, photo_formats, sources
from distillctl.data.batches import TensorSplit
from distillctl.data.stream import StreamSettings, StreamSplit, default_workers
from distillctl.disk import write_failure
from distillctl.errors import UserError, first_few
from distillctl.files import atomic_write

# The validation split is drawn with its own fixed seed so that teacher, student and every seed of a
# sweep select checkpoints on the same images.
SPLIT_SEED = 1234


class Split(Protocol):
    """One split of a data set, resident in memory (`TensorSplit`) or streamed from its files (`StreamSplit`)."""

    labels: torch.Tensor
    problems: set[str]  # images that could not be decoded and were skipped

    def __len__(self) -> int: ...

    def subset(self, indices: torch.Tensor) -> "Split": ...

    def eval_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                     channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def train_batches(self, batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device, seed: int,
                      channels_last: bool = False, max_steps: int | None = None, shard: tuple[int, int] = (0, 1)): ...


@dataclass
class DataSplits:
    """The train, validation and test splits, the class names, and which loader feeds them."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    loader: str = "resident"
    commit: str | None = None  # a Hub data set's commit (hub_revision); None for local files

    @property
    def num_classes(self) -> int:
        """How many classes the classifier head needs."""
        return len(self.classes)

    @property
    def skipped_images(self) -> int:
        """Images left out because they could not be decoded."""
        return len(self.train.problems | self.val.problems | self.test.problems)


def load_splits(cfg) -> DataSplits:
    """Load and split the data set that `cfg` (the `dataset` section) names, resident or streamed as it says."""
    source = sources.locate(cfg.path, cfg.test_size, cfg.train_split)
    # Class folders alone hold their test split out by file name, whatever test_split says.
    test_split = "test" if cfg.test_split is None and source.builder == folder.CLASS_FOLDERS else cfg.test_split
    if source.builder is not None:
        for note in (folder.layout_note(source.local_dir, source.builder, test_split, cfg.test_size),
                     folder.empty_classes_note(source.local_dir, source.builder),
                     photo_formats.left_out_note(source.local_dir, folder.image_suffixes())):
            if note:
                console.print(note, markup=False)  # folder names and `distillctl[heic]` are text, not rich markup
    if cfg.loader == "stream" or (cfg.loader == "auto" and not resident_cache_hit(source, cfg) and too_big(source, cfg)):
        train, test, classes = streamed(source, cfg, test_split)
        kind = "stream"
    else:
        train, test, classes = resident(source, cfg, test_split)
        kind = "resident"
    if test is None:
        tested, kept = stratified_holdout(train.labels, cfg.test_size)
        train, test = train.subset(kept), train.subset(tested)
        console.print(f"data: dataset.test_split=null: {cfg.test_size:.0%} of each class of '{cfg.train_split}' held out as the "
                      "test split (dataset.test_size), the same images on every run")
    check_classes(train.labels, test.labels, classes)
    if note := untested_note(test.labels, classes):
        console.print(note, markup=False)
    train_idx, val_idx = holdout(len(train), cfg)
    if cfg.train_limit is None:  # a limit samples on purpose (a smoke run), and moving images back would exceed it
        train_idx, val_idx = keep_every_class(train_idx, val_idx, train.labels)
    if cfg.test_limit:
        test = test.subset(torch.arange(min(cfg.test_limit, len(test))))
    console.print(f"data: {len(train_idx):,} training, {len(val_idx):,} validation (held out of '{cfg.train_split}'), "
                  f"{len(test):,} test images, {len(classes)} classes ({kind} loader)")
    return DataSplits(train.subset(train_idx), train.subset(val_idx), test, classes, kind, source.commit)


def holdout(n: int, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation positions from a seeded shuffle of the train split: val_size images held out (a count,
    or a fraction of the training images), then train_limit training images on top of them (all the rest when unset)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    limit = cfg.train_limit
    # A fraction of the images there are to train on: a train_limit above the split's size (a smoke run's 640 on a
    # folder of 64 photos) would otherwise hold out all of them.
    # A fraction holds out at least one image: round(0.1 * 5) would leave validation, which picks the best epoch, empty.
    n_val = int(cfg.val_size) if cfg.val_size >= 1 else max(1, round(cfg.val_size * min(limit or n, n)))
    if n_val >= n:
        raise UserError(f"dataset.val_size={cfg.val_size} holds out {n_val} of the {n} images of the train split, leaving none "
                        "to train on; lower it.")
    train = order[n_val:] if limit is None else order[n_val:n_val + limit]
    if limit is not None and len(train) < limit:
        console.print(f"[yellow]note:[/] dataset.train_limit={limit}, but the train split has {n} images and {n_val} are "
                      f"held out for validation (dataset.val_size): training on {len(train)}")
    return train, order[:n_val]


def keep_every_class(train_idx: torch.Tensor, val_idx: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation draw without the images of a class it would leave nothing of to train on (a class of one or
    two photos in a user's folder): those go back to training, which validation cannot stand in for."""
    lost = set(labels[val_idx].tolist()) - set(labels[train_idx].tolist())
    if not lost:
        return train_idx, val_idx
    back = torch.isin(labels[val_idx], torch.tensor(sorted(lost)))
    if back.all():  # nothing would be left to pick the best epoch on: keep the draw as it is
        return train_idx, val_idx
    return torch.cat([train_idx, val_idx[back]]), val_idx[~back]


def stratified_holdout(labels: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of a test split made of `share` of each class (at least one image of a class of two or more,
    never all of it), drawn with a fixed seed, and of the rest."""
    generator = torch.Generator().manual_seed(SPLIT_SEED + 1)  # not the validation draw's stream
    tested = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) > 1:
            tested.append(members[:min(len(members) - 1, max(1, round(len(members) * share)))])
    tested = torch.cat(tested).sort().values if tested else torch.zeros(0, dtype=torch.long)
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[tested] = False
    return tested, kept.nonzero().flatten()


def untested_note(test_labels: torch.Tensor, classes: list[str]) -> str | None:
    """A line for the log naming classes without a test image (a class of one photo, or none of it in test/): the
    student is trained on them, and its test accuracy says nothing about them."""
    untested = sorted(set(range(len(classes))) - set(test_labels.tolist()))
    if not untested:
        return None
    shown = first_few([classes[i] for i in untested], 5)
    return (f"note: {len(untested)} class{'es have' if len(untested) > 1 else ' has'} no test image, so test accuracy says "
            f"nothing about {'them' if len(untested) > 1 else 'it'}: {shown}. Test photos go in test/<class>/, or a folder of "
            "class folders holds one out of a class of two or more.")


def check_classes(train_labels: torch.Tensor, test_labels: torch.Tensor, classes: list[str]) -> None:
    """Refuse label sets no classifier can be trained or tested on, naming the classes at fault."""
    if len(classes) < 2:
        raise UserError(f"the data set has {len(classes)} class{'es' if len(classes) != 1 else ''} ({', '.join(classes)}); a classifier needs at least two.")
    untrained = sorted(set(test_labels.tolist()) - set(train_labels.tolist()))
    if untrained:
        names = ", ".join(classes[i] if i < len(classes) else str(i) for i in untrained[:5])
        raise UserError(f"the test split has images of {len(untrained)} class(es) the train split lacks ({names}): add training images for them or remove them from the test split.")


def too_big(source: sources.Source, cfg) -> bool:
    """Whether the decoded training split would exceed dataset.resident_max_gb (the log says which loader and why)."""

    rows = len(sources.load_split_table(source, cfg.train_split))
    gigabytes = rows * cfg.image_size**2 * 3 / 1e9
    if gigabytes <= cfg.resident_max_gb:
        return False
    console.print(f"data: {rows:,} training images at {cfg.image_size} px take {gigabytes:.1f} GB decoded, more than "
                  f"dataset.resident_max_gb={cfg.resident_max_gb:g}: streaming them from their files (dataset.loader=stream)")
    return True


def stream_settings(cfg) -> StreamSettings:
    """The dataset section's streaming options, with the worker count resolved."""
    return StreamSettings(
        size=cfg.image_size, min_crop_scale=cfg.min_crop_scale, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
        auto_augment=cfg.auto_augment, hflip=cfg.hflip, workers=default_workers() if cfg.workers is None else cfg.workers,
        on_bad_image=str(cfg.on_bad_image),
    )


def streamed(source: sources.Source, cfg, test_split: str | None) -> tuple[StreamSplit, StreamSplit | None, list[str]]:
    """Train and test splits whose images stay in their files until a batch needs them (no test split for None)."""
    settings = stream_settings(cfg)
    found = []
    for split in (cfg.train_split, test_split):
        if split is None:
            found.append((None, None))
            continue
        cells, column, labels, classes = sources.undecoded(sources.load_split_table(source, split), cfg.image_column, cfg.label_column)
        found.append((StreamSplit(cells, column, labels, torch.arange(len(labels)), settings), classes))
    (train, classes), (test, _) = found  # the training split's classes size the head
    return train, test, classes


def resident(source: sources.Source, cfg, test_split: str | None) -> tuple[TensorSplit, TensorSplit | None, list[str]]:
    """Train and test splits decoded whole (from the cache when possible; no test split for None)."""
    train_x, train_y, classes, train_bad = cached_split(source, cfg, cfg.train_split)
    train = TensorSplit(train_x, train_y, cfg.crop_padding, cfg.hflip, train_bad)
    if test_split is None:
        return train, None, classes
    test_x, test_y, _, test_bad = cached_split(source, cfg, test_split)
    return train, TensorSplit(test_x, test_y, cfg.crop_padding, cfg.hflip, test_bad), classes


def decode_settings(cfg, split: str) -> str:
    """What the decoded cache depends on besides the files. v2: centre squares (aspect kept) rather than squashed;
    `heic` once pillow-heif reads the HEIC photos that were left out before."""
    plugins = "|heic" if photo_formats.register_plugins() else ""
    return f"v2|{cfg.image_column}|{cfg.label_column}|{cfg.image_size}|{split}{plugins}"


def resident_cache_hit(source: sources.Source, cfg) -> bool:
    """Whether the decoded training split is already cached (then it was small enough to decode, and is free to use)."""
    key = source.fingerprint(decode_settings(cfg, cfg.train_split))
    return key is not None and (Path(cfg.cache_dir).expanduser() / f"{key}.safetensors").is_file()


def cached_split(source: sources.Source, cfg, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str], set[str]]:
    """One split's decoded images: read from the cache, or decode through `datasets` and write the cache."""
    settings = decode_settings(cfg, split)
    cache_dir = Path(cfg.cache_dir).expanduser()
    key = source.fingerprint(settings)
    if key is not None and (hit := read_cache(cache_dir / f"{key}.safetensors")) is not None:
        return recalled(hit, split, str(cfg.on_bad_image))
    table = sources.load_split_table(source, split)
    if key is None:  # a Hub data set: its own fingerprint identifies the content
        key = hub_cache_key(table._fingerprint, settings)
        if (hit := read_cache(cache_dir / f"{key}.safetensors")) is not None:
            return recalled(hit, split, str(cfg.on_bad_image))
    images, labels, classes, problems = sources.decode(table, cfg.image_column, cfg.label_column, cfg.image_size, str(cfg.on_bad_image))
    result = torch.from_numpy(images), torch.from_numpy(labels), classes, problems
    write_cache(cache_dir / f"{key}.safetensors", *result)
    return result


def recalled(hit: tuple[torch.Tensor, torch.Tensor, list[str], set[str]], split: str, on_bad_image: str):
    """A cached split, with the images its decoding skipped said again: every run that trains without them says
    so, not only the one that decoded them first."""
    problems = hit[3]
    if problems:
        first = min(map(str, problems))
        if on_bad_image == "error":
            raise sources.undecodable(first)
        console.print(f"[yellow]warning:[/] skipped {len(problems)} image(s) of the {split} split that could not be "
                      f"decoded (first: {first}; remembered from the decoded cache)")
    return hit


def hub_cache_key(table_fingerprint: str, settings: str) -> str:
    """The cache key of a Hub split: its `datasets` fingerprint plus the decode settings. hashlib, not hash():
    str hashes are salted per process, which would miss the cache on every run."""
    return f"{table_fingerprint}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"


def read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], set[str]] | None:
    """The cached split, or None when it is missing or unreadable (then it is simply rebuilt)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
        return tensors["images"], tensors["labels"], json.loads(meta["classes"]), set(json.loads(meta.get("skipped", "[]")))
    except Exception:
        return None


def write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str], problems: set[str]) -> None:
    """Write atomically so that two runs decoding at once never leave a torn file. The cache only saves time: a
    full or read-only disk is reported and the run goes on with the images it decoded."""
    tensors = {"images": images.contiguous(), "labels": labels}
    meta = {"classes": json.dumps(classes), "skipped": json.dumps(sorted(problems))}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except Exception as exc:
        if (reason := write_failure(exc)) is None:
            raise
        console.print(f"warning: decoded images not cached ({reason}: {path.parent}); "
                      "the next run decodes them again. Set dataset.cache_dir to a folder with room.")
