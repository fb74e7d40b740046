"""The training loop: it learns, it resumes exactly where it stopped, its hooks go away."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from distillctl.config import (
    DatasetConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainerConfig,
)
from distillctl.data import Batches, load_splits
from distillctl.engine.fit import Trainee, fit, observing_epochs
from distillctl.engine.optim import build_optimizer, build_schedule
from distillctl.engine.taps import FeatureTaps
from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.models import create_model

DATA = OmegaConf.structured(DatasetConfig)


def make_run(seed: int = 0, epochs: int = 2, steps: int = 4):
    """A tiny but real distillation set-up on the embedded sample."""
    torch.manual_seed(seed)
    data = load_splits(DATA)
    trainer = OmegaConf.structured(TrainerConfig(epochs=epochs, batch_size=32, max_steps_per_epoch=steps, log_every=2))
    batches = Batches(data.train.images, data.train.labels, 32, DATA.mean, DATA.std, torch.device("cpu"), seed, max_steps=steps)
    student = create_model("resnet8", 10)
    teacher = create_model("resnet8", 10).eval()
    objective = build_objective({"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})
    optimizer = build_optimizer(student.parameters(), OmegaConf.structured(OptimizerConfig), 0.05, torch.device("cpu"))
    scheduler = build_schedule(optimizer, OmegaConf.structured(SchedulerConfig(name="cosine")), 0.05, len(batches), epochs)
    return Trainee(student, objective, optimizer, scheduler, {"model": "resnet8"}), batches, trainer, teacher


def no_validation(model) -> float:
    return 0.0


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight, batches, trainer, teacher = make_run()
    fit(straight, batches, no_validation, trainer, tmp_path / "a", "straight", teacher=teacher)

    class Stop(Exception):
        pass

    def stop_after_first(title, record):
        if record["epoch"] == 1:
            raise Stop

    interrupted, batches, trainer, teacher = make_run()
    (tmp_path / "b").mkdir()
    with pytest.raises(Stop), observing_epochs(stop_after_first):
        fit(interrupted, batches, no_validation, trainer, tmp_path / "b", "b", teacher=teacher)
    resumed, batches, trainer, teacher = make_run(seed=0)
    torch.manual_seed(123)  # resume must restore every RNG itself
    result = fit(resumed, batches, no_validation, trainer, tmp_path / "b", "b", teacher=teacher, resume=True)
    assert result.resumed_from == 1 and [r["epoch"] for r in result.history] == [1, 2]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path):
    trainee, batches, trainer, teacher = make_run()
    with pytest.raises(UserError, match="no checkpoint to resume"):
        fit(trainee, batches, no_validation, trainer, tmp_path, "x", teacher=teacher, resume=True)


def test_training_lowers_the_loss_and_leaves_the_teacher_alone(tmp_path):
    trainee, batches, trainer, teacher = make_run(epochs=3, steps=8)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = fit(trainee, batches, no_validation, trainer, tmp_path, "t", teacher=teacher)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in teacher.parameters())
    assert {"loss.ce", "loss.kd"} <= set(result.history[0])
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "history.jsonl").is_file()


def test_taps_capture_named_modules_and_are_removed():
    model = create_model("resnet8", 10)
    with FeatureTaps(model, ["layer2", "layer3.0.conv1"], "the student") as taps:
        model(torch.zeros(2, 3, 32, 32))
        features = taps.take()
        assert features["layer2"].shape == (2, 32, 16, 16) and features["layer3.0.conv1"].shape == (2, 64, 8, 8)
        assert taps.take() == {}
    assert all(not m._forward_hooks for m in model.modules())


def test_a_preact_tap_captures_what_an_in_place_relu_overwrites():
    model = create_model("resnet20", 10)
    with FeatureTaps(model, ["layer3", "layer3:preact"], "the student") as taps:
        for _ in range(2):  # the first batch checks the tap and narrows it to the last ReLU; the second uses that
            model(torch.randn(2, 3, 32, 32))
            features = taps.take()
            before = features["layer3:preact"]
            # The stage's output before its last block's final ReLU (a ReLU that also runs earlier in the block).
            assert before.shape == features["layer3"].shape and (before < 0).any()
            assert torch.equal(before.relu(), features["layer3"])
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_a_preact_tap_of_a_module_no_activation_ends_keeps_its_output():
    # What a MobileNet stage (a linear bottleneck) gives OFD and ReviewKD: features no activation has touched.
    model = create_model("resnet8", 10)
    head = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))  # a ReLU inside, but not last
    with FeatureTaps(model, ["layer3.0.bn2:preact", "layer3.0.bn2"], "s") as taps, FeatureTaps(head, [":preact"], "h") as h:
        for _ in range(2):  # the first batch finds out, the second runs as found
            model(torch.randn(2, 3, 32, 32))
            features = taps.take()
            assert torch.equal(features["layer3.0.bn2:preact"], features["layer3.0.bn2"])
            x = torch.randn(1, 3, 4, 4)
            out = head(x)
            assert torch.equal(h.take()[":preact"], out) and (out < 0).any()


def test_stages_are_named_from_the_last_on_any_model():
    import timm

    zoo, mobile = create_model("resnet8", 10), timm.create_model("mobilenetv3_small_050", num_classes=10)
    with FeatureTaps(zoo, ["-1", "-3:preact"], "s") as taps:
        zoo(torch.randn(2, 3, 32, 32))
        assert set(taps.take()) == {"-1", "-3:preact"}  # kept under the names the terms asked for
    with FeatureTaps(mobile, ["-1", "-2:preact"], "s") as taps:
        mobile(torch.randn(2, 3, 64, 64))
        features = taps.take()
        assert features["-1"].shape[-1] == 2 and features["-2:preact"].shape[-1] == 4  # reductions 32 and 16
    convnext = timm.create_model("convnext_atto", num_classes=10)  # keeps its pooling in its head
    with FeatureTaps(convnext, ["global_pool", "-1"], "t") as taps:
        convnext(torch.randn(1, 3, 64, 64))
        assert taps.take()["global_pool"].shape[:2] == (1, 320)
    with pytest.raises(UserError, match=r"has 5 stages \(bn1, blocks.0, blocks.1, blocks.3, blocks.5\).*-1 \(the last\) to -5"):
        FeatureTaps(mobile, ["-6"], "the student")
    with pytest.raises(UserError, match="lists no stages"):
        FeatureTaps(nn.Sequential(nn.Conv2d(3, 4, 1)), ["-1"], "the student")
    with pytest.raises(UserError, match="Did you mean 'global_pool'.*Its stages, -5 to -1: bn1, blocks.0"):
        FeatureTaps(mobile, ["pool"], "the student")


def test_a_wrong_layer_name_fails_with_the_closest_names():
    with pytest.raises(UserError, match="Did you mean 'layer2'"):
        FeatureTaps(create_model("resnet8", 10), ["layer_2"], "the student")


def test_feature_terms_train_under_bf16_autocast(tmp_path):
    # Regression: on a GPU the hint regressor got bf16 features outside autocast and crashed; CPU autocast shows it too.
    trainee, batches, trainer, teacher = make_run(epochs=1, steps=2)
    trainer.precision = "bf16"
    objective = build_objective({"ce": {}, "hint": {}, "at": {"kind": "attention"}, "adv": {"kind": "adversarial"}})
    objective.setup(trainee.model, teacher, next(iter(batches))[0])
    trainee.objective = objective
    trainee.optimizer = build_optimizer([*trainee.model.parameters(), *objective.student_parameters()], OmegaConf.structured(OptimizerConfig), 0.05, torch.device("cpu"))
    trainee.scheduler = build_schedule(trainee.optimizer, OmegaConf.structured(SchedulerConfig(name="constant")), 0.05, len(batches), 1)
    result = fit(trainee, batches, no_validation, trainer, tmp_path, "bf16", teacher=teacher)
    assert all(math.isfinite(result.history[-1][f"loss.{k}"]) for k in ("ce", "hint", "at", "adv"))


def test_top5_is_not_reported_where_every_label_is_in_the_top_five():
    from distillctl.engine.predict import top5_accuracy

    assert top5_accuracy(torch.randn(4, 5), torch.tensor([0, 1, 2, 3])) is None  # 5 classes: always 100%
    ranked = torch.arange(10, 0, -1.0).repeat(4, 1)  # classes 0-4 are every row's top five
    assert top5_accuracy(ranked, torch.tensor([0, 4, 5, 9])) == 0.5


class DiesAfter:
    """Batches whose process is killed once `steps` of them have been trained on."""

    def __init__(self, batches, steps: int) -> None:
        self.batches, self.left = batches, steps

    def __getattr__(self, name):
        return getattr(self.batches, name)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for item in self.batches:
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            yield item


@pytest.mark.parametrize("loader", ["resident", "stream"])
def test_a_run_stopped_mid_epoch_resumes_from_its_step_to_the_same_weights(tmp_path, loader):
    from distillctl.data import load_splits

    data = load_splits(OmegaConf.merge(DATA, {"loader": loader, "workers": 0, "train_limit": 400, "val_size": 16}))

    def run(out, stop_at=None, resume=False):
        torch.manual_seed(0)
        trainee, _, trainer, teacher = make_run(epochs=2, steps=5)
        trainer.checkpoint_every_steps = 2
        batches = data.train.train_batches(32, DATA.mean, DATA.std, torch.device("cpu"), seed=0, max_steps=5)
        if stop_at is not None:  # the process dies after `stop_at` steps of the second epoch
            batches = DiesAfter(batches, 5 + stop_at)
        torch.manual_seed(99)  # resume restores every RNG itself
        return trainee, fit(trainee, batches, no_validation, trainer, out, "mid", teacher=teacher, resume=resume)

    straight, _ = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=3)  # the last checkpoint is epoch 2, step 2
    assert "checkpoint: epoch 2, step 2" in (tmp_path / "b" / "train.log").read_text()
    resumed, result = run(tmp_path / "b", resume=True)
    assert result.resumed_from == 1
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_run_killed_between_its_checkpoints_two_files_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from distillctl import artifacts
    from distillctl.data import load_splits

    data = load_splits(OmegaConf.merge(DATA, {"loader": "resident", "train_limit": 400, "val_size": 16}))

    def run(out, resume=False):
        torch.manual_seed(0)
        trainee, _, trainer, teacher = make_run(epochs=2, steps=5)
        trainer.checkpoint_every_steps = 2
        batches = data.train.train_batches(32, DATA.mean, DATA.std, torch.device("cpu"), seed=0, max_steps=5)
        return trainee, fit(trainee, batches, no_validation, trainer, out, "pair", teacher=teacher, resume=resume)

    straight, _ = run(tmp_path / "a")
    write, writes = artifacts.atomic_write, []

    def dies_between_the_files(path, produce):
        if Path(path).name in ("last.safetensors", "last_state.pt"):
            writes.append(Path(path).name)
            if len(writes) == 10:  # checkpoints at epoch 1 steps 2 and 4, its end, epoch 2 step 2; then step 4's second file
                raise KeyboardInterrupt
        return write(path, produce)

    monkeypatch.setattr(artifacts, "atomic_write", dies_between_the_files)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(artifacts, "atomic_write", write)
    resumed, _ = run(tmp_path / "b", resume=True)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_device_that_is_not_there_is_one_line_before_anything_loads(monkeypatch):
    from distillctl.engine.device import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    for spec, said in [("tpu", "is not a device distillctl trains on"), ("meta", "is not a device distillctl trains on")]:
        with pytest.raises(UserError, match=said):
            pick_device(spec)
    # (a traceback from deep in torch before: 'PyTorch is not linked with support for mps devices')
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="has no MPS"):
        pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"trainer.device=cuda:2 but this machine shows 2 CUDA device\(s\), cuda:0 to cuda:1"):
        pick_device("cuda:2")


def test_compiling_on_the_cpu_is_warned_about_and_auto_leaves_it_off():
    from omegaconf import OmegaConf

    from distillctl.engine.device import compile_policy

    cpu = torch.device("cpu")
    forced = compile_policy(cpu, OmegaConf.create({"compile": "true", "compile_mode": "auto"}), False)
    assert forced[0] == "default" and forced[1].startswith("warning: trainer.compile=true on the CPU")
    assert compile_policy(cpu, OmegaConf.create({"compile": "auto", "compile_mode": "auto"}), False) == (None, None)


@pytest.mark.parametrize("on_nan", ["stop", "skip_step"])
def test_a_non_finite_loss_stops_the_run_or_skips_its_step(tmp_path, on_nan):
    trainee, batches, trainer, teacher = make_run(epochs=1, steps=4)
    trainer.on_nan = on_nan
    real, calls = trainee.objective.forward, []

    def second_step_diverges(out):
        loss, parts = real(out)
        calls.append(1)
        return (loss * math.inf, parts) if len(calls) == 2 else (loss, parts)

    trainee.objective.forward = second_step_diverges
    if on_nan == "stop":
        with pytest.raises(UserError, match="the loss became inf in epoch 1 .by step 2.: training diverged"):
            fit(trainee, batches, no_validation, trainer, tmp_path, "t", teacher=teacher)
        assert not (tmp_path / "last_state.pt").exists()  # nothing of the diverged epoch was saved
        return
    result = fit(trainee, batches, no_validation, trainer, tmp_path, "t", teacher=teacher)
    assert result.history[0]["skipped_steps"] == 1 and math.isfinite(result.history[0]["loss"])
    assert all(torch.isfinite(p).all() for p in trainee.model.parameters())


class SignalledAt(DiesAfter):
    """Batches during whose step `steps` (counted over epochs) the process receives `signum`: SIGTERM as from a
    scheduler, SIGINT as from Ctrl-C."""

    def __init__(self, batches, steps: int, signum: int) -> None:
        super().__init__(batches, steps)
        self.signum = signum

    def __iter__(self):
        import os

        for item in self.batches:
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), self.signum)
            yield item


@pytest.mark.parametrize("signalled_at, signame, said", [
    (5 + 3, "SIGTERM", "stopped by SIGTERM in epoch 2 at step 3 of 5, with the training state saved there"),
    (5, "SIGTERM", "stopped by SIGTERM after epoch 1 of 2"),  # at an epoch's last step: that epoch ends and is saved first
    (5 + 3, "SIGINT", "stopped by Ctrl-C in epoch 2 at step 3 of 5, with the training state saved there"),
])
def test_a_stop_signal_stops_at_the_next_step_with_its_state_saved_and_resume_gives_the_same_weights(
        tmp_path, signalled_at, signame, said, ctrl_c_as_in_a_terminal):
    import signal
    import threading

    from distillctl.engine.stop_signal import SignalStop

    assert threading.current_thread() is threading.main_thread()  # else no handler is installed and SIGTERM ends pytest
    signum = getattr(signal, signame)
    data = load_splits(OmegaConf.merge(DATA, {"loader": "resident", "train_limit": 400, "val_size": 16}))

    def run(out, signalled_at=None, resume=False):
        torch.manual_seed(0)
        trainee, _, trainer, teacher = make_run(epochs=2, steps=5)
        batches = data.train.train_batches(32, DATA.mean, DATA.std, torch.device("cpu"), seed=0, max_steps=5)
        if signalled_at is not None:
            batches = SignalledAt(batches, signalled_at, signum)
        return trainee, fit(trainee, batches, no_validation, trainer, out, "stop", teacher=teacher, resume=resume)

    straight, _ = run(tmp_path / "a")
    before = signal.getsignal(signum)
    with pytest.raises(SignalStop, match=said) as stopped:
        run(tmp_path / "b", signalled_at)
    assert stopped.value.code == 128 + signum
    assert signal.getsignal(signum) is before  # the process's own handler is back
    log = (tmp_path / "b" / "train.log").read_text()
    assert ("checkpoint: epoch 2, step 3" in log) == (signalled_at == 8) and "epoch 1/2" in log
    resumed, result = run(tmp_path / "b", resume=True)
    assert result.resumed_from == 1
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
