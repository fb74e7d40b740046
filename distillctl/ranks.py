"""Which of a multi-process job's processes this is, read from the launcher's variables without importing torch
(the CLI and the workspace ask before torch loads)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one training job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def ranks() -> Ranks:
    """From torchrun's variables; else from SLURM's when srun started several tasks (submitit's SLURM launcher);
    else from submitit's local executor's; else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                     int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        nodes = int(env.get("SLURM_JOB_NUM_NODES", "1"))
        return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                     int(env["SLURM_NTASKS"]) // max(1, nodes))
    if env.get("SUBMITIT_EXECUTOR") == "local" and int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        world = int(env["SUBMITIT_LOCAL_NTASKS"])
        return Ranks(int(env.get("SUBMITIT_LOCAL_GLOBALID", 0)), world, int(env.get("SUBMITIT_LOCAL_LOCALID", 0)), world)
    return Ranks()


def job_id() -> str | None:
    """What names this multi-process job for all its processes: torchrun's run id, SLURM's or submitit's job id."""
    env = os.environ
    return env.get("TORCHELASTIC_RUN_ID") or env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def is_main() -> bool:
    """Whether this process writes checkpoints, logs, progress and metrics (rank 0, or the only process)."""
    return ranks().rank == 0


# Set in a job that was started again after it stopped, with who started it again.
RESTART_COUNTS = {"TORCHELASTIC_RESTART_COUNT": "restarted by torchrun", "SLURM_RESTART_COUNT": "requeued by SLURM"}


def restarted_by() -> str | None:
    """Who started this job again after it stopped (torchrun --max-restarts after a failure; SLURM requeueing it
    after a preemption or a time limit), or None on its first attempt."""
    for variable, who in RESTART_COUNTS.items():
        if os.environ.get(variable, "0").strip() not in ("", "0"):
            return who
    return None


def attempt() -> str:
    """Which attempt of its job this process belongs to, the same for all its processes."""
    return "|".join(os.environ.get(variable, "0") for variable in RESTART_COUNTS)


def first_to_say(message: str) -> bool:
    """True for the first process of the job to report this message, so that an error every process meets is
    printed once; always true outside a multi-process job."""
    job = job_id()
    if ranks().world == 1 or not job:
        return True
    digest = hashlib.blake2b(f"{job}|{attempt()}|{message}".encode(), digest_size=12).hexdigest()
    mark = Path(tempfile.gettempdir()) / f"distillctl-said-{digest}"
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False
    except OSError:
        return True
