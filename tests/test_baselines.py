"""The benchmark's baseline terms (DIST, logit standardization, RKD, PKT, SP, CRD): each against a hand computation
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
from distillctl.losses.crd import contrast, nce_loss
from distillctl.losses.dist import dist_loss
from distillctl.losses.dkd import dkd_loss
from distillctl.losses.embedding import embedding
from distillctl.losses.kd import kd_loss
from distillctl.losses.pkt import pkt_loss
from distillctl.losses.rkd import rkd_loss
from distillctl.losses.similarity import sp_loss
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


@pytest.mark.parametrize("kind", ["dist", "rkd", "pkt", "sp"])
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
        total, parts = objective(StepOutputs(student(x), torch.randint(10, (8,)), t_logits.clone(), st.take(), t_feats))
    total.backward()
    assert math.isfinite(total.item()) and total.item() > 0
    assert sum(p.grad.abs().sum().item() for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # Logit-only terms read no layers, so the teacher cache serves them; the others tap the last stage.
    assert (s_layers, t_layers) == (([], []) if kind == "dist" else (["layer3"], ["layer3"]))


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
                       {"layer3": student_features}, {"layer3": teacher_features}, 1, idx, num_images)


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


def test_crd_says_it_needs_the_resident_loader():
    term = build_objective({"crd": {}}).terms["crd"]
    with pytest.raises(UserError, match="needs the resident loader"):
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
