"""A student's batch-1 CPU latency, timed in a process of its own under the OpenMP wait policy `evaluate` times with.

`search` trains with sleeping OpenMP threads (OMP_WAIT_POLICY=PASSIVE, which distillctl sets for its training
commands: 1.7x faster training beside another busy process), a setting OpenMP reads once, when torch loads it.
Sleeping threads add their wake-up time to every batch-1 forward: ResNet-8 took 1.37x as long (docs/performance.md,
"Threads on a shared CPU"). A latency budget read off `evaluate`'s report must be held to the same kind of figure,
so the search's latencies are measured here, in a fresh process with the policy the user's shell has.

    python -m distillctl.evaluation.latency_probe '{"name": "resnet8", "num_classes": 10, ...}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# Set beside OMP_WAIT_POLICY when distillctl chose PASSIVE itself rather than the user.
CHOSEN_BY_DISTILLCTL = "DISTILLCTL_OMP_WAIT_POLICY_CHOSEN"


def timing_environment() -> dict[str, str]:
    """This process's environment less the wait policy distillctl chose for training (a user's own is kept)."""
    env = dict(os.environ)
    if env.pop(CHOSEN_BY_DISTILLCTL, None):
        env.pop("OMP_WAIT_POLICY", None)
    return env


def timing_policy() -> str:
    """The OMP_WAIT_POLICY the latencies are measured under."""
    return timing_environment().get("OMP_WAIT_POLICY", "default")


def latency_ms(name: str, num_classes: int, kwargs: dict[str, Any], image_size: int, threads: int, repeats: int) -> float:
    """The median batch-1 latency (ms) of an untrained `name`, frozen as `evaluate` runs it, in a fresh process."""
    env = timing_environment()
    spec = {"name": name, "num_classes": num_classes, "kwargs": kwargs, "image_size": image_size, "threads": threads,
            "repeats": repeats}
    done = subprocess.run([sys.executable, "-m", __name__, json.dumps(spec)], env=env, capture_output=True, text=True)
    if done.returncode != 0:  # the same model was just built in the parent: this is no user error
        raise RuntimeError(f"timing {name} in a fresh process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Build the model the JSON argument describes and print its latency in ms."""
    from distillctl.evaluation import measure
    from distillctl.models import create_model

    spec = json.loads(sys.argv[1])
    model = create_model(spec["name"], spec["num_classes"], False, role="student", image_size=spec["image_size"], **spec["kwargs"])
    timed, _ = measure.deployable(model, spec["image_size"])
    print(measure.latency_ms(timed, spec["image_size"], spec["threads"], spec["repeats"]))


if __name__ == "__main__":
    main()
