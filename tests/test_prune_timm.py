"""Structured pruning on timm's edge students: each reaches half its MACs, saves and reloads with the same outputs,
or is refused with one message saying how far it goes or what to use instead."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from distillctl import artifacts
from distillctl.compress import channels
from distillctl.compress.channels import prune_structured
from distillctl.compress.shapes import layer_shapes
from distillctl.config import DatasetConfig
from distillctl.data import eval_batches, load_splits
from distillctl.errors import UserError
from distillctl.models import create_model, load_model

SIZE = 64  # the smallest size every model here takes (MobileViT's 2x2 patches, EfficientFormerV2's attention)
# timm name -> None (prunes to half its MACs) or what the refusal says. Each stands for a family: depthwise
# inverted residuals (mobilenetv3/v4, lcnet, tinynet/efficientnet), ghost modules (ghostnetv2), re-parameterizable
# branches (mobileone, repvit, fastvit), convolution + attention hybrids (mobilevit, mobilevitv2, efficientvit,
# edgenext), ConvNeXt, RegNet, ResNet, and transformers with attention of their own (levit, whose linear layers'
# batch norms are BatchNorm1d; efficientformerv2: torch-pruning 1.6's index mappings grow without end,
# VainF/Torch-Pruning#525, ~50 s to the 2 GB bound; a torch-pruning that fixes it fails here: then expect None).
# Layers that split their channels by sizes written in their code (selective kernels, Res2Net, CSPNet, MixNet's mixed
# convolutions) broke torch-pruning's step or the pruned model's forward: they are now left whole and the rest
# pruned, which reaches half the MACs except in MixNet, whose mixed convolutions carry three quarters of them.
PRUNABLE = {
    "mobilenetv3_small_050": None,
    "mobilenetv4_conv_small": None,
    "lcnet_050": None,
    "tinynet_e": None,
    "ghostnetv2_100": None,
    "mobileone_s0": None,
    "repvit_m0_9": None,
    "fastvit_t8": None,
    "mobilevit_xxs": None,
    "mobilevitv2_050": None,
    "efficientvit_b0": None,
    "edgenext_xx_small": None,
    "convnext_atto": None,
    "regnetx_002": None,
    "resnet18": None,
    "skresnet18": None,
    "res2net50_14w_8s": None,
    "cspresnet50": None,
    "levit_128s": None,
    "mixnet_s": r"^could not bring the MACs under 50%.*reached is 7\d\.\d%.*The layers coupled to a split of channels stayed whole",
    "efficientformerv2_s0": r"^structured pruning of this EfficientFormerV2 ran away inside torch-pruning \(past the 2\.0 GB of memory it may add, and still growing\): .*Use prune=unstructured for this model",
    "rexnet_100": r"^structured pruning of this RexNet ran away inside torch-pruning \(more than 10 s in one call of DependencyGraph\.get_pruning_group, and not finishing\): .*Use prune=unstructured for this model",
}
# RexNet's sliced residuals send one channel group's search on without end in flat memory; the bound on one search
# (2 minutes) is cut to 10 s here, still 30 times RexNet's other groups.
SEARCH_S = {"rexnet_100": 10.0}
KWARGS = {"levit_128s": {"img_size": SIZE}, "efficientformerv2_s0": {"img_size": SIZE}}
QUICK = {"mobilenetv3_small_050", "mobilevit_xxs", "skresnet18"}


def cases(names):
    return [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in names]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Eight real test images of the embedded sample, upscaled to SIZE and normalized."""
    data = OmegaConf.structured(DatasetConfig)
    data.image_size = SIZE
    test = load_splits(data).test
    return next(eval_batches(test.images[:8], test.labels[:8], 8, data.mean, data.std, torch.device("cpu")))[0]


@pytest.mark.parametrize("name", cases(PRUNABLE))
def test_a_timm_student_prunes_to_half_its_macs_and_reloads_or_is_refused_in_one_line(name, images, tmp_path, monkeypatch):
    if name in SEARCH_S:
        monkeypatch.setattr(channels, "GROUP_SEARCH_S", SEARCH_S[name])
    torch.manual_seed(0)
    model = create_model(name, 10, **KWARGS.get(name, {})).eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    if refusal := PRUNABLE[name]:
        with pytest.raises(UserError, match=refusal):
            prune_structured(model, example, 0.5, None, "l1", False)
        return
    pruned, macs_ratio, params_ratio = prune_structured(model, example, 0.5, None, "l1", False)
    assert 0.47 <= macs_ratio <= 0.5 and params_ratio < 0.9
    path = tmp_path / "pruned.safetensors"
    artifacts.save_weights(path, pruned.eval(), {"model": name, "num_classes": 10, "kwargs": KWARGS.get(name, {}),
                                                  "shapes": layer_shapes(pruned)})
    rebuilt = load_model(path)[0].eval()
    with torch.inference_mode():
        logits = pruned(images)
        assert logits.shape == (8, 10) and torch.isfinite(logits).all()
        assert torch.allclose(rebuilt(images), logits, atol=1e-5)
