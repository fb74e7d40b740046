"""A search space as YAML declares it (`search.space`): config key -> a range or a list of choices, checked whole
before any trial runs, and drawn from by an Optuna trial."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillctl.composition import group_choices, override
from distillctl.errors import UserError, did_you_mean
from distillctl.execution_settings import RUN_CONTROL

RANGE_KEYS = {"low", "high", "log", "step", "type"}
# Keys a search may not vary: where runs go, what they must reach, and the teacher every trial shares.
FIXED_PREFIXES = (*RUN_CONTROL, "search", "hydra", "expect", "smoke_expect", "reproduce", "teacher", "teachers")


@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range (optionally log-scaled or stepped), or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial) -> Any:
        """The value an Optuna trial draws for this key."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values that test the whole space: both ends of a range, every choice."""
        if self.choices is not None:
            return list(self.choices)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.integer else ends

    def contains(self, value: Any) -> bool:
        """Whether value is one this parameter can take (a recipe's own value, say)."""
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def __str__(self) -> str:
        if self.choices is not None:
            return f"{self.key}: one of {', '.join(map(str, self.choices))}"
        kind = ("log-" if self.log else "") + ("int" if self.integer else "float")
        step = f" step {self.step:g}" if self.step else ""
        return f"{self.key}: {kind} in [{self.low:g}, {self.high:g}]{step}"


def parse_space(space: Mapping[str, Any], config: DictConfig) -> list[Param]:
    """The declared space as parameters, typed like the keys they set in `config`; a malformed entry or an unknown
    key is a UserError naming it and the fix."""
    if not space:
        raise UserError(
            "search.space is empty: pick a bundled space (search=kd: KD temperature and weight; search=students: "
            "the student architecture too) or declare one, e.g. "
            "'+search.space={loss.terms.kd.temperature: {low: 1, high: 8}}'."
        )
    params = []
    for key, spec in space.items():
        check_searchable(str(key))
        params.append(parse_param(str(key), spec, current_value(config, str(key))))
    return params


def check_searchable(key: str) -> None:
    """Refuse keys that every trial must share."""
    if key.split(".")[0] in FIXED_PREFIXES:
        raise UserError(f"search.space.{key}: '{key}' cannot be searched (a search keeps its workspace, goals and "
                        "teacher fixed; search the student and its training instead).")


def current_value(config: DictConfig, key: str) -> Any:
    """The value `key` has in config, or a UserError listing the keys that exist where it was looked for."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    term = parent.split(".")[2] if parent.startswith("loss.terms.") else None
    if term is not None and term not in config.loss.terms:
        # A space written for another method (search=kd on an AT recipe): name the terms there are and the spaces
        spaces = group_choices("search")
        raise UserError(f"search.space: '{key}' searches a '{term}' loss term, and this run's loss has none (its terms: "
                        f"{', '.join(config.loss.terms)}). Pick a space for its method (search={' | '.join(spaces)}) "
                        "or declare your own instead: ~search '++search.space={loss.terms.NAME.weight: {low: 10, high: 1000, log: true}}'.")
    if not isinstance(node, DictConfig) or leaf not in node:
        valid = sorted(map(str, node.keys())) if isinstance(node, DictConfig) else []
        where = f" under '{parent}'" if parent and valid else ""
        listed = f" Keys{where}: {', '.join(valid)}." if valid else f" '{parent}' is not a config section here."
        raise UserError(f"search.space: unknown config key '{key}'.{did_you_mean(leaf, valid)}{listed}")
    return OmegaConf.select(config, key)


def parse_param(key: str, spec: Any, current: Any = None) -> Param:
    """One entry of search.space; a range without `type` takes the type of the key's current value."""
    where = f"search.space.{key}"
    check_searchable(key)
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}={spec!r}: give a range {{low: 1, high: 8}} (log: true, step, type: int optional) or {{choices: [a, b]}}.")
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        choices = spec["choices"]
        if extra:
            raise UserError(f"{where}: choices take no {', '.join(sorted(extra))}; give either choices or low/high.")
        if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            raise UserError(f"{where}.choices must be a non-empty list, e.g. choices: [resnet8, resnet14].")
        if any(not isinstance(c, (str, int, float, bool)) or c is None for c in choices):
            raise UserError(f"{where}.choices: each choice must be a plain value (text, number or boolean), got {list(choices)}.")
        if len(set(choices)) != len(choices):
            raise UserError(f"{where}.choices lists a value twice: {list(choices)}.")
        return Param(key, choices=tuple(choices))
    unknown = set(spec) - RANGE_KEYS
    if unknown or "low" not in spec or "high" not in spec:
        problem = f"unknown field(s) {', '.join(sorted(unknown))}" if unknown else "a range needs both low and high"
        raise UserError(f"{where}: {problem}. Fields: low, high, log, step, type (float or int); or choices: [...].")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    is_int = isinstance(current, int) and not isinstance(current, bool)
    kind = str(spec.get("type") or ("int" if is_int else "float"))
    if kind not in ("float", "int"):
        raise UserError(f"{where}.type={kind}: use float or int.")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise UserError(f"{where}.{name}={value!r} is not a finite number.")
    if low >= high:
        raise UserError(f"{where}: low ({low:g}) must be less than high ({high:g}).")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0 (got {low:g}).")
    if step is not None and (step <= 0 or log):
        raise UserError(f"{where}.step={step:g}: a step must be positive, and cannot be combined with log: true.")
    if kind == "int" and any(v is not None and v != int(v) for v in (low, high, step)):
        raise UserError(f"{where}: an int range needs whole numbers (low {low:g}, high {high:g}).")
    return Param(key, float(low), float(high), log, None if step is None else float(step), kind == "int")


def check_space(params: list[Param], config: DictConfig, compose: Callable[[list[str]], Any],
                check: Callable[[Any], None]) -> None:
    """Set both ends of every range and every choice in the config, so an unknown key, a value the key's type refuses
    or one outside its allowed range fails now, with the key named, rather than in trial 7. A value is set on a copy
    of `config` (milliseconds); a config-group choice (`loss: {choices: [kd, dkd]}`) is composed (a tenth of a second)."""
    from omegaconf.errors import OmegaConfBaseException

    for param in params:
        for value in param.extremes():
            setting = override(param.key, value)
            try:
                if isinstance(OmegaConf.select(config, param.key), DictConfig):
                    candidate = compose([setting])
                else:
                    candidate = config.copy()
                    OmegaConf.update(candidate, param.key, value, merge=False)
                check(candidate)
            except OmegaConfBaseException as exc:
                raise UserError(f"search.space.{param.key}: with {setting}: {' '.join(str(exc).split())}") from None
            except UserError as exc:
                raise UserError(f"search.space.{param.key}: with {setting}: {exc}") from None
