"""`distillctl <command> [overrides...]`: argv -> the overrides composed (composition.py) -> Hydra -> the command's
stage; the tools (recipes, runs, inspect, completion) directly."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from distillctl import recipes
from distillctl.composition import (
    CONFIG_DIR,
    bare_words,
    check_composes,
    check_sweep_dir,
    is_multirun,
    overrides_first,
    prepare_overrides,
    with_sweep_dir,
)
from distillctl.engine.stop_signal import Requeued, SignalStop
from distillctl.errors import Failed, UserError, closest
from distillctl.ranks import first_to_say, ranks

# Command -> (stage module under distillctl.stages, one-line help). Modules are imported only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "train-teacher": ("train_teacher", "train the recipe's teacher on labels"),
    "distill": ("distill", "train the student from the frozen teacher with the recipe's loss terms"),
    "prune": ("prune", "shrink the distilled student (structured channels or sparsity), then fine-tune it with KD"),
    "quantize": ("quantize", "int8 (static or QAT with KD), fp16/bf16 or ONNX Runtime int8 of the final student"),
    "evaluate": ("evaluate", "accuracy, agreement, size and speed of every model in the workspace"),
    "predict": ("predict", "a model of the workspace on your own images: top classes per image in a CSV (predict.input=PATH)"),
    "pipeline": ("pipeline", "run every stage in order, skipping those already done with the same config"),
    "reproduce": ("reproduce", "teacher, student and the no-teacher student over reproduce.seeds: mean ± std and the gain"),
    "search": ("search", "Optuna search over search.space (search=kd, search=students), scored on validation top-1: best.yaml"),
}
# Commands that (mostly) train: their OpenMP threads sleep while waiting (see main()). `search` times students for
# its budgets too, but spinning threads made its training 10-20x slower beside another busy process: it times them
# in a process of their own (evaluation/latency_probe.py).
TRAINING_ONLY = {"train-teacher", "distill", "prune", "quantize", "reproduce", "search"}
TOOLS = {
    "recipes": "list the recipes, one line each (--json: their names as a JSON list, for CI matrices)",
    "inspect": "module names and output shapes of a model: inspect model=resnet56",
    "runs": "every workspace under runs/ (or a folder given): each stage finished, running, interrupted or outdated, its top-1",
    "completion": 'tab completion for bash, zsh or fish: eval "$(distillctl completion bash)" in ~/.bashrc',
}

# What each tool takes, for `distillctl <tool> --help`.
TOOL_USAGE = {
    "recipes": ["distillctl recipes [--json]",
                "A table on a terminal; piped, one tab-separated line per recipe (name, description, file)."],
    "inspect": ["distillctl inspect model=NAME|FILE.safetensors [num_classes=10] [image_size=32]",
                "The stage column gives the names feature terms may use for a model's stages (-1: the last).\n"
                "A model file written by distillctl is shown with its own layer widths (what pruning left)."],
    "runs": ["distillctl runs [FOLDER] [--json]",
             "FOLDER defaults to runs/; a reproduce, search or sweep folder lists its own workspaces in full."],
    "completion": ["distillctl completion bash|zsh|fish",
                   'bash: eval "$(distillctl completion bash)" in ~/.bashrc; zsh: eval "$(distillctl completion zsh)" '
                   "in ~/.zshrc; fish: distillctl completion fish > ~/.config/fish/completions/distillctl.fish"],
}

err_console = Console(stderr=True)


def help_text() -> str:
    """The top-level help: commands, recipes and how overrides work."""
    width = max(map(len, [*COMMANDS, *TOOLS]))
    lines = ["usage: distillctl <command> [recipe=NAME] [key=value ...] [-m] [--cfg job]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [f"  {name:<{width}}  {text}" for name, text in TOOLS.items()]
    lines += ["", "recipes:"]
    found = recipes.available()
    rwidth = max(map(len, found), default=0)
    lines += [f"  {name:<{rwidth}}  {r.description}" for name, r in found.items()]
    lines += [
        "",
        "Any config value can be overridden (trainer.epochs=30, loss.terms.kd.temperature=8); -m sweeps",
        "comma-separated values; `distillctl <command> --cfg job` prints the resolved config;",
        "`distillctl <command> --help` says what a command does, with its main options and an example.",
    ]
    return "\n".join(lines)


def print_recipes() -> None:
    """`distillctl recipes`: a table on a terminal; piped, one tab-separated line per recipe."""
    from rich.table import Table

    from distillctl.console import console

    found = recipes.available()
    if not console.is_terminal:  # a table folds long paths across lines, which `grep`/`cut` cannot use
        for name, recipe in found.items():
            print(f"{name}\t{recipe.description}\t{recipe.path}")
        return
    table = Table(title="recipes", title_justify="left")
    for column in ("recipe", "description"):
        table.add_column(column)
    table.add_column("file", overflow="fold")  # a path is folded onto the next line, never cut
    for name, recipe in found.items():
        table.add_row(name, recipe.description, str(recipe.path))
    console.print(table)


def run_hydra(command: str, overrides: Sequence[str]) -> None:
    """Hand the overrides to Hydra (run, multirun, --cfg, --help) with the command's stage as the task."""
    import hydra

    from distillctl import config

    config.register()
    user_args = list(overrides)
    bare_words(command, overrides)
    overrides = overrides_first(with_sweep_dir(prepare_overrides(overrides)))
    shown = [o for o in overrides if o.startswith("--cfg") or o in ("-c", "--info", "-i")]
    if shown and is_multirun(overrides):
        # Hydra refuses the pair with a traceback; its --cfg prints the config of one run.
        raise UserError(f"{shown[0]} prints one run's config and -m starts a sweep: leave out -m and give one value of "
                        "each swept key (seed=0, not seed=0,1).")
    if any(o in ("--shell-completion", "-sc") for o in overrides):
        # Hydra's completion would not see the command word in front of the overrides
        raise UserError('tab completion comes from `distillctl completion bash` (or zsh, fish): add '
                        '`eval "$(distillctl completion bash)"` to ~/.bashrc.')
    if not any(o in ("--help", "-h", "--hydra-help") for o in overrides):
        check_composes(overrides, is_multirun(overrides))  # --cfg too: a bad override is one line, not Hydra's message
        if is_multirun(overrides):
            check_sweep_dir(overrides, user_args)
    module_name = COMMANDS[command][0]

    def task(cfg) -> float | None:
        from distillctl import sweep_summary
        from distillctl.workspace import hydra_sweep_job

        # The job Hydra runs, not the processes it started: those report their exit to it.
        if (sweep := hydra_sweep_job()) is None:
            return run_task(cfg)
        job = sweep[0]
        sweep_summary.clear_failure(job)
        try:
            return run_task(cfg)
        except Requeued:  # submitit ends this job's process to run it again: not a failure
            raise
        except SystemExit as exc:
            if not exc.code:
                raise
            # One job's missed expectation or refused value must not cost the jobs after it: the sweep goes on,
            # and its summary names the failed jobs and exits with their code.
            sweep_summary.record_failure(job, int(exc.code) if isinstance(exc.code, int) else 1, getattr(exc, "reason", None))
            return None

    def run_task(cfg) -> float | None:
        import importlib

        from distillctl import launch, preflight, tracking
        from distillctl.bounds import check_config

        try:
            check_config(cfg)  # every value, before the stage imports torch or loads data
            check_read(command, cfg)
            tracking.check_installed(cfg.logger)
            preflight.check(command, cfg)  # files, data set and prerequisite stages, still without torch
            if ranks().world > 1:
                launch.check_command(command)
            elif cfg.trainer.devices > 1:  # this command again, as that many processes
                args, env = relaunched_job(user_args)
                code = launch.relaunch(command, args, cfg.trainer.devices, env=env)
                if code:
                    raise SystemExit(code)
                return None
            stage: Callable = stage_runner(importlib.import_module(f"distillctl.stages.{module_name}"))
            with tracking.session(recipe_name(cfg), Path(cfg.run_dir).parent, tracking_group(command, cfg)):
                return sweep_objective(stage(cfg))
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt as exc:
            if isinstance(exc, SignalStop) or exc.args:
                raise
            # Ctrl-C outside a training step (loading data, calibrating, evaluating): say what is saved.
            raise KeyboardInterrupt(interruption(command, module_name, cfg)) from None
        except Exception as exc:
            from distillctl.disk import explain_write_error

            if (message := explain_write_error(exc)) is None:
                raise
            fail(message)

    sys.argv = [f"distillctl {command}", *overrides]
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(task)()


def check_read(command: str, cfg) -> None:
    """Refuse a setting this run's method would ignore; in a sweep over methods, note it for the jobs it misses."""
    from hydra.core.hydra_config import HydraConfig

    from distillctl import method_settings
    from distillctl.console import console
    from distillctl.workspace import hydra_sweep_job

    if problems := method_settings.unread(command, cfg, HydraConfig.get().overrides.task):
        if hydra_sweep_job() is None:
            raise UserError("; ".join(problems) + ".")
        console.print(f"note: {'; '.join(problems)}.")


def relaunched_job(user_args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the processes a job starts for trainer.devices > 1: the command line as
    given; in a sweep, this job's own overrides and folder (each process must run this job, not the whole sweep)."""
    from hydra.core.hydra_config import HydraConfig

    from distillctl.workspace import JOB_DIR_ENV, SWEEP_DIR_ENV, sweep_job

    if (job := sweep_job()) is None:
        return list(user_args), {}
    return list(HydraConfig.get().overrides.task), {JOB_DIR_ENV: str(job[0]), SWEEP_DIR_ENV: str(job[1])}


def stage_runner(module) -> Callable:
    """How a command's module runs: a stage through `run_stage` (in a multi-process job rank 0 alone runs one that
    trains nothing), evaluate and predict on rank 0 alone, orchestrating commands as they are."""
    from distillctl.stages.base import on_rank_zero, run_stage

    if hasattr(module, "STAGE"):
        return lambda cfg: run_stage(module.STAGE, cfg)
    if module.__name__.endswith((".evaluate", ".predict")):
        return lambda cfg: on_rank_zero(module.run, cfg)
    return module.run


# Commands whose stage runs are grouped in the trackers (an MLflow parent run, a W&B group), as are a sweep's jobs.
GROUPING = {"pipeline", "reproduce", "search"}


def recipe_name(cfg) -> str:
    """The recipe this job runs (a recipe given as a file is stored under its name)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("recipe") or Path(cfg.run_dir).name)
    return Path(cfg.run_dir).name


def tracking_group(command: str, cfg) -> str | None:
    """The name that groups this job's tracked runs: its sweep's folder, or the orchestrating command and workspace."""
    from distillctl.workspace import sweep_job

    if (job := sweep_job()) is not None:
        return f"sweep {job[1]}"
    return f"{command} {cfg.run_dir}" if command in GROUPING else None


def sweep_objective(result) -> float | None:
    """What a Hydra sweeper that optimizes (Hydra's Optuna plugin) gets back from a job: the trained model's best
    validation top-1, never a test figure. Commands that train nothing return None."""
    if isinstance(result, dict) and result.get("best_val_top1") is not None:
        return float(result["best_val_top1"])
    return None


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit: the path for every mistake a user can fix."""
    from rich.markup import escape

    if first_to_say(message):  # an error every process of a multi-process job meets is printed once
        where = f" (process {ranks().rank} of {ranks().world})" if ranks().world > 1 else ""
        err_console.print(f"[bold red]error{where}:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise Failed(message, code)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script's entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if ranks().rank > 0:  # rank 0 speaks for a multi-process job; the others print only their own errors
        from distillctl.console import console

        console.quiet = True
    if args and args[0] in TRAINING_ONLY and "OMP_WAIT_POLICY" not in os.environ:
        # OpenMP threads that spin while they wait collapse when another process shares the cores: training runs
        # 1.7x faster with sleeping threads beside one busy process, 0.83x on an idle machine (docs/performance.md).
        # Commands that time models (evaluate, pipeline) keep OpenMP's default: sleeping threads would add their
        # wake-up time to batch-1 latencies (ResNet-8: 1.37x); `search` times its students in a process of its own.
        # Read once, when torch loads OpenMP, so it is set before anything imports torch; a user's value wins.
        from distillctl.evaluation.latency_probe import CHOSEN_BY_DISTILLCTL

        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ[CHOSEN_BY_DISTILLCTL] = "1"
    command, overrides = (args[0], args[1:]) if args else ("--help", [])
    try:
        if command in ("-h", "--help", "help"):
            print(help_text())
        elif command == "--version":
            from distillctl import __version__

            print(__version__)
        elif command in TOOLS and any(o in ("-h", "--help") for o in overrides):
            usage, more = TOOL_USAGE[command]
            print(f"usage: {usage}\n\n{TOOLS[command]}.\n{more}")
        elif command == "recipes":
            if overrides == ["--json"]:  # for CI matrices: the names as a JSON list
                import json

                print(json.dumps(list(recipes.available())))
            elif overrides:
                raise UserError(f"recipes takes --json alone, not {' '.join(overrides)}: `{TOOL_USAGE['recipes'][0]}`.")
            else:
                print_recipes()
        elif command == "runs":
            from distillctl import workspace_status

            workspace_status.show(overrides)
        elif command == "completion":
            from distillctl import completion

            if len(overrides) != 1:
                raise UserError("completion needs a shell: `distillctl completion bash` (or zsh, fish); "
                                'add `eval "$(distillctl completion bash)"` to ~/.bashrc.')
            print(completion.script(overrides[0]), end="")
        elif command == "__complete":  # asked by the completion scripts at each Tab
            from distillctl import completion

            completion.main(overrides)
        elif command == "inspect":
            from distillctl.inspect import run_inspect

            run_inspect(overrides)
        elif command in COMMANDS and any(o in ("-h", "--help") for o in overrides):
            from distillctl import command_help

            print(command_help.render(command, overrides))
        elif command in COMMANDS:
            run_hydra(command, overrides)
        else:
            known = [*COMMANDS, *TOOLS]
            near = closest(command, known)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            fail(f"unknown command '{command}'.{hint} Commands: {', '.join(known)}.")
    except UserError as exc:
        fail(str(exc))
    except BrokenPipeError:  # `distillctl recipes | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
    except SignalStop as exc:
        fail(f"{exc}: {how_to_continue(command)}.", code=exc.code)
    except KeyboardInterrupt as exc:  # 128 + SIGINT
        fail(str(exc) or "interrupted.", code=130)


def interruption(command: str, module_name: str, cfg) -> str:
    """What a Ctrl-C outside a training step leaves behind, and what continues from there."""
    from distillctl.workspace import Workspace, has_checkpoint

    if command in ("pipeline", "reproduce", "search"):
        return f"interrupted: {how_to_continue(command)}."
    module = sys.modules.get(f"distillctl.stages.{module_name}")  # not yet imported: nothing has started
    stage = getattr(module, "STAGE", None)
    if stage is None and command in TRAINING_ONLY:
        return "interrupted before training began: run the same command again to start it."
    if stage is None or not stage.trains(cfg):
        return "interrupted; earlier results are as they were."
    if has_checkpoint(Workspace.from_config(cfg).job_dir / stage.folder(cfg)):
        return f"interrupted; the last saved epoch is kept: {how_to_continue(command)}."
    return "interrupted before a first epoch was saved: run the same command again to start over."


def how_to_continue(command: str) -> str:
    """What continues an interrupted training command."""
    if command in ("pipeline", "reproduce", "search"):
        return f"run the same command again to continue ({command} resumes what was interrupted by itself)"
    return "run the same command with resume=true to continue"
