"""Each loss term against torchdistill's implementation of the same method, on the same inputs: the largest difference.

    python benchmarks/crosscheck_torchdistill.py            # table into docs/results.md

torchdistill is fetched as a wheel (no dependencies: it runs on this environment's torch) into a temporary folder
that is put on the path of a child process and deleted afterwards; nothing is installed into the environment.
Where the two libraries scale a loss differently (torchdistill's KD leaves T^2 and the weights to the caller), the
table says how the values were put on one scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from results_doc import replace_block

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results.md"
VERSION = "1.1.5"


def fetch(into: Path) -> Path:
    """torchdistill's wheel unpacked under `into` (pip download, no dependencies)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"torchdistill=={VERSION}", "-d", str(into)],
                   check=True)
    wheel = next(into.glob("torchdistill-*.whl"))
    site = into / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def compare(draws: int) -> list[dict]:
    """In the child process: every method, `draws` random inputs each; the largest absolute and relative difference."""
    import torch
    import torch.nn.functional as F
    from torchdistill.losses import mid_level as td
    from torchdistill.models.wrapper import Regressor4VID

    from distillctl.losses.attention import attention_map
    from distillctl.losses.cc import cc_loss
    from distillctl.losses.dist import dist_loss
    from distillctl.losses.embedding import embedding
    from distillctl.losses.ft import factor_loss
    from distillctl.losses.kd import kd_loss
    from distillctl.losses.pkt import pkt_loss
    from distillctl.losses.reviewkd import hcl_loss
    from distillctl.losses.rkd import rkd_loss
    from distillctl.losses.similarity import sp_loss
    from distillctl.losses.vid import EPS, predictor, vid_loss

    def io(value: torch.Tensor, key: str = "m") -> dict:
        return {key: {"output": value}}

    def l1_gram(feature: torch.Tensor) -> torch.Tensor:
        f = feature.flatten(1)
        return torch.nn.functional.normalize(f @ f.t(), p=1, dim=1)

    temperature = 4.0
    # VID: our mean predictor, and torchdistill's regressor with the same weights and starting variance.
    torch.manual_seed(0)
    ours_vid, theirs_vid = predictor(64, 64), Regressor4VID(64, 64, 64, eps=EPS, init_pred_var=5.0)
    theirs_vid.regressor.load_state_dict(ours_vid.state_dict())
    with torch.no_grad():
        theirs_vid.soft_plus_param.add_(torch.randn(64))  # a variance per channel, as if trained

    def vid_theirs(fs, ft):
        mean, var = theirs_vid(fs)
        return td.VIDLoss({"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}})(
            io((mean, var), "s"), io(ft, "t"))

    def cc_theirs(fs, ft):
        unit = [F.normalize(embedding(f), dim=1) for f in (fs, ft)]
        value = td.CCKDLoss("s", "t", {"type": "gaussian", "gamma": 0.4, "max_p": 2}, "batchmean")(io(unit[0], "s"), io(unit[1], "t"))
        return value**2 * len(fs) ** 2

    methods = {
        "KD": ("torchdistill's KDLoss (alpha 0) is the bare KL: times T^2",
               lambda s, t, fs, ft: kd_loss(s, t, temperature),
               lambda s, t, fs, ft: td.KDLoss("m", "output", "m", "output", temperature=temperature, alpha=0)(io(s), io(t)) * temperature**2),
        "KD, logit standardization": ("LogitStdKDLoss times T^2",
               lambda s, t, fs, ft: kd_loss(s, t, 2.0, standardize=True),
               lambda s, t, fs, ft: td.LogitStdKDLoss("m", "output", "m", "output", temperature=2.0, alpha=0)(io(s), io(t)) * 4.0),
        "DIST": ("beta = gamma = 2, T = 4 in both",
               lambda s, t, fs, ft: dist_loss(s, t, 2.0, 2.0, temperature),
               lambda s, t, fs, ft: td.DISTLoss("m", "output", "m", "output", beta=2.0, gamma=2.0, tau=temperature)(io(s), io(t))),
        "AT": ("ATLoss(mode='code') is the sum over layers; ours halves it (the paper's beta/2)",
               lambda s, t, fs, ft: (attention_map(fs, 2) - attention_map(ft, 2)).pow(2).mean() / 2,
               lambda s, t, fs, ft: td.ATLoss({"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}},
                                              mode="code")(io(fs, "s"), io(ft, "t")) / 2),
        "RKD": ("on the spatially averaged embedding, w_D 25, w_A 50",
               lambda s, t, fs, ft: rkd_loss(embedding(fs), embedding(ft), 25.0, 50.0),
               lambda s, t, fs, ft: td.RKDLoss("s", "t", dist_factor=25.0, angle_factor=50.0, reduction="mean")(
                   io(embedding(fs), "s"), io(embedding(ft), "t"))),
        "PKT": ("on the spatially averaged embedding",
               lambda s, t, fs, ft: pkt_loss(embedding(fs), embedding(ft)),
               lambda s, t, fs, ft: td.PKTLoss("s", "output", "t", "output")(io(embedding(fs), "s"), io(embedding(ft), "t"))),
        "SP": ("on the feature maps, reduction batchmean",
               lambda s, t, fs, ft: sp_loss(fs, ft),
               lambda s, t, fs, ft: td.SPKDLoss("s", "t", reduction="batchmean")(io(fs, "s"), io(ft, "t"))),
        # torchdistill calls normalize(G, 1), whose second argument is p: its Gram rows are L1-normalized, where the
        # paper (and the CRD benchmark's code) divide by the L2 norm. The same formula with L1 rows:
        "SP with L1-normalized rows": ("ours with torchdistill's L1 row norm, to show that this is the only difference",
               lambda s, t, fs, ft: (l1_gram(fs) - l1_gram(ft)).pow(2).sum() / len(fs) ** 2,
               lambda s, t, fs, ft: td.SPKDLoss("s", "t", reduction="batchmean")(io(fs, "s"), io(ft, "t"))),
        "VID": ("the whole term: the same predictor weights and per-channel variances in both",
               lambda s, t, fs, ft: vid_loss(ours_vid(fs), F.softplus(theirs_vid.soft_plus_param) + EPS, ft),
               lambda s, t, fs, ft: vid_theirs(fs, ft)),
        "CC": ("Gaussian kernel, gamma 0.4, order 2; torchdistill's batchmean divides the Frobenius norm, not its square, "
               "by B^2 (squared and times B^2 here), and is given unit embeddings (ours normalizes them itself)",
               lambda s, t, fs, ft: cc_loss(embedding(fs), embedding(ft), 0.4, 2),
               lambda s, t, fs, ft: cc_theirs(fs, ft)),
        "FT": ("the factor loss (p = 1, mean reduction) on given factor maps",
               lambda s, t, fs, ft: factor_loss(fs, ft),
               lambda s, t, fs, ft: td.FTLoss(p=1, paraphraser_path="t", translator_path="s")(io(fs, "s"), io(ft, "t"))),
        "ReviewKD (HCL)": ("the hierarchical context loss on one level, pooled sizes 4, 2, 1",
               lambda s, t, fs, ft: hcl_loss(fs, ft),
               lambda s, t, fs, ft: td.HierarchicalContextLoss("s", "output", "t", "output")(io((fs, None), "s"), io(ft, "t"))),
    }
    rows = []
    for name, (scale, ours, theirs) in methods.items():
        largest = relative = 0.0
        for draw in range(draws):
            generator = torch.Generator().manual_seed(draw)
            s, t = torch.randn(32, 100, generator=generator) * 3, torch.randn(32, 100, generator=generator) * 3
            # Feature maps whose images differ (an offset per image and channel), as a network's do.
            fs, ft = ((torch.randn(32, 64, 8, 8, generator=generator) + 2 * torch.randn(32, 64, 1, 1, generator=generator)).relu()
                      for _ in range(2))
            with torch.no_grad():
                a, b = ours(s, t, fs, ft).item(), float(theirs(s, t, fs, ft))
            largest, relative = max(largest, abs(a - b)), max(relative, abs(a - b) / max(abs(b), 1e-12))
        rows.append({"method": name, "scale": scale, "largest": largest, "relative": relative})
    return rows + crd_rows(draws)


def crd_rows(draws: int) -> list[dict]:
    """CRD as a whole term, one step: the same memory banks, embeddings and negatives in both; the loss, and the
    student's memory bank after the step's update."""
    import torch
    from torchdistill.losses.mid_level import CRDLoss

    from distillctl.losses import StepOutputs, build_objective

    n, dim, batch, k = 500, 128, 32, 64
    worst = {"loss": [0.0, 0.0], "memory": [0.0, 0.0]}
    for draw in range(draws):
        generator = torch.Generator().manual_seed(draw)
        v_s, v_t = (torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1) for _ in range(2))
        memories = [torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1) for _ in range(2)]
        idx = torch.randperm(n, generator=generator)[:batch]
        term = build_objective({"crd": {"negatives": k, "feat_dim": dim}}).terms["crd"]
        out = StepOutputs(torch.zeros(batch, 10), torch.zeros(batch, dtype=torch.long), None,
                          {"-1": v_s}, {"-1": v_t}, 1, idx, n)  # the default layers: the last stage
        term.setup(out)
        with torch.no_grad():
            for embed in (term.embed_student, term.embed_teacher):  # projections out of the way: the embeddings as given
                embed.weight.copy_(torch.eye(dim))
                embed.bias.zero_()
            term.memory_student.copy_(memories[0])
            term.memory_teacher.copy_(memories[1])
            torch.manual_seed(draw)  # the negatives our term draws, drawn again for torchdistill
            negatives = torch.randint(n, (batch, k))
            theirs = CRDLoss("s", "e", "t", input_size=dim, output_size=n, num_negative_samples=k, num_samples=n)
            theirs.memory_v1.copy_(memories[0])
            theirs.memory_v2.copy_(memories[1])
            out_s, out_t = theirs.contrast_memory(v_s, v_t, idx, torch.cat([idx[:, None], negatives], 1))
            b = (theirs.compute_contrast_loss(out_s) + theirs.compute_contrast_loss(out_t)).item()
            torch.manual_seed(draw)
            a = term(out).item()
            term.after_step(out)
        for key, (x, y) in {"loss": (a, b), "memory": (term.memory_student, theirs.memory_v1)}.items():
            diff = (torch.as_tensor(x) - torch.as_tensor(y)).abs().max().item()
            worst[key] = [max(worst[key][0], diff), max(worst[key][1], diff / max(torch.as_tensor(y).abs().max().item(), 1e-12))]
    return [
        {"method": "CRD", "scale": f"one step of the whole term ({n} images in the bank, {k} negatives, the same negatives in "
                                   "both, projections set to the identity)", "largest": worst["loss"][0], "relative": worst["loss"][1]},
        {"method": "CRD memory update", "scale": "the student's memory bank after that step (momentum 0.5)",
         "largest": worst["memory"][0], "relative": worst["memory"][1]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compare(args.draws)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        site = fetch(Path(scratch))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
        child = subprocess.run([sys.executable, __file__, "--child", f"--draws={args.draws}"], env=env, capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(f"the comparison failed:\n{child.stderr[-3000:]}")
    rows = json.loads(child.stdout.strip().splitlines()[-1])
    import torch

    lines = [
        f"torchdistill {VERSION} against distillctl on the same inputs (`python benchmarks/crosscheck_torchdistill.py`, "
        f"torch {torch.__version__}, float32 on the CPU): {args.draws} random draws per method of 32 x 100 logits and "
        "32 x 64 x 8 x 8 feature maps; the largest absolute and relative difference of the loss values.",
        "",
        "| method | largest difference | relative | how the scales were matched |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {r['method']} | {r['largest']:.2e} | {r['relative']:.2e} | {r['scale']} |" for r in rows]
    print(replace_block(RESULTS, "crosscheck", "Loss terms against torchdistill", "\n".join(lines)))


if __name__ == "__main__":
    main()
