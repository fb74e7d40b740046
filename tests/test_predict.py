"""`distillctl predict`: a model on a user's own image files answers as it does on its test split, bad files are
skipped or named, and the README's code for applications gives predict's answers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, write_photo_folder
from test_cli import one_error_line

BUNDLED_TEACHER = REPO / "distillctl/weights/resnet20_cifar10.safetensors"
THREADS = "trainer.threads=1"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    """The embedded sample's first 200 test images as PNG files (lossless) in <class>/ folders."""
    import datasets

    from distillctl.data.sources import EMBEDDED_DIR

    root = tmp_path_factory.mktemp("pngs")
    table = datasets.load_dataset(str(EMBEDDED_DIR), split="test").select(range(200))
    names = table.features["label"].names
    for i, row in enumerate(table):
        folder = root / names[row["label"]]
        folder.mkdir(exist_ok=True)
        row["img"].save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos at 96x72 (not square: how they are cut matters) in train/ and test/ class folders."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 120, "test": 40})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_answers_as_evaluate_does_on_the_same_images(pngs, cli, tmp_path):
    evaluated = cli("evaluate", "dataset.test_limit=200", "~expect", THREADS)  # the teacher alone: no student yet
    assert evaluated.code == 0, evaluated.text
    teacher = json.loads((tmp_path / "runs/quickstart/report/metrics.json").read_text())["models"]["teacher"]
    result = cli("predict", f"predict.input={pngs}", "predict.model=teacher", THREADS)
    assert result.code == 0, result.text
    # The bundled teacher predates recorded preprocessing: the recipe's settings stand in, and the log says so.
    assert "from the recipe's dataset settings" in result.out and "labelled by their folders" in result.out
    summary = json.loads((tmp_path / "runs/quickstart/predict/teacher.json").read_text())
    assert summary["images"] == 200 and summary["skipped_images"] == 0 and summary["labelled"]
    assert (summary["top1"], summary["top5"]) == pytest.approx((teacher["top1"], teacher["top5"]), abs=1e-6)  # the same 200 answers
    rows = read_csv(tmp_path / "runs/quickstart/predict/teacher.csv")
    assert len(rows) == 200 and list(rows[0])[:3] == ["path", "class_1", "prob_1"]
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    assert sum(int(r["correct"]) for r in rows) == round(teacher["top1"] * 200)
    assert all(int(r["correct"]) == (r["class_1"] == r["label"]) for r in rows)
    assert all(1 >= float(r["prob_1"]) >= float(r["prob_2"]) >= float(r["prob_5"]) >= 0 for r in rows)
    # With one class listed, top-1 is counted once.
    one = cli("predict", f"predict.input={pngs}", "predict.model=teacher", "predict.topk=1", "predict.output=top1.csv", THREADS)
    assert one.code == 0, one.text
    assert json.loads((tmp_path / "top1.json").read_text())["top1"] == pytest.approx(teacher["top1"], abs=1e-6)
    # A folder as the CSV is refused before the model runs over the images, not after.
    folder = cli("predict", f"predict.input={pngs}", "predict.model=teacher", f"predict.output={tmp_path}", THREADS)
    assert folder.code == 2 and "is a folder: give the CSV file's path" in folder.text and "images prepared" not in folder.out


def test_images_in_a_folder_named_after_no_class_are_predicted_and_left_out_of_the_score(pngs, cli, tmp_path):
    # A test folder with a class the model never learned scored nothing at all: one stray folder unlabelled them all.
    mixed = tmp_path / "mixed"
    shutil.copytree(pngs, mixed)
    (mixed / "zebra").mkdir()
    for photo in sorted((pngs / "horse").iterdir())[:3]:
        shutil.copy(photo, mixed / "zebra" / photo.name)
    shutil.copy(sorted((pngs / "cat").iterdir())[0], mixed / "loose.png")
    run = ["predict", "predict.model=teacher", THREADS]
    assert cli(*run, f"predict.input={pngs}", "predict.output=all.csv").code == 0
    result = cli(*run, f"predict.input={mixed}", "predict.output=mixed.csv")
    assert result.code == 0, result.text
    said = " ".join(result.out.split())  # lines wrap at the console's width
    assert "200 labelled by their folders and scored, 4 in the folder itself, zebra/ (not named after one of the model's 10 classes)" in said
    labelled, summary = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("all", "mixed"))
    assert (summary["images"], summary["scored_images"], summary["unlabelled_folders"]) == (204, 200, [".", "zebra"])
    assert (summary["top1"], summary["top5"]) == (labelled["top1"], labelled["top5"])  # the same 200 images scored
    rows = {Path(r["path"]).relative_to(mixed).parts[0]: r for r in read_csv(tmp_path / "mixed.csv")}
    assert rows["zebra"]["label"] == rows["zebra"]["correct"] == rows["loose.png"]["label"] == ""
    assert rows["cat"]["label"] == "cat" and "top-1 (200 labelled)" in said


def test_a_streamed_model_sees_photos_as_its_test_split_was_and_bad_files_are_skipped_or_named(photos, cli, tmp_path):
    from distillctl.artifacts import read_metadata

    trained = cli("train-teacher", "teacher=resnet8", "teacher.checkpoint=null", f"dataset.path={photos}", "dataset.loader=stream",
                  "dataset.workers=1", "dataset.image_size=32", "dataset.interpolation=bicubic", "dataset.val_size=10",
                  "trainer.epochs=1", "trainer.batch_size=16", THREADS, "run_dir=runs/photos")
    assert trained.code == 0, trained.text
    metrics = json.loads((tmp_path / "runs/photos/teacher/metrics.json").read_text())
    recorded = read_metadata(tmp_path / "runs/photos/teacher/model.safetensors")["preprocess"]
    assert recorded == {"image_size": 32, "resize": "crop", "crop_pct": 0.875, "interpolation": "bicubic"}

    folder = tmp_path / "new"
    shutil.copytree(photos / "test", folder)
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 a JPEG cut short")
    # The test photos again, in their class folders, with a broken file among them.
    predict = ["predict", "predict.model=teacher", "teacher.checkpoint=null", "run_dir=runs/photos", "dataset.workers=1", THREADS,
               "trainer.eval_batch_size=16"]  # several batches, decoded by a worker process
    result = cli(*predict, f"predict.input={folder}")
    assert result.code == 0, result.text
    assert "skipping an image that cannot be decoded" in result.out and "broken.jpg" in result.out
    summary = json.loads((tmp_path / "runs/photos/predict/teacher.json").read_text())
    assert (summary["images"], summary["skipped_images"]) == (40, 1) and summary["skipped_files"][0].startswith(str(folder / "dog/broken.jpg"))
    assert summary["preprocess"] == recorded and summary["preprocess_from"] == "as recorded in the model file"
    # The same photos, the same transform as the test split: the same accuracy as training measured.
    assert summary["top1"] == pytest.approx(metrics["test_top1"], abs=1e-6)

    written = (tmp_path / "runs/photos/predict/teacher.csv").read_bytes()
    message = one_error_line(cli(*predict, f"predict.input={folder}", "dataset.on_bad_image=error"))
    assert "broken.jpg" in message and "on_bad_image=skip" in message
    assert (tmp_path / "runs/photos/predict/teacher.csv").read_bytes() == written  # the last good CSV is kept

    single = cli(*predict, f"predict.input={sorted((folder / 'cat').iterdir())[0]}", "predict.output=one.csv", "predict.topk=3")
    assert single.code == 0, single.text
    (row,) = read_csv(tmp_path / "one.csv")
    assert "label" not in row and list(row)[-2:] == ["class_3", "prob_3"]


def readme_application_code(runtime: str = "onnxruntime") -> str:
    """The README's Python block for applications that run the model in `runtime` (onnxruntime or torch)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using the distilled model"):text.index("## Distillation methods")]
    return next(code for code in re.findall(r"```python\n(.*?)```", section, re.S) if f"import {runtime}" in code)


def run_readme_code(model_file: Path, photo: Path, runtime: str = "onnxruntime") -> str:
    """What the README's application code for `runtime` prints for one photo."""
    placeholder = {"onnxruntime": "runs/quickstart/export/model.onnx", "torch": "runs/quickstart/pruned/model.safetensors"}[runtime]
    code = readme_application_code(runtime).replace(placeholder, str(model_file)).replace("photo.jpg", str(photo))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    return printed.getvalue().strip()


def test_the_readme_application_code_gives_predicts_answers(photos, cli, tmp_path):
    from distillctl.compress import onnx_export
    from distillctl.data import preprocess
    from distillctl.models import architecture_metadata, load_model

    model, meta = load_model(BUNDLED_TEACHER)
    onnx_file = tmp_path / "teacher.onnx"
    onnx_export.export(model, onnx_file, 32, 18, architecture_metadata(meta) | {"preprocess": preprocess.recorded(32, 0.875, "bilinear", "resident")})
    images = photos / "test"
    result = cli("predict", f"predict.input={images}", f"predict.model={onnx_file}", THREADS)
    assert result.code == 0, result.text
    rows = read_csv(tmp_path / "runs/quickstart/predict/teacher.csv")
    assert len(rows) == 40
    assert [run_readme_code(onnx_file, Path(r["path"])) for r in rows] == [r["class_1"] for r in rows]


@pytest.mark.slow
def test_the_readme_pytorch_code_gives_predicts_answers_for_float_and_int8_models(photos, cli, tmp_path):
    run = [f"dataset.path={photos}", "dataset.image_size=32", "trainer.epochs=1", "trainer.batch_size=32", "dataset.val_size=10",
           "teacher=resnet8", "teacher.checkpoint=null", "quantize.source=student", "quantize.calibration_batches=1", THREADS,
           "run_dir=runs/app"]
    for stage in ("train-teacher", "distill", "quantize"):
        made = cli(stage, *run)
        assert made.code == 0, made.text
    for stage in ("student", "int8_static"):
        model_file = tmp_path / "runs/app" / stage / "model.safetensors"
        result = cli("predict", f"predict.input={photos / 'test'}", f"predict.model={model_file}", "predict.output=p.csv", THREADS)
        assert result.code == 0, result.text
        rows = read_csv(tmp_path / "p.csv")
        assert len(rows) == 40 and [run_readme_code(model_file, Path(r["path"]), "torch") for r in rows] == [r["class_1"] for r in rows]


@pytest.mark.parametrize("pre", [
    {"image_size": 32, "resize": "square", "crop_pct": 0.875, "interpolation": "bilinear"},
    {"image_size": 32, "resize": "crop", "crop_pct": 0.875, "interpolation": "bilinear"},
    {"image_size": 48, "resize": "crop", "crop_pct": 0.95, "interpolation": "bicubic"},
    {"image_size": 224, "resize": "crop", "crop_pct": 0.875, "interpolation": "bicubic"},
])
def test_the_readme_prepares_each_pixel_as_distillctl_does(photos, pre):
    from distillctl.data import preprocess

    namespace: dict = {}
    code = readme_application_code()
    exec(compile(code[:code.index("session = ")], "README.md", "exec"), namespace)
    photo = Image.open(sorted((photos / "test").rglob("*.jpg"))[0]).convert("RGB")
    for size in [(96, 72), (72, 96), (50, 50), (333, 201), (31, 47)]:
        image = photo.resize(size, Image.Resampling.BICUBIC)
        theirs = np.round(namespace["prepare"](image, pre) * 255).astype(np.uint8)
        ours = preprocess.eval_transform(pre)(image).permute(1, 2, 0).numpy()
        assert theirs.shape == ours.shape == (pre["image_size"], pre["image_size"], 3)
        assert np.array_equal(theirs, ours), (size, pre)


def test_predicting_on_the_training_folder_is_flagged_and_on_its_test_split_not(tmp_path):
    from omegaconf import OmegaConf

    from distillctl.stages.predict import holds_training_images

    split = tmp_path / "photos"
    for part in ("train/cat", "test/cat"):
        (split / part).mkdir(parents=True)
    classes_alone = tmp_path / "flat"
    (classes_alone / "cat").mkdir(parents=True)
    data = OmegaConf.create({"path": str(split), "train_split": "train"})
    assert [holds_training_images(split / p, data) for p in ("", "train", "train/cat", "test", "test/cat")] == [True, True, True, False, False]
    assert not holds_training_images(tmp_path / "elsewhere", data)
    alone = OmegaConf.create({"path": str(classes_alone), "train_split": "train"})
    assert holds_training_images(classes_alone / "cat", alone)  # a class folder mixes training and test photos
    assert not holds_training_images(split, OmegaConf.create({"path": "embedded", "train_split": "train"}))


def test_a_torch_checkpoint_as_the_model_is_refused_naming_what_reads_it(tmp_path):
    # It was opened as safetensors ("header too large; it may be corrupt"), though it records no classes anyway.
    import torch

    from distillctl.errors import UserError
    from distillctl.model_files import chosen_model

    for name in ("teacher.pth", "checkpoint.pth.tar", "last.ckpt"):
        torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / name)
        with pytest.raises(UserError, match=rf"is a torch checkpoint, .* evaluate them as teacher.checkpoint=.*{name} teacher.name=MODEL"):
            chosen_model(str(tmp_path / name), None, None)
