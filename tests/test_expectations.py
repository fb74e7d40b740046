"""The `expect:` thresholds and the report's comparison with the teacher."""

from __future__ import annotations

import pytest

from distillctl.evaluation import expectations
from distillctl.stages.evaluate import add_teacher_ratios


def test_a_recipe_drops_an_inherited_threshold_with_null():
    expect = {"student.top1": {"min": 0.5}, "int8_static.top1": None}
    rows = expectations.check(expect, {"student": {"top1": 0.6}})  # no int8_static model: not asked for
    assert [(r["metric"], r["ok"]) for r in rows] == [("student.top1", True)]


def test_a_threshold_on_a_model_not_made_fails():
    rows = expectations.check({"onnx_int8.top1": {"min": 0.0}}, {"student": {"top1": 0.6}})
    assert rows[0]["ok"] is False and rows[0]["value"] is None


def test_each_model_is_compared_with_the_teacher_in_size_and_latency():
    results = {"teacher": {"size_mb": 90.0, "latency_ms": 20.0}, "student": {"size_mb": 15.0, "latency_ms": 8.0},
               "onnx_int8": {"size_mb": 3.0, "latency_ms": None}}
    add_teacher_ratios(results)
    assert results["student"]["smaller_than_teacher"] == pytest.approx(6.0)
    assert results["student"]["faster_than_teacher"] == pytest.approx(2.5)
    assert results["onnx_int8"]["faster_than_teacher"] is None and results["teacher"]["smaller_than_teacher"] is None


def test_flat_and_nested_thresholds_mean_the_same():
    flat = {"student.top1": {"min": 0.5}, "student": {"top5": {"min": 0.9}}, "int8_static.top1": None, "gain.top1": {"min": 0.01}}
    tree = expectations.nested(flat)
    assert tree == {"student": {"top1": {"min": 0.5}, "top5": {"min": 0.9}}, "int8_static": {"top1": None},
                    "gain": {"top1": {"min": 0.01}}}
    assert expectations.flatten(tree) == expectations.flatten(flat)
    assert expectations.nested({"student": None, "student.top1": {"min": 0.1}}) == {"student": {"top1": {"min": 0.1}}}


def test_a_gate_on_another_quantization_than_the_runs_comes_with_the_overrides_that_move_it(capsys):
    from distillctl.evaluation import report

    expect = {"student.top1": {"min": 0.5}, "int8_static.top1": {"min": 0.4}, "pruned.top1": {"min": 0.3}}
    rows = expectations.check(expect, {"student": {"top1": 0.6}, "onnx_int8": {"top1": 0.5}})
    with pytest.raises(SystemExit) as exit_:
        report.enforce(rows, quantized_with="onnx_int8")
    out = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 1
    assert ("this run quantizes with onnx_int8 and the recipe gates int8_static: move the gate with '~expect.int8_static' "
            "'+expect.onnx_int8.top1.min=0.4', or make int8_static too") in out
    assert "missing: no pruned model was evaluated" in out  # not a quantization: made by the pipeline
