"""Training throughput: the tool's own code path against a minimal hand-written PyTorch loop.

    python benchmarks/throughput.py --device cpu --steps 20 --rounds 3
    python benchmarks/throughput.py --device cuda --steps 200 --rounds 5 --channels-last

Both sides train the same models (ResNet-56 teacher, ResNet-20 student) with the same batch (128), augmentation
(random crop with 4-pixel padding, horizontal flip), optimizer (SGD, momentum 0.9, wd 5e-4) and loss
(0.1 CE + 0.9 KD at T=4), on CIFAR-10 decoded into memory beforehand. Runs alternate tool / hand so that drift
of the machine hits both alike; each figure is the median images/s over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distillctl.config import DatasetConfig, OptimizerConfig, SchedulerConfig, TrainerConfig  # noqa: E402
from distillctl.data import Batches, load_splits  # noqa: E402
from distillctl.engine.fit import Trainee, fit  # noqa: E402
from distillctl.engine.optim import build_optimizer, build_schedule  # noqa: E402
from distillctl.losses import build_objective  # noqa: E402
from distillctl.models import create_model  # noqa: E402

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_loop(padded, labels, teacher, student, device, steps, batch, channels_last, precision) -> float:
    """What a user would write in twenty lines (teacher=None: plain training); returns images/s over `steps` steps."""
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    ar = torch.arange(32, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(labels), (batch,), device=device)  # sampling with replacement: cheaper than a permutation
        dy, dx = torch.randint(9, (batch, 1), device=device), torch.randint(9, (batch, 1), device=device)
        cols = dx + ar
        cols = torch.where(torch.rand(batch, 1, device=device) < 0.5, cols.flip(1), cols)
        x = padded[idx[:, None, None], (dy + ar)[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).float()
        x = (x - mean) / std
        x = x if channels_last else x.contiguous()
        y = labels[idx]
        # Teacher first, as the tool does: the student's saved activations then stay in cache for its
        # backward pass (17% faster on the CPU than the other order; docs/performance.md).
        t = None
        if teacher is not None:
            with torch.no_grad(), amp:
                t = teacher(x)
        with amp:
            s = student(x)
        loss = F.cross_entropy(s.float(), y)
        if t is not None:
            kd = F.kl_div(F.log_softmax(s.float() / 4, 1), F.log_softmax(t.float() / 4, 1), reduction="batchmean", log_target=True) * 16
            loss = 0.1 * loss + 0.9 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def tool_loop(images, labels, teacher, student, device, steps, batch, channels_last, precision, compile_, compile_mode="default") -> float:
    """The same work through distillctl's Batches, objective, optimizer, schedule and fit()."""
    data = OmegaConf.structured(DatasetConfig)
    trainer = OmegaConf.structured(
        TrainerConfig(epochs=2, batch_size=batch, max_steps_per_epoch=steps, channels_last=channels_last, precision=precision, compile=str(compile_).lower(), compile_mode=compile_mode, log_every=50)
    )
    batches = Batches(images, labels, batch, data.mean, data.std, device, seed=0, channels_last=channels_last, max_steps=steps)
    objective = build_objective({"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}} if teacher is not None else {"ce": {}})
    optimizer = build_optimizer(student.parameters(), OmegaConf.structured(OptimizerConfig), 0.05, device)
    scheduler = build_schedule(optimizer, OmegaConf.structured(SchedulerConfig(name="step", milestones=[150])), 0.05, steps, 2)
    out = Path("/tmp/distillctl-throughput")
    result = fit(Trainee(student, objective, optimizer, scheduler, {}), batches, lambda m: 0.0, trainer, out, "tool", teacher=teacher)
    # The second epoch is steady state: compilation, graph capture and first-step allocations fall in the first.
    return result.history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--tasks", nargs="+", default=["distill", "teacher"])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    precision = "bf16" if device.type == "cuda" else "fp32"
    data = load_splits(OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"path": args.data, "val_size": 0}))
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    # The hand loop gets its padded copy for free, as a user's own preprocessing would.
    padded = F.pad(images.permute(0, 3, 1, 2), (4, 4, 4, 4)).permute(0, 2, 3, 1).contiguous()
    memory = torch.channels_last if args.channels_last else torch.contiguous_format

    def models():
        torch.manual_seed(0)
        teacher = create_model("resnet56", 10).to(device, memory_format=memory).eval().requires_grad_(False)
        student = create_model("resnet20", 10).to(device, memory_format=memory)
        return teacher, student

    rows = {}
    for task in args.tasks:
        figures: dict[str, list[float]] = {"tool": [], "hand": []}
        for r in range(args.rounds + 1):  # round 0 warms up (cudnn autotune, allocator, compile)
            steps = args.warmup if r == 0 else args.steps
            teacher, student = models()
            if task == "distill":
                tool = tool_loop(images, labels, teacher, student, device, steps, args.batch, args.channels_last, precision, args.compile, args.compile_mode)
                teacher, student = models()
                hand = hand_loop(padded, labels, teacher, student, device, steps, args.batch, args.channels_last, precision)
            else:
                tool = tool_loop(images, labels, None, teacher.requires_grad_(True).train(), device, steps, args.batch, args.channels_last, precision, args.compile, args.compile_mode)
                teacher, _ = models()
                hand = hand_loop(padded, labels, None, teacher.requires_grad_(True).train(), device, steps, args.batch, args.channels_last, precision)
            if r:
                figures["tool"].append(tool)
                figures["hand"].append(hand)
        tool_m, hand_m = statistics.median(figures["tool"]), statistics.median(figures["hand"])
        rows[task] = {"tool": tool_m, "hand": hand_m, "ratio": tool_m / hand_m, "rounds": figures}
        print(f"{task:8s} tool {tool_m:9,.0f} img/s   hand {hand_m:9,.0f} img/s   ratio {tool_m / hand_m:.3f}", flush=True)
    from distillctl.environment import cpu_name

    info = {
        **vars(args),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
