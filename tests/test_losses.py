"""Loss terms against hand computations, and the objective built from config."""

from __future__ import annotations

import math

import pytest
import torch

from distillctl.errors import UserError
from distillctl.losses import StepOutputs, build_objective
from distillctl.losses.kd import kd_loss


def test_kd_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 2.0
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / T) for v in s_row)
        zt = sum(math.exp(v / T) for v in t_row)
        ps = [math.exp(v / T) / zs for v in s_row]
        pt = [math.exp(v / T) / zt for v in t_row]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expected = total / 2 * T * T
    assert kd_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_gradient_is_t_times_the_difference_of_softened_probabilities():
    torch.manual_seed(0)
    student = torch.randn(4, 10, requires_grad=True)
    teacher = torch.randn(4, 10)
    T = 4.0
    kd_loss(student, teacher, T).backward()
    expected = T * (torch.softmax(student.detach() / T, 1) - torch.softmax(teacher / T, 1)) / 4
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(3, 5)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_objective_weights_and_reports_each_term():
    objective = build_objective({"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}})
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(10, (8,))
    total, parts = objective(StepOutputs(student, labels, teacher))
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.1 * ce.item() + 0.9 * kd_loss(student, teacher, 4.0).item(), rel=1e-6)
    assert objective.needs_teacher


def test_ce_alone_needs_no_teacher_and_smooths_labels():
    objective = build_objective({"ce": {"label_smoothing": 0.1}})
    logits, labels = torch.randn(8, 10), torch.randint(10, (8,))
    total, _ = objective(StepOutputs(logits, labels))
    assert not objective.needs_teacher
    assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_two_terms_of_one_kind_by_name():
    objective = build_objective({"soft": {"kind": "kd", "temperature": 8.0}, "hard": {"kind": "kd", "temperature": 1.0}})
    assert objective.terms["soft"].params.temperature == 8.0 and objective.terms["hard"].params.temperature == 1.0


def test_unknown_term_and_empty_objective_are_user_errors():
    with pytest.raises(UserError, match="Did you mean 'kd'"):
        build_objective({"kdd": {}})
    with pytest.raises(UserError, match="loss.terms is empty"):
        build_objective({})
