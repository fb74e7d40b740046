"""The streamed loader: same classes as the resident one, standard augmentation, resume, and bad files survived."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from distillctl.config import DatasetConfig
from distillctl.data import StreamSplit, TensorSplit, load_splits
from distillctl.data.images import fit_square, open_rgb
from distillctl.errors import UserError

from conftest import write_photo_folder

MEAN, STD = [0.5] * 3, [0.25] * 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """120 training and 40 test photos at 96x72 (not square, so aspect ratio matters)."""
    return str(write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 120, "test": 40}))


def dataset_cfg(**overrides) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"workers": 0, "val_size": 20, **overrides})


def test_both_loaders_agree_on_classes_sizes_shapes_and_dtypes(photos):
    resident = load_splits(dataset_cfg(path=photos, loader="resident", image_size=48))
    streamed = load_splits(dataset_cfg(path=photos, loader="stream", image_size=48))
    assert isinstance(resident.train, TensorSplit) and isinstance(streamed.train, StreamSplit)
    assert streamed.classes == resident.classes and streamed.loader == "stream"
    for part in ("train", "val", "test"):
        a, b = getattr(resident, part), getattr(streamed, part)
        assert len(a) == len(b) and torch.equal(a.labels, b.labels)
        xa, ya = next(a.eval_batches(8, MEAN, STD, CPU))
        xb, yb = next(b.eval_batches(8, MEAN, STD, CPU))
        assert xa.shape == xb.shape == (8, 3, 48, 48) and xa.dtype == xb.dtype == torch.float32
        assert torch.equal(ya, yb)
    x, y = next(iter(streamed.train.train_batches(16, MEAN, STD, CPU, seed=0)))
    assert x.shape == (16, 3, 48, 48) and y.dtype == torch.int64


def test_streamed_batches_are_the_same_for_any_worker_count_and_after_a_resume(photos):
    def epochs(workers: int, resume_after: int | None = None) -> list[torch.Tensor]:
        split = load_splits(dataset_cfg(path=photos, loader="stream", image_size=32, workers=workers)).train
        batches = split.train_batches(25, MEAN, STD, CPU, seed=7, max_steps=2)
        out = []
        for epoch in range(3):
            if epoch == resume_after:  # a fresh process would rebuild everything and load the saved state
                state = batches.state_dict()
                batches = split.subset(torch.arange(len(split))).train_batches(25, MEAN, STD, CPU, seed=7, max_steps=2)
                batches.load_state_dict(state)
            out += [x for x, _ in batches]
        return out

    plain = epochs(0)
    assert not torch.equal(plain[0], plain[2])  # a new shuffle and new crops each epoch
    for other in (epochs(2), epochs(0, resume_after=2)):
        assert all(torch.equal(p, q) for p, q in zip(plain, other, strict=True))


@pytest.mark.parametrize("loader, workers", [("resident", 0), ("stream", 0), ("stream", 2)])
def test_both_loaders_say_where_each_batch_is_in_the_split(photos, tmp_path, loader, workers):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    bad = sorted((folder / "train").rglob("*.jpg"))[7]
    bad.write_bytes(bad.read_bytes()[:200])  # a skipped image leaves no gap between the positions and the labels
    split = load_splits(dataset_cfg(path=str(folder), loader=loader, image_size=32, workers=workers, val_size=2)).train
    batches = split.train_batches(25, MEAN, STD, CPU, seed=3)
    assert batches.split_size == len(split)
    for _ in range(2):
        seen = []
        for _, y in batches:
            assert torch.equal(split.labels[batches.positions], y)
            seen.append(batches.positions)
        seen = torch.cat(seen)
        # Every image once per epoch (the undecodable one, streamed, never).
        assert len(set(seen.tolist())) == len(seen) == len(split) - (loader == "stream")


def test_crd_keeps_its_memory_bank_on_the_streaming_loader(photos):
    from distillctl.engine.taps import FeatureTaps
    from distillctl.losses import StepOutputs, build_objective
    from distillctl.models import create_model

    split = load_splits(dataset_cfg(path=photos, loader="stream", image_size=32)).train
    batches = split.train_batches(32, MEAN, STD, CPU, seed=0, max_steps=2)
    student, teacher = create_model("resnet8", len(split.labels.unique())), create_model("resnet8", len(split.labels.unique())).eval()
    objective = build_objective({"crd": {"negatives": 16}})
    objective.setup(student, teacher, next(split.eval_batches(2, MEAN, STD, CPU))[0], batches.split_size)
    term = objective.terms["crd"]
    assert len(term.memory_student) == len(split)
    before = term.memory_student.clone()
    touched = []
    s_layers, t_layers = objective.layers()
    with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
        for x, y in batches:
            with torch.no_grad():
                t_logits = teacher(x)
            out = StepOutputs(student(x), y, t_logits, st.take(), tt.take(), 1, batches.positions, batches.split_size)
            objective(out)[0].backward()
            objective.after_step(out)
            touched.append(batches.positions)
    touched = torch.cat(touched)
    moved = (term.memory_student != before).any(1)
    assert moved[touched].all() and moved.sum() == len(touched) == 64  # the batches' rows, and only those


def test_the_stream_loader_keeps_the_rng_of_the_training_process(photos):
    split = load_splits(dataset_cfg(path=photos, loader="stream", image_size=32)).train
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(split.train_batches(30, MEAN, STD, CPU, seed=1, max_steps=1))
    assert torch.equal(torch.rand(3), expected)  # workers=0 must not reseed the trainer's dropout and mixing


def test_auto_streams_only_what_does_not_fit(photos, capsys):
    assert load_splits(dataset_cfg(path=photos, image_size=48)).loader == "resident"
    big = load_splits(dataset_cfg(path=photos, image_size=40, resident_max_gb=1e-4))
    assert big.loader == "stream"
    assert "more than dataset.resident_max_gb=0.0001: streaming" in capsys.readouterr().out


def test_aspect_ratio_is_kept_in_both_loaders():
    wide = Image.new("RGB", (90, 30), "white")
    wide.paste(Image.new("RGB", (30, 30), "red"), (30, 0))  # the centre third is red, the margins white
    square = np.asarray(fit_square(wide, 16))
    assert square.shape == (16, 16, 3) and (square[..., 0] > 200).all() and (square[..., 1] < 60).all()


def png_bytes(image: Image.Image, **save) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("L", (4, 4), 128), (128, 128, 128)),
    (lambda: Image.new("I;16", (4, 4), 65535), (255, 255, 255)),  # 16-bit white stays white, not clipped
    (lambda: Image.new("I;16", (4, 4), 32896), (128, 128, 128)),
    (lambda: Image.new("RGBA", (4, 4), (0, 0, 255, 0)), (255, 255, 255)),  # fully transparent: the white background
    (lambda: Image.new("RGBA", (4, 4), (0, 0, 255, 255)), (0, 0, 255)),
    (lambda: Image.new("RGB", (4, 4), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE), (200, 10, 10)),
])
def test_every_pixel_format_becomes_the_rgb_a_person_sees(make, expected):
    pixel = np.asarray(open_rgb(png_bytes(make())))[0, 0]
    assert np.abs(pixel.astype(int) - expected).max() <= 2


def test_cmyk_jpeg_and_exif_rotation():
    cmyk = Image.new("RGB", (4, 4), (255, 0, 0)).convert("CMYK")
    assert np.abs(np.asarray(open_rgb(png_bytes(cmyk, format="JPEG")))[1, 1].astype(int) - (255, 0, 0)).max() < 20
    tall = Image.new("RGB", (20, 10))
    exif = tall.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    assert open_rgb(png_bytes(tall, format="JPEG", exif=exif)).size == (10, 20)


def test_a_corrupt_streamed_image_is_skipped_counted_or_named(photos, tmp_path, capsys):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    bad = sorted((folder / "train").rglob("*.jpg"))[5]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-file, as an interrupted copy leaves it
    data = load_splits(dataset_cfg(path=str(folder), loader="stream", image_size=32, val_size=2))
    seen = sum(len(y) for _, y in data.train.train_batches(40, MEAN, STD, CPU, seed=0))
    assert seen == len(data.train) - 1 and data.skipped_images == 1
    assert "skipping an image that cannot be decoded" in capsys.readouterr().out
    strict = load_splits(dataset_cfg(path=str(folder), loader="stream", image_size=32, val_size=2, on_bad_image="error"))
    with pytest.raises(UserError, match=bad.name):
        list(strict.train.train_batches(40, MEAN, STD, CPU, seed=0))


@pytest.mark.parametrize("layout, message", [
    ({"train": ["cat"], "test": ["cat"]}, "a classifier needs at least two"),
    ({"train": ["cat", "dog"], "test": ["cat", "dog", "emu"]}, "the train split lacks \\(emu\\)"),
])
def test_label_sets_no_classifier_can_use_are_refused(tmp_path, layout, message):
    for split, classes in layout.items():
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / split / name / f"{i}.png")
    for loader in ("resident", "stream"):
        with pytest.raises(UserError, match=message):
            load_splits(dataset_cfg(path=str(tmp_path), loader=loader, val_size=1, image_size=8))


def test_stray_files_and_empty_class_folders_are_ignored_and_the_empty_ones_named(tmp_path, capsys):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / split / name / f"{i}.png")
        (tmp_path / split / "cat" / "notes.txt").write_text("shot on a cloudy day")
        (tmp_path / split / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "train" / "empty").mkdir()
    data = load_splits(dataset_cfg(path=str(tmp_path), loader="stream", val_size=1, image_size=8))
    assert data.classes == ["cat", "dog"] and len(data.train) + len(data.val) == 8
    assert "note: class folders without images are left out: train/empty" in capsys.readouterr().out


@pytest.mark.parametrize("loader", ["resident", "stream"])
def test_classes_without_a_test_image_are_named(tmp_path, capsys, loader):
    # class folders alone: a class of one photo keeps it for training, so nothing of it is tested
    for name, count in (("cat", 5), ("dog", 5), ("emu", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8), (50 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    data = load_splits(dataset_cfg(path=str(tmp_path), loader=loader, val_size=1, image_size=8))
    assert 2 not in data.test.labels.tolist()
    assert "note: 1 class has no test image, so test accuracy says nothing about it: emu." in capsys.readouterr().out
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "emu" / "1.png")  # a second photo: one of the two is tested
    load_splits(dataset_cfg(path=str(tmp_path), loader=loader, val_size=1, image_size=8))
    assert "no test image" not in capsys.readouterr().out


def test_validation_never_takes_the_last_training_photos_of_a_class(tmp_path):
    for name, count in (("cat", 12), ("dog", 12), ("emu", 1)):  # emu's one photo is trained on, not tested
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    for val_size in range(1, 20):  # whichever images the seeded draw picks, emu's stays in training
        data = load_splits(dataset_cfg(path=str(tmp_path), loader="resident", val_size=val_size, image_size=8))
        assert 2 in data.train.labels.tolist() and len(data.val) >= val_size - 1 and len(data.val) > 0


@pytest.mark.parametrize("loader", ["resident", "stream"])
def test_no_training_batch_leaves_batchnorm_one_image(photos, loader):
    # 97 training photos at batch 32: the last batch of one failed in BatchNorm ("Expected more than 1 value per channel")
    data = load_splits(dataset_cfg(path=photos, loader=loader, image_size=16, val_size=23))
    assert len(data.train) == 97
    norm = torch.nn.BatchNorm2d(3).train()
    sizes = [len(norm(x)) for x, _ in data.train.train_batches(32, MEAN, STD, CPU, seed=0)]
    assert sizes == [32, 32, 32]  # a different photo sits out each epoch: the shuffle differs


def test_a_last_batch_of_one_image_per_process_is_left_out_of_the_pass():
    from distillctl.data.batches import steps_per_pass

    assert [steps_per_pass(n, 32, None) for n in (1, 32, 33, 34, 64, 65)] == [1, 1, 1, 2, 2, 2]
    # two processes: a last batch of 2 gives each one image, of 3 one of them two (local_part wraps around)
    assert [steps_per_pass(n, 32, None, world=2) for n in (65, 66, 67)] == [2, 2, 3]


def test_through_the_cli_a_bad_photo_is_named_or_skipped_and_counted(photos, tmp_path, cli):
    import json
    import shutil

    from test_cli import one_error_line

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    bad = sorted((folder / "train").rglob("*.jpg"))[7]
    bad.write_bytes(b"GIF89a, then nothing")
    run = ["train-teacher", "teacher=resnet8", "teacher.checkpoint=null", f"dataset.path={folder}", "dataset.loader=stream",
           "dataset.workers=1", "dataset.image_size=32", "dataset.val_size=10", "trainer.epochs=1", "trainer.batch_size=16",
           "trainer.threads=1", "run_dir=runs/photos"]
    assert bad.name in one_error_line(cli(*run, "dataset.on_bad_image=error"))
    result = cli(*run)
    assert result.code == 0, result.text
    metrics = json.loads((tmp_path / "runs/photos/teacher/metrics.json").read_text())
    assert metrics["loader"] == "stream" and metrics["skipped_images"] == 1 and metrics["train_images"] == 110  # rows listed; one skipped


def write_shards(root, per_split: dict[str, int], shards: int = 2):
    """WebDataset tar shards (<key>.jpg + <key>.cls) of real CIFAR-10 images: the layout that feeds many GPUs."""
    import datasets
    import tarfile

    from distillctl.data.sources import EMBEDDED_DIR

    for split, count in per_split.items():
        table = datasets.load_dataset(str(EMBEDDED_DIR), split=split).select(range(count))
        for shard in range(shards):
            with tarfile.open(root / f"{split}-{shard:05d}.tar", "w") as tar:
                for i in range(shard, count, shards):
                    jpeg = io.BytesIO()
                    table[i]["img"].save(jpeg, format="JPEG")
                    for suffix, data in (("jpg", jpeg.getvalue()), ("cls", str(table[i]["label"]).encode())):
                        info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return root


def test_webdataset_shards_feed_both_loaders(tmp_path):
    shards = str(write_shards(tmp_path, {"train": 120, "test": 40}))
    resident = load_splits(dataset_cfg(path=shards, loader="resident"))
    streamed = load_splits(dataset_cfg(path=shards, loader="stream"))
    assert resident.classes == streamed.classes == [str(i) for i in range(10)]
    assert len(resident.train) + len(resident.val) == 120 and len(streamed.test) == 40
    assert torch.equal(resident.test.labels, streamed.test.labels)
    x, y = next(iter(streamed.train.train_batches(16, MEAN, STD, CPU, seed=0)))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64


def test_the_image_folder_group_asks_for_its_folder(cli):
    from test_cli import one_error_line

    assert "dataset.path is not set: add dataset.path=DIR" in one_error_line(cli("distill", "recipe=edge_mobilenet", "trainer.threads=1"))


@pytest.mark.skipif(not hasattr(__import__("signal"), "sigwaitinfo"), reason="macOS and Windows cannot tell a signal's sender")
def test_a_loader_worker_leaves_ctrl_c_a_hangup_and_a_schedulers_sigterm_to_the_trainer_and_goes_on_its_own(photos):
    import signal
    import subprocess
    import time

    from distillctl.data.stream import EpochOrder

    split = load_splits(dataset_cfg(path=photos, loader="stream", image_size=32, workers=1)).train
    loader = split.loader(EpochOrder(split.rows, None), 8, False, torch.device("cpu"))
    batches = iter(loader)
    next(batches)
    (worker,) = batches._workers  # the DataLoader's own record of its processes
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from another process, as SLURM's
    os.kill(worker.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process in the foreground
    os.kill(worker.pid, signal.SIGHUP)  # and so does a shell's SIGHUP when its terminal closes
    time.sleep(0.5)
    assert worker.is_alive() and len(next(batches)[1]) == 8
    os.kill(worker.pid, signal.SIGTERM)  # from the training process: what the DataLoader sends to shut it down
    worker.join(timeout=10)
    assert not worker.is_alive() and worker.exitcode == 0
    del batches


@pytest.mark.slow
def test_ctrl_c_stops_a_streamed_run_at_a_step_with_its_state_saved_and_its_workers_gone(photos, tmp_path, cli):
    import json
    import signal
    import subprocess
    import sys
    import time

    run = ["train-teacher", "teacher=resnet8", "teacher.checkpoint=null", f"dataset.path={photos}", "dataset.loader=stream",
           "dataset.workers=2", "dataset.image_size=48", "dataset.val_size=10", "trainer.epochs=12", "trainer.batch_size=8",
           "trainer.threads=1", "run_dir=runs/ctrl_c"]
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the training process and its workers. And
    # Ctrl-C not ignored, as in a terminal, however the tests were started: a shell starts a background job (CI's, say)
    # with SIGINT ignored, its children inherit that, and distillctl then leaves it ignored.
    job = subprocess.Popen([sys.executable, "-m", "distillctl", *run], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "runs/ctrl_c/teacher/train.log"
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and "epoch 1/12" in log.read_text()):
            assert time.monotonic() < deadline and job.poll() is None, "no epoch within 2 minutes"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGINT)
        out, _ = job.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while True:  # the workers go with the training process
            try:
                os.killpg(job.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "processes of the run are left behind"
            time.sleep(0.1)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, out
    assert "Ctrl-C: stopping after this step" in out and "resume=true" in out
    assert re.search(r"stopped by Ctrl-C (in epoch \d+ at step \d+ of \d+|after epoch \d+ of 12), with the training state saved", out), out
    assert "Traceback" not in out and "DataLoader worker" not in out, out
    resumed = cli(*run, "resume=true")
    assert resumed.code == 0, resumed.text
    history = (tmp_path / "runs/ctrl_c/teacher/history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == list(range(1, 13))
