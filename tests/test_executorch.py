"""ExecuTorch: the trained bundled teacher as an int8 XNNPACK program, run in ExecuTorch's own runtime on this CPU
and compared with PyTorch on real test images."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from distillctl.compress import executorch_export, int8_fx
from distillctl.config import BUNDLED_WEIGHTS, DatasetConfig
from distillctl.data import eval_batches, load_splits
from distillctl.errors import UserError
from distillctl.models import load_model

DATA = OmegaConf.structured(DatasetConfig)


@pytest.fixture(scope="module")
def data():
    return load_splits(DATA)


def batches(split, count: int, size: int = 64):
    return [x for x, _ in eval_batches(split.images[:count], split.labels[:count], size, DATA.mean, DATA.std, torch.device("cpu"))]


def test_int8_program_runs_in_executorch_and_agrees_with_pytorch(data, tmp_path):
    model, meta = load_model(BUNDLED_WEIGHTS / "resnet20_cifar10.safetensors")
    model.eval()
    path = tmp_path / "model.pte"
    seen = executorch_export.export_int8(model, path, 32, batches(data.train, 256), per_channel=True, metadata={"model": meta["model"]})
    assert seen == 256
    images = torch.cat(batches(data.test, 200))
    program = executorch_export.ExecuTorchClassifier(path)
    with torch.inference_mode():
        float_logits, int8_logits = model(images), program(images)
    assert int8_logits.shape == (200, 10)
    assert (int8_logits.argmax(1) == float_logits.argmax(1)).float().mean() >= 0.95
    # int8 weights: a quarter of the float32 parameters' bytes, plus the program's own few kilobytes.
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.4 * float_bytes
    assert executorch_export.metadata(path) == {"model": "resnet20"}


def test_a_damaged_program_is_one_message(tmp_path):
    path = tmp_path / "model.pte"
    path.write_bytes(b"not a program" * 10)
    with pytest.raises(UserError, match="ExecuTorch could not load .* it may be corrupt"):
        executorch_export.ExecuTorchClassifier(path)


def test_qnnpack_arm_kernels_quantize_and_reload(data, tmp_path):
    """torch's ARM int8 backend (quantize.backend=qnnpack, the default on ARM) also runs here on x86."""
    model, _ = load_model(BUNDLED_WEIGHTS / "resnet20_cifar10.safetensors")
    prepared = int8_fx.prepare(model.eval(), torch.zeros(1, 3, 32, 32), "qnnpack", True, [])
    int8_fx.calibrate(prepared, batches(data.train, 256))
    int8 = int8_fx.convert(prepared)
    quantization = {"method": "int8_static", "backend": "qnnpack", "per_channel": True, "skip": [], "image_size": 32}
    int8_fx.save_quantized(tmp_path / "m.safetensors", int8, {}, quantization)
    from distillctl import artifacts

    stored = artifacts.read_metadata(tmp_path / "m.safetensors")["quantization"]
    reloaded = int8_fx.load_quantized(tmp_path / "m.safetensors", load_model(BUNDLED_WEIGHTS / "resnet20_cifar10.safetensors")[0], stored)
    images = torch.cat(batches(data.test, 200))
    with torch.inference_mode():
        assert torch.equal(reloaded(images), int8(images))
        assert (int8(images).argmax(1) == model(images).argmax(1)).float().mean() >= 0.9
    assert int8_fx.resolve_backend("auto") in ("x86", "qnnpack") and int8_fx.resolve_backend("fbgemm") == "fbgemm"
