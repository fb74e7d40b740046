"""The benchmark's baseline terms (DIST, logit standardization, RKD, PKT, SP, CRD, NST, VID, CC, OFD,
ReviewKD, FT): each against a hand computation
written with plain loops, the identities its paper states, and gradients that reach the student, never the teacher;
CRD's memory bank moves as the paper says and survives a checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillctl import artifacts
from distillctl.engine.taps import FeatureTaps
from distillctl.errors import UserError
from distillctl.losses import StepOutputs, build_objective
from distillctl.losses.cc import cc_loss, correlation
from distillctl.losses.crd import contrast, nce_loss
from distillctl.losses.dist import dist_loss
from distillctl.losses.dkd import dkd_loss
from distillctl.losses.embedding import embedding
from distillctl.losses.ft import factor_loss
from distillctl.losses.kd import kd_loss
from distillctl.losses.nst import nst_loss
from distillctl.losses.ofd import margin, partial_l2
from distillctl.losses.pkt import pkt_loss
from distillctl.losses.reviewkd import hcl_loss
from distillctl.losses.rkd import rkd_loss
from distillctl.losses.similarity import sp_loss
from distillctl.losses.vid import EPS as VID_EPS
from distillctl.losses.vid import vid_loss
from distillctl.models import create_model


def smooth_l1(a: float, b: float) -> float:
    """Huber loss with delta 1, as torch's smooth_l1_loss."""
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_dist_is_one_minus_the_pearson_correlations_per_image_and_per_class():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    beta, gamma, temperature = 2.0, 3.0, 4.0
    p_s, p_t = (s / temperature).softmax(1).numpy(), (t / temperature).softmax(1).numpy()
    inter = 1 - np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1] for c in range(5)])
    expected = (beta * inter + gamma * intra) * temperature**2
    assert dist_loss(s, t, beta, gamma, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert dist_loss(t, t, beta, gamma, temperature).item() == pytest.approx(0, abs=1e-5)


def test_standardized_logit_losses_ignore_the_students_shift_and_scale():
    # The paper's point: once z-scored, only the logits' relations count, not their range.
    torch.manual_seed(1)
    s, t, labels = torch.randn(8, 10), torch.randn(8, 10) * 3, torch.randint(10, (8,))
    moved = 5 * s + 2
    assert kd_loss(moved, t, 2.0, standardize=True).item() == pytest.approx(kd_loss(s, t, 2.0, standardize=True).item(), rel=1e-5)
    assert kd_loss(moved, t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)
    assert dkd_loss(moved, t, labels, 1, 8, 4.0, standardize=True).item() == pytest.approx(
        dkd_loss(s, t, labels, 1, 8, 4.0, standardize=True).item(), rel=1e-4)
    # By hand: z-scores with the sample standard deviation, then plain KD.
    z = [(m - m.mean(1, keepdims=True)) / (m.std(1, ddof=1, keepdims=True) + 1e-7) for m in (s.numpy(), t.numpy())]
    expected = kd_loss(torch.tensor(z[0]), torch.tensor(z[1]), 2.0).item()
    assert kd_loss(s, t, 2.0, standardize=True).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_matches_distances_and_angles_computed_by_hand():
    torch.manual_seed(2)
    s, t = torch.randn(5, 3), torch.randn(5, 4)
    n = len(s)

    def distances(e):
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        return [[x / mean for x in row] for row in d]

    def cos_at(e, i, j, k):  # the angle at j between i and k
        a, b = [x - y for x, y in zip(e[i], e[j])], [x - y for x, y in zip(e[k], e[j])]
        na, nb = math.hypot(*a), math.hypot(*b)
        return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)

    es, et = s.tolist(), t.tolist()
    ds, dt = distances(es), distances(et)
    distance = sum(smooth_l1(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    angle = sum(smooth_l1(cos_at(es, i, j, k), cos_at(et, i, j, k)) for i in range(n) for j in range(n) for k in range(n)) / n**3
    assert rkd_loss(s, t, 25, 50).item() == pytest.approx(25 * distance + 50 * angle, rel=1e-5)
    # Relations only: a scaled and shifted copy of the teacher's embedding costs nothing.
    assert rkd_loss(3 * t + 1, t, 25, 50).item() == pytest.approx(0, abs=1e-5)


def test_pkt_matches_neighbour_distributions_computed_by_hand():
    torch.manual_seed(3)
    s, t = torch.randn(4, 6), torch.randn(4, 9)
    n, eps = len(s), 1e-7

    def distribution(e):
        unit = [[x / (math.sqrt(sum(v * v for v in row)) or eps) for x in row] for row in e]
        sim = [[(sum(a * b for a, b in zip(unit[i], unit[j])) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[x / sum(row) for x in row] for row in sim]

    ps, pt = distribution(s.tolist()), distribution(t.tolist())
    expected = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)) / n**2
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-4)
    assert pkt_loss(7 * t, t).item() == pytest.approx(0, abs=1e-6)


def test_sp_matches_gram_matrices_computed_by_hand():
    torch.manual_seed(4)
    s, t = torch.randn(3, 2, 2, 2), torch.randn(3, 5, 1, 1)
    n = len(s)

    def gram(f):
        flat = f.flatten(1).tolist()
        g = [[sum(a * b for a, b in zip(flat[i], flat[j])) for j in range(n)] for i in range(n)]
        return [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in g]

    gs, gt = gram(s), gram(t)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2
    assert sp_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert sp_loss(2 * t, t).item() == pytest.approx(0, abs=1e-6)


def test_nst_is_the_squared_mmd_of_the_channels_computed_by_hand():
    torch.manual_seed(8)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)

    def channels(f):  # per image: each channel's values over positions, L2-normalized
        out = []
        for image in f.flatten(2).tolist():
            out.append([[x / math.sqrt(sum(v * v for v in c)) for x in c] for c in image])
        return out

    def k(a, b):
        return sum(sum(x * y for x, y in zip(u, v)) ** 2 for u in a for v in b) / (len(a) * len(b))

    cs, ct = channels(s), channels(t)
    expected = sum(k(ct[b], ct[b]) + k(cs[b], cs[b]) - 2 * k(cs[b], ct[b]) for b in range(2)) / 2
    assert nst_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    # The channels' scale is not compared, only where they fire; a larger map is pooled to the smaller size first.
    assert nst_loss(t * torch.tensor([1, 2, 3, 4.0]).view(1, 4, 1, 1), t).item() == pytest.approx(0, abs=1e-6)
    big = torch.randn(2, 3, 4, 4)
    assert nst_loss(big, t).item() == pytest.approx(nst_loss(F.avg_pool2d(big, 2), t).item(), rel=1e-6)


def test_vid_is_the_gaussian_negative_log_likelihood_and_starts_at_the_reference_variance():
    torch.manual_seed(9)
    mean, t, variance = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.tensor([0.5, 1.0, 4.0])
    values = [0.5 * ((m - x) ** 2 / variance[c].item() + math.log(variance[c].item()))
              for b in range(2) for c in range(3) for m, x in zip(mean[b, c].flatten().tolist(), t[b, c].flatten().tolist())]
    assert vid_loss(mean, variance, t).item() == pytest.approx(sum(values) / len(values), rel=1e-5)
    # The likelihood is best where each channel's variance is its mean squared error.
    mse = (mean - t).pow(2).mean((0, 2, 3))
    best = vid_loss(mean, mse, t).item()
    assert all(vid_loss(mean, mse * f, t).item() > best for f in (0.8, 1.25))
    term = build_objective({"vid": {}}).terms["vid"]
    probe = StepOutputs(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), None,
                        {f"{i - 4}": torch.randn(2, 4 * i, 8, 8) for i in (1, 2, 3)}, {f"{i - 4}": torch.randn(2, 8 * i, 4, 4) for i in (1, 2, 3)})
    term.setup(probe)
    assert all(torch.allclose(F.softplus(raw) + VID_EPS, torch.full((8 * i,), 5.0)) for i, raw in zip((1, 2, 3), term.raw_variances))
    assert math.isfinite(term(probe).item())


def test_cc_matches_the_gaussian_kernel_and_its_taylor_series_by_hand():
    torch.manual_seed(10)
    s, t, gamma = torch.randn(4, 5), torch.randn(4, 7), 0.4

    def unit(e):
        return [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in e.tolist()]

    def taylor(e, order):
        u = unit(e)
        dots = [[sum(a * b for a, b in zip(u[i], u[j])) for j in range(4)] for i in range(4)]
        return [[math.exp(-2 * gamma) * sum((2 * gamma * d) ** p / math.factorial(p) for p in range(order + 1)) for d in row] for row in dots]

    cs, ct = taylor(s, 2), taylor(t, 2)
    expected = sum((cs[i][j] - ct[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert cc_loss(s, t, gamma, 2).item() == pytest.approx(expected, rel=1e-5)
    # Taken far enough, the series is the Gaussian kernel exp(-gamma |u_i - u_j|^2) itself.
    u = unit(s)
    exact = [[math.exp(-gamma * math.dist(u[i], u[j]) ** 2) for j in range(4)] for i in range(4)]
    assert torch.allclose(correlation(s, gamma, 12), torch.tensor(exact), atol=1e-6)
    assert cc_loss(3 * t, t, gamma, 2).item() == pytest.approx(0, abs=1e-7)


def test_ofd_margin_is_the_mean_negative_response_of_each_channels_gaussian():
    torch.manual_seed(11)
    means, stds = torch.tensor([-1.0, 0.0, 0.5, 1.5, 10.0]), torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0])
    x = means.view(1, 5, 1, 1) + stds.view(1, 5, 1, 1) * torch.randn(400, 5, 20, 20)
    sampled = torch.stack([c[c < 0].mean() for c in x.transpose(0, 1).flatten(1)])
    m = margin(x)
    assert torch.allclose(m[:4], sampled[:4], atol=0.01)  # Monte Carlo: 160,000 draws per channel, ~200 negative in the last
    assert m[1].item() == pytest.approx(-2.0 * math.sqrt(2 / math.pi), rel=0.01)  # a centred Gaussian's half-normal mean
    assert m[4].item() == pytest.approx(-3.0, rel=0.01)  # negatives rarer than 1e-3: the paper's -3 std


def test_ofd_partial_l2_skips_a_student_already_below_a_non_positive_target():
    s, t = torch.tensor([-3.0, -1.0, 0.5, -2.0, 2.0]), torch.tensor([-2.0, -2.0, -1.0, 1.0, 1.0])
    # By position: s below a negative target (free); s above it; s above it; t positive; t positive.
    assert partial_l2(s, t).item() == pytest.approx(0 + 1 + 2.25 + 9 + 1)


def test_hcl_weighs_the_pooled_comparisons_as_the_paper_does():
    torch.manual_seed(12)
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)

    def pooled_mse(k):  # average over k x k blocks, by hand, then the mean squared difference
        a, b = (f.unfold(2, 8 // k, 8 // k).unfold(3, 8 // k, 8 // k).mean((-1, -2)) for f in (s, t))
        return (a - b).pow(2).mean().item()

    expected = ((s - t).pow(2).mean().item() + pooled_mse(4) / 2 + pooled_mse(2) / 4 + pooled_mse(1) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    assert hcl_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    # A 4x4 map is not "pooled" to 4x4: only 2x2 and 1x1 are added.
    small_s, small_t = s[..., :4, :4], t[..., :4, :4]
    pooled = [F.adaptive_avg_pool2d(f, k) for k in (2, 1) for f in (small_s, small_t)]
    expected = ((small_s - small_t).pow(2).mean() + (pooled[0] - pooled[1]).pow(2).mean() / 2 + (pooled[2] - pooled[3]).pow(2).mean() / 4) / 1.75
    assert hcl_loss(small_s, small_t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reviewkd_teaches_each_teacher_stage_from_the_deeper_student_stages_too():
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval().requires_grad_(False)
    objective = build_objective({"reviewkd": {}})
    x = torch.randn(4, 3, 32, 32)
    objective.setup(student, teacher, x)
    term = objective.terms["reviewkd"]
    s_layers, t_layers = objective.layers()
    with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
        student(x), teacher(x)
        s_feats, t_feats = st.take(), tt.take()
    s_feats = {k: v.detach().requires_grad_() for k, v in s_feats.items()}
    out = StepOutputs(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long), None, s_feats, t_feats, epoch=5)
    levels = term.predictions(out)
    assert [p.shape for p, _ in levels] == [t.shape for _, t in levels] == [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8), (4, 64, 1, 1)]
    # The shallowest level's prediction reads every student stage (the review), the deepest only its own.
    shallow = torch.autograd.grad(levels[0][0].sum(), list(s_feats.values()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in shallow)
    deepest = torch.autograd.grad(levels[-1][0].sum(), list(s_feats.values()), allow_unused=True)
    assert [g is not None for g in deepest] == [False, False, False, True]
    # Ramped in over 20 epochs: at epoch 5, a quarter of the sum over the levels.
    assert term(out).item() == pytest.approx(0.25 * sum(hcl_loss(p, t).item() for p, t in levels), rel=1e-5)


def test_ft_factor_loss_is_the_mean_absolute_difference_of_unit_factors():
    torch.manual_seed(13)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    expected = 0.0
    for a, b in zip(s.flatten(1).tolist(), t.flatten(1).tolist()):
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        expected += sum(abs(x / na - y / nb) for x, y in zip(a, b))
    assert factor_loss(s, t).item() == pytest.approx(expected / s.numel(), rel=1e-5)
    assert factor_loss(4 * t, t).item() == pytest.approx(0, abs=1e-7)


def test_ft_trains_only_its_paraphraser_first_then_freezes_it_and_trains_the_student():
    torch.manual_seed(14)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval().requires_grad_(False)
    objective = build_objective({"ce": {}, "ft": {"paraphraser_epochs": 1}})
    x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    objective.setup(student, teacher, x)
    term = objective.terms["ft"]
    # Momentum and weight decay: an optimizer that moved parameters without gradients would show it here.
    optimizer = torch.optim.SGD([*student.parameters(), *objective.student_parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4)
    s_layers, t_layers = objective.layers()

    def snapshot():
        return {name: [p.detach().clone() for p in m.parameters()] for name, m in
                (("student", student), ("paraphraser", term.paraphraser), ("translator", term.translator), ("teacher", teacher))}

    def step(epoch):
        with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
            with torch.no_grad():
                t_logits = teacher(x)
            out = StepOutputs(student(x), y, t_logits, st.take(), tt.take(), epoch=epoch)
            total, parts = objective(out)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return set(parts)

    def moved(before, after):
        return {name for name in before if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}

    # The paraphraser's stage costs its plain reconstruction error, not 200 times it (FT's weight is the factor loss's).
    with FeatureTaps(teacher, t_layers, "t") as tt, torch.no_grad():
        teacher(x)
        t_feats = tt.take()
        total, _ = objective(StepOutputs(student(x), y, None, {k: None for k in s_layers}, t_feats, epoch=1))
        reconstruction = F.mse_loss(term.paraphraser(t_feats["-1"]), t_feats["-1"])
    assert total.item() == pytest.approx(reconstruction.item(), rel=1e-5)
    for epoch, terms, trained in ((1, {"ft"}, {"paraphraser"}), (2, {"ce", "ft"}, {"student", "translator"})):
        before = snapshot()
        assert step(epoch) == terms and step(epoch) == terms
        assert moved(before, snapshot()) == trained, epoch


@pytest.mark.parametrize("kind", ["attention", "nst", "vid", "ofd", "reviewkd"])
def test_layer_pairs_must_pair_up(kind):
    with pytest.raises(UserError, match=f"{kind} needs as many student_layers as teacher_layers"):
        build_objective({kind: {"student_layers": ["layer1"], "teacher_layers": ["layer1", "layer2"]}})


@pytest.mark.parametrize("kind", ["dist", "rkd", "pkt", "sp", "nst", "vid", "cc", "ofd", "reviewkd"])
def test_gradients_reach_the_student_never_the_teacher(kind):
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval().requires_grad_(False)
    objective = build_objective({kind: {}})
    x = torch.randn(8, 3, 32, 32)
    objective.setup(student, teacher, x)
    s_layers, t_layers = objective.layers()
    with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
        with torch.inference_mode():
            t_logits = teacher(x)
        t_feats = {k: v.clone() for k, v in tt.take().items()}
        total, parts = objective(StepOutputs(student(x), torch.randint(10, (8,)), t_logits.clone(), st.take(), t_feats, epoch=1))
    total.backward()
    assert math.isfinite(total.item()) and total.item() > 0
    assert sum(p.grad.abs().sum().item() for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # A term's own parameters (VID's predictors and variances) train with the student.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.student_parameters())
    # Logit-only terms read no layers, so the teacher cache serves them; the others tap the last stage, or every stage.
    stages = ["-3", "-2", "-1"]  # layer1..3 of a CIFAR ResNet, counted from the last
    pre = [f"{stage}:preact" for stage in stages]
    expected = {"dist": ([], []), "nst": (stages, stages), "vid": (stages, stages), "ofd": (pre, pre),
                "reviewkd": ([*pre, "global_pool"], [*pre, "global_pool"])}
    assert (s_layers, t_layers) == expected.get(kind, (["-1"], ["-1"]))


def test_crd_nce_loss_matches_a_hand_computation():
    torch.manual_seed(5)
    scores, n = torch.rand(3, 5) + 0.1, 50  # a positive and 4 negatives per image
    k, eps = 4, 1e-7
    expected = 0.0
    for row in scores.tolist():
        expected += math.log(row[0] / (row[0] + k / n + eps)) + sum(math.log((k / n) / (x + k / n + eps)) for x in row[1:])
    assert nce_loss(scores, n).item() == pytest.approx(-expected / 3, rel=1e-5)


def test_crd_scores_are_the_same_from_the_full_product_and_from_gathered_rows():
    torch.manual_seed(6)
    memory, queries = torch.randn(40, 8), torch.randn(3, 8)
    small = torch.randint(40, (3, 6))  # 40 <= 8 * 6: the full product
    large = torch.randint(40, (3, 2))  # 40 > 8 * 2: gathered rows
    for candidates in (small, large):
        by_hand = torch.tensor([[math.exp(memory[c].dot(queries[b]).item() / 0.07) for c in row] for b, row in enumerate(candidates.tolist())])
        assert torch.allclose(contrast(memory, queries, candidates, 0.07), by_hand, rtol=1e-4)


def crd_outputs(term, student_features, teacher_features, idx, num_images):
    return StepOutputs(torch.randn(len(idx), 10), torch.zeros(len(idx), dtype=torch.long), torch.randn(len(idx), 10),
                       {"-1": student_features}, {"-1": teacher_features}, 1, idx, num_images)


def test_crd_trains_its_projections_moves_its_memory_and_checkpoints_it(tmp_path):
    torch.manual_seed(7)
    objective = build_objective({"crd": {"negatives": 16}})
    term = objective.terms["crd"]
    s, t = torch.randn(4, 16, 4, 4, requires_grad=True), torch.randn(4, 32, 4, 4)
    term.setup(crd_outputs(term, s, t, torch.arange(4), 20))
    idx = torch.tensor([3, 7, 11, 19])
    before = term.memory_student[idx].clone()
    loss = term(crd_outputs(term, s, t, idx, 20))
    loss.backward()
    assert math.isfinite(loss.item()) and s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in [*term.embed_student.parameters(), *term.embed_teacher.parameters()])
    assert term.z_student > 0 and term.z_teacher > 0  # fixed from the first batch
    term.after_step(None)
    v_s = F.normalize(term.embed_student(embedding(s)), dim=1).detach()
    assert torch.allclose(term.memory_student[idx], F.normalize(before * 0.5 + v_s * 0.5, dim=1), atol=1e-6)
    assert torch.allclose(term.memory_student.norm(dim=1)[idx], torch.ones(4))
    artifacts.save_state(tmp_path / "state.pt", {"objective": objective.state_dict()})
    again = build_objective({"crd": {"negatives": 16}})
    again.terms["crd"].setup(crd_outputs(term, s, t, torch.arange(4), 20))
    again.load_state_dict(artifacts.load_state(tmp_path / "state.pt")["objective"])
    for key, value in objective.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


@pytest.mark.parametrize("kind", ["vid", "ofd", "reviewkd", "ft"])
def test_a_terms_parameters_and_buffers_survive_a_checkpoint(kind, tmp_path):
    # VID: predictors and variances; OFD: connectors and the margins measured on the first batch; ReviewKD: fusions;
    # FT: paraphraser and translator.
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval()
    objective = build_objective({kind: {}})
    objective.setup(student, teacher, torch.randn(4, 3, 32, 32))
    with torch.no_grad():
        for value in objective.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value))  # as if trained
    artifacts.save_state(tmp_path / "state.pt", {"objective": objective.state_dict()})
    again = build_objective({kind: {}})
    again.setup(student, teacher, torch.randn(4, 3, 32, 32))  # another first batch: other margins, until loaded
    again.load_state_dict(artifacts.load_state(tmp_path / "state.pt")["objective"])
    assert objective.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in objective.state_dict().items())


def test_crd_says_it_needs_two_images():
    term = build_objective({"crd": {}}).terms["crd"]
    with pytest.raises(UserError, match="at least 2 training images"):
        term.setup(crd_outputs(term, torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.arange(2), 0))


@pytest.mark.slow
def test_a_resumed_crd_run_ends_with_the_same_weights(cli, tmp_path):
    # The memory banks, the NCE constants and the negatives' RNG all come back from the checkpoint.
    common = ["distill", "loss=crd", "scheduler=constant", "trainer.max_steps_per_epoch=6", "trainer.threads=1",
              "loss.terms.crd.negatives=256", "dataset.test_limit=100"]
    assert cli(*common, "run_dir=runs/straight", "trainer.epochs=2").code == 0
    assert cli(*common, "run_dir=runs/resumed", "trainer.epochs=1").code == 0
    resumed = cli(*common, "run_dir=runs/resumed", "trainer.epochs=2", "resume=true")
    assert resumed.code == 0 and "resumed after 1" in resumed.out, resumed.text[-2000:]
    straight, again = ((tmp_path / f"runs/{run}/student/last.safetensors").read_bytes() for run in ("straight", "resumed"))
    assert straight == again
