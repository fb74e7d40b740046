"""`trainer.devices=N`: the same command again as N processes on this machine, started by torch's own elastic
launcher (what torchrun runs), so that nobody has to type `torchrun --standalone --nproc_per_node=N -m distillctl`."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence

from distillctl.console import console
from distillctl.errors import UserError

# Commands whose work splits over processes: the training stages, and pipeline and reproduce (which run them; rank 0
# alone evaluates and summarizes). search's trials are Optuna's to schedule and are not split yet.
MULTI_PROCESS = ("train-teacher", "distill", "prune", "quantize", "pipeline", "reproduce")


def check_command(command: str) -> None:
    """Refuse a command that does not run as several processes."""
    if command not in MULTI_PROCESS:
        raise UserError(f"`{command}` runs as one process; trainer.devices>1 and torchrun work with {', '.join(MULTI_PROCESS)}. "
                        "Leave trainer.devices=1 here.")


def relaunch(command: str, args: Sequence[str], processes: int, max_restarts: int = 0, env: dict[str, str] | None = None) -> int:
    """Run `distillctl command args` as `processes` processes on this machine, with `env` added to their
    environment; the exit status of the job. A failed process has printed its own error: the launcher's traceback
    would only repeat it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_command(command)
    console.print(f"starting {processes} processes (torchrun --standalone --nproc_per_node={processes} -m distillctl {command} ...)")
    # The launcher's own log lines (its start, a child's exit code) only repeat what the processes said themselves.
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts, start_method="spawn")
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})  # the processes inherit it; this one (the next job of a sweep) gets it back
    try:
        elastic_launch(config, sys.executable)("-m", "distillctl", command, *args)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        return next((code for code in codes if code > 0), 1)
    except SignalException as exc:  # SIGTERM or Ctrl-C to this launcher: it has passed the signal on and waited for them
        return 128 + int(exc.sigval)  # a training process that was stopped has said so, and how to resume
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0
