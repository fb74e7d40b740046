"""Every model of the CIFAR zoo goes through what the pipeline does to a student: forward, structured pruning
(saved and rebuilt from its recorded shapes) and int8 (saved and rebuilt bit for bit), as timm tests its registry."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from distillctl import artifacts
from distillctl.cifar_zoo import ZOO_NAMES
from distillctl.compress import int8_fx
from distillctl.compress.channels import macs_and_params, prune_structured
from distillctl.compress.shapes import layer_shapes
from distillctl.config import DatasetConfig
from distillctl.data import eval_batches, load_splits
from distillctl.models import create_model, load_model

DATA = OmegaConf.structured(DatasetConfig)
EXAMPLE = torch.zeros(1, 3, 32, 32)
INT8 = {"method": "int8_static", "backend": "x86", "per_channel": True, "skip": [], "image_size": 32}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Sixteen real test images of the embedded sample, normalized."""
    splits = load_splits(DATA)
    return next(eval_batches(splits.test.images, splits.test.labels, 16, DATA.mean, DATA.std, torch.device("cpu")))[0]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_forwards_prunes_and_quantizes(name, images, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    with torch.inference_mode():
        logits = model(images)
    assert logits.shape == (16, 10) and torch.isfinite(logits).all()

    pruned, macs_ratio, params_ratio = prune_structured(model, EXAMPLE, None, 0.25, "l1", False)
    assert macs_ratio < 0.9 and params_ratio < 0.9
    path = tmp_path / "pruned.safetensors"
    artifacts.save_weights(path, pruned.eval(), {"model": name, "num_classes": 10, "kwargs": {}, "shapes": layer_shapes(pruned)})
    rebuilt = load_model(path)[0].eval()
    with torch.inference_mode():
        assert torch.equal(rebuilt(images), pruned(images))
    assert macs_and_params(rebuilt, EXAMPLE)[0] < macs_and_params(model, EXAMPLE)[0]

    int8_fx.check_supported(model, [])
    prepared = int8_fx.prepare(model, EXAMPLE, "x86", True, [])
    int8_fx.calibrate(prepared, [images])
    int8 = int8_fx.convert(prepared)
    path = tmp_path / "int8.safetensors"
    int8_fx.save_quantized(path, int8, {"model": name, "num_classes": 10, "kwargs": {}}, INT8)
    reloaded = load_model(path)[0]
    with torch.inference_mode():
        out = int8(images)
        assert out.shape == (16, 10) and torch.isfinite(out).all()
        assert torch.equal(reloaded(images), out)
    assert path.stat().st_size < 0.35 * sum(p.numel() * 4 for p in model.parameters())
