"""Several processes training one model (torchrun, gloo on the CPU): the same weights as one process with the same
global batch, one writer, one error message, and a job that survives a killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distillctl.data.batches import Batches, local_part
from distillctl.data.stream import EpochOrder

# A student without batch norm: each process normalizes its own share of a batch (sync_bn needs CUDA), so only a
# model without batch statistics can match one process exactly.
VIT = ["student.name=vit_tiny_patch16_224", "+student.kwargs.img_size=32", "+student.kwargs.patch_size=8",
       "+student.kwargs.embed_dim=32", "+student.kwargs.depth=1", "+student.kwargs.num_heads=2"]
SMALL = ["trainer.threads=1", "dataset.test_limit=64", "distill.teacher_cache=off"]


def test_the_shares_of_a_global_batch_are_the_batch():
    for n, world in [(16, 2), (15, 2), (1, 2), (10, 4), (7, 3)]:
        shares = [local_part(n, r, world) for r in range(world)]
        assert {len(s) for s in shares} == {-(-n // world)}  # equal shares: DDP averages equal-sized means
        assert set(torch.cat(shares).tolist()) == set(range(n))
        if n % world == 0:
            assert torch.equal(torch.cat(shares), torch.arange(n))


def test_resident_batches_of_all_processes_are_one_processs_batches():
    images = torch.randint(0, 255, (40, 8, 8, 3), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    make = lambda shard: Batches(images, labels, 8, [0.5] * 3, [0.25] * 3, torch.device("cpu"), 3, padding=2, shard=shard)  # noqa: E731
    whole = list(make((0, 1)))
    parts = [list(make((r, 2))) for r in range(2)]
    assert len(whole) == len(parts[0]) == 5
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)  # same images, same crops and flips
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_streamed_epoch_order_of_all_processes_is_one_processs_order():
    rows = torch.arange(100, 150)
    whole = list(EpochOrder(rows, seed=5, limit=48, batch=8))
    parts = [list(EpochOrder(rows, seed=5, limit=48, batch=8, shard=(r, 2))) for r in range(2)]
    assert [len(EpochOrder(rows, 5, 48, 8, (r, 2))) for r in range(2)] == [24, 24]
    for step in range(6):
        assert parts[0][step * 4 : step * 4 + 4] + parts[1][step * 4 : step * 4 + 4] == whole[step * 8 : step * 8 + 8]
    resumed = EpochOrder(rows, seed=5, limit=48, batch=8, shard=(1, 2))
    resumed.start = 16  # two global steps done before a mid-epoch checkpoint
    assert list(resumed) == parts[1][8:]


@pytest.mark.slow
def test_two_processes_end_with_one_processs_weights_and_only_rank_0_writes(cli, tmp_path):
    args = ["distill", *VIT, *SMALL, "trainer.epochs=2", "trainer.max_steps_per_epoch=3", "trainer.batch_size=16"]
    one = cli(*args, "run_dir=runs/one")
    two = cli(*args, "run_dir=runs/two", "trainer.devices=2")
    assert one.code == 0, one.text
    assert two.code == 0, two.text
    a, b = (load_file(tmp_path / "runs" / run / "student" / "last.safetensors") for run in ("one", "two"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # The check can tell: one process at each process's share of the batch ends elsewhere.
    half = cli(*args[:-1], "trainer.batch_size=8", "run_dir=runs/half")
    assert half.code == 0, half.text
    c = load_file(tmp_path / "runs" / "half" / "student" / "last.safetensors")
    assert any(not torch.allclose(a[k], c[k], atol=1e-3) for k in a)
    student = tmp_path / "runs" / "two" / "student"
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["test_top1"] == json.loads((tmp_path / "runs/one/student/metrics.json").read_text())["test_top1"]
    log = (student / "train.log").read_text()
    assert log.count("student epoch 2/2") == 1  # one writer
    assert len((student / "history.jsonl").read_text().splitlines()) == 2
    assert two.text.count("test top-1") == 1  # one summary table


@pytest.mark.slow
def test_an_error_every_process_meets_is_said_once_and_ends_the_job(cli):
    result = cli("distill", *SMALL, "trainer.epochs=1", "trainer.batch_size=33", "trainer.devices=2")
    assert result.code != 0
    assert result.text.count("must divide evenly") == 1, result.text
    assert "Traceback" not in result.text


@pytest.mark.slow
def test_the_processes_of_a_job_fill_one_teacher_cache(cli, tmp_path):
    few = ["trainer.threads=1", "dataset.test_limit=64", "dataset.train_limit=64", "dataset.val_size=16", "trainer.epochs=1",
           "trainer.batch_size=32", f"distill.teacher_cache_dir={tmp_path / 'logits'}"]

    def teacher_ran_on(run: str) -> float:
        return json.loads((tmp_path / "runs" / run / "student" / "metrics.json").read_text())["teacher_cache"]["teacher_ran_on"]

    two = cli("distill", *few, "trainer.devices=2", "run_dir=runs/two")
    assert two.code == 0, two.text
    assert teacher_ran_on("two") == 1.0  # a first run computes every answer
    # One process draws the same global batches and views: both processes' shares must be in the file.
    one = cli("distill", *few, "run_dir=runs/one")
    assert one.code == 0, one.text
    assert teacher_ran_on("one") == 0.0
    # `on`: each process fills its share of every view up front, then reads the others'.
    filled = cli("distill", *few, "distill.teacher_cache=on", f"distill.teacher_cache_dir={tmp_path / 'all'}", "trainer.devices=2",
                 "run_dir=runs/filled")
    assert filled.code == 0, filled.text
    assert teacher_ran_on("filled") == 0.0


@pytest.mark.slow
def test_reproduce_trains_each_seed_with_every_process_and_summarizes_once(cli, tiny):
    result = cli("reproduce", "recipe=tiny", "reproduce.seeds=[0]", "trainer.threads=1", "trainer.devices=2")
    assert result.code == 0, result.text[-3000:]
    assert result.out.count("test top-1 over 1 seeds") == 1, result.out  # rank 0 alone summarizes
    out = tiny / "runs/tiny/reproduce"
    for folder in ("seed-0/teacher", "seed-0/student", "seed-0-baseline/student"):
        assert json.loads((out / folder / "metrics.json").read_text())["processes"] == 2, folder
    results = json.loads((out / "results.json").read_text())
    assert results["rows"]["student"]["top1"] == [json.loads((out / "seed-0/student/metrics.json").read_text())["test_top1"]]


def torchrun(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 [args] -m distillctl distill ...` in tmp_path, its own process group."""
    launcher, command = args[:-1], args[-1]
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher, "-m", "distillctl", *command.split()],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def rank_pid(folder: Path, rank: int) -> int | None:
    """The training process of `rank` that runs in `folder` (a test's own: tests on other workers run alike)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd == str(folder.resolve()) and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def kill_rank_after_first_checkpoint(tmp_path: Path, run_dir: str, rank: int) -> None:
    """Wait for the first epoch's checkpoint, then SIGKILL one training process."""
    state = tmp_path / run_dir / "student" / "last_state.pt"
    deadline = time.monotonic() + 240
    while not state.exists():
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    pid = rank_pid(tmp_path, rank)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


LONG = "distill " + " ".join([*SMALL, "trainer.epochs=40", "trainer.max_steps_per_epoch=6", "trainer.batch_size=32"])


@pytest.mark.slow
def test_a_killed_process_ends_the_job_and_resume_finishes_it_with_another_process_count(cli, tmp_path):
    job = torchrun(tmp_path, f"{LONG} run_dir=runs/killed")
    try:
        kill_rank_after_first_checkpoint(tmp_path, "runs/killed", rank=1)
        started = time.monotonic()
        job.wait(timeout=120)
        assert time.monotonic() - started < 120
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    history = (tmp_path / "runs/killed/student/history.jsonl").read_text().splitlines()
    assert 1 <= len(history) < 40
    # Resumed by one process: the schedule and the batches are those of the global batch, whoever trains them.
    resumed = cli(*LONG.split(), "run_dir=runs/killed", "resume=true", "trainer.epochs=40")
    assert resumed.code == 0, resumed.text
    metrics = json.loads((tmp_path / "runs/killed/student/metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == len(history) and metrics["processes"] == 1
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "runs/killed/student/history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))


def sigterm_after_first_checkpoint(tmp_path: Path, args: list[str], run_dir: str, every_process: bool = False) -> tuple[int, str]:
    """Run `distillctl args` and send it SIGTERM once its first checkpoint is on disk: the launcher alone (`kill`,
    `docker stop`), or also each of its training processes (`every_process`), as SLURM does at a time limit; its
    exit status and output."""
    job = subprocess.Popen([sys.executable, "-m", "distillctl", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        state = tmp_path / run_dir / "student/last_state.pt"
        deadline = time.monotonic() + 240
        while not state.exists():
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.05)
        if every_process:
            for rank in (0, 1):
                os.kill(rank_pid(tmp_path, rank), signal.SIGTERM)  # type: ignore[arg-type]
        os.kill(job.pid, signal.SIGTERM)
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    return job.returncode, out


def trained_epochs(tmp_path: Path, run_dir: str) -> list[int]:
    """The epochs in the student's history.jsonl."""
    return [json.loads(line)["epoch"] for line in (tmp_path / run_dir / "student/history.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("every_process", [False, True], ids=["to-the-launcher", "to-every-process-as-slurm"])
def test_sigterm_stops_every_process_at_one_step_with_the_state_saved_and_resume_finishes(cli, tmp_path, every_process):
    # trainer.devices=2: distillctl's own launcher, which passes SIGTERM on to its processes as torchrun does; sent to
    # every process, each receives it twice (directly and from the launcher), and the second must not end it unsaved
    args = [*LONG.split(), "run_dir=runs/stopped", "trainer.devices=2", "trainer.log_every=2"]
    code, out = sigterm_after_first_checkpoint(tmp_path, args, "runs/stopped", every_process)
    assert code == 143, out
    assert "stopped by SIGTERM" in out and "with the training state saved" in out and "resume=true" in out
    assert "Traceback" not in out, out
    assert 1 <= len(trained_epochs(tmp_path, "runs/stopped")) < 40
    resumed = cli(*args, "resume=true")
    assert resumed.code == 0, resumed.text
    assert trained_epochs(tmp_path, "runs/stopped") == list(range(1, 41))


@pytest.mark.slow
def test_a_job_slurm_requeues_resumes_from_its_checkpoint_by_itself(cli, tmp_path):
    # Preempted or at its time limit, a job gets SIGTERM and is requeued: the same command runs again, with
    # SLURM_RESTART_COUNT set, and nobody there to add resume=true.
    args = [*LONG.split(), "run_dir=runs/requeued"]
    code, out = sigterm_after_first_checkpoint(tmp_path, args, "runs/requeued")
    assert code == 143, out
    stopped_at = len(trained_epochs(tmp_path, "runs/requeued"))
    requeued = cli(*args, env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.code == 0, requeued.text
    assert "requeued by SLURM: resuming from the last checkpoint" in requeued.out
    metrics = json.loads((tmp_path / "runs/requeued/student/metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == stopped_at >= 1
    assert trained_epochs(tmp_path, "runs/requeued") == list(range(1, 41))


@pytest.mark.slow
def test_torchrun_restarts_resume_from_the_last_checkpoint_by_themselves(tmp_path):
    job = torchrun(tmp_path, "--max-restarts=1", f"{LONG} run_dir=runs/restarted")
    try:
        kill_rank_after_first_checkpoint(tmp_path, "runs/restarted", rank=1)
        out, _ = job.communicate(timeout=400)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, out
    assert "resuming from the last checkpoint" in out
    metrics = json.loads((tmp_path / "runs/restarted/student/metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 1 and metrics["processes"] == 2
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "runs/restarted/student/history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))


def test_ranks_come_from_torchrun_slurm_or_submitit(monkeypatch):
    from distillctl import ranks as r
    from distillctl.engine.distributed import slurm_first_host

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    assert r.ranks() == r.Ranks()
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert r.ranks() == r.Ranks(5, 8, 1, 4) and not r.is_main()
    monkeypatch.setenv("RANK", "0")  # torchrun inside a SLURM job: torchrun's variables win
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert r.ranks() == r.Ranks(0, 2, 0, 2)
    for name in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "1")
    assert r.ranks() == r.Ranks(1, 2, 1, 2)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-05,09],cpu1")
    assert slurm_first_host() == "gpu03"


def test_the_slurm_launcher_gives_one_task_and_one_gpu_per_process(cli):
    result = cli("distill", "hydra/launcher=slurm", "trainer.devices=4", "--cfg", "all", "--resolve")
    assert result.code == 0, result.text
    launcher = result.out.split("launcher:", 1)[1]
    assert "tasks_per_node: 4" in launcher and "gpus_per_node: 4" in launcher and "SlurmLauncher" in launcher


@pytest.mark.slow
def test_a_sweep_on_submitits_local_executor_runs_every_job_as_two_processes(cli, tmp_path):
    result = cli("distill", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", *SMALL,
                 "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.batch_size=16", "seed=0,1")
    assert result.code == 0, result.text
    found = sorted((tmp_path / "runs" / "quickstart" / "sweep").glob("*/*/student/metrics.json"))
    assert len(found) == 2
    assert [json.loads(m.read_text())["processes"] for m in found] == [2, 2]


def submitit_task(session: int) -> int | None:
    """The process of the first task of a submitit job started in `session`, if it runs (Linux: read from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.getsid(int(entry.name)) != session:
                continue
            if b"submitit.core._submit" in (entry / "cmdline").read_bytes() and b"SUBMITIT_LOCAL_GLOBALID=0" in (entry / "environ").read_bytes():
                return int(entry.name)
        except OSError:  # gone meanwhile
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds submitit's task in /proc")
def test_submitits_notice_stops_a_job_at_a_step_and_the_requeued_job_resumes_there(tmp_path):
    # submitit's local executor, as on SLURM: its handler of USR2 (a time limit or preemption ahead) requeues the job.
    args = ["distill", "-m", "hydra/launcher=submitit_local", *SMALL, "trainer.epochs=10", "trainer.max_steps_per_epoch=30",
            "trainer.batch_size=32", "run_dir=runs/notice"]
    sweep = subprocess.Popen([sys.executable, "-m", "distillctl", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "runs/notice/sweep").glob("*/*/student/last_state.pt")):
            assert time.monotonic() < deadline and sweep.poll() is None, "no checkpoint within 4 minutes"
            time.sleep(0.05)
        os.kill(submitit_task(sweep.pid), signal.SIGUSR2)  # what SLURM sends hydra.launcher.signal_delay_s ahead
        out, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, out
    (job,) = (tmp_path / "runs/notice/sweep").glob("*/0_")
    said = "".join(log.read_text() for log in job.parent.glob(".submitit/**/*_log.err"))
    assert "SIGUSR2, the scheduler's notice of a time limit or preemption: stopping after this step" in said
    marks = [line for line in (job / "student/train.log").read_text().splitlines() if line.startswith("# ")]
    starts = [int(line.split()[3].split("..")[0]) for line in marks if line.startswith("# student: epochs ")]
    saved = [int(line.split()[3].rstrip(",")) for line in marks if line.startswith("# checkpoint: epoch ")]
    # The requeued job went on where the notice stopped the first: mid-epoch from that step, else after that epoch.
    assert len(starts) == 2 and starts[0] == 1 and starts[1] == (saved[0] if saved else starts[1]) >= 2, marks
    assert json.loads((job / "student/metrics.json").read_text())["resumed_from_epoch"] == starts[1] - 1
    epochs = [json.loads(line)["epoch"] for line in (job / "student/history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 11))


@pytest.mark.slow
def test_each_job_of_a_sweep_with_devices_runs_itself_as_two_processes(cli, tmp_path):
    # trainer.devices=2 starts torchrun from inside each job: its processes must run that job, not the sweep again.
    result = cli("distill", "-m", "trainer.devices=2", *SMALL, "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                 "trainer.batch_size=16", "seed=0,1")
    assert result.code == 0, result.text
    (sweep,) = (tmp_path / "runs" / "quickstart" / "sweep").iterdir()
    found = sorted(sweep.glob("*/student/metrics.json"))
    assert [m.parent.parent.name for m in found] == ["0_seed=0", "1_seed=1"]
    for i, m in enumerate(found):
        metrics = json.loads(m.read_text())
        assert metrics["processes"] == 2 and metrics["environment"]["command"].endswith(f" seed={i}")
    assert result.out.count("starting 2 processes") == 2


@pytest.mark.slow
def test_the_joblib_launcher_runs_a_sweeps_jobs_side_by_side(cli, tmp_path):
    result = cli("distill", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, "trainer.epochs=1",
                 "trainer.max_steps_per_epoch=3", "trainer.batch_size=16", "seed=0,1")
    assert result.code == 0, result.text
    found = sorted((tmp_path / "runs" / "quickstart" / "sweep").glob("*/*/student/metrics.json"))
    assert [json.loads(m.read_text())["processes"] for m in found] == [1, 1]
    assert "0_seed=0" in result.out and "1_seed=1" in result.out  # the sweep's summary table
    # Each job records the command that reruns it alone: the sweep's values, one per job.
    commands = [json.loads(m.read_text())["environment"]["command"] for m in found]
    assert [c.startswith("distillctl distill ") and c.endswith(f" seed={i}") for i, c in enumerate(commands)] == [True, True], commands


@pytest.mark.slow
def test_the_imagenet_recipe_runs_end_to_end_on_a_tiny_imagenet_layout_as_two_processes(cli, tmp_path):
    import timm
    from safetensors.torch import save_file

    from conftest import write_photo_folder

    root = write_photo_folder(tmp_path / "imagenet", {"train": 96, "val": 32}, size=(80, 64))
    for image in root.rglob("*.jpg"):  # ImageNet's own file names end in .JPEG
        image.rename(image.with_suffix(".JPEG"))
    # The published teacher, offline: a weights file in timm's own layout, as the Hub serves it.
    weights = tmp_path / "resnet34.safetensors"
    save_file(timm.create_model("resnet34.tv_in1k", num_classes=10).state_dict(), weights)
    result = cli("pipeline", "recipe=imagenet_resnet", f"dataset.path={root}", f"teacher.pretrained_file={weights}",
                 "trainer.devices=2", "trainer.threads=1", "dataset.workers=1", "dataset.image_size=64", "dataset.val_size=16",
                 "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.batch_size=8", "trainer.eval_batch_size=16",
                 "trainer.checkpoint_every_steps=1", "prune.finetune_epochs=1", "quantize.calibration_batches=1", "~expect")
    assert result.code == 0, result.text[-3000:]
    assert "skip train-teacher: teacher.checkpoint=pretrained" in result.out
    workspace = tmp_path / "runs" / "imagenet_resnet"
    student = json.loads((workspace / "student" / "metrics.json").read_text())
    assert student["loader"] == "stream" and student["processes"] == 2 and student["model"] == "resnet18"
    assert (workspace / "report" / "report.md").is_file() and not (workspace / "teacher").exists()


def test_a_published_teacher_offline_without_its_file_is_one_clear_message(cli):
    result = cli("distill", "recipe=imagenet_resnet", "dataset.path=embedded", "dataset.image_column=img", "dataset.test_split=test")
    assert result.code == 2
    assert "teacher.pretrained_file=PATH" in result.text and "Traceback" not in result.text


@pytest.mark.slow
def test_a_whole_pipeline_with_qat_runs_as_two_processes_and_rank_0_evaluates(cli, tiny):
    result = cli("pipeline", "recipe=tiny", "quantize=int8_qat", "teacher.checkpoint=null", "trainer.devices=2", "trainer.threads=1")
    assert result.code == 0, result.text[-3000:]
    workspace = tiny / "runs" / "tiny"
    for stage in ("teacher", "student", "pruned", "int8_qat"):
        assert json.loads((workspace / stage / "metrics.json").read_text())["processes"] == 2, stage
    assert result.out.count("report: runs/tiny/report/report.md") == 1
    assert "Grad strides" not in result.text


def discriminator_step(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One process of the test below: an adversarial term's own update on this process's (different) features."""
    import torch.distributed as dist

    from distillctl.losses import build_objective
    from distillctl.losses.base import StepOutputs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same discriminator on every process, as DDP's broadcast would leave it
    objective = build_objective({"adv": {"kind": "adversarial", "input": "logits"}})
    logits = lambda: torch.randn(8, 10, generator=torch.Generator().manual_seed(100 + rank))  # noqa: E731
    out = StepOutputs(logits(), torch.zeros(8, dtype=torch.long), logits() * 2, {}, {}, 1)
    objective.terms["adv"].setup(out)
    objective.after_step(out)
    torch.save(objective.terms["adv"].discriminator.state_dict(), f"{out_dir}/d{rank}.pt")
    dist.destroy_process_group()


def test_the_discriminator_takes_the_same_step_on_every_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(discriminator_step, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    d0, d1 = (torch.load(tmp_path / f"d{r}.pt") for r in range(2))
    assert all(torch.equal(d0[k], d1[k]) for k in d0)
    mp.spawn(discriminator_step, args=(1, str(tmp_path / "init1"), str(tmp_path)), nprocs=1)
    alone = torch.load(tmp_path / "d0.pt")  # one process on its own features ends elsewhere: the test can tell
    assert any(not torch.equal(d0[k], alone[k]) for k in d0)
