"""Quantization and export: int8 size and agreement on real images, exact reloads, ONNX parity, early refusals."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from distillctl import artifacts
from distillctl.compress import int8_fx, onnx_export
from distillctl.config import BUNDLED_WEIGHTS, DatasetConfig
from distillctl.data import Batches, eval_batches, load_splits
from distillctl.errors import UserError
from distillctl.models import create_model, load_model

DATA = OmegaConf.structured(DatasetConfig)
META = {"model": "resnet20", "num_classes": 10, "kwargs": {}}
QUANT = {"method": "int8_static", "backend": "x86", "per_channel": True, "skip": [], "image_size": 32}


@pytest.fixture(scope="module")
def data():
    return load_splits(DATA)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The bundled ResNet-20, trained on the full CIFAR-10: real weights and activation ranges, with no training here."""
    return load_model(BUNDLED_WEIGHTS / "resnet20_cifar10.safetensors")[0].eval()


def calibration(data, batches: int = 4):
    """The first training images, normalized, in batches of 128."""
    return [x for x, _ in eval_batches(data.train.images[: 128 * batches], data.train.labels[: 128 * batches], 128, DATA.mean, DATA.std, torch.device("cpu"))]


def split_images(data) -> torch.Tensor:
    """The sample's 500 test images, normalized."""
    return torch.cat([x for x, _ in eval_batches(data.test.images, data.test.labels, 500, DATA.mean, DATA.std, torch.device("cpu"))])


def int8_static(model: nn.Module, data) -> nn.Module:
    prepared = int8_fx.prepare(model, torch.zeros(1, 3, 32, 32), "x86", True, [])
    int8_fx.calibrate(prepared, calibration(data))
    return int8_fx.convert(prepared)


@torch.inference_mode()
def agreement(a: nn.Module, b: nn.Module, images: torch.Tensor) -> float:
    return (a(images).argmax(1) == b(images).argmax(1)).float().mean().item()


def test_int8_is_3_5x_smaller_agrees_with_fp32_and_reloads_exactly(trained, data, tmp_path):
    import copy

    int8 = int8_static(copy.deepcopy(trained), data)
    images = split_images(data)
    assert agreement(trained, int8, images) >= 0.97

    float_path, int8_path = tmp_path / "float.safetensors", tmp_path / "int8.safetensors"
    artifacts.save_weights(float_path, trained, META)
    int8_fx.save_quantized(int8_path, int8, META, QUANT)
    assert float_path.stat().st_size / int8_path.stat().st_size >= 3.5

    reloaded, meta = load_model(int8_path)
    reloaded.eval()
    assert meta["quantization"]["method"] == "int8_static"
    with torch.inference_mode():
        assert torch.equal(reloaded(images[:64]), int8(images[:64]))
    # Stored as tensors and JSON only: the file opens with safetensors, no pickle involved.
    assert all(t.dtype in (torch.int8, torch.uint8, torch.float32, torch.int32, torch.int64) for t in artifacts.read_weights(int8_path).values())


def test_qat_prepared_model_trains_and_converts(trained, data):
    import copy

    prepared = int8_fx.prepare(copy.deepcopy(trained), torch.zeros(1, 3, 32, 32), "x86", True, [], qat=True)
    int8_fx.calibrate(prepared, calibration(data, 2))
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.001, momentum=0.9)
    prepared.train()
    for x, y in Batches(data.train.images, data.train.labels, 64, DATA.mean, DATA.std, torch.device("cpu"), 0, max_steps=5):
        loss = nn.functional.cross_entropy(prepared(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prepared.eval()
    images = split_images(data)
    int8 = int8_fx.convert(copy.deepcopy(prepared))
    # What QAT trains against (fake quantization) is what the int8 kernels compute.
    assert agreement(prepared, int8, images) >= 0.97


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_half_precision_casts_round_trip(trained, tmp_path, method):
    import copy

    cast = int8_fx.Cast(copy.deepcopy(trained), int8_fx.CAST_DTYPES[method])
    path = tmp_path / "model.safetensors"
    int8_fx.save_quantized(path, cast, META, QUANT | {"method": method})
    reloaded = load_model(path)[0].eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        assert reloaded(x).dtype == torch.float32 and torch.equal(reloaded(x), cast(x))
    assert path.stat().st_size < 0.55 * sum(p.numel() * 4 for p in trained.parameters())


def test_onnx_export_matches_pytorch_and_onnx_int8_agrees(trained, data, tmp_path):
    float_path, int8_path = tmp_path / "model.onnx", tmp_path / "int8.onnx"
    onnx_export.export(trained, float_path, 32, 18, META)
    images = split_images(data)
    with torch.inference_mode():
        torch_logits = trained(images)
    onnx_logits = onnx_export.OnnxClassifier(float_path, 2)(images)
    assert torch.allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-4)
    assert onnx_export.metadata(float_path)["model"] == "resnet20"

    calibration_batches = calibration(data)
    onnx_export.quantize_int8(float_path, int8_path, calibration_batches, per_channel=True, reduce_range=True)
    int8_logits = onnx_export.OnnxClassifier(int8_path, 2)(images)
    assert (int8_logits.argmax(1) == torch_logits.argmax(1)).float().mean() >= 0.97
    assert int8_path.stat().st_size < 0.4 * float_path.stat().st_size
    assert not list(tmp_path.glob("*.prepared.onnx"))  # the quantizer's intermediate file is cleaned up
    # 7-bit weights, which ONNX Runtime's int8 kernels need on x86 CPUs without VNNI; 8 bits when asked for.
    assert int8_weight_range(int8_path) <= 64
    full_path = tmp_path / "int8-full.onnx"
    onnx_export.quantize_int8(float_path, full_path, calibration_batches, per_channel=True, reduce_range=False)
    assert int8_weight_range(full_path) >= 127


@pytest.mark.slow
def test_bit_exports_with_its_weights_standardized_once_and_quantizes_for_onnx_runtime(data, tmp_path, monkeypatch):
    """ONNX Runtime's quantizer refused BiT: torch's exporter writes equal constants once (its group norms' unit
    scales), and a weight shared by several nodes is one it does not quantize. A small ResNetV2 of the same layers
    exports no such sharing, so the test takes BiT itself."""
    import onnx

    torch.manual_seed(0)
    model = create_model("resnetv2_50x1_bit", 10).eval()
    float_path, int8_path = tmp_path / "model.onnx", tmp_path / "int8.onnx"
    onnx_export.export(model, float_path, 32, 18, META)
    # The weights are standardized once, at export, not at every forward of the deployed model.
    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(float_path)).graph.node}
    images = split_images(data)[:64]
    with torch.inference_mode():
        torch_logits = model(images)
    assert torch.allclose(onnx_export.OnnxClassifier(float_path, 2)(images), torch_logits, atol=1e-4, rtol=1e-3)
    onnx_export.quantize_int8(float_path, int8_path, calibration(data, 1), per_channel=True, reduce_range=True)
    assert onnx_export.OnnxClassifier(int8_path, 2)(images).shape == (64, 10)
    monkeypatch.setattr(onnx_export, "unshared", lambda source, scratch: source)  # as before
    with pytest.raises(UserError, match=r"quantizer could not quantize this model \(ValueError: .*shared.*quantize=int8_static"):
        onnx_export.quantize_int8(float_path, tmp_path / "again.onnx", calibration(data, 1), per_channel=True, reduce_range=True)


def int8_weight_range(path) -> int:
    """The largest magnitude among an ONNX file's int8 initializers (its quantized weights)."""
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return max(int(abs(w.astype(int)).max()) for w in weights if w.size > 1)


class WithSiLU(nn.Module):
    """A layer the x86 int8 backend has no kernel for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.SiLU()
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_an_unsupported_layer_is_named_with_the_option_that_avoids_it():
    with pytest.raises(UserError, match=r"layer 'act' \(SiLU\).*quantize.skip=\[act\]"):
        int8_fx.check_supported(WithSiLU(), [])
    int8_fx.check_supported(WithSiLU(), ["act"])  # kept in float: accepted
    model = WithSiLU().eval()
    prepared = int8_fx.prepare(model, torch.zeros(1, 3, 16, 16), "x86", True, ["act"])
    int8_fx.calibrate(prepared, [torch.randn(8, 3, 16, 16)])
    assert int8_fx.convert(prepared)(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(UserError, match="quantize.skip names no layer.*Did you mean 'act'"):
        int8_fx.check_supported(WithSiLU(), ["actt"])


def test_an_untraceable_model_is_refused_before_work():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y if y.sum() > 0 else -y  # data-dependent control flow: torch.fx cannot trace it

    with pytest.raises(UserError, match="cannot trace.*quantize=onnx_int8"):
        int8_fx.check_supported(Branchy(), [])
