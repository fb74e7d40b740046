"""`distillctl predict`: a model of the workspace (or any model file) on your own photos. Each photo's top classes
go to a CSV; when the photos sit in folders named after the classes, the accuracy is reported too.

Photos are prepared as the model's test images were (the preprocessing and normalization its file records) and
decoded by worker processes, with a bad file skipped and counted as in training; the CSV is written as the batches
come, so memory stays flat for any number of photos.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from distillctl import artifacts, files, provenance
from distillctl.console import CountProgress, console, print_summary_table
from distillctl.data import preprocess
from distillctl.data.batches import normalizer
from distillctl.data.folder import image_suffixes
from distillctl.data.image_files import ImageFiles, PathCells, list_images
from distillctl.data.photo_formats import left_out_note
from distillctl.data.stream import EpochOrder, StreamSettings, StreamSplit, default_workers
from distillctl.engine.device import autocast, pick_device
from distillctl.errors import UserError, first_few
from distillctl.model_files import MODEL_STAGES, chosen_model, file_runtime, is_quantized, load_runnable
from distillctl.models.normalization import stored_normalization
from distillctl.workspace import METRICS_FILE, Workspace

FOLDER = "predict"
SHOWN = 10  # predictions printed; the CSV has them all
MAX_LISTED_PROBLEMS = 100  # undecodable files named in the summary (all are counted)


def run(cfg: DictConfig) -> dict:
    """Predict on predict.input with predict.model; write the CSV and its JSON summary; print both in short."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    ws = Workspace.from_config(cfg)
    name, path = chosen_model(str(cfg.predict.model), cfg, ws)
    model, meta, classes = open_model(path)
    pre, pre_source = preprocessing(meta, path, cfg)
    mean, std = stored_normalization(meta, cfg.dataset.mean, cfg.dataset.std)
    images = list_images(str(cfg.predict.input), classes)
    quantized = is_quantized(model, meta)
    device = torch.device("cpu") if quantized else pick_device(cfg.trainer.device)
    precision = "fp32" if quantized else str(cfg.trainer.precision)
    runtime = file_runtime(model) or f"torch on {device.type}"
    count = f"{len(images.paths):,} image{'s' if len(images.paths) != 1 else ''}"
    console.print(f"predict: {count} from {cfg.predict.input}{labelling(images, len(classes))}")
    source = Path(str(cfg.predict.input)).expanduser()
    if source.is_dir() and (note := left_out_note(source, image_suffixes())):
        console.print(note, markup=False)
    if images.labelled and holds_training_images(Path(str(cfg.predict.input)), cfg.dataset):
        console.print(f"[yellow]note:[/] {cfg.predict.input} holds images the model trained on (dataset.path={cfg.dataset.path}): "
                      "its accuracy here overstates the accuracy on new photos, which `distillctl evaluate` measures on the test split")
    console.print(f"model: {name} ({path.name}, {path.stat().st_size / 1e6:.2f} MB, {runtime})")
    if str(cfg.predict.model) in ("auto", *MODEL_STAGES) and (line := provenance.describe(provenance.outdated(MODEL_STAGES, ws.find)).get(name)):
        console.print(f"[yellow]warning:[/] {line}")
    console.print(f"images prepared: {preprocess.describe(pre)}, {pre_source}")
    out = Path(cfg.predict.output).expanduser() if cfg.predict.output else ws.root / FOLDER / f"{name}.csv"
    k = min(int(cfg.predict.topk), len(classes))
    split = photo_split(images, pre, cfg)
    loader = split.loader(EpochOrder(split.rows, None), cfg.trainer.eval_batch_size, False, device)
    scale, shift = normalizer(mean, std, device)
    tally = Tally(k)
    shown: list[tuple[str, str, float, str | None]] = []
    start = time.perf_counter()

    def write(tmp: Path) -> None:
        batch_rows: list[torch.Tensor] = []
        with open(tmp, "w", newline="") as handle, CountProgress("predict", len(images.paths)) as progress, \
                torch.inference_mode(), autocast(device, precision):
            writer = csv.writer(handle)
            writer.writerow(["path", *[f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")],
                             *(["label", "correct"] if images.labelled else [])])
            model.to(device).eval()
            for x, y in split.take(iter(loader), scale, shift, device, False, batch_rows.append):
                rows = batch_rows.pop().tolist()
                probs, top = torch.softmax(model(x).float(), dim=1).topk(k, dim=1)
                probs, top, y = probs.cpu().tolist(), top.cpu().tolist(), y.cpu().tolist()
                for row, p, t, label in zip(rows, probs, top, y):
                    labelled = ([classes[label], int(t[0] == label)] if label >= 0 else ["", ""]) if images.labelled else []
                    writer.writerow([images.paths[row], *[v for c, q in zip(t, p) for v in (classes[c], f"{q:.4f}")], *labelled])
                    tally.add(t, label)
                    if len(shown) < SHOWN:
                        shown.append((images.paths[row], classes[t[0]], p[0], classes[label] if label >= 0 else None))
                progress.advance(len(rows))
        if tally.images == 0:  # raised inside the write, so that no CSV of a header alone replaces the last one
            raise UserError(f"none of the {len(images.paths)} images under {cfg.predict.input} could be decoded "
                            f"(first: {sorted(split.problems)[0]}); nothing was written.")

    try:
        files.atomic_write(out, write)
    except IsADirectoryError:
        raise UserError(f"predict.output={out} is a folder: give the CSV file's path.") from None
    seconds = time.perf_counter() - start
    summary = {
        "model": name, "file": str(path), "runtime": runtime, "input": str(cfg.predict.input), "images": tally.images,
        "skipped_images": len(split.problems), "skipped_files": sorted(split.problems)[:MAX_LISTED_PROBLEMS],
        "labelled": images.labelled, "scored_images": tally.scored, "unlabelled_folders": images.unlabelled_folders,
        "top1": tally.accuracy(1), **({f"top{k}": tally.accuracy(k)} if k > 1 else {}),
        "predicted_classes": {classes[c]: n for c, n in tally.predicted.most_common()},
        "preprocess": pre, "preprocess_from": pre_source, "mean": mean, "std": std,
        "seconds": round(seconds, 2), "images_per_s": round(tally.images / seconds, 1), "csv": str(out),
    }
    files.write_json(out.with_suffix(".json"), summary)
    print_predictions(shown, tally.images)
    print_summary(summary, classes, k)
    return summary


def labelling(images: ImageFiles, classes: int) -> str:
    """What the log says of the images' labels: none, all from their folders, or some and which folders give none."""
    if not images.labelled:
        return ""
    if not images.unlabelled_folders:
        return ", labelled by their folders"
    folders = first_few([f"{name}/" if name != "." else "the folder itself" for name in images.unlabelled_folders], 3)
    rest = len(images.paths) - images.scored
    return (f"; {images.scored:,} labelled by their folders and scored, {rest:,} in {folders} (not named after one of the "
            f"model's {classes} classes) predicted only")


class Tally:
    """Counts kept while predictions stream past: images, labelled images with their label first and among the top k,
    and how often each class is predicted."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.images = self.scored = self.first = self.among_top = 0
        self.predicted: Counter = Counter()

    def add(self, top: list[int], label: int) -> None:
        """One image's top classes, best first, and its label (-1: none, and not scored)."""
        self.images += 1
        self.predicted[top[0]] += 1
        if label >= 0:
            self.scored += 1
            self.first += int(top[0] == label)
            self.among_top += int(label in top)

    def accuracy(self, k: int) -> float | None:
        """Share of the labelled images whose label is among the top k (1 or the tally's k); None without any."""
        if not self.scored:
            return None
        return (self.first if k == 1 else self.among_top) / self.scored


def open_model(path: Path) -> tuple[torch.nn.Module, dict, list[str]]:
    """The model in `path`, its metadata and its class names; refused when the file does not say what its classes are."""
    if path.suffix not in (".onnx", ".pte") and "num_classes" not in artifacts.read_metadata(path):
        raise UserError(f"{path} records no classes or preprocessing (a file not written by distillctl): predict runs the "
                        "models that distillctl's stages write, or their .onnx and .pte exports.")
    model, meta = load_runnable(path, None, None, torch.get_num_threads())
    return model, meta, [str(c) for c in meta.get("classes") or range(int(meta["num_classes"]))]


def preprocessing(meta: dict, path: Path, cfg: DictConfig) -> tuple[dict, str]:
    """How to prepare photos for this model, and where that comes from: its file, or (a file from before files recorded
    it) the loader its stage's metrics name and this recipe's dataset settings."""
    if "preprocess" in meta:
        return dict(meta["preprocess"]), "as recorded in the model file"
    loader = (files.read_json(path.parent / METRICS_FILE) or {}).get("loader") or ("stream" if cfg.dataset.loader == "stream" else "resident")
    d = cfg.dataset
    return preprocess.recorded(d.image_size, d.crop_pct, d.interpolation, loader), "from the recipe's dataset settings: the file does not record it"


def holds_training_images(folder: Path, dataset) -> bool:
    """Whether `folder` is the local training data set's folder, its train split, or a class folder of a folder of
    class folders alone (each mixes training and test photos)."""
    root = Path(str(dataset.path)).expanduser()
    if not str(dataset.path).strip() or not root.is_dir():
        return False
    try:
        inside = folder.expanduser().resolve().relative_to(root.resolve()).parts
    except ValueError:
        return False
    train_split = dataset.train_split
    return not inside or not (root / str(train_split)).is_dir() or inside[0] == train_split


def photo_split(images: ImageFiles, pre: dict, cfg: DictConfig) -> StreamSplit:
    """The photos as a streamed split whose evaluation images are made as `pre` says."""
    batch = cfg.trainer.eval_batch_size
    workers = default_workers() if cfg.dataset.workers is None else cfg.dataset.workers
    settings = StreamSettings(
        size=pre["image_size"], min_crop_scale=1.0, crop_pct=pre["crop_pct"], interpolation=pre["interpolation"],
        auto_augment=None, hflip=False, workers=workers if len(images.paths) > batch else 0,  # one batch: no processes to start
        on_bad_image=str(cfg.dataset.on_bad_image), resize=pre["resize"],
    )
    labels = np.asarray(images.labels, dtype=np.int64)
    return StreamSplit(PathCells(images.paths), "image", labels, torch.arange(len(labels)), settings)


def print_predictions(shown: list[tuple[str, str, float, str | None]], total: int) -> None:
    """The first predictions as a table."""
    from rich.table import Table

    table = Table(title=f"first {len(shown)} of {total:,} predictions" if total > len(shown) else "predictions", title_justify="left")
    labelled = any(label is not None for *_, label in shown)
    for column in ("image", "class", "probability", *(["label"] if labelled else [])):
        table.add_column(column, justify="right" if column == "probability" else "left", overflow="fold")
    for image, predicted, prob, label in shown:
        table.add_row(image, predicted, f"{prob:.1%}", *([label or "-"] if labelled else []))
    console.print(table)


def print_summary(summary: dict, classes: list[str], k: int) -> None:
    """The closing table: how many, how well (when labelled), how fast, and where the CSV is."""
    common = ", ".join(f"{c} {n / summary['images']:.0%}" for c, n in list(summary["predicted_classes"].items())[:5])
    rows = [("images", f"{summary['images']:,}"), ("skipped (cannot decode)", f"{summary['skipped_images']:,}")]
    if summary["top1"] is not None:
        of = f" ({summary['scored_images']:,} labelled)" if summary["scored_images"] < summary["images"] else ""
        rows.append((f"top-1{of}", f"{summary['top1']:.2%}"))
        if k > 1:
            rows.append((f"top-{k}{of}", f"{summary[f'top{k}']:.2%}"))
    rows += [("most predicted", common), ("throughput", f"{summary['images_per_s']:,.0f} img/s ({summary['runtime']})"),
             ("predictions", summary["csv"]), ("summary", str(Path(summary["csv"]).with_suffix(".json")))]
    print_summary_table(f"predict: {summary['model']} ({len(classes)} classes)", rows)
