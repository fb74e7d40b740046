"""Settings only one method reads (`prune.sparsity` is unstructured pruning's): given on the command line to a run of
another method they would be ignored in silence, and the run would do something other than what was asked."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

# section -> the commands that run it, and for each setting only some methods read, those methods.
READ_BY: dict[str, tuple[set[str], dict[str, set[str]]]] = {
    "prune": ({"prune", "pipeline"}, {
        "sparsity": {"unstructured"},
        **{key: {"structured"} for key in ("target_macs_ratio", "channel_ratio", "importance", "global_pruning", "head_ratio", "round_to", "steps")},
    }),
    "quantize": ({"quantize", "pipeline"}, {"qat_epochs": {"int8_qat"}, "qat_lr": {"int8_qat"}, "reduce_range": {"onnx_int8"}}),
}


def unread(command: str, cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """For each override setting what this run's method does not read: what it is for, and the way to get it."""
    problems = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        section, _, name = key.partition(".")
        commands, readers = READ_BY.get(section, (set(), {}))
        if command not in commands or name not in readers:
            continue
        method, methods = str(cfg[section].method), sorted(readers[name])
        if method not in methods:
            problems.append(f"{key} is read by {section}={' or '.join(methods)} only, and this run uses {section}={method}: "
                            f"add {section}={methods[0]}, or leave {key} out")
    return problems
