"""Feature and adversarial terms: values against hand computations, gradients, state, the multi-teacher mean."""

from __future__ import annotations

import math

import pytest
import torch

from distillctl import artifacts
from distillctl.errors import UserError
from distillctl.losses import StepOutputs, build_objective
from distillctl.losses.attention import attention_map
from distillctl.losses.dkd import dkd_loss
from distillctl.losses.kd import kd_loss
from distillctl.models import create_model
from distillctl.models.ensemble import TeacherEnsemble


def probe(student_features=None, teacher_features=None, classes=10, batch=4):
    torch.manual_seed(0)
    return StepOutputs(
        torch.randn(batch, classes), torch.randint(classes, (batch,)), torch.randn(batch, classes),
        student_features or {}, teacher_features or {}, epoch=1,
    )


def test_hint_is_the_mse_after_a_conv_bn_regressor_and_pooling():
    s = torch.randn(2, 3, 8, 8)
    t = torch.randn(2, 5, 4, 4)
    out = probe({"a": s}, {"b": t})
    objective = build_objective({"hint": {"student_layer": "a", "teacher_layer": "b"}})
    term = objective.terms["hint"]
    term.setup(out)
    conv, bn = term.regressor
    value = term(out)
    # By hand: 1x1 conv as a matrix product, batch norm with batch statistics, 2x2 average pooling, mean square.
    z = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], s)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    pooled = z.reshape(2, 5, 4, 2, 4, 2).mean((3, 5))
    assert value.item() == pytest.approx(((pooled - t) ** 2).mean().item(), rel=1e-5)


def test_attention_matches_the_papers_definition():
    s = {"s1": torch.randn(2, 4, 4, 4), "s2": torch.randn(2, 6, 2, 2)}
    t = {"t1": torch.randn(2, 8, 4, 4), "t2": torch.randn(2, 3, 2, 2)}
    objective = build_objective({"at": {"kind": "attention", "student_layers": ["s1", "s2"], "teacher_layers": ["t1", "t2"]}})
    value = objective.terms["at"](probe(s, t))
    expected = 0.0
    for sn, tn in (("s1", "t1"), ("s2", "t2")):
        for b in range(2):
            qs = [sum(s[sn][b, c, i, j].item() ** 2 for c in range(s[sn].shape[1])) / s[sn].shape[1] for i in range(s[sn].shape[2]) for j in range(s[sn].shape[3])]
            qt = [sum(t[tn][b, c, i, j].item() ** 2 for c in range(t[tn].shape[1])) / t[tn].shape[1] for i in range(t[tn].shape[2]) for j in range(t[tn].shape[3])]
            ns, nt = math.sqrt(sum(q * q for q in qs)), math.sqrt(sum(q * q for q in qt))
            expected += sum((a / ns - c / nt) ** 2 for a, c in zip(qs, qt)) / (2 * len(qs))
    assert value.item() == pytest.approx(expected / 2, rel=1e-5)  # mean over the batch, then the 1/2


def test_attention_maps_of_different_sizes_are_interpolated():
    a = attention_map(torch.randn(2, 4, 8, 8), 2.0, (4, 4))
    assert a.shape == (2, 16) and torch.allclose(a.norm(dim=1), torch.ones(2))


def test_dkd_decomposes_kd_as_the_paper_says():
    # KD = TCKD + (1 - p_t[target]) * NCKD (Zhao et al. 2022, eq. 7), for one sample at a time.
    torch.manual_seed(1)
    for _ in range(3):
        s, t, y = torch.randn(1, 7), torch.randn(1, 7), torch.randint(7, (1,))
        T = 3.0
        p_target = (t / T).softmax(1)[0, y].item()
        assert dkd_loss(s, t, y, 1.0, 1 - p_target, T).item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-4)


def test_dkd_warms_up_linearly():
    objective = build_objective({"dkd": {"warmup": 4}})
    out = probe()
    full = dkd_loss(out.student_logits, out.teacher_logits, out.labels, 1.0, 8.0, 4.0)
    out.epoch = 1
    assert objective.terms["dkd"](out).item() == pytest.approx(full.item() / 4, rel=1e-6)
    out.epoch = 9
    assert objective.terms["dkd"](out).item() == pytest.approx(full.item(), rel=1e-6)


def test_gradients_reach_the_student_and_term_parameters_never_the_teacher():
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10).eval().requires_grad_(False)
    objective = build_objective({"ce": {}, "kd": {}, "hint": {"student_layer": "layer2", "teacher_layer": "layer2"}, "at": {"kind": "attention"}})
    x = torch.randn(4, 3, 32, 32)
    objective.setup(student, teacher, x)
    from distillctl.engine.taps import FeatureTaps

    s_layers, t_layers = objective.layers()
    with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
        with torch.inference_mode():
            t_logits = teacher(x)
        t_feats = {k: v.clone() for k, v in tt.take().items()}
        out = StepOutputs(student(x), torch.randint(10, (4,)), t_logits.clone(), st.take(), t_feats)
        total, parts = objective(out)
    total.backward()
    assert set(parts) == {"ce", "kd", "hint", "at"}
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.terms["hint"].regressor.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hint_pretraining_counts_the_hint_alone():
    objective = build_objective({"ce": {}, "hint": {"student_layer": "a", "teacher_layer": "b", "pretrain_epochs": 2}})
    objective.terms["hint"].setup(probe({"a": torch.randn(4, 3, 4, 4)}, {"b": torch.randn(4, 3, 4, 4)}))
    assert objective.active(2) == ["hint"] and objective.active(3) == ["ce", "hint"]


def test_the_discriminator_learns_while_the_student_is_frozen():
    torch.manual_seed(0)
    objective = build_objective({"adv": {"kind": "adversarial", "lr": 1e-3}})
    term = objective.terms["adv"]
    # Fixed outputs: a confident teacher and a flat student are easy to tell apart, once D has learned.
    teacher = torch.randn(64, 10) * 4
    student = torch.randn(64, 10) * 0.5
    out = StepOutputs(student, torch.zeros(64, dtype=torch.long), teacher)
    term.setup(out)
    before = term.discriminator_loss(student.softmax(1), teacher.softmax(1))[1].item()
    for _ in range(200):
        term.after_step(out)
    after = term.discriminator_loss(student.softmax(1), teacher.softmax(1))[1].item()
    assert after > max(before, 0.9)
    assert term.student_parameters() == [] and objective.student_parameters() == []


def test_a_checkpoint_round_trip_restores_every_term(tmp_path):
    out = probe({"a": torch.randn(4, 3, 4, 4)}, {"b": torch.randn(4, 6, 4, 4)})
    torch.manual_seed(0)
    first = build_objective({"hint": {"student_layer": "a", "teacher_layer": "b"}, "adv": {"kind": "adversarial"}})
    for t in first.terms.values():
        t.setup(out)
    first.terms["adv"].after_step(out)  # D and its Adam state move
    artifacts.save_state(tmp_path / "state.pt", {"objective": first.state_dict()})
    second = build_objective({"hint": {"student_layer": "a", "teacher_layer": "b"}, "adv": {"kind": "adversarial"}})
    for t in second.terms.values():
        t.setup(out)
    second.load_state_dict(artifacts.load_state(tmp_path / "state.pt")["objective"])
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), k
    adam_a, adam_b = first.terms["adv"].optimizer.state_dict()["state"], second.terms["adv"].optimizer.state_dict()["state"]
    assert adam_a.keys() == adam_b.keys() and all(torch.equal(adam_a[k]["exp_avg"], adam_b[k]["exp_avg"]) for k in adam_a)


def test_teacher_ensemble_averages_weighted_logits():
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.randn(2, 3)
    ensemble = TeacherEnsemble([a, b], [3.0, 1.0])
    assert torch.allclose(ensemble(x), 0.75 * a(x) + 0.25 * b(x), atol=1e-6)
    assert ensemble.feature_source is a


def test_a_term_naming_a_missing_layer_fails_before_training():
    objective = build_objective({"hint": {"student_layer": "layer_2", "teacher_layer": "layer2"}})
    with pytest.raises(UserError, match="Did you mean 'layer2'"):
        objective.setup(create_model("resnet8", 10), create_model("resnet8", 10), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("kind", ["hint", "attention", "rkd", "pkt", "sp", "crd", "nst", "vid", "cc", "ofd", "reviewkd", "ft"])
def test_every_feature_method_runs_on_timm_models_with_its_default_layers(kind):
    # Stages from the last (timm's feature_info) and global_pool fit any timm CNN pair, not only the CIFAR zoo.
    from distillctl.engine.taps import FeatureTaps

    torch.manual_seed(0)
    student = create_model("mobilenetv3_small_050", 10)  # linear-bottleneck stages: `:preact` keeps their output
    teacher = create_model("resnet10t", 10).eval().requires_grad_(False)
    objective = build_objective({kind: {"negatives": 8}} if kind == "crd" else {kind: {}})
    x, y = torch.randn(4, 3, 64, 64), torch.randint(10, (4,))
    objective.setup(student, teacher, x, num_images=4)
    s_layers, t_layers = objective.layers()
    with FeatureTaps(student, s_layers, "s") as st, FeatureTaps(teacher, t_layers, "t") as tt:
        with torch.no_grad():
            t_logits = teacher(x)
        epoch = 40  # past every term's warm-up and FT's paraphraser epochs
        total, parts = objective(StepOutputs(student(x), y, t_logits, st.take(), tt.take(), epoch=epoch,
                                             indices=torch.arange(4), num_images=4))
    total.backward()
    assert kind in parts and math.isfinite(total.item())
    assert sum(p.grad.abs().sum().item() for p in student.parameters() if p.grad is not None) > 0


def test_a_term_on_feature_maps_refuses_a_transformers_tokens_and_embedding_terms_average_them():
    import timm

    student = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)  # blocks give [B, 5, 192]
    teacher = create_model("resnet8", 10).eval()
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(UserError, match=r"loss.terms.at \(attention\) compares feature maps .* the student's '-3' gives "
                                        r"\[4, 5, 192\] \(a transformer's tokens\)"):
        build_objective({"at": {"kind": "attention"}}).setup(student, teacher, x)
    from distillctl.losses.embedding import embedding

    tokens = torch.randn(4, 5, 192)
    assert torch.equal(embedding(tokens), tokens.mean(1))  # one vector per image, over its tokens
    objective = build_objective({"rkd": {}})
    objective.setup(student, teacher, x)  # RKD on the ViT's last block against the ResNet's last stage
