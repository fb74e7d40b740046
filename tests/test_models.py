"""The CIFAR zoo in timm's registry, parameter counts from the literature, clear errors for bad names."""

from __future__ import annotations

import pytest
import timm
import torch

from distillctl.errors import UserError
from distillctl.models import count_parameters, create_model

# Parameter counts in millions as published (He et al. 2016; Zagoruyko & Komodakis 2016; Tian et al. 2020).
LITERATURE = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet56": 0.85, "resnet110": 1.7,
    "resnet8x4": 1.2, "resnet32x4": 7.4, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.2, "wrn_16_1": 0.175,
}


@pytest.mark.parametrize(("name", "millions"), LITERATURE.items())
def test_parameter_counts_match_the_literature(name, millions):
    model = timm.create_model(name, num_classes=10)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, rel=0.04)


def test_models_run_with_the_data_sets_class_count():
    model = create_model("resnet20", num_classes=100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_any_timm_model_works_as_a_student():
    model = create_model("mobilenetv3_small_050", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_names_the_closest():
    with pytest.raises(UserError, match="Did you mean 'resnet20'"):
        create_model("resnet21", num_classes=10)


def test_pretrained_cifar_model_explains_there_are_no_weights():
    with pytest.raises(UserError, match="checkpoint=PATH"):
        create_model("resnet56", num_classes=10, pretrained=True)


@pytest.mark.parametrize(
    "command, overrides, refused",
    [
        ("distill", ["teacher.pretrained=true"], False),  # distill loads the bundled teacher: the flag is unused
        ("pipeline", ["teacher.pretrained=true"], False),  # so does the pipeline, which trains no teacher here
        ("pipeline", ["teacher.pretrained=true", "teacher.checkpoint=null"], True),
        ("evaluate", ["student.pretrained=true"], False),  # evaluate builds the student from its own file
        ("search", ["student.pretrained=true"], True),
        ("train-teacher", ["teacher.pretrained_file=x.safetensors", "teacher.checkpoint=null"], True),
    ],
)
def test_pretrained_zoo_models_are_refused_only_where_the_command_builds_them(command, overrides, refused):
    from distillctl import composition, config, preflight

    config.register()
    cfg = composition.compose_config(composition.prepare_overrides(overrides))
    if refused:
        with pytest.raises(UserError, match="CIFAR"):
            preflight.zoo_weights(command, cfg)
    else:
        preflight.zoo_weights(command, cfg)  # returns: nothing refused


def test_unreachable_pretrained_weights_name_the_full_keys(monkeypatch, tmp_path):
    # The real online path (timm fetching from the Hub), offline and with an empty cache: one message naming the fix.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"^teacher\.pretrained=true: .*`hf download .*, or give teacher\.pretrained_file=PATH"):
        create_model("mobilenetv3_small_050", num_classes=10, pretrained=True, role="teacher")


def test_a_foreign_safetensors_file_with_plain_string_metadata_loads(tmp_path):
    from safetensors.torch import save_file

    from distillctl.artifacts import read_metadata
    from distillctl.models import load_model

    model = create_model("resnet8", num_classes=10)
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"})  # as timm/HF write
    assert read_metadata(path) == {"format": "pt"}
    loaded, _ = load_model(path, "resnet8", 10)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def training_script_checkpoints(state: dict) -> dict[str, object]:
    """The same weights as other training scripts save them."""
    import argparse

    args = argparse.Namespace(model="resnet8", lr=0.1, epochs=[1, 2], amp=None)  # their command-line arguments
    prefixed = lambda prefix: {prefix + key: value for key, value in state.items()}  # noqa: E731
    return {
        "timm train.py": {"epoch": 3, "arch": "resnet8", "state_dict": state, "version": 2, "args": args},
        "torchvision references": {"model": state, "optimizer": {}, "epoch": 3, "args": args},
        "PyTorch tutorial": {"epoch": 3, "model_state_dict": state, "loss": 0.5},
        "DDP": prefixed("module."),
        "torch.compile": prefixed("_orig_mod."),
        # a LightningModule's checkpoint: the network under its attribute, beside the module's other parts
        "Lightning": {"state_dict": {**prefixed("model."), "criterion.weight": torch.ones(10)}, "global_step": 7},
    }


def test_a_teacher_saved_by_another_training_script_loads_as_it_is(tmp_path):
    from distillctl import artifacts

    model = create_model("resnet8", num_classes=10).eval()
    for layout, checkpoint in training_script_checkpoints(model.state_dict()).items():
        path = tmp_path / "teacher.pth"
        torch.save(checkpoint, path)
        loaded = create_model("resnet8", num_classes=10).eval()
        artifacts.load_weights(path, loaded)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())), layout


def test_a_checkpoints_arguments_are_read_without_running_code_and_a_partial_prefix_does_not_fit(tmp_path):
    import argparse
    import os

    from distillctl import artifacts

    class Payload:  # unpickling this would run code
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    model = create_model("resnet8", num_classes=10)
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(hook=Payload())}, tmp_path / "hostile.pth")
    with pytest.raises(UserError, match="pickled Python objects, which are never loaded"):
        artifacts.load_weights(tmp_path / "hostile.pth", model)
    assert not (tmp_path / "PWNED").exists()
    # Under `module.` but one tensor short: not taken for this model, and the mismatch is named as before.
    state = {f"module.{key}": value for key, value in model.state_dict().items() if key != "fc.bias"}
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(UserError, match="does not fit this model"):
        artifacts.load_weights(tmp_path / "short.pth", model)


def crafted(tmp_path, **metadata):
    """A real resnet8 weights file whose metadata says whatever an attacker wants."""
    from distillctl import artifacts

    path = tmp_path / "crafted.safetensors"
    model = create_model("resnet8", num_classes=10)
    artifacts.save_tensors(path, {k: v.contiguous() for k, v in model.state_dict().items()}, {"model": "resnet8", "num_classes": 10, **metadata})
    return path


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"kwargs": {"checkpoint_path": "/etc/passwd"}}, "'checkpoint_path' is not an architecture argument"),
        ({"kwargs": {"pretrained_cfg_overlay": {"file": "x"}}}, "is not an architecture argument"),
        ({"kwargs": {"depth": 10**8}}, "depth=100000000"),
        ({"kwargs": {"global_pool": "https://evil/x"}}, "global_pool"),
        ({"model": "../../../tmp/evil"}, "model name"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"mean": [float("nan")] * 3}, "mean"),
        ({"shapes": "conv1"}, "shapes is not a mapping"),
        ({"shapes": {"fc": {"type": "Linear", "in": 64, "out": 10**7}}}, "not a pruned"),
    ],
)
def test_a_crafted_checkpoint_is_refused_before_anything_is_built(tmp_path, metadata, expected):
    from distillctl.models import load_model

    with pytest.raises(UserError) as refused:
        load_model(crafted(tmp_path, **metadata))
    assert expected in str(refused.value)


def test_an_honest_checkpoint_with_architecture_arguments_loads(tmp_path):
    from distillctl.models import load_model

    model, meta = load_model(crafted(tmp_path, kwargs={}))
    assert meta["model"] == "resnet8" and count_parameters(model) > 0


@pytest.mark.parametrize(("name", "published"), [("cait_xxs24_224", 2.5), ("pit_ti_224", None)])
def test_macs_are_counted_for_models_that_hand_their_class_token_to_a_block(name, published):
    # torch's counter failed on these inside inference mode (its module tracker hooks inputs that need a gradient).
    from distillctl.evaluation import measure

    model = timm.create_model(name)
    gmacs = measure.macs(model, 224) / 1e9
    assert gmacs > 0.1
    if published:  # CaiT's paper (Touvron et al. 2021, table 3): XXS-24 at 224 px is 2.5 GFLOPs, counted as MACs
        assert gmacs == pytest.approx(published, rel=0.03)
    assert all(p.requires_grad for p in model.parameters())  # training after the count still updates every weight


def test_a_model_is_refused_on_a_data_set_of_other_classes():
    from pathlib import Path

    from distillctl.models.metadata import require_classes

    meta = {"num_classes": 3, "classes": ["cat", "dog", "frog"]}
    require_classes(meta, ["cat", "dog", "frog"], "student", Path("m.safetensors"))
    with pytest.raises(UserError, match=r"student in m.safetensors predicts 3 classes \(cat, dog, frog\) but the data set has 2"):
        require_classes(meta, ["cat", "dog"], "student", Path("m.safetensors"))
    # The same count in another order: logit 1 would be scored as the data set's 'frog'.
    with pytest.raises(UserError, match="'dog' where the data set has 'frog', 'frog' where the data set has 'dog'"):
        require_classes(meta, ["cat", "frog", "dog"], "student", Path("m.safetensors"))
    require_classes({"num_classes": 3}, ["a", "b", "c"], "teacher", Path("foreign.safetensors"))  # no names: the count is all
