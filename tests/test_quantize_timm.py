"""int8 on timm's mobile and classic models: each one quantizes, saves and reloads with the same outputs, or is
refused before any work with one message naming the layer that stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from distillctl import artifacts
from distillctl.compress import int8_fx, onnx_export
from distillctl.config import DatasetConfig
from distillctl.data import eval_batches, load_splits
from distillctl.errors import UserError

# int8 torch.cat of inputs with different scales (ghostnet) warns on every call; its outputs are checked below.
pytestmark = pytest.mark.filterwarnings("ignore:All inputs of this cat operator")
DATA = OmegaConf.structured(DatasetConfig)
SIZE = 32
# timm name -> None (int8 works) or what the refusal must say. Each stands for a family: heads that call F.linear
# (mobilenetv3, lcnet: FX keeps packed weights as graph attributes), empty-Sequential shortcuts (ghostnet),
# inverted residuals (mobilenetv2, mnasnet, efficientnet-lite), plain residuals (resnet), grouped convs (regnet),
# and SiLU and GELU, which torch's x86 int8 backend has no kernel for (efficientnet, ViT: every such layer named at once).
TORCH_INT8 = {
    "mobilenetv3_small_050": None,
    "lcnet_050": None,
    "ghostnet_050": None,
    "mobilenetv2_050": None,
    "mnasnet_050": None,
    "efficientnet_lite0": None,
    "resnet18": None,
    "regnetx_002": None,
    "efficientnet_b0": r"^\d+ layers 'bn1.act' \(SiLU\), .* and \d+ more have no int8 kernel.*quantize=onnx_int8.*quantize.skip=\[bn1.act,",
    "vit_tiny_patch16_224": r"^12 layers 'blocks.0.mlp.act' \(GELU\), .* and 9 more have no int8 kernel.*blocks.11.mlp.act\]\.$",
}
# QAT's conversion fails on ghostnet's functional (F.conv2d) weights; the stage says so and names the other methods.
QAT_REFUSED = {"ghostnet_050": r"int8 conversion failed.*quantize=int8_static, quantize=onnx_int8"}
# One model of each outcome runs in the quick suite; the rest are slow (5-10 s each).
QUICK = {"mobilenetv3_small_050", "efficientnet_b0", "vit_tiny_patch16_224"}


def cases(names):
    return [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in names]


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    """Two batches of 64 real training images from the embedded sample, normalized."""
    train = load_splits(DATA).train
    return [x for x, _ in eval_batches(train.images[:128], train.labels[:128], 64, DATA.mean, DATA.std, torch.device("cpu"))]


def timm_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10).eval()


def quantization(method: str) -> dict:
    return {"method": method, "backend": "x86", "per_channel": True, "skip": [], "image_size": SIZE}


def saved_and_reloaded(name: str, int8: nn.Module, method: str, tmp_path) -> nn.Module:
    path = tmp_path / "model.safetensors"
    int8_fx.save_quantized(path, int8, {"model": name}, quantization(method))
    return int8_fx.load_quantized(path, timm_model(name), artifacts.read_metadata(path)["quantization"])


@pytest.mark.parametrize("name", cases(TORCH_INT8))
def test_int8_static_saves_and_reloads_or_is_refused_up_front(name, images, tmp_path):
    model = timm_model(name)
    if refusal := TORCH_INT8[name]:
        with pytest.raises(UserError, match=refusal):
            int8_fx.check_supported(model, [])
        return
    int8_fx.check_supported(model, [])
    prepared = int8_fx.prepare(model, images[0][:1], "x86", True, [])
    int8_fx.calibrate(prepared, images)
    int8 = int8_fx.convert(prepared)
    reloaded = saved_and_reloaded(name, int8, "int8_static", tmp_path)
    with torch.inference_mode():
        expected, got = int8(images[1]), reloaded(images[1])
        alone = int8(images[1][:8])
    assert expected.shape == (64, 10) and torch.isfinite(expected).all()
    assert torch.equal(got, expected)
    assert torch.equal(alone, expected[:8])


def train_steps(model: nn.Module, images: list[torch.Tensor], lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    labels = torch.arange(64) % 10
    model.train()
    for x in images:
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", cases([n for n, refusal in TORCH_INT8.items() if refusal is None]))
def test_int8_qat_trains_converts_saves_and_reloads(name, images, tmp_path):
    """As the quantize stage does it: calibrate, train fake-quantized, convert, save, reload."""
    model = timm_model(name)
    # A distilled student, not a fresh one: timm zero-initialises the last batch-norm scale of residual blocks,
    # and torch's QAT conv-bn folding divides by that scale (NaN); trained scales are not zero.
    train_steps(model, images[:1], lr=0.01)
    prepared = int8_fx.prepare(model.eval(), images[0][:1], "x86", True, [], qat=True)
    int8_fx.calibrate(prepared, images)
    train_steps(prepared, images, lr=0.01)
    if refusal := QAT_REFUSED.get(name):
        with pytest.raises(UserError, match=refusal):
            int8_fx.convert(prepared)
        return
    int8 = int8_fx.convert(prepared)
    reloaded = saved_and_reloaded(name, int8, "int8_qat", tmp_path)
    with torch.inference_mode():
        logits = int8(images[1])
        assert torch.isfinite(logits).all()
        assert torch.equal(reloaded(images[1]), logits)
        # Each image's logits are its own: batch norm runs on its running statistics, not on the batch's.
        assert torch.equal(int8(images[1][:8]), logits[:8])


@pytest.mark.parametrize("name", cases(["mobilenetv3_small_050", "efficientnet_b0", "lcnet_050", "regnetx_002", "resnet18",
                                         "edgenext_xx_small"]))
def test_onnx_int8_exports_quantizes_and_runs_in_onnx_runtime(name, images, tmp_path):
    """ONNX Runtime's int8 takes what torch's x86 backend refuses (SiLU), so efficientnet_b0 is here too; EdgeNeXt's
    graph is one ONNX Runtime's symbolic shape inference fails on."""
    model = timm_model(name)
    float_path, int8_path = tmp_path / "model.onnx", tmp_path / "int8.onnx"
    onnx_export.export(model, float_path, SIZE, 18, {"model": name})
    with torch.inference_mode():
        torch_logits = model(images[1])
    assert torch.allclose(onnx_export.OnnxClassifier(float_path, 1)(images[1]), torch_logits, atol=1e-3, rtol=1e-3)
    onnx_export.quantize_int8(float_path, int8_path, images[:1], per_channel=True, reduce_range=True)
    int8_logits = onnx_export.OnnxClassifier(int8_path, 1)(images[1])
    assert int8_logits.shape == (64, 10) and torch.isfinite(int8_logits).all()
    assert int8_path.stat().st_size < 0.6 * float_path.stat().st_size


@pytest.mark.slow
def test_onnx_int8_quantizes_efficientformerv2_and_leaves_the_working_directory_as_it_was(images, tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference cannot finish EfficientFormerV2's attention, and saves what it has into
    the working directory; the quantizer prepares the graph without it, somewhere else. Paths relative to that
    directory, as a user's are."""
    torch.manual_seed(0)
    model = timm.create_model("efficientformerv2_s0", num_classes=10, img_size=64).eval()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    batches = [nn.functional.interpolate(x, size=64, mode="bilinear") for x in images]  # its attention wants 64 px
    onnx_export.export(model, Path("model.onnx"), 64, 18, {"model": "efficientformerv2_s0"})
    onnx_export.quantize_int8(Path("model.onnx"), Path("int8.onnx"), batches[:1], per_channel=True, reduce_range=True)
    assert sorted(p.name for p in work.iterdir()) == ["int8.onnx", "model.onnx"]
    int8_logits = onnx_export.OnnxClassifier(Path("int8.onnx"), 1)(batches[1])
    assert int8_logits.shape == (64, 10) and torch.isfinite(int8_logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_050"])
def test_executorch_int8_takes_what_torch_int8_refuses(name, images, tmp_path):
    """SiLU (efficientnet) has no torch x86 int8 kernel, but XNNPACK runs it: the .pte runs in ExecuTorch's runtime."""
    from distillctl.compress import executorch_export

    model = timm_model(name)
    path = tmp_path / "model.pte"
    executorch_export.export_int8(model, path, SIZE, images[:1], per_channel=True, metadata={"model": name})
    logits = executorch_export.ExecuTorchClassifier(path)(images[1][:16])
    with torch.inference_mode():
        expected = model(images[1][:16])
    assert logits.shape == (16, 10) and torch.isfinite(logits).all()
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max() + 1e-3


@pytest.mark.slow
def test_onnx_export_of_levit_keeps_quiet_about_its_position_bias_cache(images, tmp_path, recwarn):
    """LeViT's attention caches its position biases on its first forward, and torch.export warned of every layer's
    cache, a screenful in the quantize stage's output; the exported graph computes the biases and gives the same
    logits."""
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", num_classes=10, img_size=SIZE).eval()
    onnx_export.export(model, tmp_path / "model.onnx", SIZE, 18, {"model": "levit_128s"})
    assert not [w for w in recwarn if "assigned during export" in str(w.message)]
    with torch.inference_mode():
        torch_logits = model(images[1])
    assert torch.allclose(onnx_export.OnnxClassifier(tmp_path / "model.onnx", 1)(images[1]), torch_logits, atol=1e-3, rtol=1e-3)
