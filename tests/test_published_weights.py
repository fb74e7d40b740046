"""`pretrained=true` and `teacher.checkpoint=pretrained` are checked before the data load: weights that timm does not
publish, or that an offline machine lacks, are named with what to do; weights in the local cache pass, from the
Hub's cache and from torch's hub cache alike."""

from __future__ import annotations

import huggingface_hub
import pytest
import timm
import torch

from distillctl import composition, config, preflight
from distillctl.errors import UserError
from distillctl.models import check_model_name, create_model
from distillctl.models.published_weights import cached_file, check_published

from test_hub_access import write_hub_cache


@pytest.fixture
def offline_caches(monkeypatch, tmp_path):
    """An offline machine with empty Hugging Face and torch hub caches under tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads both once, when imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf/hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch/hub"))
    return tmp_path


def test_offline_hub_weights_are_refused_until_they_are_in_the_cache(offline_caches):
    name = "mobilenetv3_small_050"
    with pytest.raises(UserError, match=r"not in the local cache.*`hf download timm/mobilenetv3_small_050\.lamb_in1k`"):
        check_published(name, "student")
    write_hub_cache(offline_caches / "hf", timm.models.get_pretrained_cfg(name).hf_hub_id, {"model.safetensors": b"weights"})
    check_published(name, "student")  # returns: the cache holds them
    assert cached_file(name).read_bytes() == b"weights"


def test_weights_timm_fetches_from_a_url_are_looked_for_in_torchs_hub_cache(offline_caches):
    name = "legacy_seresnet18"  # published as a release asset, not on the Hub
    with pytest.raises(UserError, match=r"Download https://\S+seresnet18-\w+\.pth once into \S+torch/hub/checkpoints"):
        check_published(name, "teacher")
    torch.manual_seed(0)
    published = timm.create_model(name).state_dict()
    checkpoints = offline_caches / "torch/hub/checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(published, checkpoints / timm.models.get_pretrained_cfg(name).url.rsplit("/", 1)[1])
    check_published(name, "teacher")
    # timm's own loader finds the same file: the check and the load agree on where the weights live
    model = create_model(name, num_classes=10, pretrained=True, role="teacher")
    assert torch.equal(model.state_dict()["layer0.conv1.weight"], published["layer0.conv1.weight"])


def test_a_model_without_published_weights_is_refused_online_too_naming_ones_with_weights(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match=r"publishes no weights for 'coatnet_0_224'\. Did you mean 'coatnet_0_rw_224\.sw_in1k'"):
        check_published("coatnet_0_224", "student")
    # create_model says the same where it is called without the preflight, instead of "offline?"
    with pytest.raises(UserError, match="publishes no weights"):
        create_model("coatnet_0_224", num_classes=10, pretrained=True, role="student")


def test_an_unknown_tag_is_refused_with_the_architectures_tags():
    with pytest.raises(UserError, match=r"no tag 'a1_in1' for resnet18\. Did you mean 'a1_in1k'.*Its tags: a1_in1k, "):
        check_model_name("resnet18.a1_in1")
    with pytest.raises(UserError, match="It has none: leave the tag out"):
        check_model_name("coatnet_0_224.x")
    check_model_name("resnet18.tv_in1k")  # returns


@pytest.mark.parametrize(
    "command, overrides, refused",
    [
        ("pipeline", ["student=mobilenetv3_small_050", "student.pretrained=true"], "student.pretrained=true"),
        ("pipeline", ["teacher.name=resnet18.a1_in1k", "teacher.checkpoint=pretrained"], "teacher.checkpoint=pretrained"),
        ("train-teacher", ["teacher.name=resnet18", "teacher.checkpoint=null", "teacher.pretrained=true"], "teacher.pretrained"),
        # the teacher comes from its file here: teacher.pretrained is never read, so nothing is fetched
        ("pipeline", ["teacher.name=resnet18", "teacher.pretrained=true"], None),
        ("evaluate", ["student=mobilenetv3_small_050", "student.pretrained=true"], None),
    ],
)
def test_the_preflight_asks_for_the_weights_only_where_the_command_fetches_them(offline_caches, command, overrides, refused):
    config.register()
    cfg = composition.compose_config(composition.prepare_overrides(["recipe=quickstart", *overrides]))
    if refused:
        with pytest.raises(UserError, match=rf"^{refused}.*not in the local cache"):
            preflight.published_weights_at_hand(command, cfg)
    else:
        preflight.published_weights_at_hand(command, cfg)


def test_every_missing_weights_file_is_named_at_once(offline_caches):
    # the recipe fine-tunes an ImageNet teacher and distills an ImageNet student: an offline user fetches both in one go
    config.register()
    cfg = composition.compose_config(composition.prepare_overrides(["recipe=edge_mobilenet"]))
    with pytest.raises(UserError, match=r"^teacher\.pretrained=true: .*'resnet50'.* student\.pretrained=true: .*'mobilenetv3_large_100'"):
        preflight.published_weights_at_hand("pipeline", cfg)
