"""The evaluation report: its columns, its plots, top-1 per class and how report.md refers to them."""

from __future__ import annotations

import csv
import io
import re

import pytest
import torch

from distillctl.evaluation import expectations, plots, report
from distillctl.evaluation.class_accuracy import FULL_TABLE_MAX, ClassAccuracy

ROW = {"arch": "resnet8", "top1": 0.5, "top5": 0.9, "agreement": 1.0, "params": 78000, "macs": 12_500_000,
       "size_mb": 0.32, "sparsity": 0.0, "latency_ms": 0.4, "throughput": 5000.0, "runtime": "torchscript"}
CONTEXT = {"recipe": "r", "test_images": 500, "dataset": "embedded", "cpu": "cpu", "threads": 2, "torch": "2", "date": "today",
           "timing": {"latency_repeats": 100, "latency_warmup": 20, "throughput_batch": 256}}


def test_sparsity_is_shown_only_when_some_model_has_zeros():
    dense = {"student": ROW, "int8_static": ROW | {"sparsity": None, "runtime": "onnxruntime"}}
    assert "zeros" not in report.markdown(dense, CONTEXT)
    assert "| 50% |" in report.markdown(dense | {"pruned": ROW | {"sparsity": 0.5}}, CONTEXT)
    # Two weights of a trained ResNet-50 that ended at exactly zero (8.5e-8 of them) made a column of 0%.
    assert "zeros" not in report.markdown(dense | {"teacher": ROW | {"sparsity": 8.5e-8}}, CONTEXT)


def test_a_student_larger_than_its_teacher_shows_how_much_not_0_0x():
    results = {"teacher": ROW, "student": ROW | {"smaller_than_teacher": 0.0087, "faster_than_teacher": 0.24},
               "pruned": ROW | {"smaller_than_teacher": 6.93, "faster_than_teacher": 3.5}}
    md = report.markdown(results, CONTEXT)
    assert "| 0.0087x | 0.24x |" in md and "| 6.9x | 3.5x |" in md and "0.0x" not in md


def test_the_two_plots_are_written_and_referenced(tmp_path):
    results = {"student": ROW, "int8_static": ROW | {"size_mb": 0.09, "latency_ms": 0.2, "top1": 0.49}}
    figures = plots.draw(tmp_path, results, "r")
    assert [f.name for f in figures] == ["accuracy_vs_size.png", "accuracy_vs_latency.png"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    md = report.markdown(results, CONTEXT, figures)
    assert "![accuracy vs size](accuracy_vs_size.png)" in md and "![accuracy vs latency](accuracy_vs_latency.png)" in md


def test_top1_per_class_finds_the_class_a_student_gave_up_and_expect_can_refuse_it(capsys):
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # class 3 has no test images
    by_class = ClassAccuracy.empty(["cat", "dog", "fox", "owl"], labels)
    assert by_class.images == [4, 2, 4, 0]
    assert by_class.add("teacher", labels.clone(), labels) == 1.0
    student = torch.tensor([0, 0, 0, 1, 0, 0, 2, 2, 2, 2])  # one cat missed, every dog missed
    worst = by_class.add("student", student, labels)
    assert worst == 0.0 and by_class.top1["student"] == [0.75, 0.0, 1.0, None]
    assert by_class.drops("student") == [("dog", 2, 1.0, 0.0), ("cat", 4, 1.0, 0.75)]
    assert by_class.drops("teacher") == [] and by_class.drops("student", reference="pruned") == []
    rows = list(csv.DictReader(io.StringIO(by_class.csv_text())))
    assert rows[1] == {"class": "dog", "test_images": "2", "teacher": "1.0000", "student": "0.0000"} and rows[3]["student"] == ""
    md = report.markdown({"teacher": ROW, "student": ROW}, CONTEXT, by_class=by_class, final="student")
    assert "| dog | 2 | 100.0% | 0.0% |" in md and "| owl | 0 | - | - |" in md
    # What the missed images were taken for: both dogs for cats, one cat for a dog.
    assert by_class.confusions["student"] == [(1, 0, 2), (0, 1, 1)] and by_class.confusions["teacher"] == []
    assert "| dog | cat | 2 | 100.0% |" in md and "| cat | dog | 1 | 25.0% |" in md
    report.print_drops(by_class, "student")
    assert "largest per-class drops, student against the teacher: dog 100% -> 0% (2 images), cat 100% -> 75%" in capsys.readouterr().out
    # A recipe can hold the weakest class to a floor.
    checked = expectations.check({"student.worst_class_top1": {"min": 0.5}}, {"student": {"worst_class_top1": worst}})
    assert [row["ok"] for row in checked] == [False]


@pytest.mark.parametrize("classes", [FULL_TABLE_MAX + 1, 1000])
def test_many_classes_list_only_the_largest_drops_in_report_md(classes):
    labels = torch.arange(classes).repeat(2)
    by_class = ClassAccuracy.empty([f"c{i}" for i in range(classes)], labels)
    by_class.add("teacher", labels, labels)
    by_class.add("student", torch.where(labels < 12, (labels + 1) % classes, labels), labels)  # the first 12 classes missed
    md = "\n".join(by_class.markdown("student"))
    assert "The 10 classes where student falls furthest below the teacher (every class: per_class.csv)" in md
    assert md.count("| 100.0% | 0.0% |") == 10 and "| c12 |" not in md
    mistakes = [line for line in md.splitlines() if re.fullmatch(r"\| c\d+ \| c\d+ \| 2 \| 100.0% \|", line)]
    assert len(mistakes) == 10 and mistakes[0] == "| c0 | c1 | 2 | 100.0% |"  # each missed class, taken for the next


def test_the_report_states_the_timing_it_was_measured_with():
    timing = {"latency_repeats": 10, "latency_warmup": 2, "throughput_batch": 32}
    md = report.markdown({"student": ROW}, CONTEXT | {"timing": timing})
    assert "| b32 (img/s) |" in md and "b256" not in md
    assert "median of 10 batch-1 forwards after 2 warm-up; throughput: median of 7 batch-32 forwards" in md


def test_the_report_names_the_hub_commit_its_test_images_came_from():
    assert "- test images: 500 (embedded)\n" in report.markdown({"student": ROW}, CONTEXT)
    hub = CONTEXT | {"dataset": "uoft-cs/cifar10", "data_commit": "0b2714987fa478483af9968de7c934580d0bb9a2"}
    assert "- test images: 500 (uoft-cs/cifar10 at commit 0b2714987fa478483af9968de7c934580d0bb9a2)" in report.markdown({"student": ROW}, hub)
