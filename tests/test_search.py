"""`distillctl search`: the space is checked before any trial, trials train, stop, resume after SIGKILL and end in a
report and a runnable best.yaml; plus the Hydra sweeper path (interval sweeps, an objective returned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from distillctl import config
from distillctl.cli import sweep_objective
from distillctl.composition import check_composes, compose_config, override, prepare_overrides
from distillctl.errors import UserError
from distillctl.search.space import parse_param, parse_space
from distillctl.config import PrunerName
from distillctl.search.study import make_pruner
from distillctl.stages.search import Objective

# Trials of 2 epochs x 2 steps on the tiny recipe (its teacher is trained once, shared by every trial).
SEARCH = ["recipe=tiny", "search=kd", "search.epochs=2", "trainer.max_steps_per_epoch=2", "trainer.threads=2", "dataset.test_limit=100"]
CONFIG = OmegaConf.create({"loss": {"terms": {"kd": {"temperature": 4.0, "weight": 0.9}}}, "trainer": {"batch_size": 64}})


def results(root: Path) -> dict:
    """The search's results.json."""
    return json.loads((root / "runs/tiny/search/results.json").read_text())


def test_a_range_takes_the_type_of_the_key_it_sets():
    assert not parse_param("loss.terms.kd.temperature", {"low": 1, "high": 8}, 4.0).integer
    assert parse_param("trainer.batch_size", {"low": 32, "high": 256, "step": 32}, 64).integer
    assert parse_param("trainer.batch_size", {"low": 32, "high": 256, "type": "float"}, 64).integer is False


@pytest.mark.parametrize("space, message", [
    ({"loss.terms.kd.temprature": {"low": 1, "high": 8}}, "unknown config key 'loss.terms.kd.temprature'. Did you mean 'temperature'"),
    ({"loss.terms.kd.temperature": {"low": 8, "high": 1}}, "low (8) must be less than high (1)"),
    ({"loss.terms.kd.temperature": {"choices": []}}, "choices must be a non-empty list"),
    ({"loss.terms.kd.temperature": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"loss.terms.kd.temperature": {"low": 1}}, "a range needs both low and high"),
    ({"loss.terms.kd.temperature": {"low": 1, "high": 2, "stepp": 1}}, "unknown field(s) stepp"),
    ({"loss.terms.kd.temperature": 4}, "give a range"),
    ({"teacher.name": {"choices": ["resnet8", "resnet20"]}}, "cannot be searched"),
    ({}, "search.space is empty"),
])
def test_a_bad_space_is_one_clear_error(space, message):
    with pytest.raises(UserError, match="search.space") as caught:
        parse_space(space, CONFIG)
    assert message in str(caught.value)


@pytest.mark.parametrize("recipe", ["cifar_resnet", "cifar_at", "cifar_dkd", "cifar_fitnet", "cifar_adversarial", "quickstart"])
def test_each_method_recipe_searches_its_own_knobs(recipe):
    # cifar_at once inherited cifar_resnet's KD space and could not search at all (its loss has no kd term)
    from distillctl.bounds import check_config
    from distillctl.search.space import check_space

    config.register()
    overrides = prepare_overrides([f"recipe={recipe}"])
    cfg = compose_config(overrides)
    params = parse_space(OmegaConf.to_container(cfg.search.space), cfg)
    terms = {p.key.split(".")[2] for p in params if p.key.startswith("loss.terms.")}
    assert terms and terms <= set(cfg.loss.terms)
    check_space(params, cfg, lambda extra: compose_config([*overrides, *extra]), check_config)


def test_a_space_for_another_method_names_the_terms_and_the_spaces_there_are():
    config.register()
    cfg = compose_config(prepare_overrides(["recipe=cifar_at", "search=kd"]))
    with pytest.raises(UserError, match=r"searches a 'kd' loss term, and this run's loss has none \(its terms: ce, at\)"
                                        r".*search=at \| dkd \| fitnet \| kd \| students"):
        parse_space(OmegaConf.to_container(cfg.search.space), cfg)


def test_overrides_round_trip_through_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {"a": 0.1 + 0.2, "b": 3, "c": "resnet8", "d": True, "e": "it's [odd]"}
    parsed = OverridesParser.create().parse_overrides([override(k, v) for k, v in values.items()])
    assert {o.key_or_group: o.value() for o in parsed} == values


def test_the_objective_reports_each_epoch_and_stops_a_poor_trial():
    pruner = make_pruner(PrunerName.median, warmup_epochs=1, epochs=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(3):
        done = study.ask()
        for epoch in (1, 2, 3):
            done.report(0.5, epoch)
        study.tell(done, 0.5)
    objective = Objective.__new__(Objective)
    objective.pruning, objective.epochs = True, 3
    good, poor, late = study.ask(), study.ask(), study.ask()
    objective.report(good, {"epoch": 2, "val_top1": 0.6})  # above the median of earlier trials: goes on
    objective.report(poor, {"epoch": 1, "val_top1": 0.1})  # the warm-up epoch: never stopped
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        objective.report(poor, {"epoch": 2, "val_top1": 0.1})
    assert poor.storage.get_trial(poor._trial_id).intermediate_values == {1: 0.1, 2: 0.1}
    objective.report(late, {"epoch": 3, "val_top1": 0.1})  # the last epoch: stopping would save nothing


def test_the_bundled_student_space_builds_every_student():
    """Like timm's test over every registered model: each choice of search=students is a model distill can build."""
    from distillctl.evaluation import measure
    from distillctl.models import create_model

    space = OmegaConf.load(Path(__file__).resolve().parents[1] / "distillctl/configs/search/students.yaml").space
    for name in space["student.name"].choices:
        model = create_model(name, 10, False, role="student")
        assert measure.macs(model, 32) > 0, name


def test_hydra_sweepers_get_an_interval_checked_and_an_objective_back():
    config.register()
    swept = prepare_overrides(["loss.terms.kd.temperature=interval(1,8)", "trainer.batch_size=choice(32,64)",
                               "optimizer.lr=tag(log,interval(0.01,0.1))"])
    check_composes(swept, sweeping=True)
    with pytest.raises(UserError, match=r"interval\(1,8\) gives several values: add -m"):
        check_composes(swept)
    with pytest.raises(UserError, match="unknown config key 'loss.terms.kd.temprature'"):
        check_composes(prepare_overrides(["loss.terms.kd.temprature=interval(1,8)"]), sweeping=True)
    assert sweep_objective({"best_val_top1": 0.42, "test_top1": 0.9}) == 0.42
    assert sweep_objective({"top1": 0.9}) is None and sweep_objective(None) is None


def test_a_bad_space_fails_before_any_trial(cli, tiny):
    for space, message in [
        ("++search.space={loss.terms.kd.temperature: {low: 2, high: 1}}", "low (2) must be less than high (1)"),
        ("++search.space={loss.terms.kd.temperature: {low: 0, high: 8}}", "with loss.terms.kd.temperature=0.0: loss.terms.kd.temperature=0.0"),
        ("++search.space={student.name: {choices: []}}", "choices must be a non-empty list"),
        ("++search.space={loss.terms.kd.temprature: {low: 1, high: 8}}", "Did you mean 'temperature'"),
        ("++search.space={student.name: {choices: [resnet8, mobilenetv3_smal_050]}}", "Did you mean 'mobilenetv3_small_050'"),
    ]:
        bad = cli("search", *SEARCH, space)
        assert bad.code == 2 and message in bad.err and bad.err.count("error:") == 1, bad.text[-2000:]
    assert not (tiny / "runs").exists()


def test_a_best_recipe_keeps_the_searchs_config_group_choices(tmp_path):
    from distillctl.composition import CONFIG_DIR
    from distillctl.search import best_recipe

    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    overrides = ["recipe=quickstart", "optimizer=adamw", "profile=smoke", "optimizer.weight_decay=0.003", "~expect"]
    choices, body, command_line = best_recipe.recipe_body(groups, overrides, {"loss.terms.kd.temperature": 2.5})
    # profile is composed after the recipe, which cannot override it: it stays on the command line, as deletions do.
    assert choices == [{"override /optimizer": "adamw"}] and command_line == ["profile=smoke", "~expect"]
    path = tmp_path / "best.yaml"
    best_recipe.write_recipe(path, "quickstart", "a trial", ["header"], choices, body)
    config.register()
    cfg = compose_config(prepare_overrides([f"recipe={path}", *command_line]))  # as `distillctl pipeline recipe=best.yaml` composes it
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.weight_decay == 0.003 and cfg.loss.terms.kd.temperature == 2.5
    assert cfg.dataset.train_limit == OmegaConf.load(CONFIG_DIR / "profile/smoke.yaml").dataset.train_limit


@pytest.mark.slow
def test_a_search_trains_trials_reports_and_writes_a_runnable_best_recipe(cli, tiny):
    done = cli("search", *SEARCH, "search.trials=3", "search.pruner=none")
    assert done.code == 0, done.text[-3000:]
    found = results(tiny)
    assert [t["state"] for t in found["trials"]] == ["complete"] * 3
    assert found["trials"][0]["recipe_default"] and found["trials"][0]["params"] == {"loss.terms.kd.temperature": 4.0, "loss.terms.kd.weight": 0.9}
    assert all(t["latency_ms"] > 0 and t["macs"] > 0 and t["epochs"] == 2 for t in found["trials"])
    best = found["best"]
    assert best["val_top1"] == max(t["val_top1"] for t in found["trials"])
    recorded = json.loads((tiny / "runs/tiny/search" / best["folder"] / "student/metrics.json").read_text())
    assert best["val_top1"] == recorded["best_val_top1"]  # the score is validation top-1, not test
    assert (tiny / "runs/tiny/teacher/metrics.json").is_file()  # one teacher for every trial
    assert (tiny / "runs/tiny/search/search.png").stat().st_size > 0
    assert "| trial | state | val top-1 |" in (tiny / "runs/tiny/search/results.md").read_text()

    again = cli("search", *SEARCH, "search.trials=3", "search.pruner=none")  # nothing left to do
    assert again.code == 0 and "epoch 1/2" not in again.out and results(tiny)["trials"] == found["trials"]

    recipe = tiny / "runs/tiny/search/best.yaml"
    text = recipe.read_text()
    assert "- tiny" in text and "teacher:" in text and "temperature" in text
    run = cli("distill", f"recipe={recipe}")
    assert run.code == 0, run.text[-3000:]
    student = tiny / "runs/tiny/search/best/student/config.yaml"
    trained = OmegaConf.load(student)
    assert trained.loss.terms.kd.temperature == pytest.approx(best["params"]["loss.terms.kd.temperature"])
    assert trained.trainer.epochs == 1  # the recipe's schedule, not the search's 2 epochs per trial

    changed = cli("search", *SEARCH, "search.trials=4", "search.epochs=3")
    assert changed.code == 2 and "different epochs" in changed.err, changed.text[-2000:]


@pytest.mark.slow
def test_a_student_over_budget_is_never_trained(cli, tiny):
    space = "++search.space={student.name: {choices: [resnet8, resnet20]}}"
    done = cli("search", *(a for a in SEARCH if a != "search=kd"), space, "search.trials=1", "search.max_macs=20e6", "search.sampler=random")
    assert done.code == 0, done.text[-3000:]
    trials = results(tiny)["trials"]
    trained = [t for t in trials if t["state"] == "complete"]
    over = [t for t in trials if t["state"] == "over budget"]
    assert [t["params"]["student.name"] for t in trained] == ["resnet8"]
    assert all(t["params"]["student.name"] == "resnet20" and "MMACs > budget 20" in t["note"] for t in over)
    assert not any((tiny / "runs/tiny/search" / t["folder"] / "student").exists() for t in over)


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_without_losing_or_repeating_a_trial(tiny):
    args = [sys.executable, "-m", "distillctl", "search", *SEARCH, "search.trials=3", "search.epochs=4", "search.pruner=none",
            "trainer.log_every=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=tiny, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = tiny / "runs/tiny/search/trial-0001/student/train.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.is_file() and "epoch 2/4" in log.read_text()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    rerun = subprocess.run(args, cwd=tiny, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert "continuing interrupted trial(s) 1" in rerun.stdout
    assert "resuming the interrupted run" in rerun.stdout
    trials = results(tiny)["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    folders = [t["folder"] for t in trials]
    assert len(set(folders)) == 3 and "trial-0001" in folders  # the killed trial went on in its own folder
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    history = (log.parent / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3, 4]  # no epoch trained twice


def test_a_study_is_the_same_under_other_threads_or_devices_and_keeps_the_identity_it_had():
    from test_config import composed

    from distillctl.stages.search import setup_identity

    base = setup_identity(composed("recipe=quickstart", "search=kd"), [], 2)
    for executed_otherwise in ("trainer.threads=1", "trainer.devices=2", "trainer.log_every=3", "dataset.workers=0"):
        assert setup_identity(composed("recipe=quickstart", "search=kd", executed_otherwise), [], 2) == base, executed_otherwise
    assert setup_identity(composed("recipe=quickstart", "search=kd", "trainer.epochs=3"), [], 2) != base
    # The identity studies made before execution_settings recorded (their trainer without its speed keys): they are
    # continued, not refused.
    import hashlib

    cfg = composed("recipe=quickstart", "search=kd")
    speed = ("threads", "device", "compile", "compile_mode", "log_every", "eval_batch_size", "checkpoint_every_steps")
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in speed}
    sections = {s: OmegaConf.to_container(cfg[s], resolve=True) for s in ["dataset", "student", "loss", "optimizer", "scheduler", "teacher", "teachers"]}
    before = json.dumps({"config": sections, "inputs": [str(cfg.seed), str(sorted(trainer.items()))]}, sort_keys=True, default=str)
    assert base["config"] == hashlib.sha256(before.encode()).hexdigest()[:16]


@pytest.mark.parametrize("chosen, expected", [("1", None), (None, "PASSIVE")])
def test_students_are_timed_under_the_wait_policy_evaluate_has(monkeypatch, chosen, expected):
    # search trains with the PASSIVE policy distillctl chooses, which made ResNet-8's batch-1 latency 1.37x evaluate's
    # (a 3.8 ms outlier stuck to a whole search); its students are timed in a fresh process without it. A policy the
    # user set is theirs: kept for both.
    from distillctl.evaluation import latency_probe

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    if chosen:
        monkeypatch.setenv(latency_probe.CHOSEN_BY_DISTILLCTL, chosen)
    else:
        monkeypatch.delenv(latency_probe.CHOSEN_BY_DISTILLCTL, raising=False)
    env = latency_probe.timing_environment()
    assert env.get("OMP_WAIT_POLICY") == expected and latency_probe.CHOSEN_BY_DISTILLCTL not in env
    assert latency_probe.timing_policy() == (expected or "default")


def test_a_student_is_timed_in_a_process_of_its_own():
    from distillctl.evaluation import latency_probe

    assert 0 < latency_probe.latency_ms("resnet8", 10, {}, 32, threads=1, repeats=5) < 1000
    with pytest.raises(RuntimeError, match="timing no_such_model in a fresh process failed"):
        latency_probe.latency_ms("no_such_model", 10, {}, 32, threads=1, repeats=5)
