"""The evaluation report: its columns, its plots and how report.md refers to them."""

from __future__ import annotations

from distillctl import plots, report

ROW = {"arch": "resnet8", "top1": 0.5, "top5": 0.9, "agreement": 1.0, "params": 78000, "macs": 12_500_000,
       "size_mb": 0.32, "sparsity": 0.0, "latency_ms": 0.4, "throughput": 5000.0, "runtime": "torchscript"}
CONTEXT = {"recipe": "r", "test_images": 500, "dataset": "embedded", "cpu": "cpu", "threads": 2, "torch": "2", "date": "today"}


def test_sparsity_is_shown_only_when_some_model_has_zeros():
    dense = {"student": ROW, "int8_static": ROW | {"sparsity": None, "runtime": "onnxruntime"}}
    assert "zeros" not in report.markdown(dense, CONTEXT)
    assert "| 50% |" in report.markdown(dense | {"pruned": ROW | {"sparsity": 0.5}}, CONTEXT)


def test_the_two_plots_are_written_and_referenced(tmp_path):
    results = {"student": ROW, "int8_static": ROW | {"size_mb": 0.09, "latency_ms": 0.2, "top1": 0.49}}
    figures = plots.draw(tmp_path, results, "r")
    assert [f.name for f in figures] == ["accuracy_vs_size.png", "accuracy_vs_latency.png"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    md = report.markdown(results, CONTEXT, figures)
    assert "![accuracy vs size](accuracy_vs_size.png)" in md and "![accuracy vs latency](accuracy_vs_latency.png)" in md
