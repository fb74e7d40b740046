"""Hostile and clumsy input through the CLI, against a workspace that holds finished results: every case must end
in exit 2 with one line on stderr and no traceback, run nothing it was handed, and leave the results as they were."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import preloaded_cli
import pytest
import torch
from conftest import SHARED_CIFAR, TINY_RECIPE
from safetensors.torch import load_file, save_file

from distillctl.artifacts import read_metadata
from distillctl.workspace import RESULT_FILES

pytestmark = pytest.mark.slow

TEACHER = "runs/tiny/teacher/model.safetensors"


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`distillctl args...` in cwd, as a user would run it (forked with the imports done: tests/preloaded_cli.py)."""
    return preloaded_cli.shared().run(args, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a finished tiny pipeline and the hostile files the cases point at."""
    home = tmp_path_factory.mktemp("hostile")
    (home / "recipes").mkdir()
    (home / "recipes/tiny.yaml").write_text(TINY_RECIPE)
    done = run_cli(home, "pipeline", "recipe=tiny", "trainer.threads=2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    write_hostile_files(home)
    return home


def write_hostile_files(home: Path) -> None:
    """Checkpoints, recipes and data sets made to break things."""
    bad = home / "bad"
    bad.mkdir()
    (bad / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (bad / "empty.safetensors").write_bytes(b"")
    # A header that claims 2**60 bytes: a reader that trusts it allocates without bound.
    (bad / "huge_header.safetensors").write_bytes((2**60).to_bytes(8, "little") + b"{}")

    class Payload:  # unpickling this would run code
        def __reduce__(self):
            return (os.system, (f"touch {home / 'PWNED'}",))

    (bad / "pickled.pt").write_bytes(pickle.dumps({"state_dict": Payload()}))
    tensors = load_file(home / TEACHER)
    for name, meta in {
        "checkpoint_path": {"model": "resnet8", "num_classes": 10, "kwargs": {"checkpoint_path": "/etc/passwd"}},
        "deep": {"model": "resnet8", "num_classes": 10, "kwargs": {"depth": 10**8}},
        "classes": {"model": "resnet8", "num_classes": 10**9},
        "model_name": {"model": "../../etc/passwd", "num_classes": 10},
        "preprocess": {"model": "resnet8", "num_classes": 10, "preprocess": {"image_size": 32, "resize": "exec", "crop_pct": 1.0,
                                                                             "interpolation": "bilinear"}},
        "class_names": {"model": "resnet8", "num_classes": 10, "classes": ["cat"]},
    }.items():
        save_file(tensors, str(bad / f"{name}.safetensors"), metadata={"distillctl": json.dumps(meta)})
    int8_file = home / "runs/tiny/int8_static/model.safetensors"
    int8_meta, int8_tensors = read_metadata(int8_file), load_file(int8_file)
    for name, change in {
        "int8_size": {"image_size": 10**6},  # the traced example would be 3 * 10**12 floats
        "int8_dtype": {"layout": {**int8_meta["quantization"]["layout"], "entries": {"x": {"dtype": "load"}}}},
        "int8_layout": {"layout": {**int8_meta["quantization"]["layout"], "entries": {"nothing.here": {"scale": 1.0, "zero_point": 0}}}},
    }.items():
        meta = {**int8_meta, "quantization": {**int8_meta["quantization"], **change}}
        save_file(int8_tensors, str(bad / f"{name}.safetensors"), metadata={"distillctl": json.dumps(meta)})
    other = {k: v for k, v in tensors.items() if not k.startswith("fc.")}  # weights of another head
    other["fc.weight"], other["fc.bias"] = torch.zeros(3, tensors["fc.weight"].shape[1]), torch.zeros(3)
    save_file(other, str(bad / "wrong_shape.safetensors"), metadata={"distillctl": json.dumps({"model": "resnet8", "num_classes": 10})})
    (bad / "a_folder.safetensors").mkdir()
    save_file(tensors, str(bad / "foreign.safetensors"))  # another tool's weights: no classes, no preprocessing
    # An ONNX file (an identity graph) whose metadata asks for images of 10**6 x 10**6 pixels.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    for key, value in {"num_classes": 10, "preprocess": {"image_size": 10**6, "resize": "crop", "crop_pct": 1.0,
                                                         "interpolation": "bilinear"}}.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, str(bad / "huge_images.onnx"))
    (bad / "broken_photos").mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / "broken_photos" / name).write_bytes(b"\x89PNG then nothing")

    (bad / "code.yaml").write_text(f"# @package _global_\ntrainer: !!python/object/apply:os.system ['touch {home / 'PWNED'}']\n")
    (bad / "list.yaml").write_text("- trainer\n- epochs\n")
    (bad / "typo.yaml").write_text("# @package _global_\ntrainer: {epochz: 3}\n")
    (bad / "syntax.yaml").write_text("# @package _global_\ntrainer: {epochs: 3\n")
    (bad / "group.yaml").write_text("# @package _global_\ndefaults:\n  - override /optimizer: adam\n")
    (bad / "section.yaml").write_text("# @package _global_\ntrainer: 3\n")
    (bad / "group_in_body.yaml").write_text("# @package _global_\nloss: kd\n")
    (bad / "interpolated_section.yaml").write_text("# @package _global_\nteacher: ${student}\n")
    (bad / "value.yaml").write_text("# @package _global_\ntrainer: {epochs: abc}\n")

    truncated = bad / "truncated/plain_text"
    truncated.mkdir(parents=True)
    for split in ("train", "test"):
        whole = (SHARED_CIFAR / "plain_text" / f"{split}-00000-of-00001.parquet").read_bytes()
        (truncated / f"{split}-00000-of-00001.parquet").write_bytes(whole[: len(whole) // 3])
    import pyarrow.parquet as pq

    images = pq.read_table(SHARED_CIFAR / "plain_text/test-00000-of-00001.parquet").slice(0, 20).column("img").to_pylist()
    for i, image in enumerate(images[:18]):  # real photos, but of 3 classes where the tiny models know CIFAR's 10
        folder = bad / "three_classes" / ("cat", "dog", "frog")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(image["bytes"])
    for split in ("train", "test"):
        one = bad / f"one_class/{split}/cat"
        one.mkdir(parents=True)
        for i, image in enumerate(images):
            (one / f"{i}.png").write_bytes(image["bytes"])
        (bad / f"no_classes/{split}").mkdir(parents=True)
        for cls in ("cat", "dog"):  # splits named otherwise: not to be trained as two classes "training" and "testing"
            renamed = bad / f"renamed_splits/{split}ing/{cls}"
            renamed.mkdir(parents=True)
            (renamed / "0.png").write_bytes(images[0]["bytes"])
        for cls in ("cat", "dog"):
            folder = bad / f"bombs/{split}/{cls}"
            folder.mkdir(parents=True)
            for i, image in enumerate(images[:4]):
                (folder / f"{i}.png").write_bytes(image["bytes"])
    # A 100-byte PNG announcing 20000 x 20000 pixels: decoding it would allocate 1.2 GB.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    size = (20000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (bad / "bombs/train/cat/bomb.png").write_bytes(bomb)

    state = home / "runs/poisoned_state/student"
    state.mkdir(parents=True)
    shutil.copy(home / "runs/tiny/student/last.safetensors", state / "last.safetensors")
    (state / "last_state.pt").write_bytes(pickle.dumps({"epoch": Payload()}))


def snapshot(root: Path, results_only: bool = False) -> dict[str, str]:
    """Each file under runs/ (the locks aside) by its hash; results_only: the stages' results alone."""
    found = {}
    for path in sorted((root / "runs").rglob("*")):
        if path.is_file() and ".locks" not in path.parts and (not results_only or path.name in RESULT_FILES):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_refused(home: Path, args: list[str], expected: str, results_only: bool = False, env: dict[str, str] | None = None) -> str:
    """Run one case: exit 2, one line on stderr naming the problem, nothing executed, results unchanged."""
    before = snapshot(home, results_only)
    proc = run_cli(home, *args, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected in lines[0], lines[0]
    assert not (home / "PWNED").exists(), "a hostile file ran code"
    assert snapshot(home, results_only) == before, "a refused run changed the workspace"
    return lines[0]


CASES = {
    # Values that make no sense
    "negative epochs": (["distill", "recipe=tiny", "trainer.epochs=-1"], "trainer.epochs=-1 is out of range: it must be at least 1"),
    "zero temperature": (["distill", "recipe=tiny", "loss.terms.kd.temperature=0"], "loss.terms.kd.temperature=0.0 is out of range"),
    "nan learning rate": (["distill", "recipe=tiny", "optimizer.lr=nan"], "optimizer.lr=nan is out of range"),
    "negative learning rate": (["distill", "recipe=tiny", "optimizer.lr=-1"], "optimizer.lr=-1.0 is out of range"),
    "infinite loss weight": (["distill", "recipe=tiny", "loss.terms.kd.weight=inf"], "loss.terms.kd.weight=inf"),
    "no calibration": (["quantize", "recipe=tiny", "quantize.calibration_batches=0"], "quantize.calibration_batches=0 is out of range"),
    "zero batch": (["distill", "recipe=tiny", "trainer.batch_size=0"], "trainer.batch_size=0 is out of range"),
    "tiny images": (["distill", "recipe=tiny", "dataset.image_size=3"], "dataset.image_size=3 is out of range"),
    "no threads": (["distill", "recipe=tiny", "trainer.threads=0"], "trainer.threads=0 is out of range"),
    "all smoothing": (["distill", "recipe=tiny", "trainer.label_smoothing=1"], "(from ${trainer.label_smoothing}) is out of range"),
    # (a traceback from torch.manual_seed before; a negative seed failed only in a search's sampler)
    "seed past 64 bits": (["distill", "recipe=tiny", "seed=1180591620717411303424"], "seed=1180591620717411303424 is out of range: it must be at least 0 and at most 4294967295"),
    "negative seed to reproduce": (["reproduce", "recipe=tiny", "reproduce.seeds=[0,-3]"], "give one or more distinct seeds from 0 to 4294967295"),
    "negative limit": (["distill", "recipe=tiny", "dataset.test_limit=-5"], "dataset.test_limit=-5 is out of range"),
    "prune past the model": (["prune", "recipe=tiny", "prune.target_macs_ratio=1.5"], "prune.target_macs_ratio=1.5 is out of range"),
    # A setting only another method reads would be ignored, and the run would do something else than asked.
    "sparsity for structured": (["prune", "recipe=tiny", "prune.sparsity=0.7"], "prune.sparsity is read by prune=unstructured only, and this run uses prune=structured: add prune=unstructured"),
    "qat epochs for static": (["pipeline", "recipe=tiny", "quantize.qat_epochs=3"], "quantize.qat_epochs is read by quantize=int8_qat only"),
    "epochs not a number": (["distill", "recipe=tiny", "trainer.epochs=abc"], "trainer.epochs=abc"),
    "unknown precision": (["distill", "recipe=tiny", "trainer.precision=fp64"], "is not one of auto, fp32, bf16"),
    "unknown on_nan": (["distill", "recipe=tiny", "trainer.on_nan=ignore"], "is not one of stop, skip_step"),
    # Keys the schema does not know, and constructor arguments that are not architecture arguments
    "added unknown key": (["distill", "recipe=tiny", "+student.num_classes=7"], "unknown config key 'student.num_classes'"),
    "num_classes argument": (["distill", "recipe=tiny", "+student.kwargs.num_classes=7"], "student.kwargs.num_classes is set by distillctl"),
    "path argument": (["distill", "recipe=tiny", "+teacher.kwargs.checkpoint_path=/etc/passwd"], "teacher.kwargs.checkpoint_path: constructor arguments shape"),
    "huge argument": (["distill", "recipe=tiny", "+student.kwargs.depth=100000000"], "student.kwargs.depth=100000000"),
    # A mapping on the command line merges into the one there: `{}` looked like it emptied it and changed nothing.
    "emptied loss terms": (["distill", "recipe=tiny", "loss.terms={}"], "'loss.terms={}' changes nothing: a mapping given on the command line is merged into loss.terms, which keeps its keys. Drop one with '~loss.terms.NAME'."),
    "emptied expectations": (["evaluate", "recipe=tiny", "expect={}"], "Drop them all with '~expect', or one with '~expect.NAME'."),
    "emptied section": (["distill", "recipe=tiny", "trainer={}"], "Set them one by one (trainer.NAME=VALUE)."),
    "argument without +": (["distill", "recipe=tiny", "student.kwargs.drop_rate=0.1"], "add it with +student.kwargs.drop_rate=0.1"),
    "argument the model lacks": (["distill", "recipe=tiny", "+student.kwargs.wings=2"], "model 'resnet8' does not take these options"),
    "missing label column": (["distill", "recipe=tiny", "dataset.label_column=nolabel"], "dataset.label_column=nolabel: the data set has no such column"),
    # Typos
    "unknown command": (["distil", "recipe=tiny"], "Did you mean 'distill'?"),
    "unknown recipe": (["distill", "recipe=tyni"], "unknown recipe 'tyni'"),
    "print a sweep's config": (["distill", "-m", "recipe=tiny", "seed=0,1", "--cfg", "job"], "leave out -m and give one value"),
    "misspelt key": (["distill", "recipe=tiny", "trainer.epochz=3"], "Did you mean 'epochs'?"),
    "unknown model": (["distill", "recipe=tiny", "student.name=resnet9"], "unknown model 'resnet9'"),
    "unknown method": (["quantize", "recipe=tiny", "quantize.method=int8_statik"], "Did you mean 'int8_static'"),
    "unknown logger": (["distill", "recipe=tiny", "logger=tensorbord"], "tensorbord"),
    # Checkpoints
    "missing checkpoint": (["distill", "recipe=tiny", "teacher.checkpoint=bad/missing.safetensors"], "does not exist"),
    "corrupt checkpoint": (["distill", "recipe=tiny", "teacher.checkpoint=bad/corrupt.safetensors"], "may be corrupt"),
    "empty checkpoint": (["distill", "recipe=tiny", "teacher.checkpoint=bad/empty.safetensors"], "may be corrupt"),
    "header of 2**60 bytes": (["distill", "recipe=tiny", "teacher.checkpoint=bad/huge_header.safetensors"], "may be corrupt"),
    "pickled checkpoint": (["distill", "recipe=tiny", "teacher.checkpoint=bad/pickled.pt"], "pickled Python objects, which are never loaded"),
    "metadata loads a file": (["distill", "recipe=tiny", "teacher.checkpoint=bad/checkpoint_path.safetensors"], "untrustworthy metadata (model argument 'checkpoint_path'"),
    "metadata allocates": (["distill", "recipe=tiny", "teacher.checkpoint=bad/deep.safetensors"], "untrustworthy metadata (model argument depth=100000000"),
    "metadata class count": (["distill", "recipe=tiny", "teacher.checkpoint=bad/classes.safetensors"], "untrustworthy metadata (num_classes"),
    "metadata model path": (["distill", "recipe=tiny", "teacher.checkpoint=bad/model_name.safetensors"], "untrustworthy metadata (model name"),
    "int8 example of 10**6 px": (["distill", "recipe=tiny", "teacher.checkpoint=bad/int8_size.safetensors"], "untrustworthy metadata (quantization image_size"),
    "int8 layout names torch.load": (["distill", "recipe=tiny", "teacher.checkpoint=bad/int8_dtype.safetensors"], "quantization layout dtype 'load'"),
    "int8 layout without tensors": (["distill", "recipe=tiny", "teacher.checkpoint=bad/int8_layout.safetensors"], "int8 layout that does not match its tensors"),
    "another head": (["distill", "recipe=tiny", "teacher.checkpoint=bad/wrong_shape.safetensors"], "does not fit this model"),
    "a folder as checkpoint": (["distill", "recipe=tiny", "teacher.checkpoint=bad/a_folder.safetensors"], "is a folder, not a weights file"),
    # (the run records itself as started before it reads the state: only the results must stay as they were)
    "pickled resume state": (["distill", "recipe=tiny", "run_dir=runs/poisoned_state", "resume=true",
                              f"teacher.checkpoint={TEACHER}"], "could not read training state", True),
    "resume with nothing": (["distill", "recipe=tiny", "run_dir=runs/fresh", "resume=true", f"teacher.checkpoint={TEACHER}"],
                            "holds no checkpoint to resume from"),
    # Recipe files
    "recipe runs code": (["distill", "recipe=bad/code.yaml"], "is not valid YAML"),
    "recipe is a list": (["distill", "recipe=bad/list.yaml"], "must be a mapping of config keys"),
    "recipe with a typo": (["distill", "recipe=bad/typo.yaml"], "in recipe/typo: unknown config key 'trainer.epochz'. Did you mean 'epochs'?"),
    "recipe not YAML": (["distill", "recipe=bad/syntax.yaml"], "is not valid YAML"),
    "recipe names no such group": (["distill", "recipe=bad/group.yaml"], "adam"),
    "recipe file missing": (["distill", "recipe=bad/none.yaml"], "none.yaml"),
    # (these four were Hydra's merge errors, naming neither the key nor the recipe's line to fix)
    "recipe gives a section a number": (["distill", "recipe=bad/section.yaml"], "'trainer' must be a mapping of its keys"),
    "recipe picks a group in its body": (["distill", "recipe=bad/group_in_body.yaml"], "in the defaults list as `- override /loss: kd`"),
    "recipe interpolates a section": (["distill", "recipe=bad/interpolated_section.yaml"],
                                      "'teacher: ${student}' cannot set a whole section by interpolation: interpolate its keys one by one (teacher: {name: '${student.name}'})"),
    "recipe value of the wrong type": (["distill", "recipe=bad/value.yaml"], "in recipe/value: trainer.epochs: Value 'abc'"),
    # Workspaces ('run_dir=' ran the stages into the current folder)
    "run_dir empty": (["distill", "recipe=tiny", "run_dir="], "run_dir is empty"),
    "run_dir inside a file": (["distill", "recipe=tiny", "run_dir=bad/list.yaml/run"], "is a file, not a folder"),
    # Data sets
    "dataset.path a file": (["train-teacher", "recipe=tiny", "dataset.path=bad/list.yaml", "run_dir=runs/data"], "is a file, not a folder"),
    "truncated parquet": (["train-teacher", "recipe=tiny", "dataset.path=bad/truncated", "run_dir=runs/data"], "Is a file corrupt?"),
    "one class": (["train-teacher", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/one_class", "run_dir=runs/data"],
                  "a classifier needs at least two"),
    "split folders named otherwise": (["train-teacher", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/renamed_splits", "run_dir=runs/data"],
                                      "name them with dataset.train_split=training dataset.test_split=testing"),
    "no classes": (["train-teacher", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/no_classes", "run_dir=runs/data"], "no_classes"),
    "photos without class folders": (["train-teacher", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/one_class/train/cat",
                                      "run_dir=runs/data"], "holds images but no class folders, so they have no labels"),
    "decompression bomb": (["train-teacher", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/bombs", "run_dir=runs/data",
                            "dataset.on_bad_image=error"], "bomb.png (DecompressionBombError"),
    "no such folder": (["train-teacher", "recipe=tiny", "dataset.path=./nowhere"], "does not exist"),
    "Hub id offline": (["train-teacher", "recipe=tiny", "dataset.path=someone/some-data"], "not in the local Hugging Face cache"),
    # Predicting
    "predict without images": (["predict", "recipe=tiny"], "predict needs images: add predict.input=PATH"),
    "predict a missing folder": (["predict", "recipe=tiny", "predict.input=bad/nowhere"], "predict.input 'bad/nowhere' does not exist"),
    "predict a folder without images": (["predict", "recipe=tiny", "predict.input=bad/no_classes"], "no images under 'bad/no_classes'"),
    "predict with a misspelt model": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=prund"], "Did you mean 'pruned'?"),
    "predict with a model not made": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=onnx_int8"],
                                      "there is no onnx_int8 model in runs/tiny"),
    "predict with crafted preprocessing": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=bad/preprocess.safetensors"],
                                           "untrustworthy metadata (preprocess resize 'exec')"),
    "predict with an ONNX file's crafted size": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=bad/huge_images.onnx"],
                                                 "untrustworthy metadata (preprocess image_size '1000000')"),
    "predict with class names that do not fit": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=bad/class_names.safetensors"],
                                                 "untrustworthy metadata (classes is not one short name per class)"),
    "predict.output inside a file": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.output=bad/list.yaml/out.csv"],
                                     "predict.output: "),
    "predict only broken files": (["predict", "recipe=tiny", "predict.input=bad/broken_photos"], "none of the 2 images under bad/broken_photos"),
    "predict with a foreign file": (["predict", "recipe=tiny", "predict.input=bad/one_class", "predict.model=bad/foreign.safetensors"],
                                    "records no classes or preprocessing"),
    # Models and data of other classes (their scores and the distilled logits were silently wrong)
    "distill from a teacher of other classes": (["distill", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/three_classes",
                                                 "dataset.image_size=32", "run_dir=runs/data", f"teacher.checkpoint={TEACHER}"],
                                                "predicts 10 classes (airplane, automobile, bird, cat, ...) but the data set has 3 (cat, dog, frog)"),
    "evaluate on other classes": (["evaluate", "recipe=tiny", "dataset=imagefolder", "dataset.path=bad/three_classes",
                                   "dataset.image_size=32"], "but the data set has 3 (cat, dog, frog)"),
    # Stages out of order
    "prune before distill": (["prune", "recipe=tiny", "run_dir=runs/empty"], "no distilled student"),
    "quantize a missing pruned model": (["quantize", "recipe=tiny", "run_dir=runs/empty", "quantize.source=pruned"], "no pruned model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_or_clumsy_input_is_one_line_and_changes_nothing(home, case):
    args, expected, *results_only = CASES[case]
    threads = ["trainer.threads=1"] if args[0] != "distil" else []  # before the case's own values, which win
    assert_refused(home, [args[0], *threads, *args[1:]], expected, *results_only)


def test_a_diverging_run_stops_and_keeps_the_results(home):
    # A weight past float32's range makes the first step's loss infinite.
    line = assert_refused(home, ["distill", "recipe=tiny", "force=true", "loss.terms.kd.weight=1e39", "trainer.threads=1"],
                          "the loss became inf in epoch 1 (by step 1): training diverged", results_only=True)
    assert "Lower the learning rate" in line
    # `distillctl runs` says so, where it said "interrupted" and offered resume=true, which diverges again
    listed = run_cli(home, "runs").stdout
    assert "student\tfinished; a newer run failed: the loss became inf in epoch 1 (by step 1): training diverged\t" in listed


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at where (needs root: CI runs as root here); unmounted afterwards."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip()}); the disk cases need root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_or_read_only_folder_is_one_line_before_training(home, tmp_path):
    teacher = f"teacher.checkpoint={home / TEACHER}"
    with small_filesystem(tmp_path / "small", "300k") as small:
        line = assert_refused(home, ["distill", "recipe=tiny", f"run_dir={small}/run", teacher, "trainer.threads=1"], "MB are free")
        assert "needs about" in line
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        assert_refused(home, ["distill", "recipe=tiny", f"run_dir={small}/run", teacher, "trainer.threads=1"], "is a read-only file system")
        # A sweep's folder, which Hydra makes before any job's own checks run.
        line = assert_refused(home, ["distill", "-m", "recipe=tiny", f"run_dir={small}/run", teacher, "seed=0,1"], "is a read-only file system")
        assert line.startswith(f"error: run_dir: {small}")


def test_caches_on_a_full_disk_cost_speed_not_the_run(home, tmp_path):
    teacher = f"teacher.checkpoint={home / TEACHER}"
    with small_filesystem(tmp_path / "small", "300k") as small:
        proc = run_cli(home, "distill", "recipe=tiny", "run_dir=runs/cacheless", teacher, "trainer.threads=1",
                       env={"DISTILLCTL_CACHE": str(small)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "warning: decoded images not cached (the disk is full" in proc.stdout
        assert not [p for p in small.rglob("*") if p.is_file()], "a torn cache file was left behind"


def test_a_stage_another_run_writes_is_refused_or_waited_for(home):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from distillctl.workspace import Workspace; "
         "Workspace(Path('runs/tiny')).claim('student'); print('held', flush=True); time.sleep(300)"],
        cwd=home, stdout=subprocess.PIPE, text=True,
    )
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_refused(home, ["distill", "recipe=tiny", "force=true", "trainer.threads=1"], f"another distillctl run (pid {holder.pid})")
        waiter = subprocess.Popen([sys.executable, "-m", "distillctl", "distill", "recipe=tiny", "force=true", "wait=true",
                                   "trainer.threads=1"], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in waiter.stdout:  # it says whom it waits for, then waits
            seen.append(line)
            if "waiting for another distillctl run" in line:
                break
        assert f"(pid {holder.pid})" in seen[-1], "".join(seen)[-2000:]
        assert waiter.poll() is None
        holder.kill()  # the OS releases its lock: the waiting run starts
        rest = waiter.communicate(timeout=300)[0]
        assert waiter.returncode == 0, rest[-2000:]
        assert "student: resnet8" in rest
    finally:
        for proc in (holder, waiter):
            if proc is not None:
                proc.kill()
                proc.wait()
