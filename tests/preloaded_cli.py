"""`distillctl` processes forked from one that has already imported torch and timm.

A test's CLI call is a process of its own, in its own folder, with its own environment, as a user's is; but a fresh
interpreter spends 5-10 s importing torch, timm (which pulls in torchvision and torch._dynamo), Hydra and datasets
before distillctl does anything, which was most of the time of a CLI test on 2 shared cores. A server process does
those imports once per pytest worker, touches nothing else, and forks a child for each call: the child takes the
call's folder, environment, argv and output files, and runs `python -m distillctl` from there.

A variable that a preloaded module reads when it is imported (HF_HOME, OMP_NUM_THREADS, PYTHONHASHSEED, HOME...)
cannot change in a child, so a call whose environment differs from the server's in anything but the variables that
distillctl reads while it runs goes to a real subprocess instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# Imported by the server: every CLI run that trains or evaluates imports them, and none starts a Python thread or
# runs a torch op when imported, so a fork of the server is a clean process (torch's DataLoader forks its workers from
# a process in the same state). distillctl itself is imported in each child.
PRELOADED = ("torch", "torchvision", "timm", "hydra", "omegaconf", "rich", "numpy", "pyarrow", "datasets", "safetensors")

# Read by distillctl, rich or a tracker while a command runs, never by a preloaded module at import: a call may
# change these and still be forked. Any other difference from the server's environment means a real subprocess.
RUNTIME_ONLY = ("COLUMNS", "LINES", "TERM", "NO_COLOR", "FORCE_COLOR", "PYTEST_CURRENT_TEST")
RUNTIME_ONLY_PREFIXES = ("DISTILLCTL_", "SLURM_", "WANDB_", "MLFLOW_")


def forkable(env: Mapping[str, str], server_env: Mapping[str, str]) -> bool:
    """Whether a child of a server started with server_env would see what a fresh process with env sees."""
    changed = {k for k in env.keys() | server_env.keys() if env.get(k) != server_env.get(k)}
    return all(k in RUNTIME_ONLY or k.startswith(RUNTIME_ONLY_PREFIXES) for k in changed)


class PreloadedCli:
    """One server per pytest worker; `run` is `subprocess.run([python, -m, distillctl, ...])` with the imports done."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.server_env: dict[str, str] = {}
        self.outputs = Path(tempfile.mkdtemp(prefix="distillctl-cli-"))
        self.log = self.outputs / "server.log"
        self.pending = b""

    def run(self, args: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess:
        """`distillctl args` in cwd with exactly env; stdout and stderr as text, as subprocess.run(text=True) gives."""
        argv = [sys.executable, "-m", "distillctl", *args]
        if self.server is not None and not forkable(os.environ, self.server_env):
            # A test changed this process's environment for good (an in-process `cli.main` sets OMP_WAIT_POLICY,
            # scikit-learn's import KMP_DUPLICATE_LIB_OK): a server with the old one would send every call to a subprocess.
            self.stop()
        # A server not yet started would be started with this process's environment; a call to a subprocess needs none.
        if os.environ.get("DISTILLCTL_TEST_FORK", "1") == "0" or not forkable(env, self.server_env if self.server else os.environ):
            return subprocess.run(argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout)
        self.start()
        out, err = self.outputs / "stdout", self.outputs / "stderr"
        request = {"args": list(args), "cwd": str(cwd), "env": dict(env), "stdout": str(out), "stderr": str(err)}
        assert self.server is not None and self.server.stdin is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        pid = int(self.reply(timeout=60))
        try:
            code = int(self.reply(timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # the child and whatever it started, as subprocess.run's would
                os.killpg(pid, signal.SIGKILL)
            self.reply(timeout=60)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def reply(self, timeout: float) -> str:
        """The server's next line, read from its pipe unbuffered (a buffered reader would hide a line from select)."""
        assert self.server is not None and self.server.stdout is not None
        fd = self.server.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("preloaded distillctl", timeout)
            if not (chunk := os.read(fd, 4096)):
                raise RuntimeError(f"the preloaded distillctl server ended: {self.log.read_text()[-2000:]}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def start(self) -> None:
        """Start the server with this process's environment, unless it runs already (again, if it died)."""
        if self.server is None or self.server.poll() is not None:
            self.server_env = dict(os.environ)
            with self.log.open("w") as log:
                self.server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=log, text=True, env=self.server_env)
            self.pending = b""
            if self.reply(timeout=300) != "ready":
                raise RuntimeError(f"the preloaded distillctl server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server, if one runs (it ends when its stdin closes)."""
        if self.server is not None:
            self.server.communicate(timeout=60)
            self.server = None

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        for leftover in self.outputs.iterdir():
            leftover.unlink()
        self.outputs.rmdir()


_shared: PreloadedCli | None = None


def shared() -> PreloadedCli:
    """This process's server: started by its first call, stopped when the process ends."""
    global _shared
    if _shared is None:
        _shared = PreloadedCli()
        atexit.register(_shared.close)
    return _shared


def serve() -> None:
    """Import PRELOADED, then fork one child per request line on stdin; write its pid, then its exit code."""
    import gc
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    # Objects that exist now are never collected: the children's garbage collector skips them, so a child's exit
    # need not touch (and copy) the server's pages, which took it 2.7 s instead of 0.75 s.
    gc.freeze()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the server itself prints goes to its log, never into the replies
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            channel.close()
            become_distillctl(request)  # raises SystemExit (or the command's own exception) up to the top level
        channel.write(f"{pid}\n")
        channel.flush()
        channel.write(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\n")
        channel.flush()


def become_distillctl(request: dict) -> None:
    """In the forked child: take the request's folder, environment and files, then run `python -m distillctl`."""
    import runpy

    os.setpgid(0, 0)  # a timeout kills this process group: the command and whatever it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 lives as long as the process
    sys.path[0] = request["cwd"]  # `python -m` puts the working folder first on the import path
    sys.argv = ["-m", *request["args"]]
    runpy.run_module("distillctl", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


if __name__ == "__main__":
    serve()
