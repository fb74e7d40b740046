"""Pretrained timm teachers offline: weights from a local file the test writes, head replaced, fine-tuned, distilled."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from distillctl import artifacts
from distillctl.errors import UserError
from distillctl.models import create_model, pretrained_normalization

from conftest import write_photo_folder
from test_cli import one_error_line

ARCH = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """What timm would download: the architecture's 1000-class weights, here written locally."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / f"{ARCH}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(ARCH).state_dict().items()}, str(path))
    return path


def test_a_local_pretrained_file_loads_with_a_new_head(imagenet_file):
    source = timm.create_model(ARCH)
    source.load_state_dict(load_file(str(imagenet_file)))
    model = create_model(ARCH, 7, pretrained_file=str(imagenet_file))
    assert model.get_classifier().out_features == 7
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)  # the backbone is the file's
    assert pretrained_normalization(model) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_a_file_for_another_architecture_or_a_cifar_model_is_refused(imagenet_file):
    with pytest.raises(UserError, match="does not hold weights for 'resnet18'"):
        create_model("resnet18", 10, role="teacher", pretrained_file=str(imagenet_file))
    with pytest.raises(UserError, match="teacher.checkpoint=PATH"):
        create_model("resnet20", 10, role="teacher", pretrained_file=str(imagenet_file))


def test_fine_tune_a_pretrained_teacher_on_your_images_then_distill(imagenet_file, tmp_path, cli):
    photos = write_photo_folder(tmp_path / "photos", {"train": 100, "test": 40})
    common = [f"dataset.path={photos}", "dataset.val_size=10", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
              "trainer.batch_size=16", "trainer.threads=1", "run_dir=runs/mine"]
    assert "does not exist" in one_error_line(cli("train-teacher", f"teacher.name={ARCH}", "teacher.checkpoint=null",
                                                  "teacher.pretrained_file=missing.safetensors", *common))
    tuned = cli("train-teacher", f"teacher.name={ARCH}", "teacher.checkpoint=null", f"teacher.pretrained_file={imagenet_file}", *common)
    assert tuned.code == 0, tuned.text
    meta = artifacts.read_metadata(tmp_path / "runs/mine/teacher/model.safetensors")
    assert meta["num_classes"] == 10 and meta["mean"] == [0.485, 0.456, 0.406]  # fine-tuned as it was pretrained
    distilled = cli("distill", f"teacher.name={ARCH}", "teacher.checkpoint=null", f"teacher.pretrained_file={imagenet_file}",
                    "student=resnet8", *common)
    assert distilled.code == 0, distilled.text
    metrics = json.loads((tmp_path / "runs/mine/student/metrics.json").read_text())
    assert metrics["teacher"].endswith("teacher/model.safetensors")


@pytest.mark.slow
def test_the_edge_recipe_end_to_end_on_a_tiny_stand_in(tmp_path, cli):
    """README "Your own images" with small stand-ins: photos, a timm teacher and student from local weight files."""
    photos = write_photo_folder(tmp_path / "photos", {"train": 160, "test": 40})
    files = {}
    for role, arch in (("teacher", "resnet10t"), ("student", ARCH)):
        files[role] = tmp_path / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in timm.create_model(arch).state_dict().items()}, str(files[role]))
    result = cli("pipeline", "recipe=edge_mobilenet", f"dataset.path={photos}", "dataset.image_size=64", "dataset.val_size=16",
                 "teacher.name=resnet10t", f"teacher.pretrained_file={files['teacher']}", f"student.name={ARCH}",
                 f"student.pretrained_file={files['student']}", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                 "trainer.batch_size=16", "prune.finetune_epochs=1", "quantize.calibration_batches=1", "trainer.threads=1")
    assert result.code == 0, result.text[-3000:]
    report = json.loads((tmp_path / "runs/edge_mobilenet/report/metrics.json").read_text())
    assert {"teacher", "student", "pruned", "onnx_int8"} <= set(report["models"])
    assert report["models"]["onnx_int8"]["smaller_than_teacher"] > 1


def test_the_data_settings_follow_the_model_that_starts_from_published_weights():
    from omegaconf import OmegaConf

    from distillctl.pretrained_data import pretrained_setting

    def setting(key):
        return pretrained_setting(key, _root_=root)

    root = OmegaConf.create({"teacher": {"name": "vit_tiny_patch16_224", "pretrained": False, "pretrained_file": None, "checkpoint": None},
                             "student": {"name": "resnet10t", "pretrained": True, "pretrained_file": None}})
    assert setting("image_size") == 176  # the student's own weights: the teacher starts from scratch
    root.teacher.pretrained_file = "vit_tiny.safetensors"  # offline weights count as published ones
    assert (setting("image_size"), setting("crop_pct"), setting("mean"), setting("std")) == (224, 0.9, [0.5] * 3, [0.5] * 3)
    root.teacher.pretrained_file, root.student.pretrained = None, False
    assert (setting("image_size"), setting("interpolation"), setting("crop_pct")) == (224, "bicubic", 0.875)  # timm's defaults
    with pytest.raises(UserError, match="image_size, interpolation"):
        setting("input_size")


def test_an_image_folder_is_read_as_the_teacher_was_pretrained_unless_the_command_line_says_otherwise(cli):
    import yaml

    shown = cli("distill", "recipe=edge_mobilenet", "dataset.path=photos", "dataset.image_size=256", "--cfg", "job", "--resolve")
    assert shown.code == 0, shown.text
    dataset = yaml.safe_load(shown.out)["dataset"]
    # resnet50's default weights (a1_in1k) were trained bicubic with a 0.95 centre crop; the size given wins
    assert (dataset["image_size"], dataset["interpolation"], dataset["crop_pct"]) == (256, "bicubic", 0.95)
    assert dataset["mean"] == [0.485, 0.456, 0.406]


VIT = "vit_tiny_patch16_224"


def test_a_vit_built_for_another_size_is_refused_in_one_line_and_resized_on_request(tmp_path, tiny, cli):
    pretrained = tmp_path / f"{VIT}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(VIT).state_dict().items()}, str(pretrained))
    with pytest.raises(UserError, match=r"cannot take 32x32 images \(Input height \(32\) doesn't match model \(224\)\.\): "
                                        r"build it for 32 px with \+\+student.kwargs.img_size=32, or set dataset.image_size=224\.$"):
        create_model(VIT, 10, role="student", pretrained_file=str(pretrained), image_size=32)
    small = create_model(VIT, 10, role="student", pretrained_file=str(pretrained), image_size=32, img_size=32)
    assert small.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # the file's 14x14 grid of embeddings, resized to 2x2
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # A trained 224-px teacher file cannot be fed 32-px images: distill says so before training.
    artifacts.save_weights(tmp_path / "vit_teacher.safetensors", timm.create_model(VIT, num_classes=10),
                           {"model": VIT, "num_classes": 10, "kwargs": {}})
    line = one_error_line(cli("distill", "recipe=tiny", "teacher.checkpoint=vit_teacher.safetensors", "trainer.threads=1"))
    assert "cannot take 32x32 images" in line and "set dataset.image_size=224, or train a teacher for 32 px" in line


def test_a_cnn_too_deep_for_small_images_is_refused_with_the_size_it_was_built_for():
    with pytest.raises(UserError, match=r"teacher 'inception_v3' cannot take 32x32 images \(.*Kernel size.*\): set dataset.image_size=299\.$"):
        create_model("inception_v3", 10, role="teacher", image_size=32)
    assert create_model("inception_v3", 10, role="teacher", image_size=96).get_classifier().out_features == 10
