"""Which timm students structured pruning takes to half their MACs: one model of each family pruned by
`prune_structured` as the prune stage calls it, saved and reloaded, or the one-line refusal it ends with.

    python benchmarks/prune_families.py                          # all (about 25 minutes on 1 thread), then the table
    python benchmarks/prune_families.py --models rexnet_100,dla34   # measure these again, keep the rest

Each model runs in a process of its own (untrained, 10 classes, 64 px: the families' structure, not their accuracy,
decides what pruning can do; a few need their image size given). The 2-minute bound on one channel-group search and
the 2 GB bound on memory are the prune stage's own. Results per model go to docs/figures/prune_families_cpu.json,
and the table in docs/results.md is made from that file. TinyViT is measured a second time with half of each attention
layer's heads removed first (prune.head_ratio=0.5), which its floor names.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

from results_doc import replace_block

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIZE = 64
SIZED = {"img_size": SIZE}
# (timm name, what it stands for, arguments): the edge students first, then the classic CNNs, then the transformers.
MODELS = [
    ("mobilenetv3_small_050", "MobileNetV3", {}), ("mobilenetv4_conv_small", "MobileNetV4", {}),
    ("mobilenetv2_050", "MobileNetV2", {}), ("mobilenetv1_100", "MobileNetV1", {}), ("lcnet_050", "LCNet", {}),
    ("tinynet_e", "TinyNet / EfficientNet", {}), ("efficientnet_lite0", "EfficientNet-Lite", {}),
    ("tf_efficientnetv2_b0", "EfficientNetV2", {}), ("mnasnet_050", "MnasNet", {}), ("fbnetv3_b", "FBNetV3", {}),
    ("hardcorenas_a", "HardCoReNAS", {}), ("mobilenet_edgetpu_100", "MobileNet-EdgeTPU", {}),
    ("ghostnet_100", "GhostNet", {}), ("ghostnetv2_100", "GhostNetV2", {}), ("repghostnet_050", "RepGhostNet", {}),
    ("mobileone_s0", "MobileOne", {}), ("repvit_m0_9", "RepViT", {}), ("fastvit_t8", "FastViT", {}),
    ("mixnet_s", "MixNet", {}), ("rexnet_100", "RexNet", {}), ("hgnetv2_b0", "HGNetV2", {}), ("starnet_s1", "StarNet", {}),
    ("mobilevit_xxs", "MobileViT", {}), ("mobilevitv2_050", "MobileViTv2", {}), ("efficientvit_b0", "EfficientViT (MIT)", {}),
    ("efficientvit_m0", "EfficientViT (MSRA)", SIZED), ("edgenext_xx_small", "EdgeNeXt", {}), ("levit_128s", "LeViT", SIZED),
    ("efficientformerv2_s0", "EfficientFormerV2", SIZED), ("tiny_vit_5m_224", "TinyViT", {}), ("pvt_v2_b0", "PVTv2", {}),
    ("resnet18", "ResNet", {}), ("resnetv2_50", "ResNetV2 (pre-activation)", {}), ("seresnext26d_32x4d", "SE-ResNeXt", {}),
    ("skresnet18", "SKNet", {}), ("res2net50_14w_8s", "Res2Net", {}), ("resnest14d", "ResNeSt", {}),
    ("cspresnet50", "CSPResNet", {}), ("cs3darknet_s", "CSPDarkNet (cs3)", {}), ("dpn68", "DPN", {}),
    ("densenet121", "DenseNet", {}), ("dla34", "DLA", {}), ("regnetx_002", "RegNetX", {}), ("regnety_002", "RegNetY", {}),
    ("convnext_atto", "ConvNeXt", {}), ("inception_next_atto", "InceptionNeXt", {}), ("poolformerv2_s12", "PoolFormerV2", {}),
    ("repvgg_a0", "RepVGG", {}), ("vgg11_bn", "VGG", {}), ("xception41", "Xception", {}), ("inception_v3", "Inception-v3", {}),
    ("hrnet_w18_small", "HRNet", {}), ("ese_vovnet19b_dw", "VoVNet", {}), ("nf_resnet26", "NF-ResNet", {}),
    ("nf_regnet_b0", "NF-RegNet", {}), ("dm_nfnet_f0", "NFNet", {}), ("resnetv2_50x1_bit", "BiT (ResNetV2)", {}),
    ("deit_tiny_patch16_224", "ViT / DeiT", SIZED), ("pit_ti_224", "PiT", SIZED), ("cait_xxs24_224", "CaiT", SIZED),
    ("swin_tiny_patch4_window7_224", "Swin", {"img_size": SIZE, "window_size": 2}), ("mvitv2_tiny", "MViTv2", SIZED),
    ("coat_lite_tiny", "CoaT", SIZED), ("twins_svt_small", "Twins", SIZED), ("xcit_nano_12_p16_224", "XCiT", SIZED),
    ("davit_tiny", "DaViT", {}), ("focalnet_tiny_srf", "FocalNet", {}), ("maxvit_nano_rw_256", "MaxViT", SIZED),
    ("eva02_tiny_patch14_224", "EVA-02", {"img_size": 56}), ("mixer_s16_224", "MLP-Mixer", SIZED),
    ("resmlp_12_224", "ResMLP", SIZED), ("gmlp_s16_224", "gMLP", SIZED),
]
LARGER = {"inception_v3": 96}  # takes no img_size argument, and its stem leaves nothing of 64 px
# Measured again with a share of each attention layer's heads removed first: attention with a position bias per head
# holds TinyViT at a floor while its heads stay (compress/bias_attention.py cuts them).
HEADS = {"tiny_vit_5m_224": 0.5}
RESULTS = REPO / "docs/figures/prune_families_cpu.json"
# The refusal's kind, from its wording in compress/channels.py.
KINDS = [
    (r"could not bring the MACs under 50%.*reached is ([\d.]+%)", "floor: {0} of its MACs"),
    (r"past the .* GB of memory", "ran away: stopped at the memory bound"),
    (r"more than \d+ s in one call", "ran away: a channel-group search without end, stopped after 2 minutes"),
    (r"searches of more than (\d+) channel groups went on past (\d+) s", "ran away: more than {0} channel-group searches without end, each stopped after {1} s"),
    (r"failed inside torch-pruning \((\w+)", "torch-pruning fails ({0})"),
    (r"parameter '(.*)' \(in a (\w+)\) is one structured pruning cannot resize", "every channel group reaches `{0}` (in a {1}), which cannot be resized"),
    (r"every channel group of this \w+ reaches a split of its channels", "every channel group reaches a split of its channels (attention heads, a GLU's halves)"),
]


def kind(refusal: str) -> str:
    """The refusal in a few words."""
    return next((text.format(*m.groups()) for pattern, text in KINDS if (m := re.search(pattern, refusal))), refusal[:100])


def prune_one(name: str, kwargs: dict, size: int, head_ratio: float = 0.0) -> dict:
    """Prune `name` to half its MACs in this process (`head_ratio`: that share of its heads first), save and reload it;
    what came of it, and in how many seconds."""
    import torch

    from distillctl import artifacts
    from distillctl.compress.channels import prune_structured
    from distillctl.compress.shapes import layer_shapes
    from distillctl.errors import UserError
    from distillctl.models import create_model, load_model

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = create_model(name, 10, **kwargs).eval()
    began = time.perf_counter()
    try:
        pruned, macs, params = prune_structured(model, torch.zeros(1, 3, size, size), 0.5, None, "l1", False,
                                                head_ratio=head_ratio)
    except UserError as error:
        return {"refusal": str(error), "seconds": time.perf_counter() - began}
    seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pruned.safetensors"
        artifacts.save_weights(path, pruned.eval(), {"model": name, "num_classes": 10, "kwargs": kwargs,
                                                      "shapes": layer_shapes(pruned)})
        images = torch.randn(2, 3, size, size)
        with torch.inference_mode():
            logits = pruned(images)
            same = torch.allclose(load_model(path)[0].eval()(images), logits, atol=1e-4)
    return {"macs": macs, "params": params, "same_after_reload": same, "classes": logits.shape[-1], "seconds": seconds}


def in_subprocess(name: str, kwargs: dict, threads: int, head_ratio: float = 0.0) -> dict:
    """prune_one in a fresh process (a runaway's memory goes with it); whether the split fallback's note was printed,
    whether the residual stream was left whole too, and how many channel groups were left whole because their search
    did not end."""
    size = kwargs.get("img_size", LARGER.get(name, SIZE))
    done = subprocess.run([sys.executable, __file__, "--one", name, json.dumps(kwargs), str(size), "--threads", str(threads),
                           "--head-ratio", str(head_ratio)], capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"refusal": f"crashed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", "seconds": None, "careful": False}
    unending = re.search(r"note: (\d+) channel groups left whole", done.stdout)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "careful": "note: torch-pruning could not resize" in done.stdout,
            "stream": "note: that failed too" in done.stdout, "unending": int(unending.group(1)) if unending else 0}


def headed(name: str) -> str:
    """The results' key for `name` measured with HEADS's share of its heads removed first."""
    return f"{name} head_ratio={HEADS[name]}" if name in HEADS else name


def row(family: str, name: str, result: dict) -> str:
    """One line of the table."""
    if "refusal" in result:
        said = kind(result["refusal"])
    else:
        said = f"{result['macs']:.0%} of its MACs, {result['params']:.0%} of its parameters"
        said += "" if result["same_after_reload"] else "; RELOADED OUTPUTS DIFFER"
        said += "" if result.get("classes", 10) == 10 else f"; CLASSES CUT TO {result['classes']}"
    if result["careful"] and ("macs" in result or said.startswith("floor")):
        stream = ", and its residual stream," if result.get("stream") else ""
        said += f" (layers coupled to a split of channels{stream} left whole)"
    if result.get("unending") and ("macs" in result or said.startswith("floor")):
        said += f" ({result['unending']} channel groups whose search does not end left whole)"
    seconds = "-" if result["seconds"] is None else f"{result['seconds']:.0f}"
    return f"| {family} | `{name}` | {said} | {seconds} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "KWARGS", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--models", help="comma-separated timm names to measure again (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--doc", default=str(REPO / "docs/results.md"))
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(prune_one(args.one[0], json.loads(args.one[1]), int(args.one[2]), args.head_ratio)))
        return
    wanted = set(args.models.split(",")) if args.models else {name for name, _, _ in MODELS}
    unknown = wanted - {name for name, _, _ in MODELS}
    if unknown:
        raise SystemExit(f"not in MODELS: {', '.join(sorted(unknown))}")
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.models else {}
    for name, _, kwargs in MODELS:
        if name in wanted:
            saved[name] = {**in_subprocess(name, kwargs, args.threads), "measured": date.today().isoformat(),
                           "threads": args.threads}
            print(name, saved[name], flush=True)
            if name in HEADS:
                key = headed(name)
                saved[key] = {**in_subprocess(name, kwargs, args.threads, HEADS[name]), "measured": date.today().isoformat(),
                              "threads": args.threads}
                print(key, saved[key], flush=True)
            RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    rows = [row(family, name, saved[name]) for name, family, _ in MODELS if name in saved]
    reached, families = sum("macs" in saved[name] for name, _, _ in MODELS if name in saved), len(rows)
    rows += [row(f"{family}, `prune.head_ratio={HEADS[name]}`", name, saved[headed(name)])
             for name, family, _ in MODELS if name in HEADS and headed(name) in saved]
    dates = sorted({result["measured"] for result in saved.values()})
    threads = sorted({result["threads"] for result in saved.values()})
    body = "\n".join([
        f"Measured {' to '.join(dict.fromkeys([dates[0], dates[-1]]))} with `python benchmarks/prune_families.py` "
        f"(torch-pruning 1.6.1; every model's result in docs/figures/{RESULTS.name}): one untrained model of each timm "
        f"family pruned to half its MACs by `prune_structured`, as `distillctl prune` does, at {SIZE} px (Inception-v3: "
        f"{LARGER['inception_v3']}), saved and reloaded with the same outputs and its 10 classes. {reached} of {families} "
        "reach the target; "
        "the others end with the refusal named, in one line that names `prune=unstructured` (which works for every "
        f"model). The last row{'s' if len(HEADS) > 1 else ''} removed that share of each attention layer's heads first. "
        f"Seconds on {' or '.join(map(str, threads))} thread{'' if threads == [1] else 's'} of this 2-core CPU.",
        "",
        "| family | model | what `prune.target_macs_ratio=0.5` gives | seconds |",
        "|---|---|---|---:|",
        *rows,
    ])
    print(replace_block(Path(args.doc), "prune-families", "Structured pruning across timm families (CPU)", body))


if __name__ == "__main__":
    main()
