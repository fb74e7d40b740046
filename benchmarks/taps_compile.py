"""Why feature methods lose the GPU's graph speed: do the forward-hook taps that AT and FitNet read make
torch.compile recompile, break the graph, or re-record CUDA graphs every step? (issue 12, item 1)

    python benchmarks/taps_compile.py --device cpu --mode aot_eager       # dynamo alone (minutes-free on a CPU)
    python benchmarks/taps_compile.py --device cuda --mode reduce-overhead --steps 50   # CUDA graphs, on a GPU

A ResNet-56 teacher and a ResNet-20 student stepped the way engine/fit.py steps them (teacher under inference_mode,
its features cloned each step, the student's features in an attention-transfer loss), three ways: without taps (KD),
with distillctl's own FeatureTaps (forward hooks) on their three stages, and with the same features returned as
outputs of an FX-traced forward (torchvision's create_feature_extractor: no hooks, nothing kept outside the graph),
the form issue 12 proposes. One GPU run of this script says which of the two graph-capture keeps, and so whether
FeatureTaps must become forward outputs. Prints the frames dynamo compiled (two without recompiles: the teacher's
forward and the student's), its graphs and graph breaks, and the images/s after the warm-up steps. `--why` turns
on torch's recompile, graph-break and CUDA-graph logs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distillctl.engine.taps import FeatureTaps  # noqa: E402
from distillctl.models.cifar_resnet import CifarResNet  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3"]


def attention(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis's spatial attention map, flattened and normalized."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1))


# How the features reach the loss: not at all (KD), through forward hooks, or as outputs of a traced forward.
VARIANTS = {"none": "KD (no taps)", "hooks": "AT, taps by hooks", "outputs": "AT, taps as outputs"}


def with_outputs(model: torch.nn.Module, layers: list[str]) -> torch.nn.Module:
    """`model` traced by FX into a module that returns {layer: feature, ..., "logits": logits}; it shares the
    model's parameters."""
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model, return_nodes={**{name: name for name in layers}, "fc": "logits"})


def measure(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """Frames compiled, graphs, graph breaks and steady images/s of `args.steps` training steps."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    device = torch.device(args.device)
    torch.manual_seed(0)
    student, teacher = CifarResNet(20).to(device), CifarResNet(56).to(device).eval()
    compile_args = {"backend": args.mode} if args.mode in ("aot_eager", "eager") else {"mode": args.mode}
    layers = [] if variant == "none" else LAYERS
    hooked = layers if variant == "hooks" else []
    student_net, teacher_net = (with_outputs(m, layers) for m in (student, teacher)) if variant == "outputs" else (student, teacher)
    student_fn, teacher_fn = torch.compile(student_net, **compile_args), torch.compile(teacher_net, **compile_args)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    with FeatureTaps(student, hooked, "the student") as s_taps, FeatureTaps(teacher, hooked, "the teacher") as t_taps:
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            if args.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                t_logits, t_feats = split(teacher_fn(x), t_taps)
            t_logits, t_feats = t_logits.clone(), {k: v.clone() for k, v in t_feats.items()}
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits, s_feats = split(student_fn(x), s_taps)
            loss = F.cross_entropy(logits.float(), y) + F.kl_div(F.log_softmax(logits.float() / 4, 1), F.softmax(t_logits.float() / 4, 1),
                                                              reduction="batchmean")
            loss = loss + sum((attention(s_feats[k]) - attention(t_feats[k])).pow(2).mean() for k in layers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = counters["stats"]
    # Two compiled frames are expected (the teacher's inference forward and the student's): more mean recompiles.
    return {"frames_compiled": counters["frames"]["total"], "graphs": stats["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()), "images_per_s": round(args.steps * args.batch / seconds, 1)}


def split(output, taps: FeatureTaps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and features from a forward: its own outputs when it returns them, else the hooks' catch."""
    if isinstance(output, dict):
        return output["logits"], {k: v for k, v in output.items() if k != "logits"}
    return output, taps.take()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", default="aot_eager", help="aot_eager, eager (backends) or default, reduce-overhead (modes)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--why", action="store_true", help="torch's recompile, graph-break and CUDA-graph logs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.why:
        torch._logging.set_logs(recompiles=True, graph_breaks=True, cudagraphs=True, perf_hints=True)
    for variant in args.variants:
        row = measure(args, variant)
        print(f"{VARIANTS[variant]:20} {args.device} {args.mode}: {row}", flush=True)


if __name__ == "__main__":
    main()
