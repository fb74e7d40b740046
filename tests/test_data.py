"""Loading from the Hub's parquet layout and from an image folder; batched augmentation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from distillctl.config import DatasetConfig
from distillctl.data import Batches, eval_batches, load_splits
from distillctl.data.sources import EMBEDDED_DIR
from distillctl.errors import UserError

from conftest import SHARED_CIFAR


def dataset_cfg(**overrides) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), overrides)


def test_embedded_sample_is_real_cifar_in_hub_layout():
    assert (EMBEDDED_DIR / "plain_text" / "train-00000-of-00001.parquet").is_file()
    size = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert size <= 3_000_000
    data = load_splits(dataset_cfg(val_size=250))
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    assert data.train.images.shape == (2250, 32, 32, 3) and data.train.images.dtype == torch.uint8
    assert len(data.val.labels) == 250 and len(data.test.labels) == 500
    assert len(set(data.train.labels.tolist())) == 10


def test_limits_and_a_fixed_validation_split():
    a = load_splits(dataset_cfg(train_limit=1000, test_limit=100, val_size=0.2))
    b = load_splits(dataset_cfg(train_limit=1000, test_limit=100, val_size=0.2))
    # train_limit counts training images; the held-out part (a fraction of them) comes on top
    assert len(a.train.labels) == 1000 and len(a.val.labels) == 200 and len(a.test.labels) == 100
    assert torch.equal(a.val.images, b.val.images)
    # A fraction of a few images still holds one out: validation picks the best epoch (an empty one was a traceback).
    few = load_splits(dataset_cfg(train_limit=5, val_size=0.1))
    assert len(few.train.labels) == 5 and len(few.val.labels) == 1


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="../shared/data/cifar10 is not beside this checkout")
def test_local_parquet_directory():
    data = load_splits(dataset_cfg(path=str(SHARED_CIFAR), test_limit=1000))
    assert len(data.train.labels) + len(data.val.labels) == 50_000 and len(data.test.labels) == 1000


def test_image_folder(tmp_path):
    from PIL import Image

    sample = load_splits(dataset_cfg(train_limit=40, val_size=4))
    for split, part in (("train", sample.train), ("test", sample.val)):
        for i, (img, label) in enumerate(zip(part.images, part.labels)):
            folder = tmp_path / split / sample.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.numpy()).resize((40, 40)).save(folder / f"{i}.png")
    data = load_splits(dataset_cfg(path=str(tmp_path), image_column="image", val_size=2))
    assert data.train.images.shape[1:] == (32, 32, 3)  # resized to dataset.image_size
    assert len(data.train.labels) + len(data.val.labels) == 40 and len(data.test.labels) == 4
    assert set(data.classes) <= set(sample.classes)


def test_class_folders_alone_hold_out_the_same_share_of_each_class_on_every_run(tmp_path, capsys):
    from distillctl.data import folder
    from distillctl.data.sources import locate

    from conftest import write_photo_folder

    root = write_photo_folder(tmp_path / "photos", {"": 120}, size=(32, 32))  # photos/<class>/*.jpg, no splits
    per_class = {c.name: len(list(c.iterdir())) for c in root.iterdir()}
    data = load_splits(dataset_cfg(path=str(root), image_column="image", val_size=10))
    assert "20% of each class's photos are held out as the test split" in capsys.readouterr().out
    assert len(data.train.labels) + len(data.val.labels) + len(data.test.labels) == 120
    tested = torch.bincount(data.test.labels, minlength=len(data.classes)).tolist()
    assert tested == [min(n - 1, max(1, round(n * 0.2))) for n in (per_class[c] for c in data.classes)]
    # The parts are disjoint and chosen by name: a second listing (another run) picks the same files.
    assert locate(str(root)).builder == folder.CLASS_FOLDERS
    classes = folder.class_names(root, folder.CLASS_FOLDERS)
    train, test = ({p for paths in part for p in paths} for part in folder.held_out_parts(root, classes, 0.2).values())
    assert not train & test and len(train | test) == 120
    assert {p for paths in folder.held_out_parts(root, classes, 0.2)["test"] for p in paths} == test
    # Another share is another split, not the cached one.
    half = load_splits(dataset_cfg(path=str(root), image_column="image", val_size=10, test_size=0.5))
    assert abs(len(half.test.labels) - 60) <= len(per_class)
    with pytest.raises(UserError, match="has no split 'val'"):
        load_splits(dataset_cfg(path=str(root), image_column="image", test_split="val"))


@pytest.mark.parametrize("loader", ["resident", "stream"])
def test_a_data_set_without_a_test_split_holds_one_out_of_train(loader, capsys):
    whole = load_splits(dataset_cfg(val_size=250, loader=loader))
    a = load_splits(dataset_cfg(val_size=250, test_split=None, loader=loader))
    assert "dataset.test_split=null: 20% of each class of 'train' held out as the test split" in capsys.readouterr().out
    assert len(a.train) + len(a.val) + len(a.test) == len(whole.train) + len(whole.val) == 2500
    per_class = torch.bincount(torch.cat([whole.train.labels, whole.val.labels]), minlength=10)
    assert torch.equal(torch.bincount(a.test.labels, minlength=10), (per_class * 0.2).round().long())
    b = load_splits(dataset_cfg(val_size=250, test_split=None, loader=loader))  # another run: the same test images
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.val.labels, b.val.labels)
    if loader == "resident":
        assert torch.equal(a.test.images, b.test.images)
        # No test image is trained or validated on.
        seen = {bytes(img.numpy()) for img in torch.cat([a.train.images, a.val.images])}
        assert not any(bytes(img.numpy()) in seen for img in a.test.images)


def test_split_folders_under_other_names_are_named_not_taken_for_classes(tmp_path):
    from conftest import write_photo_folder

    root = write_photo_folder(tmp_path / "photos", {"training": 40, "testing": 12}, size=(32, 32))
    with pytest.raises(UserError, match=r"holds split folders \(testing/, training/\) but no train/: name them with dataset.train_split=training dataset.test_split=testing"):
        load_splits(dataset_cfg(path=str(root), image_column="image"))
    data = load_splits(dataset_cfg(path=str(root), image_column="image", val_size=4, train_split="training", test_split="testing"))
    assert len(data.train) + len(data.val) == 40 and len(data.test) == 12 and len(data.classes) > 2


def test_a_val_folder_stands_in_for_a_missing_test_folder(tmp_path, capsys):
    from conftest import write_photo_folder

    root = write_photo_folder(tmp_path / "photos", {"train": 40, "val": 12}, size=(32, 32))
    data = load_splits(dataset_cfg(path=str(root), image_column="image", val_size=4))
    assert len(data.test.labels) == 12 and "testing on val/" in capsys.readouterr().out


def test_missing_local_path_and_unreachable_hub_say_what_to_do():
    with pytest.raises(UserError, match="does not exist"):
        load_splits(dataset_cfg(path="./no/such/dir"))
    with pytest.raises(UserError, match="point dataset.path at local files"):
        load_splits(dataset_cfg(path="uoft-cs/cifar10-does-not-exist"))


def test_augmented_batches_are_crops_and_flips_of_the_images():
    data = load_splits(dataset_cfg())
    images, labels = data.train.images[:64], data.train.labels[:64]
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    batches = Batches(images, labels, 16, mean, std, torch.device("cpu"), seed=0, padding=4)
    xs, ys = zip(*batches)
    x = torch.cat(xs)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-5 and x.max() <= (1 - 0.5) / 0.25 + 1e-5
    assert sorted(torch.cat(ys).tolist()) == sorted(labels.tolist())  # one epoch: every image once
    # Without padding, every output is its image or the mirror of it.
    plain = Batches(images, labels, 64, mean, std, torch.device("cpu"), seed=1, padding=0)
    x, y = next(iter(plain))
    ref = next(eval_batches(images, labels, 64, mean, std, torch.device("cpu")))[0]
    flips = 0
    for img in x:
        same = (ref - img).abs().flatten(1).amax(1) < 1e-5
        mirrored = (ref.flip(3) - img).abs().flatten(1).amax(1) < 1e-5
        assert same.any() or mirrored.any()
        flips += int(mirrored.any() and not same.any())
    assert 10 < flips < 54  # about half are flipped


def test_batches_resume_with_the_same_order():
    data = load_splits(dataset_cfg())
    a = Batches(data.train.images, data.train.labels, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), seed=3, max_steps=2)
    list(a)
    state = a.state_dict()
    expected = [y for _, y in a]
    b = Batches(data.train.images, data.train.labels, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), seed=99, max_steps=2)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(expected, (y for _, y in b)))


def test_hub_cache_key_is_the_same_in_every_process():
    # A key built with hash() changed from process to process, so a Hub data set was decoded again on every run.
    code = "from distillctl.data.splits import hub_cache_key; print(hub_cache_key('abc123', 'img|label|32|train'))"
    keys = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(keys) == 1 and keys.pop().startswith("abc123-")


def corrupted_copy(tmp_path, rows: int, broken: list[int]):
    """The embedded sample's first `rows` train/test rows in the Hub layout, with the images at `broken` garbled."""
    import datasets

    out = tmp_path / "plain_text"
    out.mkdir()
    for split in ("train", "test"):
        table = datasets.load_dataset(str(EMBEDDED_DIR), split=split).select(range(rows))
        if split == "train":
            table = table.cast_column("img", datasets.Image(decode=False))
            table = table.map(lambda row, i: {"img": {"bytes": b"not a jpeg", "path": None} if i in broken else row["img"]}, with_indices=True)
            table = table.cast_column("img", datasets.Image())
        table.to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return tmp_path


def test_iphone_heic_photos_are_read_with_pillow_heif_and_named_when_nothing_reads_them(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from distillctl.data import folder, photo_formats
    from distillctl.data.images import open_rgb

    from conftest import write_photo_folder

    assert photo_formats.register_plugins()  # pillow-heif: `pip install -e '.[test]'` installs it (the heic extra)
    root = write_photo_folder(tmp_path / "photos", {"": 40}, size=(48, 48))
    jpegs = sorted(root.rglob("*.jpg"))
    for jpg in jpegs[1::2]:  # every other photo as an iPhone saves it
        Image.open(jpg).save(jpg.with_suffix(".HEIC"), quality=95)
        jpg.unlink()
    (jpegs[0].parent / "IMG_0001.CR2").write_bytes(b"II*\x00raw")  # a camera's raw file
    data = load_splits(dataset_cfg(path=str(root), image_column="image", val_size=4, cache_dir=str(tmp_path / "cache")))
    assert len(data.train.labels) + len(data.val.labels) + len(data.test.labels) == 40  # the 20 HEIC photos too
    out = capsys.readouterr().out
    assert "photos left out, in a format nothing here reads: 1 .cr2" in out and ".heic" not in out
    heic = next(root.rglob("*.HEIC"))
    decoded = np.asarray(open_rgb({"path": str(heic), "bytes": None}), dtype=np.float32)
    assert decoded.shape == (48, 48, 3) and 20 < decoded.mean() < 235  # a picture, not a blank
    # Where pillow-heif is not installed they were left out without a word, as a stray text file is.
    note = photo_formats.left_out_note(root, folder.image_suffixes() - {".heic", ".heif", ".hif"})
    assert "20 .heic, 1 .cr2 under" in note and "pip install 'distillctl[heic]'" in note and "convert them to JPEG" in note
    assert photo_formats.left_out_note(tmp_path / "cache", folder.image_suffixes()) is None


def test_a_few_undecodable_images_are_skipped_and_reported(tmp_path, capsys):
    data = load_splits(dataset_cfg(path=str(corrupted_copy(tmp_path, 200, [3])), val_size=20))
    assert len(data.train.labels) + len(data.val.labels) == 199
    assert "skipped 1 of 200 images that could not be decoded (first: image 3" in capsys.readouterr().out
    again = load_splits(dataset_cfg(path=str(tmp_path), val_size=20))  # from the decoded cache
    assert again.skipped_images == 1 and len(again.train.labels) + len(again.val.labels) == 199
    assert "skipped 1 image(s) of the train split that could not be decoded (first: image 3" in capsys.readouterr().out
    with pytest.raises(UserError, match="cannot decode image 3 .*on_bad_image=skip"):
        load_splits(dataset_cfg(path=str(tmp_path), val_size=20, on_bad_image="error"))


def test_a_data_set_of_mostly_broken_images_is_refused(tmp_path):
    with pytest.raises(UserError, match="30 of 200 images could not be decoded"):
        load_splits(dataset_cfg(path=str(corrupted_copy(tmp_path, 200, list(range(30)))), val_size=20))


def test_a_configured_column_that_does_not_exist_is_refused():
    with pytest.raises(UserError, match="dataset.label_column=nolabel: the data set has no such column"):
        load_splits(dataset_cfg(label_column="nolabel", train_limit=40, val_size=4))


def test_a_train_limit_beyond_the_split_trains_on_what_is_left_and_says_so(capsys):
    data = load_splits(dataset_cfg(train_limit=2400, val_size=250, test_limit=50))
    assert len(data.val.labels) == 250 and len(data.train.labels) == 2500 - 250
    out = capsys.readouterr().out
    assert "dataset.train_limit=2400, but the train split has 2500 images and 250 are held out" in out
    assert "data: 2,250 training, 250 validation" in out


@pytest.mark.parametrize("images, limit, val_size, expected", [
    (1000, 640, 0.1, (640, 64)),   # a tenth of the training images, held out on top of them
    (1000, None, 0.1, (900, 100)),  # no limit: a tenth of the split
    (64, 640, 0.1, (58, 6)),      # a limit above the split's size: a tenth of what there is, not all of it
    (64, None, 20, (44, 20)),      # a count
])
def test_validation_is_held_out_of_what_there_is_to_train_on(images, limit, val_size, expected):
    from distillctl.data.splits import holdout

    cfg = OmegaConf.structured(DatasetConfig(train_limit=limit, val_size=val_size))
    train, val = holdout(images, cfg)
    assert (len(train), len(val)) == expected
    assert not set(train.tolist()) & set(val.tolist())


def test_a_validation_count_that_takes_every_image_is_refused():
    from distillctl.data.splits import holdout

    with pytest.raises(UserError, match="leaving none to train on"):
        holdout(64, OmegaConf.structured(DatasetConfig(val_size=64)))
