"""A recipe's `expect:` block: thresholds on evaluate's metrics, so a CI job can reproduce a recipe."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from distillctl.errors import UserError

# Rows that only `distillctl reproduce` measures: the student trained without a teacher, and the student's lead on it.
ACROSS_SEEDS = frozenset({"baseline", "gain"})


def flatten(expect: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    """`{"student.top1": {"min": .8}}` and `{"student": {"top1": {"min": .8}}}` both become the former."""
    flat: dict[str, dict[str, float]] = {}
    for key, value in expect.items():
        path = f"{prefix}{key}"
        if value is None:  # how a recipe drops a threshold it inherits (`int8_static.top1: null`)
            continue
        if isinstance(value, Mapping) and value and set(value) <= {"min", "max"}:
            flat[path] = {bound: float(limit) for bound, limit in value.items()}
        elif isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            raise UserError(f"expect.{path} must be {{min: X}} and/or {{max: Y}}, got {value!r}.")
    return flat


def nested(expect: Mapping[str, Any]) -> dict[str, Any]:
    """`{"student.top1": {"min": .8}}` as `{"student": {"top1": {"min": .8}}}`, merging entries that share a model:
    to Hydra a dotted key is a path, so only this form is reached from the command line (`expect.student.top1.min=.9`,
    `~expect.student.top1`). A dropped threshold (`int8_static.top1: null`) stays null, to override an included one."""
    tree: dict[str, Any] = {}
    for key, value in expect.items():
        *parents, leaf = str(key).split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        value = nested(value) if isinstance(value, Mapping) else value
        node[leaf] = merged(node[leaf], value) if isinstance(node.get(leaf), dict) and isinstance(value, dict) else value
    return tree


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, mapping by mapping."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def check(
    expect: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Any]],
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Every threshold on a model in `only` (default: all) and not in `skip`, with its measured value and whether
    it held; `results` is {model: {metric: value}}, and a model missing from it fails its thresholds."""
    rows = []
    for path, bounds in flatten(expect).items():
        model, _, metric = path.partition(".")
        if model in skip or (only is not None and model not in only):
            continue
        value = results.get(model, {}).get(metric)
        for bound, limit in bounds.items():
            ok = value is not None and (value >= limit if bound == "min" else value <= limit)
            rows.append({"metric": path, "bound": bound, "limit": limit, "value": value, "ok": ok})
    return rows
